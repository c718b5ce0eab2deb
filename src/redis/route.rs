//! Redis Cluster on the JS-thread path: per JS thread and cluster endpoint,
//! a [`Router`] holding the slot map (from `CLUSTER SLOTS`) and one
//! JS-thread connection per node (a [`uv::Slot`], keyed by `host:port`,
//! with the first seed's credentials, database and TLS settings and its own
//! breaker). A send names the hash slot of its key(s); the caller keeps
//! every command of one send in that slot.
//!
//! Redirections are followed here, for the whole send:
//! - `MOVED <slot> <host:port>`: the map learns the slot's new owner (and a
//!   `CLUSTER SLOTS` refresh is scheduled); the send goes to that node.
//! - `ASK <slot> <host:port>`: the send goes to that node once, each command
//!   behind an `ASKING`.
//! - `TRYAGAIN` / `CLUSTERDOWN`: sent again after a short delay.
//!
//! At most [`MAX_REDIRECTS`] of these per send; then it fails with
//! `ERR_REDIS` naming the slot and the last redirection. A send whose
//! connection fails gets that failure (the node's name, never a password)
//! and the map is read again from another node. Resending a whole send is
//! safe because a redirected command did not run, and a send that mixes
//! commands (an `MGET` and its `PTTL`s) only reads.
//!
//! Until the first `CLUSTER SLOTS` answer, sends go to the first seed that
//! has not failed (and follow its `MOVED`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use parking_lot::Mutex;
use redis::Value;

use super::breaker::Breaker;
use super::conn::{Done, Target};
use super::resp::{self, Reply};
use super::uv::{self, real_ms, Core};
use super::RedisConfig;
use crate::error::HpError;

/// Redirections (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) one send may follow.
pub const MAX_REDIRECTS: u32 = 5;
/// First wait before a send answered TRYAGAIN / CLUSTERDOWN goes again, in
/// ms (then 2x, 3x, ...).
pub const RETRY_DELAY_MS: f64 = 20.0;
/// Least time between two `CLUSTER SLOTS` reads, in ms.
const REFRESH_GAP_MS: f64 = 100.0;
const NO_NODE: u16 = u16::MAX;
const SLOTS: usize = 16384;

/// What every node connection of one cluster endpoint shares, process-wide:
/// the seeds, the first seed's credentials / database / TLS, the timeouts,
/// and one breaker per node.
pub struct Seeds {
  seeds: Vec<(String, u16)>,
  username: Option<String>,
  password: Option<String>,
  db: i64,
  /// `rediss://`: Some(insecure).
  tls: Option<bool>,
  connect_timeout_ms: f64,
  command_timeout_ms: f64,
  breakers: Mutex<HashMap<String, Arc<Breaker>>>,
}

impl Seeds {
  /// None when the seeds need what the JS-thread path cannot do (TLS
  /// settings a URL cannot give, Unix sockets): the Tokio path serves them.
  pub fn new(cfg: &RedisConfig) -> Option<Seeds> {
    let infos = super::cluster::seed_infos(cfg).ok()?;
    let first = infos.first()?;
    let tls = match first.addr() {
      redis::ConnectionAddr::Tcp(..) => None,
      redis::ConnectionAddr::TcpTls {
        insecure,
        tls_params: None,
        ..
      } => Some(*insecure),
      _ => return None,
    };
    let mut seeds = Vec::new();
    for i in &infos {
      match i.addr() {
        redis::ConnectionAddr::Tcp(h, p)
        | redis::ConnectionAddr::TcpTls {
          host: h, port: p, ..
        } => seeds.push((h.clone(), *p)),
        _ => return None,
      }
    }
    let r = first.redis_settings();
    Some(Seeds {
      seeds,
      username: r.username().map(str::to_string),
      password: r.password().map(str::to_string),
      db: r.db(),
      tls,
      connect_timeout_ms: cfg.connect_timeout.as_secs_f64() * 1000.0,
      command_timeout_ms: cfg.command_timeout.as_secs_f64() * 1000.0,
      breakers: Mutex::new(HashMap::new()),
    })
  }

