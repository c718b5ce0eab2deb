//! The limit on Redis: one Lua script per algorithm (beside this file),
//! loaded once and re-sent on NOSCRIPT by `crate::redis`. Every check is
//! atomic and takes one round trip, timed by the Redis server's clock. Checks
//! that are waiting together go in one script call (one EVALSHA for up to
//! [`MAX_BATCH`] checks; on a Cluster, one per slot), in order.
//!
//! Key layout (documented in docs/ratelimiter.md):
//! `<keyPrefix>rl:<algorithm>:<limit>:<windowMs>:{<key>}` and, for the
//! exact sliding window, the log beside it at `...:{<key>}:log`. The user key
//! is the hash tag, so one key's state lives in one Cluster slot; limit and
//! window are part of the name so limiters with other settings never share
//! (or misread) state.

use std::sync::Arc;

use redis::{Script, Value};

use super::local::{Decision, Params};
use super::Algo;
use crate::error::{HpError, HpResult};
use crate::redis::Redis;

/// Most checks in one script call.
pub const MAX_BATCH: usize = 128;

macro_rules! script {
  ($file:literal) => {
    concat!(
      include_str!("common.lua"),
      include_str!($file),
      include_str!("footer.lua")
    )
  };
}

fn source(algo: Algo) -> &'static str {
  match algo {
    Algo::SlidingWindow => script!("sliding_window.lua"),
    Algo::SlidingWindowCounter => script!("sliding_window_counter.lua"),
    Algo::FixedWindow => script!("fixed_window.lua"),
    Algo::TokenBucket => script!("token_bucket.lua"),
    Algo::Gcra => script!("gcra.lua"),
  }
}

pub use crate::redis::cluster::slot;

/// A number of a script's reply: an integer, or text (`inf`, fractions).
fn number(v: &Value) -> HpResult<f64> {
  let bad = || HpError::redis(format!("redis: rate limiter script returned {v:?}"));
  match v {
    Value::Int(i) => Ok(*i as f64),
    Value::Double(d) => Ok(*d),
    Value::BulkString(b) => std::str::from_utf8(b)
      .ok()
      .and_then(|s| s.parse().ok())
      .ok_or_else(bad),
    Value::SimpleString(s) => s.parse().map_err(|_| bad()),
    _ => Err(bad()),
  }
}

/// One check of a batch.
pub struct Check<'a> {
  pub key: &'a str,
  pub cost: f64,
  pub consume: bool,
}

pub struct Remote {
  pub redis: Arc<Redis>,
  algo: Algo,
  script: Script,
  source: &'static str,
  /// `<keyPrefix>rl:<algorithm>:<limit>:<windowMs>:`
  base: String,
  limit: String,
  window: String,
}

impl Remote {
  pub fn new(redis: Arc<Redis>, algo: Algo, p: Params) -> Remote {
    let base = redis.key(&format!("rl:{}:{}:{}:", algo.name(), p.limit, p.window));
    Remote {
      redis,
      algo,
      script: Script::new(source(algo)),
      source: source(algo),
      base,
      limit: p.limit.to_string(),
      window: p.window.to_string(),
    }
  }

  pub fn is_cluster(&self) -> bool {
    self.redis.is_cluster()
  }

  /// The Redis keys holding `key`'s state, appended to `out`.
  pub fn keys_into(&self, key: &str, out: &mut Vec<String>) {
    let mut k = String::with_capacity(self.base.len() + key.len() + 2);
    k.push_str(&self.base);
    // The user key is the hash tag, escaped so that `{`/`}` in it can
    // never split its keys across slots.
    crate::redis::cluster::push_tag(&mut k, key);
    if self.algo == Algo::SlidingWindow {
      let log = format!("{k}:log");
      out.push(k);
      out.push(log);
    } else {
      out.push(k);
    }
  }

  pub fn keys(&self, key: &str) -> Vec<String> {
    let mut v = Vec::with_capacity(2);
    self.keys_into(key, &mut v);
    v
  }

