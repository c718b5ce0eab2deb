//! The one Redis layer every component uses.
//!
//! - [`conn`] + [`uv`]: the I/O core. On a JS thread, each endpoint (URL and
//!   options) has one connection driven by that thread's own libuv loop:
//!   commands are RESP-encoded into a buffer during the call, every command
//!   of a tick leaves in one write, and replies settle Promises on the same
//!   thread with no thread hop. Every instance on the thread shares it.
//! - [`breaker`]: one circuit breaker per endpoint, shared by everything that
//!   talks to it (closed / open / half-open with one probe, exponential
//!   backoff). While it is open, calls fail fast with `ERR_REDIS`.
//! - This file: options, URL redaction, and the process-wide endpoint
//!   registry with the Tokio-side connection (redis-rs) used by background
//!   work (write-behind, writes, SCAN, tag deletes, `acquire`'s waits, and
//!   on a Cluster whatever is not routed per slot); scripts (EVALSHA,
//!   re-sent on NOSCRIPT).
//! - [`route`]: Redis Cluster on the JS-thread path: a slot map and one
//!   connection per node per thread, following MOVED / ASK.
//! - [`tls`]: the rustls settings of `rediss://` on the JS-thread path (the
//!   same verification as the Tokio side's).
//! - [`pubsub`]: one subscriber connection per endpoint for every channel,
//!   with PING health checks and reconnect backoff; on a Cluster it fails
//!   over to the next seed.
//! - [`cluster`]: hash slots and per-node connection info that keeps the
//!   seed's credentials, database and TLS settings.

pub mod breaker;
pub mod cluster;
pub mod conn;
pub mod pubsub;
pub mod resp;
pub mod route;
pub mod tls;
pub mod uv;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use napi_derive::napi;
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Script, Value};
use tokio::sync::OnceCell;

use crate::error::{HpError, HpResult};
pub use breaker::{Breaker, Gate};
pub use uv::real_ms;

/// Where shared state lives. Without it every class works in-process.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone)]
pub struct RedisOptions {
  /// `redis://[user:pass@]host:port/db`, or `rediss://` for TLS. Required
  /// unless `cluster` is given.
  pub url: Option<String>,
  /// Seed node URLs: use Redis Cluster instead of `url`. The first seed's
  /// credentials, database and TLS settings are used for every node.
  pub cluster: Option<Vec<String>>,
  /// Every key this library writes starts with it. Default: `'hotpath:'`.
  pub key_prefix: Option<String>,
  /// How long one connection attempt may take, in ms. Default: `2000`.
  pub connect_timeout_ms: Option<f64>,
  /// How long one command (or script, or pipeline) may take, in ms; past it
  /// the call fails with `ERR_REDIS`. Default: `1000`.
  pub command_timeout_ms: Option<f64>,
}

/// Validated Redis configuration.
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
  pub url: String,
  pub cluster: Vec<String>,
  pub key_prefix: String,
  pub connect_timeout: Duration,
  pub command_timeout: Duration,
}

/// A URL with its password (and user name) replaced by `***`.
pub fn redact(url: &str) -> String {
  let Some(scheme_end) = url.find("://") else {
    return url.to_string();
  };
  let rest = &url[scheme_end + 3..];
  let host_start = rest.find(['/', '?', '#']).unwrap_or(rest.len());
  match rest[..host_start].rfind('@') {
    Some(at) => format!("{}://***@{}", &url[..scheme_end], &rest[at + 1..]),
    None => url.to_string(),
  }
}

/// `text` with every secret of `urls` (passwords, user names) replaced.
pub fn scrub(text: &str, urls: &[&str]) -> String {
  let mut out = text.to_string();
  // Whole `user:password` first, then each secret alone.
  for u in urls {
    if let Some(scheme_end) = u.find("://") {
      let rest = &u[scheme_end + 3..];
      let host_start = rest.find(['/', '?', '#']).unwrap_or(rest.len());
      if let Some(at) = rest[..host_start].rfind('@') {
        let userinfo = &rest[..at];
        if !userinfo.is_empty() {
          out = out.replace(userinfo, "***");
        }
      }
    }
  }
  for u in urls {
    if let Ok(info) = redis::IntoConnectionInfo::into_connection_info(*u) {
      let r = info.redis_settings();
      for secret in [r.password(), r.username()].into_iter().flatten() {
        if secret.len() >= 2 {
          out = out.replace(secret, "***");
        }
      }
    }
  }
  out
}