  /// The connection target of node `host:port` (resolving the host).
  fn target(&self, host: &str, port: u16) -> Result<Arc<Target>, String> {
    use std::net::ToSocketAddrs;
    let name = format!("{host}:{port}");
    let addrs: Vec<std::net::SocketAddr> = (host, port)
      .to_socket_addrs()
      .map(|a| a.collect())
      .unwrap_or_default();
    if addrs.is_empty() {
      return Err(format!("redis: cluster node {name}: address not found"));
    }
    let tls = match self.tls {
      Some(insecure) => Some(super::tls::Tls::new(host, insecure)?),
      None => None,
    };
    let breaker = self
      .breakers
      .lock()
      .entry(name.clone())
      .or_insert_with(|| Arc::new(Breaker::default()))
      .clone();
    Ok(Arc::new(Target {
      addrs,
      name,
      username: self.username.clone(),
      password: self.password.clone(),
      db: self.db,
      tls,
      connect_timeout_ms: self.connect_timeout_ms,
      command_timeout_ms: self.command_timeout_ms,
      breaker,
    }))
  }
}

/// Counters of this thread's routers (for tests): sends routed, MOVED and
/// ASK followed, sends retried after TRYAGAIN / CLUSTERDOWN, slot-map reads.
#[derive(Default, Clone, Copy, Debug)]
pub struct Counts {
  pub sent: u64,
  pub moved: u64,
  pub ask: u64,
  pub retried: u64,
  pub refreshes: u64,
}

thread_local! {
  static COUNTS: Cell<Counts> = const { Cell::new(Counts { sent: 0, moved: 0, ask: 0, retried: 0, refreshes: 0 }) };
}

fn count(f: impl FnOnce(&mut Counts)) {
  COUNTS.with(|c| {
    let mut x = c.get();
    f(&mut x);
    c.set(x);
  });
}

/// This thread's counters.
pub fn counts() -> Counts {
  COUNTS.with(|c| c.get())
}

struct Node {
  name: String,
  host: String,
  slot: Rc<uv::Slot>,
}

/// One send on its way: its encoded commands, how many replies, the hash
/// slot it is for, the redirections followed so far.
struct Req {
  bytes: Rc<Vec<u8>>,
  replies: usize,
  hash_slot: u16,
  redirects: u32,
  done: Done,
}

enum Redirect {
  Moved(u16, String),
  Ask(String),
  Retry,
}

fn redirect(e: &str) -> Option<Redirect> {
  let mut it = e.split_ascii_whitespace();
  match it.next()? {
    "MOVED" => {
      let slot = it.next()?.parse::<u16>().ok()?;
      Some(Redirect::Moved(slot, it.next()?.to_string()))
    }
    "ASK" => {
      it.next()?;
      Some(Redirect::Ask(it.next()?.to_string()))
    }
    "TRYAGAIN" | "CLUSTERDOWN" => Some(Redirect::Retry),
    _ => None,
  }
}

/// `host:port` (or `[v6]:port`); an empty host (a node that does not know
/// its own address) is `default_host`.
fn split_addr(addr: &str, default_host: &str) -> Option<(String, u16)> {
  let (h, p) = addr.rsplit_once(':')?;
  let port = p.parse().ok()?;
  let h = h.trim_start_matches('[').trim_end_matches(']');
  let host = if h.is_empty() || h == "?" {
    default_host
  } else {
    h
  };
  Some((host.to_string(), port))
}

/// Each command of `bytes` behind an `ASKING`.
fn with_asking(bytes: &[u8]) -> Result<(Vec<u8>, usize), String> {
  let mut out = Vec::with_capacity(bytes.len() + 32);
  let mut at = 0;
  let mut n = 0;
  while at < bytes.len() {
    let (_, used) =
      resp::parse(&bytes[at..])?.ok_or_else(|| "redis: a command was cut short".to_string())?;
    resp::encode(&mut out, &[b"ASKING"]);
    out.extend_from_slice(&bytes[at..at + used]);
    at += used;
    n += 1;
  }
  Ok((out, n))
}

