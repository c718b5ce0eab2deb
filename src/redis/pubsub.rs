//! One pub/sub connection per endpoint, shared by every listener (every
//! cache's invalidation channel) in the process. It runs on the Tokio
//! runtime (messages are applied to shared state, not to one JS thread),
//! sends a PING every [`PING_EVERY`] to notice a dead connection, reconnects
//! with exponential backoff, and on a Cluster tries the seeds in turn, so
//! losing the first seed does not stop invalidation (PUBLISH reaches every
//! node of a cluster).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{cluster, Endpoint};
use crate::error::HpError;

/// How often an idle subscription is checked with PING.
pub const PING_EVERY: Duration = Duration::from_millis(1000);

type MessageFn = Box<dyn Fn(&[u8]) + Send + Sync>;
type ConnectFn = Box<dyn Fn(bool) + Send + Sync>;
type AliveFn = Box<dyn Fn() -> bool + Send + Sync>;

pub struct Listener {
  on_message: MessageFn,
  on_connect: ConnectFn,
  alive: AliveFn,
  /// Subscribed at least once (a later subscribe is a reconnect).
  seen: AtomicBool,
}

impl Listener {
  pub fn new<M, C, A>(on_message: M, on_connect: C, alive: A) -> Arc<Listener>
  where
    M: Fn(&[u8]) + Send + Sync + 'static,
    C: Fn(bool) + Send + Sync + 'static,
    A: Fn() -> bool + Send + Sync + 'static,
  {
    Arc::new(Listener {
      on_message: Box::new(on_message),
      on_connect: Box::new(on_connect),
      alive: Box::new(alive),
      seen: AtomicBool::new(false),
    })
  }
}

pub struct Hub {
  listeners: Mutex<HashMap<String, Vec<Arc<Listener>>>>,
  /// New channels for the running connection to subscribe.
  ctl: mpsc::UnboundedSender<String>,
}