/// A short tag of the secrets (so two configs differing only in password
/// still compare as different) without revealing them.
fn secret_tag(urls: &[&str]) -> String {
  let mut h: u64 = 0xcbf29ce484222325;
  for u in urls {
    for b in u.bytes() {
      h ^= b as u64;
      h = h.wrapping_mul(0x100000001b3);
    }
  }
  format!("{:08x}", h as u32)
}

impl std::fmt::Debug for RedisConfig {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    let urls: Vec<&str> = std::iter::once(self.url.as_str())
      .chain(self.cluster.iter().map(|s| s.as_str()))
      .collect();
    f.debug_struct("RedisConfig")
      .field("url", &redact(&self.url))
      .field(
        "cluster",
        &self.cluster.iter().map(|u| redact(u)).collect::<Vec<_>>(),
      )
      .field("key_prefix", &self.key_prefix)
      .field("connect_timeout", &self.connect_timeout)
      .field("command_timeout", &self.command_timeout)
      .field("urls_tag", &secret_tag(&urls))
      .finish()
  }
}

impl RedisConfig {
  pub fn from_options(o: &RedisOptions) -> HpResult<Self> {
    let cluster = o.cluster.clone().unwrap_or_default();
    let url = o.url.clone().unwrap_or_default();
    if url.is_empty() && cluster.is_empty() {
      return Err(HpError::invalid(
        "redis.url must be a redis:// or rediss:// URL (or give redis.cluster), got \"\"",
      ));
    }
    for u in std::iter::once(&url)
      .filter(|u| !u.is_empty())
      .chain(cluster.iter())
    {
      if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
        return Err(HpError::invalid(format!(
          "redis URL must start with redis:// or rediss://, got \"{}\"",
          redact(u)
        )));
      }
      redis::parse_redis_url(u)
        .ok_or_else(|| HpError::invalid(format!("redis URL is not valid: \"{}\"", redact(u))))?;
    }
    let ms = |name: &str, v: Option<f64>, d: f64| -> HpResult<Duration> {
      crate::validate::positive_duration_ms(name, v.unwrap_or(d), crate::validate::Span::Timer)
        .map(crate::validate::duration)
    };
    Ok(RedisConfig {
      url,
      cluster,
      key_prefix: o
        .key_prefix
        .clone()
        .unwrap_or_else(|| "hotpath:".to_string()),
      connect_timeout: ms("redis.connectTimeoutMs", o.connect_timeout_ms, 2000.0)?,
      command_timeout: ms("redis.commandTimeoutMs", o.command_timeout_ms, 1000.0)?,
    })
  }

  /// A stable description (passwords redacted), used to compare named
  /// instances' options.
  pub fn fingerprint(&self) -> String {
    format!("{self:?}")
  }

  /// What identifies one endpoint: everything but the key prefix.
  fn endpoint_key(&self) -> String {
    format!(
      "{}|{}|{:?}|{:?}",
      self.url,
      self.cluster.join(","),
      self.connect_timeout,
      self.command_timeout
    )
  }

  fn urls(&self) -> Vec<&str> {
    std::iter::once(self.url.as_str())
      .filter(|u| !u.is_empty())
      .chain(self.cluster.iter().map(|s| s.as_str()))
      .collect()
  }

  /// `text` without any secret of these URLs.
  pub fn scrub(&self, text: &str) -> String {
    scrub(text, &self.urls())
  }
}

/// A single node (redis-rs' ConnectionManager, which reconnects with
/// backoff) or a Cluster connection (which follows MOVED/ASK and reconnects).
#[derive(Clone)]
enum Conn {
  Single(ConnectionManager),
  Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
  fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
    match self {
      Conn::Single(c) => c.req_packed_command(cmd),
      Conn::Cluster(c) => c.req_packed_command(cmd),
    }
  }
  fn req_packed_commands<'a>(
    &'a mut self,
    cmd: &'a Pipeline,
    offset: usize,
    count: usize,
  ) -> RedisFuture<'a, Vec<Value>> {
    match self {
      Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
      Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
    }
  }
  fn get_db(&self) -> i64 {
    match self {
      Conn::Single(c) => c.get_db(),
      Conn::Cluster(c) => c.get_db(),
    }
  }
}

