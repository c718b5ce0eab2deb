//! The one Redis layer every component uses: options, a self-healing
//! connection (single node or Cluster), command timeouts that become
//! `ERR_REDIS` instead of hangs, Lua scripts (EVALSHA, re-sent on NOSCRIPT),
//! and a pub/sub loop that reconnects by itself.

use std::sync::Arc;
use std::time::Duration;

use napi_derive::napi;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Script, Value};
use tokio::sync::OnceCell;

use crate::error::{check_non_negative, HpError, HpResult};

/// Where shared state lives. Without it every class works in-process.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone, Debug)]
pub struct RedisOptions {
  /// `redis://[user:pass@]host:port/db`, or `rediss://` for TLS. Required
  /// unless `cluster` is given.
  pub url: Option<String>,
  /// Seed node URLs: use Redis Cluster instead of `url`.
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
#[derive(Clone, Debug, PartialEq)]
pub struct RedisConfig {
  pub url: String,
  pub cluster: Vec<String>,
  pub key_prefix: String,
  pub connect_timeout: Duration,
  pub command_timeout: Duration,
}

impl RedisConfig {
  pub fn from_options(o: &RedisOptions) -> HpResult<Self> {
    let cluster = o.cluster.clone().unwrap_or_default();
    let url = o.url.clone().unwrap_or_default();
    if url.is_empty() && cluster.is_empty() {
      return Err(HpError::invalid(
        "redis needs a url (redis:// or rediss://) or a cluster (seed node URLs), got neither",
      ));
    }
    for u in std::iter::once(&url)
      .filter(|u| !u.is_empty())
      .chain(cluster.iter())
    {
      if !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://")) {
        return Err(HpError::invalid(format!(
          "redis URL must start with redis:// or rediss://, got \"{u}\""
        )));
      }
      redis::parse_redis_url(u)
        .ok_or_else(|| HpError::invalid(format!("redis URL is not valid: \"{u}\"")))?;
    }
    let ms = |name: &str, v: Option<f64>, d: f64| -> HpResult<Duration> {
      let v = check_non_negative(name, v.unwrap_or(d))?;
      if v == 0.0 {
        return Err(HpError::invalid(format!("{name} must be > 0, got 0")));
      }
      Ok(Duration::from_secs_f64(v / 1000.0))
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

  /// A stable description, used to compare named instances' options.
  pub fn fingerprint(&self) -> String {
    format!(
      "url={};cluster={};prefix={};ct={:?};cmd={:?}",
      self.url,
      self.cluster.join(","),
      self.key_prefix,
      self.connect_timeout,
      self.command_timeout
    )
  }
}

/// A single node (through redis-rs' ConnectionManager, which reconnects with
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

/// One connection to Redis (or a Redis Cluster), shared by a component.
/// Nothing is sent at construction: the first command connects, and a lost
/// connection is re-established by the next command.
pub struct Redis {
  pub cfg: RedisConfig,
  single: Option<redis::Client>,
  cluster: Option<redis::cluster::ClusterClient>,
  conn: OnceCell<Conn>,
  /// Fail fast while Redis is unreachable: until this time (crate clock, ms,
  /// as f64 bits) calls fail at once with ERR_REDIS instead of each waiting
  /// for its own reconnect attempt; the first call after it probes again.
  down_until: std::sync::atomic::AtomicU64,
}

/// How long calls fail fast after Redis was found unreachable.
const DOWN_BACKOFF_MS: u64 = 200;

fn redis_err(e: redis::RedisError) -> HpError {
  let err = HpError::redis(format!("redis: {e}"));
  debug_log(&err);
  err
}

/// With `HOTPATH_DEBUG=1`, Redis errors that are otherwise only counted (an
/// L2 miss, a write-behind that failed) are printed to stderr.
pub fn debug_log(e: &HpError) {
  static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
  if *ON.get_or_init(|| std::env::var("HOTPATH_DEBUG").is_ok_and(|v| !v.is_empty() && v != "0")) {
    eprintln!("hotpath: {e}");
  }
}

impl Redis {
  pub fn new(cfg: RedisConfig) -> HpResult<Arc<Redis>> {
    let (single, cluster) = if cfg.cluster.is_empty() {
      (
        Some(
          redis::Client::open(cfg.url.as_str())
            .map_err(|e| HpError::invalid(format!("redis.url: {e}")))?,
        ),
        None,
      )
    } else {
      let c = redis::cluster::ClusterClient::builder(cfg.cluster.clone())
        .connection_timeout(cfg.connect_timeout)
        .response_timeout(cfg.command_timeout)
        .build()
        .map_err(|e| HpError::invalid(format!("redis.cluster: {e}")))?;
      (None, Some(c))
    };
    Ok(Arc::new(Redis {
      cfg,
      single,
      cluster,
      conn: OnceCell::new(),
      down_until: std::sync::atomic::AtomicU64::new(0),
    }))
  }

  pub fn is_cluster(&self) -> bool {
    self.cluster.is_some()
  }

  /// The prefixed key.
  pub fn key(&self, k: &str) -> String {
    let mut s = String::with_capacity(self.cfg.key_prefix.len() + k.len());
    s.push_str(&self.cfg.key_prefix);
    s.push_str(k);
    s
  }