impl Hub {
  /// Add `l` on `channel`, starting the endpoint's subscriber if needed.
  pub fn listen(ep: &Arc<Endpoint>, channel: String, l: Arc<Listener>) {
    let mut slot = ep.hub.lock();
    if let Some(hub) = slot.upgrade() {
      let new_channel = {
        let mut ls = hub.listeners.lock();
        let v = ls.entry(channel.clone()).or_default();
        v.push(l);
        v.len() == 1
      };
      // A new channel to subscribe, or (empty) a listener to tell it is
      // connected already.
      let _ = hub
        .ctl
        .send(if new_channel { channel } else { String::new() });
      return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let hub = Arc::new(Hub {
      listeners: Mutex::new(HashMap::from([(channel, vec![l])])),
      ctl: tx,
    });
    *slot = Arc::downgrade(&hub);
    crate::runtime::spawn(run(ep.clone(), hub, rx));
  }

  fn prune(&self) -> bool {
    let mut ls = self.listeners.lock();
    for v in ls.values_mut() {
      v.retain(|l| (l.alive)());
    }
    ls.retain(|_, v| !v.is_empty());
    !ls.is_empty()
  }

  fn channels(&self) -> Vec<String> {
    self.listeners.lock().keys().cloned().collect()
  }

  /// (Re)subscribed: every listener is told, `true` for those that were
  /// subscribed before (they may have missed messages).
  fn connected_all(&self) {
    let ls: Vec<Arc<Listener>> = self.listeners.lock().values().flatten().cloned().collect();
    for l in ls {
      (l.on_connect)(l.seen.swap(true, Ordering::Relaxed));
    }
  }

  fn connected_new(&self) {
    let fresh: Vec<Arc<Listener>> = self
      .listeners
      .lock()
      .values()
      .flatten()
      .filter(|l| !l.seen.load(Ordering::Relaxed))
      .cloned()
      .collect();
    for l in fresh {
      if !l.seen.swap(true, Ordering::Relaxed) {
        (l.on_connect)(false);
      }
    }
  }

  fn deliver(&self, channel: &str, payload: &[u8]) {
    let ls = self.listeners.lock().get(channel).cloned();
    for l in ls.into_iter().flatten() {
      if (l.alive)() {
        (l.on_message)(payload);
      }
    }
  }
}

/// The URLs to try, in turn: the URL, or every seed.
fn candidates(ep: &Endpoint) -> Vec<redis::ConnectionInfo> {
  if ep.cfg.cluster.is_empty() {
    return redis::IntoConnectionInfo::into_connection_info(ep.cfg.url.as_str())
      .into_iter()
      .collect();
  }
  cluster::seed_infos(&ep.cfg).unwrap_or_default()
}

/// Nobody listens any more: forget the hub (and so the connection). Checked
/// under the endpoint's lock, so a listener joining meanwhile is not lost.
fn retire(ep: &Endpoint, hub: &Arc<Hub>) -> bool {
  let mut slot = ep.hub.lock();
  if hub.prune() {
    return false;
  }
  *slot = Weak::new();
  true
}

async fn run(ep: Arc<Endpoint>, hub: Arc<Hub>, mut ctl: mpsc::UnboundedReceiver<String>) {
  let mut backoff = Duration::from_millis(50);
  let mut next = 0usize;
  loop {
    if retire(&ep, &hub) {
      return;
    }
    while ctl.try_recv().is_ok() {}
    let seeds = candidates(&ep);
    let mut got = None;
    for i in 0..seeds.len() {
      let info = seeds[(next + i) % seeds.len()].clone();
      let attempt = async {
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        let ps = tokio::time::timeout(ep.cfg.connect_timeout, client.get_async_pubsub())
          .await
          .map_err(|_| "pubsub connect timed out".to_string())?
          .map_err(|e| e.to_string())?;
        Ok::<_, String>(ps)
      };
      match attempt.await {
        Ok(ps) => {
          next = (next + i) % seeds.len();
          got = Some(ps);
          break;
        }
        Err(e) => {
          crate::redis::debug_log(&HpError::redis(
            ep.cfg.scrub(&format!("redis: pub/sub: {e}")),
          ));
        }
      }
    }
    let Some(ps) = got else {
      next += 1;
      tokio::time::sleep(backoff).await;
      backoff = (backoff * 2).min(Duration::from_secs(2));
      continue;
    };
    let (mut sink, mut stream) = ps.split();
    let mut ok = true;
    for ch in hub.channels() {
      let r = tokio::time::timeout(ep.cfg.command_timeout, sink.subscribe(&ch)).await;
      if !matches!(r, Ok(Ok(()))) {
        ok = false;
        break;
      }
    }
    if !ok {
      next += 1;
      tokio::time::sleep(backoff).await;
      backoff = (backoff * 2).min(Duration::from_secs(2));
      continue;
    }
    backoff = Duration::from_millis(50);
    hub.connected_all();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
      tokio::select! {
        msg = stream.next() => match msg {
          Some(m) => {
            hub.deliver(m.get_channel_name(), m.get_payload_bytes());
          }
          None => break,
        },
        ch = ctl.recv() => {
          match ch {
            Some(ch) if !ch.is_empty() => {
              let r = tokio::time::timeout(ep.cfg.command_timeout, sink.subscribe(&ch)).await;
              if !matches!(r, Ok(Ok(()))) {
                break;
              }
            }
            Some(_) => {}
            None => return,
          }
          // Listeners that joined since are connected now.
          hub.connected_new();
        },
        _ = ping.tick() => {
          if retire(&ep, &hub) {
            return;
          }
          let r = tokio::time::timeout(ep.cfg.command_timeout, sink.ping::<redis::Value>()).await;
          if !matches!(r, Ok(Ok(_))) {
            crate::redis::debug_log(&HpError::redis("redis: pub/sub PING failed: reconnecting"));
            break;
          }
        }
      }
    }
  }
}