/// One cluster endpoint on one JS thread.
pub struct Router {
  core: Rc<Core>,
  key: String,
  seeds: Arc<Seeds>,
  nodes: RefCell<Vec<Node>>,
  /// Hash slot -> index in `nodes` (`NO_NODE`: not known yet).
  map: RefCell<Vec<u16>>,
  /// The node for slots not in the map (a seed that has not failed).
  fallback: Cell<usize>,
  refreshing: Cell<bool>,
  again: Cell<bool>,
  last_refresh: Cell<f64>,
}

impl Router {
  /// This thread's router for the endpoint `key` (made on first use, when
  /// it starts reading the slot map).
  pub fn get(core: &Rc<Core>, key: &str, seeds: &Arc<Seeds>) -> Rc<Router> {
    if let Some(r) = core.router(key) {
      return r;
    }
    let r = Rc::new(Router {
      core: core.clone(),
      key: key.to_string(),
      seeds: seeds.clone(),
      nodes: RefCell::new(Vec::new()),
      map: RefCell::new(vec![NO_NODE; SLOTS]),
      fallback: Cell::new(0),
      refreshing: Cell::new(false),
      again: Cell::new(false),
      last_refresh: Cell::new(f64::NEG_INFINITY),
    });
    core.set_router(key, r.clone());
    r.refresh();
    r
  }

  /// The index of node `host:port` (its connection made on first use).
  fn node(&self, host: &str, port: u16) -> Result<usize, String> {
    let name = format!("{host}:{port}");
    if let Some(i) = self.nodes.borrow().iter().position(|n| n.name == name) {
      return Ok(i);
    }
    let target = self.seeds.target(host, port)?;
    let slot = self
      .core
      .slot(&format!("{}|node|{name}", self.key), || target);
    let mut nodes = self.nodes.borrow_mut();
    nodes.push(Node {
      name,
      host: host.to_string(),
      slot,
    });
    Ok(nodes.len() - 1)
  }

  /// The node serving `hash_slot`, as far as this thread knows.
  fn owner(&self, hash_slot: u16) -> Result<usize, String> {
    let i = self.map.borrow()[hash_slot as usize % SLOTS];
    if i != NO_NODE {
      return Ok(i as usize);
    }
    let seeds = &self.seeds.seeds;
    let (h, p) = &seeds[self.fallback.get() % seeds.len()];
    self.node(h, *p)
  }

  /// Queue commands for `hash_slot` (every key of them in that slot):
  /// `replies` replies, `done` once with them or an error.
  pub fn send(
    self: &Rc<Self>,
    hash_slot: u16,
    encode: &dyn Fn(&mut Vec<u8>),
    replies: usize,
    done: Done,
  ) {
    let mut bytes = Vec::new();
    encode(&mut bytes);
    let req = Req {
      bytes: Rc::new(bytes),
      replies,
      hash_slot,
      redirects: 0,
      done,
    };
    count(|c| c.sent += 1);
    self.dispatch_to_owner(req);
  }

  fn dispatch_to_owner(self: &Rc<Self>, req: Req) {
    match self.owner(req.hash_slot) {
      Ok(n) => self.dispatch(req, n, false),
      Err(e) => (req.done)(Err(HpError::redis(e))),
    }
  }

  fn dispatch(self: &Rc<Self>, req: Req, node: usize, asking: bool) {
    let slot = self.nodes.borrow()[node].slot.clone();
    let (bytes, n) = if asking {
      match with_asking(&req.bytes) {
        Ok((b, n)) => (Rc::new(b), n * 2),
        Err(e) => return (req.done)(Err(HpError::redis(e))),
      }
    } else {
      (req.bytes.clone(), req.replies)
    };
    let me = self.clone();
    self.core.send(
      &slot,
      &|b| b.extend_from_slice(&bytes),
      n,
      Box::new(move |r| me.on_reply(req, node, asking, r)),
    );
  }