  /// The Cluster slot of `key`'s state (all its keys share it).
  pub fn slot_of(&self, key: &str) -> u16 {
    slot(self.keys(key)[0].as_bytes())
  }

  /// The keys and arguments of one script call for `checks`, in order.
  pub fn call_args(&self, checks: &[Check<'_>]) -> (Vec<String>, Vec<String>) {
    let per = if self.algo == Algo::SlidingWindow {
      2
    } else {
      1
    };
    let mut keys = Vec::with_capacity(checks.len() * per);
    let mut args = Vec::with_capacity(3 + 2 * checks.len());
    args.push(self.limit.clone());
    args.push(self.window.clone());
    args.push(checks.len().to_string());
    for c in checks {
      self.keys_into(c.key, &mut keys);
      args.push(c.cost.to_string());
      args.push(if c.consume { "1" } else { "0" }.to_string());
    }
    (keys, args)
  }

  /// One script call, RESP-encoded for the JS-thread connection: EVALSHA,
  /// or EVAL with the source (`full`, after NOSCRIPT).
  pub fn encode_call(&self, keys: &[String], args: &[String], full: bool, buf: &mut Vec<u8>) {
    let n = keys.len().to_string();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
    if full {
      parts.push(b"EVAL");
      parts.push(self.source.as_bytes());
    } else {
      parts.push(b"EVALSHA");
      parts.push(self.script.get_hash().as_bytes());
    }
    parts.push(n.as_bytes());
    parts.extend(keys.iter().map(|k| k.as_bytes()));
    parts.extend(args.iter().map(|a| a.as_bytes()));
    crate::redis::resp::encode(buf, &parts);
  }

  /// The decisions in a script's reply for `n` checks.
  pub fn decisions(&self, out: Vec<Value>, n: usize) -> HpResult<Vec<Decision>> {
    if out.len() != 4 * n {
      return Err(HpError::redis(format!(
        "redis: rate limiter script returned {} values for {} checks",
        out.len(),
        n
      )));
    }
    out
      .chunks_exact(4)
      .map(|r| {
        Ok(Decision::new(
          number(&r[0])? == 1.0,
          number(&r[1])?,
          number(&r[2])?,
          number(&r[3])?,
        ))
      })
      .collect()
  }

  /// Run `checks` (all in one slot on a Cluster) in one script call, in order.
  pub async fn check_many(&self, checks: &[Check<'_>]) -> HpResult<Vec<Decision>> {
    let (keys, args) = self.call_args(checks);
    let out: Vec<Value> = self.redis.eval(&self.script, &keys, &args).await?;
    self.decisions(out, checks.len())
  }

  #[cfg(test)]
  pub async fn check(&self, key: &str, cost: f64, consume: bool) -> HpResult<Decision> {
    let mut v = self.check_many(&[Check { key, cost, consume }]).await?;
    Ok(v.pop().expect("one decision"))
  }

  pub async fn reset(&self, key: &str) -> HpResult<()> {
    let mut cmd = redis::cmd("DEL");
    for k in self.keys(key) {
      cmd.arg(k);
    }
    let _: i64 = self.redis.query(&cmd).await?;
    Ok(())
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::redis::{RedisConfig, RedisOptions};

  fn remote(url: &str, algo: Algo, limit: f64, window: f64) -> Remote {
    let cfg = RedisConfig::from_options(&RedisOptions {
      url: Some(url.to_string()),
      key_prefix: Some(format!("hotpath-test-{}:", rand::random::<u32>())),
      ..Default::default()
    })
    .unwrap();
    Remote::new(Redis::new(cfg).unwrap(), algo, Params { limit, window })
  }

  #[test]
  fn cluster_slots_follow_the_hash_tag() {
    let r = remote("redis://127.0.0.1:1", Algo::SlidingWindow, 10.0, 1000.0);
    for k in ["user:1", "a}b", "x{y}z", "}x", "{", "}{"] {
      let ks = r.keys(k);
      assert_eq!(
        r.slot_of(k),
        slot(ks[1].as_bytes()),
        "{k}: the log is in the same slot"
      );
    }
  }

  #[test]
  fn keys_share_one_hash_tag() {
    let r = remote("redis://127.0.0.1:1", Algo::SlidingWindow, 10.0, 1000.0);
    let ks = r.keys("user:1");
    assert_eq!(ks.len(), 2);
    assert!(
      ks[0].ends_with("rl:sliding-window:10:1000:{user:1}"),
      "{}",
      ks[0]
    );
    assert_eq!(ks[1], format!("{}:log", ks[0]));
    let r = remote("redis://127.0.0.1:1", Algo::Gcra, 2.5, 60000.0);
    assert!(r.keys("k")[0].ends_with("rl:gcra:2.5:60000:{k}"));
  }

  fn redis_url() -> Option<String> {
    match std::env::var("REDIS_URL") {
      Ok(u) => Some(u),
      Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
        panic!("REDIS_URL must be set in CI")
      }
      Err(_) => {
        eprintln!("SKIP rate limiter Redis script tests: REDIS_URL is not set");
        None
      }
    }
  }

  /// Each script admits `limit` units, refuses the next with a retry-after
  /// within the window, and peeks without consuming.
  #[test]
  fn every_script_admits_its_limit_on_a_real_redis() {
    let Some(url) = redis_url() else { return };
    crate::runtime::handle().block_on(async {
      for algo in [
        Algo::SlidingWindow,
        Algo::SlidingWindowCounter,
        Algo::FixedWindow,
        Algo::TokenBucket,
        Algo::Gcra,
      ] {
        let r = remote(&url, algo, 5.0, 60_000.0);
        let peek = r.check("k", 1.0, false).await.unwrap();
        assert!(peek.allowed && peek.remaining == 5.0, "{algo:?} {peek:?}");
        for i in 0..5 {
          let d = r.check("k", 1.0, true).await.unwrap();
          assert!(d.allowed, "{algo:?} #{i}: {d:?}");
          assert_eq!(d.remaining, 4.0 - i as f64, "{algo:?}");
        }
        let d = r.check("k", 1.0, true).await.unwrap();
        assert!(!d.allowed, "{algo:?}");
        // The counter may need the next window and then some: up to two.
        assert!(
          d.retry_after > 0.0 && d.retry_after <= 120_000.0,
          "{algo:?} {d:?}"
        );
        assert!(d.reset >= d.retry_after, "{algo:?} {d:?}");
        let never = r.check("k", 6.0, true).await.unwrap();
        assert_eq!(never.retry_after, f64::INFINITY);
        r.reset("k").await.unwrap();
        assert!(
          r.check("k", 5.0, true).await.unwrap().allowed,
          "{algo:?} after reset"
        );
        r.reset("k").await.unwrap();
      }
    });
  }

  /// Many checks in one script call run in order, each atomically.
  #[test]
  fn one_call_checks_many_keys_in_order() {
    let Some(url) = redis_url() else { return };
    crate::runtime::handle().block_on(async {
      for algo in [Algo::SlidingWindow, Algo::FixedWindow, Algo::Gcra] {
        let r = remote(&url, algo, 2.0, 60_000.0);
        let checks: Vec<Check> = ["a", "b", "a", "a", "b", "c"]
          .iter()
          .map(|k| Check {
            key: k,
            cost: 1.0,
            consume: true,
          })
          .collect();
        let ds = r.check_many(&checks).await.unwrap();
        let allowed: Vec<bool> = ds.iter().map(|d| d.allowed).collect();
        assert_eq!(
          allowed,
          vec![true, true, true, false, true, true],
          "{algo:?}"
        );
        assert_eq!(ds[2].remaining, 0.0);
        for k in ["a", "b", "c"] {
          r.reset(k).await.unwrap();
        }
      }
    });
  }

  #[test]
  fn sliding_window_script_frees_the_oldest_first() {
    let Some(url) = redis_url() else { return };
    crate::runtime::handle().block_on(async {
      let r = remote(&url, Algo::SlidingWindow, 3.0, 300.0);
      assert!(r.check("k", 1.0, true).await.unwrap().allowed);
      tokio::time::sleep(std::time::Duration::from_millis(100)).await;
      assert!(r.check("k", 2.0, true).await.unwrap().allowed);
      let d = r.check("k", 1.0, true).await.unwrap();
      assert!(!d.allowed);
      // The first unit leaves ~300 ms after it came, ~200 ms from now.
      assert!(d.retry_after > 100.0 && d.retry_after <= 200.0, "{d:?}");
      tokio::time::sleep(std::time::Duration::from_millis(d.retry_after as u64 + 5)).await;
      assert!(r.check("k", 1.0, true).await.unwrap().allowed);
      assert!(!r.check("k", 1.0, true).await.unwrap().allowed);
      r.reset("k").await.unwrap();
    });
  }

  /// With fractional costs the log holds at most ceil(limit) entries: past
  /// it the newest entry absorbs the check (RPUSH's reply is the length).
  #[test]
  fn sliding_window_log_stays_bounded_with_fractional_costs() {
    let Some(url) = redis_url() else { return };
    crate::runtime::handle().block_on(async {
      let r = remote(&url, Algo::SlidingWindow, 2.0, 60_000.0);
      r.reset("f").await.unwrap();
      let mut admitted = 0.0;
      for _ in 0..6 {
        let d = r.check("f", 0.25, true).await.unwrap();
        assert!(d.allowed, "{d:?}");
        admitted += 0.25;
        assert_eq!(d.remaining, (2.0f64 - admitted).floor());
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
      }
      let log = r.keys("f")[1].clone();
      let entries: Vec<String> = r
        .redis
        .query(redis::cmd("LRANGE").arg(&log).arg(0).arg(-1))
        .await
        .unwrap();
      assert_eq!(entries.len(), 2, "{entries:?}");
      let sum: f64 = entries
        .iter()
        .map(|e| e.split(' ').nth(1).unwrap().parse::<f64>().unwrap())
        .sum();
      assert_eq!(sum, 1.5);
      assert!(r.check("f", 0.5, true).await.unwrap().allowed);
      assert!(!r.check("f", 0.25, true).await.unwrap().allowed);
      r.reset("f").await.unwrap();
    });
  }

  /// The counter's hash expires past the end of the window after its last
  /// write: set by a window's first write, not moved by later ones.
  #[test]
  fn sliding_window_counter_sets_its_expiry_once_per_window() {
    let Some(url) = redis_url() else { return };
    crate::runtime::handle().block_on(async {
      let window = 60_000.0;
      let r = remote(&url, Algo::SlidingWindowCounter, 100.0, window);
      r.reset("e").await.unwrap();
      let k = r.keys("e")[0].clone();
      let pttl = || async {
        let t: i64 = r.redis.query(redis::cmd("PTTL").arg(&k)).await.unwrap();
        t
      };
      let idx = || async {
        let i: String = r
          .redis
          .query(redis::cmd("HGET").arg(&k).arg("i"))
          .await
          .unwrap();
        i
      };
      assert!(r.check("e", 1.0, true).await.unwrap().allowed);
      let first = pttl().await;
      let w1 = idx().await;
      // Past the end of the next window (at most 2 windows away), and more
      // than one window away only if less than a window has passed.
      assert!(first > 0 && first <= 2 * window as i64 + 1, "{first}");
      tokio::time::sleep(std::time::Duration::from_millis(20)).await;
      assert!(r.check("e", 1.0, true).await.unwrap().allowed);
      let second = pttl().await;
      assert!(second > 0, "{second}");
      if idx().await == w1 {
        // Same window (a new one would rightly move it on).
        assert!(second < first, "{first} then {second}");
      }
      r.reset("e").await.unwrap();
    });
  }

  /// The sliding window's state key, decoded: sum, oldest (time, cost),
  /// newest (time, cost), length, the log's expiry (7 little-endian f64).
  async fn sliding_state(r: &Remote, key: &str) -> Option<[f64; 7]> {
    let k = r.keys(key)[0].clone();
    let raw: Option<Vec<u8>> = r.redis.query(redis::cmd("GET").arg(&k)).await.unwrap();
    let raw = raw?;
    assert_eq!(raw.len(), 56, "{raw:?}");
    let mut out = [0.0; 7];
    for (i, o) in out.iter_mut().enumerate() {
      *o = f64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap());
    }
    Some(out)
  }

  async fn pttl(r: &Remote, k: &str) -> i64 {
    r.redis.query(redis::cmd("PTTL").arg(k)).await.unwrap()
  }

  /// A steady flow costs a GET, an RPUSH and a SET per admission: the
  /// log's PEXPIRE is sent only when the log would expire before the state
  /// key, and then a window past it.
  #[test]
  fn sliding_window_moves_the_logs_expiry_once_per_window() {
    let Some(url) = redis_url() else { return };
    crate::runtime::handle().block_on(async {
      let window = 60_000.0;
      let r = remote(&url, Algo::SlidingWindow, 100.0, window);
      let ks = r.keys("x");
      assert!(r.check("x", 1.0, true).await.unwrap().allowed);
      let (state, log) = (pttl(&r, &ks[0]).await, pttl(&r, &ks[1]).await);
      assert!(state > 0 && state <= window as i64 + 1, "{state}");
      assert!(log > state && log <= 2 * window as i64 + 1, "{state} {log}");
      tokio::time::sleep(std::time::Duration::from_millis(20)).await;
      assert!(r.check("x", 1.0, true).await.unwrap().allowed);
      let (state2, log2) = (pttl(&r, &ks[0]).await, pttl(&r, &ks[1]).await);
      // The state key moved on with the newest entry; the log did not.
      assert!(state2 > 0 && log2 > state2, "{state2} {log2}");
      assert!(log2 < log, "the log's expiry moved: {log} then {log2}");
      r.reset("x").await.unwrap();
    });
  }

  /// The state key agrees with the log after every check of a random run
  /// (fixed seed) with fractional costs, peeks, denials and entries that
  /// leave a short window while it runs.
  #[test]
  fn sliding_window_state_matches_its_log_over_a_random_run() {
    let Some(url) = redis_url() else { return };
    crate::runtime::handle().block_on(async {
      let r = remote(&url, Algo::SlidingWindow, 4.0, 100.0);
      let ks = r.keys("k");
      let mut seed: u64 = 0x5EED_1234_ABCD_0042;
      let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
      };
      let (mut allowed, mut denied, mut absent) = (0, 0, 0);
      for step in 0..300 {
        let cost = [0.25, 0.5, 1.0, 1.0, 1.0, 2.0, 3.0][(next() % 7) as usize];
        let consume = next() % 5 != 0;
        let d = r.check("k", cost, consume).await.unwrap();
        if d.allowed {
          allowed += 1
        } else {
          denied += 1
        }
        // Expiry only moves one way: read the TTLs first, then the log, then
        // the state; if the state is there, it was there for the others.
        let (state, log) = (pttl(&r, &ks[0]).await, pttl(&r, &ks[1]).await);
        let entries: Vec<String> = r
          .redis
          .query(redis::cmd("LRANGE").arg(&ks[1]).arg(0).arg(-1))
          .await
          .unwrap();
        let parsed: Vec<(f64, f64)> = entries
          .iter()
          .map(|e| {
            let (t, c) = e.split_once(' ').unwrap();
            (t.parse().unwrap(), c.parse().unwrap())
          })
          .collect();
        match sliding_state(&r, "k").await {
          // No state: the newest entry has left the window (a leftover log
          // may stay until it expires).
          None => absent += 1,
          Some([sum, ot, oc, bt, bc, len, lexp]) => {
            let total: f64 = parsed.iter().map(|e| e.1).sum();
            assert!(
              (sum - total).abs() < 1e-9,
              "{step}: sum {sum} log {parsed:?}"
            );
            assert_eq!(len as usize, parsed.len(), "{step}: {parsed:?}");
            assert_eq!((ot, oc), parsed[0], "{step}");
            assert_eq!((bt, bc), *parsed.last().unwrap(), "{step}");
            assert!(
              parsed.windows(2).all(|w| w[0].0 <= w[1].0),
              "{step}: {parsed:?}"
            );
            assert!(
              parsed.len() <= 4,
              "{step}: at most ceil(limit) entries: {parsed:?}"
            );
            assert!(sum <= 4.0 + 1e-6, "{step}: over the limit: {sum}");
            assert!(
              d.remaining == (4.0 - sum + 1e-6).floor().max(0.0),
              "{step}: {d:?} sum {sum}"
            );
            assert!(state > 0 && log >= state, "{step}: state {state} log {log}");
            assert!(lexp > bt, "{step}");
          }
        }
        // Now and then the whole window passes (the state key expires; the
        // log stays a while: a later check finds it left over).
        let pause = match next() % 30 {
          0 => 110,
          1..=10 => next() % 40,
          _ => 0,
        };
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
      }
      assert!(
        allowed > 50 && denied > 50,
        "{allowed} allowed, {denied} denied"
      );
      eprintln!("{allowed} allowed, {denied} denied, no state {absent} times");
      r.reset("k").await.unwrap();
    });
  }