/// One endpoint (URL or cluster seeds, and timeouts), shared process-wide
/// by every instance that uses it: its breaker, its Tokio-side connection,
/// its pub/sub connection, and what the JS-thread connections need.
pub struct Endpoint {
  pub cfg: RedisConfig,
  key: String,
  single: Option<redis::Client>,
  cluster: Option<redis::cluster::ClusterClient>,
  conn: OnceCell<Conn>,
  pub breaker: Arc<Breaker>,
  /// Single node (plain TCP or TLS): the JS-thread core can drive it.
  target: Option<Arc<conn::Target>>,
  /// Cluster: what the JS-thread routers need (see `route.rs`).
  seeds: Option<Arc<route::Seeds>>,
  hub: Mutex<Weak<pubsub::Hub>>,
}

static ENDPOINTS: Mutex<Option<HashMap<String, Weak<Endpoint>>>> = Mutex::new(None);

impl Endpoint {
  fn get(cfg: &RedisConfig) -> HpResult<Arc<Endpoint>> {
    let key = cfg.endpoint_key();
    let mut map = ENDPOINTS.lock();
    let map = map.get_or_insert_with(HashMap::new);
    if let Some(e) = map.get(&key).and_then(Weak::upgrade) {
      return Ok(e);
    }
    map.retain(|_, w| w.strong_count() > 0);
    let e = Arc::new(Endpoint::new(cfg.clone(), key.clone())?);
    map.insert(key, Arc::downgrade(&e));
    Ok(e)
  }

  fn new(cfg: RedisConfig, key: String) -> HpResult<Endpoint> {
    let breaker = Arc::new(Breaker::default());
    let seeds = if cfg.cluster.is_empty() {
      None
    } else {
      route::Seeds::new(&cfg).map(Arc::new)
    };
    let (single, cluster, target) = if cfg.cluster.is_empty() {
      let client = redis::Client::open(cfg.url.as_str())
        .map_err(|e| HpError::invalid(cfg.scrub(&format!("redis.url: {e}"))))?;
      // Plain TCP, or TLS as the URL gives it (`rediss://`, `#insecure`);
      // TLS settings the URL cannot give (client certificates, own roots)
      // stay on the Tokio side.
      let (host_port, tls) = match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => (Some((host, *port)), None),
        redis::ConnectionAddr::TcpTls {
          host,
          port,
          insecure,
          tls_params: None,
        } => match tls::Tls::new(host, *insecure) {
          Ok(t) => (Some((host, *port)), Some(t)),
          Err(e) => {
            debug_log(&HpError::redis(e));
            (None, None)
          }
        },
        _ => (None, None),
      };
      let target = match host_port {
        Some((host, port)) => {
          use std::net::ToSocketAddrs;
          let addrs: Vec<std::net::SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map(|a| a.collect())
            .unwrap_or_default();
          let r = client.get_connection_info().redis_settings();
          (!addrs.is_empty()).then(|| {
            Arc::new(conn::Target {
              addrs,
              name: format!("{host}:{port}"),
              username: r.username().map(str::to_string),
              password: r.password().map(str::to_string),
              db: r.db(),
              tls,
              connect_timeout_ms: cfg.connect_timeout.as_secs_f64() * 1000.0,
              command_timeout_ms: cfg.command_timeout.as_secs_f64() * 1000.0,
              breaker: breaker.clone(),
            })
          })
        }
        None => None,
      };
      (Some(client), None, target)
    } else {
      let infos = cluster::seed_infos(&cfg)?;
      let c = redis::cluster::ClusterClient::builder(infos)
        .connection_timeout(cfg.connect_timeout)
        .response_timeout(cfg.command_timeout)
        .build()
        .map_err(|e| HpError::invalid(cfg.scrub(&format!("redis.cluster: {e}"))))?;
      (None, Some(c), None)
    };
    Ok(Endpoint {
      cfg,
      key,
      single,
      cluster,
      conn: OnceCell::new(),
      breaker,
      target,
      seeds,
      hub: Mutex::new(Weak::new()),
    })
  }

  /// Endpoints alive in this process (for tests).
  pub fn count() -> usize {
    ENDPOINTS
      .lock()
      .as_ref()
      .map(|m| m.values().filter(|w| w.strong_count() > 0).count())
      .unwrap_or(0)
  }
}