  fn on_reply(
    self: &Rc<Self>,
    mut req: Req,
    node: usize,
    asking: bool,
    r: Result<Vec<Reply>, HpError>,
  ) {
    let replies: Vec<Reply> = match r {
      Err(e) => {
        self.node_failed(node);
        return (req.done)(Err(e));
      }
      // Every other reply is an ASKING's +OK.
      Ok(v) if asking => v.into_iter().skip(1).step_by(2).collect(),
      Ok(v) => v,
    };
    let found = replies.iter().find_map(|x| match x {
      Reply::Error(e) => redirect(e).map(|r| (r, e.clone())),
      _ => None,
    });
    let Some((to, text)) = found else {
      return (req.done)(Ok(replies));
    };
    if req.redirects >= MAX_REDIRECTS {
      let e = HpError::redis(format!(
        "redis: cluster slot {} still redirected after {MAX_REDIRECTS} tries (last: {text})",
        req.hash_slot
      ));
      super::debug_log(&e);
      return (req.done)(Err(e));
    }
    req.redirects += 1;
    let from_host = self.nodes.borrow()[node].host.clone();
    match to {
      Redirect::Moved(slot, addr) => {
        count(|c| c.moved += 1);
        let n = split_addr(&addr, &from_host)
          .ok_or_else(|| format!("redis: bad redirection: {text}"))
          .and_then(|(h, p)| self.node(&h, p));
        match n {
          Ok(n) => {
            if (slot as usize) < SLOTS {
              self.map.borrow_mut()[slot as usize] = n as u16;
            }
            self.refresh();
            self.dispatch(req, n, false);
          }
          Err(e) => (req.done)(Err(HpError::redis(e))),
        }
      }
      Redirect::Ask(addr) => {
        count(|c| c.ask += 1);
        let n = split_addr(&addr, &from_host)
          .ok_or_else(|| format!("redis: bad redirection: {text}"))
          .and_then(|(h, p)| self.node(&h, p));
        match n {
          Ok(n) => self.dispatch(req, n, true),
          Err(e) => (req.done)(Err(HpError::redis(e))),
        }
      }
      Redirect::Retry => {
        count(|c| c.retried += 1);
        let me = self.clone();
        let wait = RETRY_DELAY_MS * req.redirects as f64;
        self
          .core
          .after(wait, true, Box::new(move || me.dispatch_to_owner(req)));
      }
    }
  }

  /// A node's connection failed: stop using it for unknown slots, and read
  /// the map again (from another node) in case its slots moved.
  fn node_failed(self: &Rc<Self>, node: usize) {
    let seeds = &self.seeds.seeds;
    let name = self.nodes.borrow()[node].name.clone();
    let f = self.fallback.get() % seeds.len();
    if format!("{}:{}", seeds[f].0, seeds[f].1) == name {
      self.fallback.set(f + 1);
    }
    self.refresh();
  }

  /// Read `CLUSTER SLOTS` again (at most one read at a time, at most one
  /// every [`REFRESH_GAP_MS`]).
  fn refresh(self: &Rc<Self>) {
    if self.refreshing.replace(true) {
      self.again.set(true);
      return;
    }
    let wait = self.last_refresh.get() + REFRESH_GAP_MS - real_ms();
    let me = self.clone();
    if wait > 0.0 {
      self.core.after(
        wait,
        false,
        Box::new(move || me.refresh_from(Rc::new(Vec::new()), 0)),
      );
    } else {
      me.refresh_from(Rc::new(Vec::new()), 0);
    }
  }

  /// Ask the `i`th candidate (known nodes whose breaker is closed, then the
  /// seeds, then the rest); the next one if it fails.
  fn refresh_from(self: &Rc<Self>, cands: Rc<Vec<(String, u16)>>, i: usize) {
    let cands = if i == 0 && cands.is_empty() {
      let mut c: Vec<(String, u16)> = Vec::new();
      let mut push = |hp: (String, u16)| {
        if !c.contains(&hp) {
          c.push(hp);
        }
      };
      let nodes = self.nodes.borrow();
      let up = |n: &Node| n.slot.conn.borrow().target.breaker.is_closed();
      for n in nodes.iter().filter(|n| up(n)) {
        if let Some(hp) = split_addr(&n.name, &n.host) {
          push(hp);
        }
      }
      for s in &self.seeds.seeds {
        push(s.clone());
      }
      for n in nodes.iter() {
        if let Some(hp) = split_addr(&n.name, &n.host) {
          push(hp);
        }
      }
      Rc::new(c)
    } else {
      cands
    };
    let Some((host, port)) = cands.get(i).cloned() else {
      return self.refresh_done();
    };
    let node = match self.node(&host, port) {
      Ok(n) => n,
      Err(_) => return self.refresh_from(cands, i + 1),
    };
    count(|c| c.refreshes += 1);
    let slot = self.nodes.borrow()[node].slot.clone();
    let me = self.clone();
    self.core.send(
      &slot,
      &|b| resp::encode(b, &[b"CLUSTER", b"SLOTS"]),
      1,
      Box::new(move |r| {
        if super::conn::first(r).is_ok_and(|v| me.apply(v, &host)) {
          me.refresh_done()
        } else {
          me.refresh_from(cands, i + 1)
        }
      }),
    );
  }