  /// A log left without its state key (it may outlive it by up to a
  /// window) holds only entries that have left the window: it is dropped,
  /// not counted. And the older layout (the state key holding the sum as
  /// text) is still read.
  #[test]
  fn sliding_window_reads_leftover_logs_and_the_older_layout() {
    let Some(url) = redis_url() else { return };
    crate::runtime::handle().block_on(async {
      let r = remote(&url, Algo::SlidingWindow, 5.0, 60_000.0);
      let ks = r.keys("k");
      let old = |t: f64| format!("{} 1", t);
      let _: i64 = r
        .redis
        .query(
          redis::cmd("RPUSH")
            .arg(&ks[1])
            .arg(old(1.0))
            .arg(old(2.0))
            .arg(old(3.0)),
        )
        .await
        .unwrap();
      let d = r.check("k", 1.0, true).await.unwrap();
      assert!(d.allowed && d.remaining == 4.0, "{d:?}");
      let len: i64 = r.redis.query(redis::cmd("LLEN").arg(&ks[1])).await.unwrap();
      assert_eq!(len, 1);
      r.reset("k").await.unwrap();
      // The older layout: two live entries and their sum as text.
      let t: Vec<String> = r.redis.query(&redis::cmd("TIME")).await.unwrap();
      let now = t[0].parse::<f64>().unwrap() * 1000.0 + t[1].parse::<f64>().unwrap() / 1000.0;
      let _: i64 = r
        .redis
        .query(
          redis::cmd("RPUSH")
            .arg(&ks[1])
            .arg(old(now - 10.0))
            .arg(format!("{} 2", now - 5.0)),
        )
        .await
        .unwrap();
      let _: () = r
        .redis
        .query(redis::cmd("SET").arg(&ks[0]).arg("3"))
        .await
        .unwrap();
      let d = r.check("k", 1.0, true).await.unwrap();
      assert!(d.allowed && d.remaining == 1.0, "{d:?}");
      let s = sliding_state(&r, "k").await.expect("the new layout");
      assert_eq!((s[0], s[2], s[5]), (4.0, 1.0, 3.0), "{s:?}");
      assert!(!r.check("k", 2.0, true).await.unwrap().allowed);
      r.reset("k").await.unwrap();
    });
  }
}