/// A component's view of Redis: its key prefix over a shared endpoint.
/// Nothing is sent at construction: the first command connects.
pub struct Redis {
  pub cfg: RedisConfig,
  pub ep: Arc<Endpoint>,
}

/// With `HOTPATH_DEBUG=1`, Redis errors that are otherwise only counted (an
/// L2 miss, a write-behind that failed) are printed to stderr.
pub fn debug_log(e: &HpError) {
  static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
  if *ON.get_or_init(|| std::env::var("HOTPATH_DEBUG").is_ok_and(|v| !v.is_empty() && v != "0")) {
    eprintln!("hotpath: {e}");
  }
}

/// The JS-thread connection(s) of one endpoint, for hot paths: one
/// connection for a single node; for a Cluster, a router over one
/// connection per node (see `route.rs`).
pub struct Fast {
  pub core: std::rc::Rc<uv::Core>,
  route: Route,
}

enum Route {
  Node(std::rc::Rc<uv::Slot>),
  Cluster(std::rc::Rc<route::Router>),
}

impl Fast {
  /// A Cluster: sends must keep to one hash slot each (and name it).
  pub fn is_cluster(&self) -> bool {
    matches!(self.route, Route::Cluster(_))
  }

  /// Send `replies` commands written by `encode`; `done` runs on this
  /// thread. On a Cluster every key of them is in `hash_slot` (ignored on
  /// a single node).
  pub fn send(
    &self,
    hash_slot: u16,
    encode: &dyn Fn(&mut Vec<u8>),
    replies: usize,
    done: conn::Done,
  ) {
    match &self.route {
      Route::Node(slot) => self.core.send(slot, encode, replies, done),
      Route::Cluster(r) => r.send(hash_slot, encode, replies, done),
    }
  }

  /// Write what is queued now (see [`uv::Core::write_now`]).
  pub fn write_now(&self) {
    match &self.route {
      Route::Node(slot) => self.core.write_now(slot),
      Route::Cluster(r) => r.write_now(),
    }
  }
}

impl Redis {
  pub fn new(cfg: RedisConfig) -> HpResult<Arc<Redis>> {
    let ep = Endpoint::get(&cfg)?;
    Ok(Arc::new(Redis { cfg, ep }))
  }

  pub fn is_cluster(&self) -> bool {
    self.ep.cluster.is_some()
  }

  pub fn breaker(&self) -> &Breaker {
    &self.ep.breaker
  }

  /// This JS thread's connection(s) to the endpoint (a single node over
  /// `redis://` or `rediss://`, or a Cluster whose seeds it can reach),
  /// when the thread runs a Node event loop.
  pub fn fast(&self, env: napi::sys::napi_env) -> Option<Fast> {
    if self.ep.target.is_none() && self.ep.seeds.is_none() {
      return None;
    }
    // HOTPATH_REDIS_NO_FAST=1: everything through the Tokio side (for
    // comparisons and as an escape hatch).
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *OFF.get_or_init(|| std::env::var_os("HOTPATH_REDIS_NO_FAST").is_some_and(|v| v != "0")) {
      return None;
    }
    let core = uv::core(env)?;
    let route = match (&self.ep.target, &self.ep.seeds) {
      (Some(target), _) => Route::Node(core.slot(&self.ep.key, || target.clone())),
      (None, Some(seeds)) => Route::Cluster(route::Router::get(&core, &self.ep.key, seeds)),
      (None, None) => return None,
    };
    Some(Fast { core, route })
  }

  /// The prefixed key.
  pub fn key(&self, k: &str) -> String {
    let mut s = String::with_capacity(self.cfg.key_prefix.len() + k.len());
    s.push_str(&self.cfg.key_prefix);
    s.push_str(k);
    s
  }

