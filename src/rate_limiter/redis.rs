//! The limit on Redis: one Lua script per algorithm (beside this file),
//! loaded once and re-sent on NOSCRIPT by `crate::redis`. Every check is one
//! atomic round trip (EVALSHA) and reads time from the Redis server.
//!
//! Key layout (documented in docs/ratelimiter.md):
//! `<keyPrefix>rl:<algorithm>:<limit>:<windowMs>:{<key>}` and, for the
//! exact sliding window, the log beside it at `...:{<key>}:log`. The user key
//! is the hash tag, so one key's state lives in one Cluster slot; limit and
//! window are part of the name so limiters with other settings never share
//! (or misread) state.

use std::sync::Arc;

use redis::Script;

use super::local::{Decision, Params};
use super::Algo;
use crate::error::{HpError, HpResult};
use crate::redis::Redis;

macro_rules! script {
  ($file:literal) => {
    concat!(include_str!("common.lua"), include_str!($file))
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

pub struct Remote {
  pub redis: Arc<Redis>,
  algo: Algo,
  script: Script,
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
      base,
      limit: p.limit.to_string(),
      window: p.window.to_string(),
    }
  }

  /// The Redis keys holding `key`'s state.
  pub fn keys(&self, key: &str) -> Vec<String> {
    let mut k = String::with_capacity(self.base.len() + key.len() + 2);
    k.push_str(&self.base);
    k.push('{');
    k.push_str(key);
    k.push('}');
    if self.algo == Algo::SlidingWindow {
      let log = format!("{k}:log");
      vec![k, log]
    } else {
      vec![k]
    }
  }

  pub async fn check(&self, key: &str, cost: f64, consume: bool) -> HpResult<Decision> {
    let args = [
      self.limit.clone(),
      self.window.clone(),
      cost.to_string(),
      if consume { "1" } else { "0" }.to_string(),
    ];
    let (allowed, remaining, retry, reset): (i64, String, String, String) = self
      .redis
      .eval(&self.script, &self.keys(key), &args)
      .await?;
    let n = |s: &str| -> HpResult<f64> {
      s.parse::<f64>()
        .map_err(|_| HpError::redis(format!("redis: rate limiter script returned {s:?}")))
    };
    Ok(Decision::new(
      allowed == 1,
      n(&remaining)?,
      n(&retry)?,
      n(&reset)?,
    ))
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
      url: url.to_string(),
      key_prefix: Some(format!("hotpath-test-{}:", rand::random::<u32>())),
      ..Default::default()
    })
    .unwrap();
    Remote::new(Redis::new(cfg).unwrap(), algo, Params { limit, window })
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
        assert!(
          d.retry_after > 0.0 && d.retry_after <= 60_000.0,
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
}