  fn refresh_done(self: &Rc<Self>) {
    self.refreshing.set(false);
    self.last_refresh.set(real_ms());
    if self.again.replace(false) {
      self.refresh();
    }
  }

  /// Take a `CLUSTER SLOTS` reply as the map: false if it holds none.
  fn apply(&self, v: Value, asked: &str) -> bool {
    let Value::Array(ranges) = v else {
      return false;
    };
    let int = |v: Option<&Value>| match v {
      Some(Value::Int(i)) => Some(*i),
      _ => None,
    };
    let mut map = vec![NO_NODE; SLOTS];
    let mut any = false;
    for r in ranges {
      let Value::Array(parts) = r else { continue };
      let (Some(lo), Some(hi)) = (int(parts.first()), int(parts.get(1))) else {
        continue;
      };
      let Some(Value::Array(node)) = parts.get(2) else {
        continue;
      };
      let host = match node.first() {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => continue,
      };
      let Some(port) = int(node.get(1)) else {
        continue;
      };
      let host = if host.is_empty() || host == "?" {
        asked.to_string()
      } else {
        host
      };
      let Ok(i) = self.node(&host, port as u16) else {
        continue;
      };
      let (lo, hi) = (lo.clamp(0, SLOTS as i64 - 1), hi.clamp(0, SLOTS as i64 - 1));
      for s in lo..=hi {
        map[s as usize] = i as u16;
      }
      any = true;
    }
    if any {
      *self.map.borrow_mut() = map;
    }
    any
  }

  /// Write what every node connection holds now (see [`Core::write_now`]).
  pub fn write_now(&self) {
    let slots: Vec<Rc<uv::Slot>> = self.nodes.borrow().iter().map(|n| n.slot.clone()).collect();
    for s in slots {
      self.core.write_now(&s);
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn redirections_are_read() {
    assert!(
      matches!(redirect("MOVED 3999 127.0.0.1:6381"), Some(Redirect::Moved(3999, a)) if a == "127.0.0.1:6381")
    );
    assert!(
      matches!(redirect("ASK 3999 127.0.0.1:6381"), Some(Redirect::Ask(a)) if a == "127.0.0.1:6381")
    );
    assert!(matches!(
      redirect("TRYAGAIN Multiple keys request during rehashing of slot"),
      Some(Redirect::Retry)
    ));
    assert!(matches!(
      redirect("CLUSTERDOWN The cluster is down"),
      Some(Redirect::Retry)
    ));
    assert!(redirect("NOSCRIPT No matching script").is_none());
    assert!(redirect("ERR wrong number of arguments").is_none());
    assert_eq!(
      split_addr(":7000", "10.0.0.1"),
      Some(("10.0.0.1".into(), 7000))
    );
    assert_eq!(split_addr("[::1]:7000", "x"), Some(("::1".into(), 7000)));
  }

  #[test]
  fn asking_goes_before_each_command() {
    let mut b = Vec::new();
    resp::encode(&mut b, &[b"MGET", b"a", b"b"]);
    resp::encode(&mut b, &[b"PTTL", b"a"]);
    let (out, n) = with_asking(&b).unwrap();
    assert_eq!(n, 2);
    assert_eq!(
      out,
      b"*1\r\n$6\r\nASKING\r\n*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nb\r\n*1\r\n$6\r\nASKING\r\n*2\r\n$4\r\nPTTL\r\n$1\r\na\r\n"
    );
  }
}