  async fn conn(&self) -> HpResult<Conn> {
    let ep = &self.ep;
    let c = ep
      .conn
      .get_or_try_init(|| async {
        if let Some(client) = &ep.single {
          let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(ep.cfg.connect_timeout))
            .set_response_timeout(Some(ep.cfg.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
          ConnectionManager::new_lazy_with_config(client.clone(), cfg)
            .map(Conn::Single)
            .map_err(|e| self.fail(e))
        } else {
          let client = ep.cluster.as_ref().expect("cluster client");
          client
            .get_async_connection()
            .await
            .map(Conn::Cluster)
            .map_err(|e| self.fail(e))
        }
      })
      .await?;
    Ok(c.clone())
  }

  /// A RedisError as ERR_REDIS (secrets scrubbed); a connection-level
  /// failure (refused, dropped, I/O, timeout) also opens the breaker.
  fn fail(&self, e: redis::RedisError) -> HpError {
    let level =
      e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error() || e.is_timeout();
    let err = HpError::redis(self.cfg.scrub(&format!("redis: {e}")));
    if level {
      self.ep.breaker.failure(real_ms(), &err.message);
    }
    debug_log(&err);
    err
  }

  /// The breaker's probe from the Tokio side: one PING, in the background.
  fn probe(&self) {
    let ep = self.ep.clone();
    let cfg = self.cfg.clone();
    crate::runtime::spawn(async move {
      let r = Redis { cfg, ep };
      let ok = match tokio::time::timeout(r.cfg.command_timeout, async {
        let mut c = r.conn().await?;
        redis::cmd("PING")
          .query_async::<Value>(&mut c)
          .await
          .map_err(|e| r.fail(e))
      })
      .await
      {
        Ok(Ok(_)) => true,
        Ok(Err(_)) => false,
        Err(_) => false,
      };
      if ok {
        r.ep.breaker.success();
      } else {
        r.ep.breaker.failure(real_ms(), "probe: no answer");
      }
    });
  }

  /// May a call go to Redis now? False while the breaker is open (the call
  /// should fail fast); the first caller after the backoff starts the probe.
  pub fn admit(&self) -> bool {
    match self.ep.breaker.gate(real_ms()) {
      Gate::Pass => true,
      Gate::FailFast => false,
      Gate::Probe => {
        self.probe();
        false
      }
    }
  }

  async fn bounded<T, F>(&self, what: &str, fut: F) -> HpResult<T>
  where
    F: std::future::Future<Output = HpResult<T>>,
  {
    match self.ep.breaker.gate(real_ms()) {
      Gate::Pass => {}
      Gate::FailFast => return Err(HpError::redis(self.ep.breaker.refusal(what))),
      Gate::Probe => {
        self.probe();
        return Err(HpError::redis(self.ep.breaker.refusal(what)));
      }
    }
    // The command timeout bounds the whole call, connecting included.
    match tokio::time::timeout(self.cfg.command_timeout, fut).await {
      Ok(r) => {
        if r.is_ok() {
          self.ep.breaker.success();
        }
        r
      }
      Err(_) => {
        let e = HpError::redis(format!(
          "redis: {what} timed out after {} ms",
          self.cfg.command_timeout.as_millis()
        ));
        self.ep.breaker.failure(real_ms(), &e.message);
        debug_log(&e);
        Err(e)
      }
    }
  }

  /// One command, bounded by `commandTimeoutMs`.
  pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> HpResult<T> {
    self
      .bounded("command", async {
        let mut c = self.conn().await?;
        cmd.query_async(&mut c).await.map_err(|e| self.fail(e))
      })
      .await
  }

  /// One pipeline (one round trip on a single node), bounded likewise.
  pub async fn pipe<T: FromRedisValue>(&self, p: &Pipeline) -> HpResult<T> {
    self
      .bounded("pipeline", async {
        let mut c = self.conn().await?;
        p.query_async(&mut c).await.map_err(|e| self.fail(e))
      })
      .await
  }

  /// Many commands at once: one pipeline (one round trip) on a single node;
  /// on a Cluster, where a pipeline may not cross slots, all sent
  /// concurrently over the cluster connection (one round trip per node).
  pub async fn many<T: FromRedisValue>(&self, cmds: &[Cmd]) -> HpResult<Vec<T>> {
    if cmds.is_empty() {
      return Ok(Vec::new());
    }
    if !self.is_cluster() {
      let mut p = redis::pipe();
      for c in cmds {
        p.add_command(c.clone());
      }
      return self.pipe(&p).await;
    }
    self
      .bounded("commands", async {
        let c = self.conn().await?;
        let futs = cmds.iter().map(|cmd| {
          let mut c = c.clone();
          async move { cmd.query_async::<T>(&mut c).await.map_err(|e| self.fail(e)) }
        });
        futures_util::future::join_all(futs)
          .await
          .into_iter()
          .collect()
      })
      .await
  }

  /// A Lua script: EVALSHA, and on NOSCRIPT load it and send it again.
  pub async fn eval<T: FromRedisValue>(
    &self,
    script: &Script,
    keys: &[String],
    args: &[String],
  ) -> HpResult<T> {
    self
      .bounded("script", async {
        let mut c = self.conn().await?;
        let mut inv = script.prepare_invoke();
        for k in keys {
          inv.key(k);
        }
        for a in args {
          inv.arg(a);
        }
        inv.invoke_async(&mut c).await.map_err(|e| self.fail(e))
      })
      .await
  }

  /// PUBLISH, bounded.
  pub async fn publish(&self, channel: &str, msg: &[u8]) -> HpResult<()> {
    let _: Value = self
      .query(redis::cmd("PUBLISH").arg(channel).arg(msg))
      .await?;
    Ok(())
  }

  /// SCAN for keys matching `pattern` (already prefixed), calling `each` per
  /// page. Never KEYS. On a Cluster, every primary is scanned, over
  /// connections made with the seed's credentials, database and TLS.
  pub async fn scan_each<F>(&self, pattern: &str, mut each: F) -> HpResult<()>
  where
    F: FnMut(Vec<String>) -> HpResult<()>,
  {
    if self.is_cluster() {
      let nodes = self.cluster_primaries().await?;
      for info in nodes {
        let client = redis::Client::open(info).map_err(|e| self.fail(e))?;
        let mut c = self
          .bounded("connect", async {
            client
              .get_multiplexed_async_connection()
              .await
              .map_err(|e| self.fail(e))
          })
          .await?;
        let mut cursor: u64 = 0;
        loop {
          let (next, keys): (u64, Vec<String>) = self
            .bounded("scan", async {
              redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut c)
                .await
                .map_err(|e| self.fail(e))
            })
            .await?;
          each(keys)?;
          if next == 0 {
            break;
          }
          cursor = next;
        }
      }
      return Ok(());
    }
    let mut cursor: u64 = 0;
    loop {
      let (next, keys): (u64, Vec<String>) = self
        .query(
          redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500),
        )
        .await?;
      each(keys)?;
      if next == 0 {
        return Ok(());
      }
      cursor = next;
    }
  }

  /// Every primary of the cluster, as connection info that keeps the
  /// seed's credentials, database and TLS settings.
  async fn cluster_primaries(&self) -> HpResult<Vec<redis::ConnectionInfo>> {
    // CLUSTER SLOTS through the routed connection gives every primary.
    let slots: Vec<Value> = self
      .query(&redis::cmd("CLUSTER").arg("SLOTS").to_owned())
      .await?;
    let seed = cluster::seed_infos(&self.cfg)?
      .into_iter()
      .next()
      .ok_or_else(|| HpError::invalid("redis.cluster is empty"))?;
    let mut seen: Vec<(String, u16)> = Vec::new();
    let mut out = Vec::new();
    for s in slots {
      if let Value::Array(parts) = s {
        if let Some(Value::Array(node)) = parts.get(2) {
          let host = node
            .first()
            .and_then(|v| String::from_redis_value(v.clone()).ok());
          let port = node
            .get(1)
            .and_then(|v| i64::from_redis_value(v.clone()).ok());
          if let (Some(h), Some(p)) = (host, port) {
            let hp = (h, p as u16);
            if !seen.contains(&hp) {
              out.push(cluster::node_info(&seed, &hp.0, hp.1));
              seen.push(hp);
            }
          }
        }
      }
    }
    Ok(out)
  }

  /// Subscribe to `channel` for as long as `alive()` holds, over the
  /// endpoint's one pub/sub connection. `on_message` gets each payload;
  /// `on_connect(reconnected)` runs after every (re)subscribe, with `true`
  /// after a reconnect (messages may have been missed).
  pub fn subscribe<M, C, A>(
    self: &Arc<Self>,
    channel: String,
    on_message: M,
    on_connect: C,
    alive: A,
  ) where
    M: Fn(&[u8]) + Send + Sync + 'static,
    C: Fn(bool) + Send + Sync + 'static,
    A: Fn() -> bool + Send + Sync + 'static,
  {
    pubsub::Hub::listen(
      &self.ep,
      channel,
      pubsub::Listener::new(on_message, on_connect, alive),
    );
  }
}