  async fn conn(&self) -> HpResult<Conn> {
    let c = self
      .conn
      .get_or_try_init(|| async {
        if let Some(client) = &self.single {
          let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.cfg.connect_timeout))
            .set_response_timeout(Some(self.cfg.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
          ConnectionManager::new_lazy_with_config(client.clone(), cfg)
            .map(Conn::Single)
            .map_err(|e| self.fail(e))
        } else {
          let client = self.cluster.as_ref().expect("cluster client");
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

  fn mark_down(&self) {
    let until = crate::runtime::now_ms() + DOWN_BACKOFF_MS as f64;
    self
      .down_until
      .store(until.to_bits(), std::sync::atomic::Ordering::Relaxed);
  }

  /// A RedisError as ERR_REDIS; a connection-level failure (refused, dropped,
  /// I/O, timeout) also opens the fail-fast window.
  fn fail(&self, e: redis::RedisError) -> HpError {
    if e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error() || e.is_timeout() {
      self.mark_down();
    }
    redis_err(e)
  }

  async fn bounded<T, F>(&self, what: &str, fut: F) -> HpResult<T>
  where
    F: std::future::Future<Output = HpResult<T>>,
  {
    if crate::runtime::now_ms()
      < f64::from_bits(self.down_until.load(std::sync::atomic::Ordering::Relaxed))
    {
      return Err(HpError::redis(format!(
        "redis: {what} not sent: Redis was unreachable moments ago (retrying every {} ms)",
        DOWN_BACKOFF_MS
      )));
    }
    // The command timeout bounds the whole call, connecting included.
    match tokio::time::timeout(self.cfg.command_timeout, fut).await {
      Ok(r) => r,
      Err(_) => {
        self.mark_down();
        let e = HpError::redis(format!(
          "redis: {what} timed out after {} ms",
          self.cfg.command_timeout.as_millis()
        ));
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
  /// page. Never KEYS. On a Cluster, every primary is scanned.
  pub async fn scan_each<F>(&self, pattern: &str, mut each: F) -> HpResult<()>
  where
    F: FnMut(Vec<String>) -> HpResult<()>,
  {
    if let Some(cluster) = &self.cluster {
      // Each primary separately: SCAN is per node.
      let nodes = self.cluster_primaries(cluster).await?;
      for url in nodes {
        let client = redis::Client::open(url.as_str()).map_err(redis_err)?;
        let mut c = self
          .bounded("connect", async {
            client
              .get_multiplexed_async_connection()
              .await
              .map_err(redis_err)
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
                .map_err(redis_err)
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

  async fn cluster_primaries(
    &self,
    _cluster: &redis::cluster::ClusterClient,
  ) -> HpResult<Vec<String>> {
    // CLUSTER SLOTS through the routed connection gives every primary.
    let slots: Vec<Value> = self
      .query(&redis::cmd("CLUSTER").arg("SLOTS").to_owned())
      .await?;
    let scheme = if self
      .cfg
      .cluster
      .first()
      .map(|u| u.starts_with("rediss://"))
      .unwrap_or(false)
    {
      "rediss"
    } else {
      "redis"
    };
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
            let u = format!("{scheme}://{h}:{p}");
            if !out.contains(&u) {
              out.push(u);
            }
          }
        }
      }
    }
    Ok(out)
  }

  /// Subscribe to `channel` for as long as `alive()` holds. `on_message` gets
  /// each payload; `on_connect(reconnected)` runs after every (re)subscribe,
  /// with `true` after a reconnect (messages may have been missed).
  pub fn subscribe<M, C, A>(
    self: &Arc<Self>,
    channel: String,
    on_message: M,
    on_connect: C,
    alive: A,
  ) -> tokio::task::JoinHandle<()>
  where
    M: Fn(&[u8]) + Send + Sync + 'static,
    C: Fn(bool) + Send + Sync + 'static,
    A: Fn() -> bool + Send + Sync + 'static,
  {
    let this = self.clone();
    crate::runtime::spawn(async move {
      use futures_util::StreamExt;
      let mut connected_before = false;
      let mut backoff = Duration::from_millis(50);
      while alive() {
        let url = if this.cfg.cluster.is_empty() {
          this.cfg.url.clone()
        } else {
          this.cfg.cluster[0].clone()
        };
        let attempt = async {
          let client = redis::Client::open(url.as_str()).map_err(redis_err)?;
          let mut ps = tokio::time::timeout(this.cfg.connect_timeout, client.get_async_pubsub())
            .await
            .map_err(|_| HpError::redis("redis: pubsub connect timed out"))?
            .map_err(redis_err)?;
          tokio::time::timeout(this.cfg.command_timeout, ps.subscribe(&channel))
            .await
            .map_err(|_| HpError::redis("redis: subscribe timed out"))?
            .map_err(redis_err)?;
          Ok::<_, HpError>(ps)
        };
        match attempt.await {
          Ok(ps) => {
            backoff = Duration::from_millis(50);
            on_connect(connected_before);
            connected_before = true;
            let mut stream = ps.into_on_message();
            loop {
              // Wake up now and then to notice `alive() == false`.
              match tokio::time::timeout(Duration::from_millis(250), stream.next()).await {
                Ok(Some(msg)) => on_message(msg.get_payload_bytes()),
                Ok(None) => break,
                Err(_) => {
                  if !alive() {
                    return;
                  }
                }
              }
            }
          }
          Err(_) => {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
          }
        }
      }
    })
  }
}

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