#[cfg(test)]
mod cluster_tests;

#[cfg(test)]
mod tests {
  use super::*;

  fn opts(url: &str) -> RedisOptions {
    RedisOptions {
      url: Some(url.to_string()),
      command_timeout_ms: Some(300.0),
      connect_timeout_ms: Some(200.0),
      ..Default::default()
    }
  }

  #[test]
  fn options_are_checked() {
    assert!(RedisConfig::from_options(&opts("")).is_err());
    assert!(RedisConfig::from_options(&opts("http://x")).is_err());
    let c = RedisConfig::from_options(&opts("redis://127.0.0.1:6379/0")).unwrap();
    assert_eq!(c.key_prefix, "hotpath:");
    assert_eq!(c.command_timeout, Duration::from_millis(300));
    let mut bad = opts("redis://127.0.0.1");
    bad.command_timeout_ms = Some(f64::NAN);
    assert!(RedisConfig::from_options(&bad).is_err());
  }

  #[test]
  fn unreachable_redis_is_err_redis_within_the_timeout() {
    let r = Redis::new(RedisConfig::from_options(&opts("redis://127.0.0.1:1")).unwrap()).unwrap();
    let started = std::time::Instant::now();
    let res: HpResult<String> = crate::runtime::handle().block_on(r.query(&redis::cmd("PING")));
    let err = res.unwrap_err();
    assert_eq!(err.code, crate::error::Code::Redis);
    assert!(
      started.elapsed() < Duration::from_millis(1500),
      "took {:?}",
      started.elapsed()
    );
  }

  #[test]
  fn real_redis_round_trip_and_script() {
    let Ok(url) = std::env::var("REDIS_URL") else {
      if std::env::var("CI").as_deref() == Ok("true") {
        panic!("REDIS_URL must be set in CI");
      }
      eprintln!("SKIP real_redis_round_trip_and_script: REDIS_URL is not set");
      return;
    };
    let r = Redis::new(RedisConfig::from_options(&opts(&url)).unwrap()).unwrap();
    crate::runtime::handle().block_on(async {
      let k = r.key("rust-test:roundtrip");
      let _: () = r.query(redis::cmd("SET").arg(&k).arg("v1")).await.unwrap();
      let v: String = r.query(redis::cmd("GET").arg(&k)).await.unwrap();
      assert_eq!(v, "v1");
      // A script run twice after SCRIPT FLUSH still works (NOSCRIPT is handled).
      let s = Script::new("return redis.call('GET', KEYS[1])");
      let _: () = r
        .query(&redis::cmd("SCRIPT").arg("FLUSH").to_owned())
        .await
        .unwrap();
      let v: String = r.eval(&s, std::slice::from_ref(&k), &[]).await.unwrap();
      assert_eq!(v, "v1");
      let _: () = r.query(redis::cmd("DEL").arg(&k)).await.unwrap();
    });
  }
}

#[cfg(test)]
mod sharing_tests {
  use super::*;

  fn cfg(url: &str, prefix: &str, cmd_ms: f64) -> RedisConfig {
    RedisConfig::from_options(&RedisOptions {
      url: Some(url.into()),
      key_prefix: Some(prefix.into()),
      command_timeout_ms: Some(cmd_ms),
      ..Default::default()
    })
    .unwrap()
  }

  /// Every component on one endpoint (URL and timeouts) shares one
  /// endpoint: one breaker, one Tokio-side connection, one pub/sub hub;
  /// another prefix does not make another endpoint, other timeouts do.
  #[test]
  fn components_on_one_endpoint_share_it() {
    let a = Redis::new(cfg("redis://127.0.0.1:7/0", "a:", 1000.0)).unwrap();
    let b = Redis::new(cfg("redis://127.0.0.1:7/0", "b:", 1000.0)).unwrap();
    let c = Redis::new(cfg("redis://127.0.0.1:7/0", "a:", 500.0)).unwrap();
    assert!(Arc::ptr_eq(&a.ep, &b.ep));
    assert!(Arc::ptr_eq(&a.ep.breaker, &b.ep.breaker));
    assert!(!Arc::ptr_eq(&a.ep, &c.ep));
    assert_eq!(a.key("k"), "a:k");
    assert_eq!(b.key("k"), "b:k");
    // A failure seen through one is seen by the other: one breaker.
    a.breaker().failure(real_ms(), "test");
    assert!(!b.breaker().is_closed());
  }

  #[test]
  fn passwords_never_appear_in_messages() {
    let url = "redis://user:hunter2secret@127.0.0.1:6379/1";
    let c = cfg(url, "p:", 1000.0);
    let shown = format!("{c:?} {}", c.fingerprint());
    assert!(!shown.contains("hunter2secret"), "{shown}");
    assert!(!shown.contains("user:"), "{shown}");
    assert_eq!(redact(url), "redis://***@127.0.0.1:6379/1");
    assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    assert_eq!(
      c.scrub("could not connect to redis://user:hunter2secret@x (hunter2secret)"),
      "could not connect to redis://***@x (***)"
    );
    // Two configs differing only in password still differ.
    let d = cfg("redis://user:other@127.0.0.1:6379/1", "p:", 1000.0);
    assert_ne!(c.fingerprint(), d.fingerprint());
    // Bad URLs: the message shows the URL without its password.
    for bad in [
      "http://:hunter2secret@h:1",
      "redis://:hunter2secret@h:notaport",
    ] {
      let e = RedisConfig::from_options(&RedisOptions {
        url: Some(bad.into()),
        ..Default::default()
      })
      .unwrap_err();
      assert!(!e.message.contains("hunter2secret"), "{}", e.message);
    }
  }

  /// `rediss://` takes the JS-thread path: the endpoint has a target, over
  /// TLS, with what the URL says (`#insecure`: no verification and no SNI,
  /// as redis-rs does; credentials; database). Before, only `redis://` had
  /// one and `Redis::fast()` answered None for `rediss://`.
  #[test]
  fn rediss_urls_have_a_js_thread_target() {
    let r = Redis::new(cfg(
      "rediss://user:pw-s3cret@127.0.0.1:6390/2#insecure",
      "t:",
      1000.0,
    ))
    .unwrap();
    let t = r
      .ep
      .target
      .as_ref()
      .expect("rediss:// takes the JS-thread path");
    let tls = t.tls.as_ref().expect("over TLS");
    assert!(!tls.config.enable_sni, "#insecure: no SNI, like redis-rs");
    assert_eq!(t.username.as_deref(), Some("user"));
    assert_eq!(t.password.as_deref(), Some("pw-s3cret"));
    assert_eq!(t.db, 2);
    assert!(!t.name.contains("s3cret"), "{}", t.name);
    let r = Redis::new(cfg("rediss://localhost:6390", "t:", 1000.0)).unwrap();
    let t = r
      .ep
      .target
      .as_ref()
      .expect("rediss:// takes the JS-thread path");
    let tls = t.tls.as_ref().expect("over TLS");
    assert!(tls.config.enable_sni, "verified: SNI is the host name");
    assert_eq!(
      tls.server_name,
      rustls::pki_types::ServerName::try_from("localhost").unwrap()
    );
    let r = Redis::new(cfg("redis://127.0.0.1:6390", "t:", 1000.0)).unwrap();
    assert!(r.ep.target.as_ref().unwrap().tls.is_none());
  }

  #[test]
  fn cluster_without_url_is_accepted() {
    let c = RedisConfig::from_options(&RedisOptions {
      cluster: Some(vec!["redis://127.0.0.1:7000".into()]),
      ..Default::default()
    })
    .unwrap();
    assert!(c.url.is_empty());
    assert!(Redis::new(c).unwrap().is_cluster());
  }
}
