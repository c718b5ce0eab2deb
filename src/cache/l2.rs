//! L2: the cache's keys on Redis, through the shared Redis layer.
//!
//! Keys: `{keyPrefix}c:{key}` for values, `{keyPrefix}t:{tag}` for the set of
//! keys written with a tag, and the channel `{keyPrefix}c:__inv` for
//! invalidation messages.

use std::sync::Arc;

use redis::Value;

use super::codec::Val;
use super::l1::glob_escape;
use crate::error::HpResult;
use crate::redis::resp::Reply;
use crate::redis::Redis;

pub struct L2 {
  pub redis: Arc<Redis>,
}

pub struct Write {
  pub key: String,
  pub val: Val,
  pub ttl_ms: Option<u64>,
  pub tags: Option<Box<[String]>>,
}

impl L2 {
  pub fn value_key(&self, key: &str) -> String {
    self.redis.key(&format!("c:{key}"))
  }
  fn tag_key(&self, tag: &str) -> String {
    self.redis.key(&format!("t:{tag}"))
  }
  pub fn channel(&self) -> String {
    self.redis.key("c:__inv")
  }
  fn strip<'a>(&self, full: &'a str) -> &'a str {
    let p = self.redis.cfg.key_prefix.len() + 2;
    &full[p.min(full.len())..]
  }

  /// GET and PTTL of `key` for this thread's connection (one send, two
  /// replies); [`L2::got`] reads the replies.
  pub fn encode_get(&self, key: &str, buf: &mut Vec<u8>) {
    let k = self.value_key(key);
    crate::redis::resp::encode(buf, &[b"GET", k.as_bytes()]);
    crate::redis::resp::encode(buf, &[b"PTTL", k.as_bytes()]);
  }

  /// The value and remaining TTL from the replies of [`L2::encode_get`].
  pub fn got(replies: HpResult<Vec<Reply>>) -> HpResult<Option<(Val, Option<u64>)>> {
    let mut v = crate::redis::uv::values(replies)?.into_iter();
    let (raw, pttl) = (v.next(), v.next());
    let pttl = match pttl {
      Some(Value::Int(n)) => n,
      _ => -1,
    };
    match raw {
      Some(Value::BulkString(b)) => Ok(Some((
        Val::decode(&b)?,
        if pttl > 0 { Some(pttl as u64) } else { None },
      ))),
      Some(Value::Nil) | None => Ok(None),
      Some(other) => Err(crate::error::HpError::redis(format!(
        "redis: GET returned {other:?}"
      ))),
    }
  }

  pub async fn get(&self, key: &str) -> HpResult<Option<(Val, Option<u64>)>> {
    let mut p = redis::pipe();
    p.cmd("GET")
      .arg(self.value_key(key))
      .cmd("PTTL")
      .arg(self.value_key(key));
    let (raw, pttl): (Option<Vec<u8>>, i64) = self.redis.pipe(&p).await?;
    match raw {
      None => Ok(None),
      Some(b) => Ok(Some((
        Val::decode(&b)?,
        if pttl > 0 { Some(pttl as u64) } else { None },
      ))),
    }
  }

  /// One round trip (MGET) for all keys.
  pub async fn get_many(&self, keys: &[String]) -> HpResult<Vec<Option<Val>>> {
    if keys.is_empty() {
      return Ok(Vec::new());
    }
    let full: Vec<String> = keys.iter().map(|k| self.value_key(k)).collect();
    let raws: Vec<Option<Vec<u8>>> = if self.redis.is_cluster() {
      // Keys hash to different slots: GETs sent concurrently, routed per node.
      let cmds: Vec<redis::Cmd> = full
        .iter()
        .map(|k| redis::cmd("GET").arg(k).to_owned())
        .collect();
      self.redis.many(&cmds).await?
    } else {
      self.redis.query(redis::cmd("MGET").arg(&full)).await?
    };
    raws
      .into_iter()
      .map(|r| r.map(|b| Val::decode(&b)).transpose())
      .collect()
  }

  /// One pipeline for all writes.
  pub async fn set_many(&self, writes: &[Write]) -> HpResult<()> {
    if writes.is_empty() {
      return Ok(());
    }
    let mut cmds = Vec::with_capacity(writes.len());
    for w in writes {
      let mut c = redis::cmd("SET");
      c.arg(self.value_key(&w.key)).arg(w.val.encode());
      if let Some(ttl) = w.ttl_ms {
        c.arg("PX").arg(ttl.max(1));
      }
      cmds.push(c);
      if let Some(tags) = &w.tags {
        for t in tags.iter() {
          cmds.push(
            redis::cmd("SADD")
              .arg(self.tag_key(t))
              .arg(&w.key)
              .to_owned(),
          );
        }
      }
    }
    let _: Vec<Value> = self.redis.many(&cmds).await?;
    Ok(())
  }

  /// DEL each key; which of them existed. One pipeline (or, on a Cluster,
  /// concurrent commands).
  pub async fn del_many(&self, keys: &[String]) -> HpResult<Vec<bool>> {
    if keys.is_empty() {
      return Ok(Vec::new());
    }
    let cmds: Vec<redis::Cmd> = keys
      .iter()
      .map(|k| redis::cmd("DEL").arg(self.value_key(k)).to_owned())
      .collect();
    let n: Vec<u64> = self.redis.many(&cmds).await?;
    Ok(n.into_iter().map(|x| x > 0).collect())
  }

  pub async fn pttl(&self, key: &str) -> HpResult<Option<i64>> {
    let v: i64 = self
      .redis
      .query(redis::cmd("PTTL").arg(self.value_key(key)))
      .await?;
    Ok(match v {
      -2 => None,
      -1 => Some(-1),
      n => Some(n),
    })
  }

  /// SCAN (never KEYS) for this cache's keys matching `glob`, deleting each
  /// page. Returns the keys deleted (without prefix).
  pub async fn del_pattern(&self, glob: &str) -> HpResult<Vec<String>> {
    let pattern = format!("{}{}", glob_escape(&self.value_key("")), glob);
    let mut found: Vec<String> = Vec::new();
    self
      .redis
      .scan_each(&pattern, |keys| {
        found.extend(keys);
        Ok(())
      })
      .await?;
    let stripped: Vec<String> = found.iter().map(|k| self.strip(k).to_string()).collect();
    let mut deleted = Vec::new();
    for chunk in stripped.chunks(500) {
      for (k, existed) in chunk.iter().zip(self.del_many(chunk).await?) {
        if existed {
          deleted.push(k.clone());
        }
      }
    }
    Ok(deleted)
  }

  /// Every key written with `tag`, deleted with the tag's set.
  pub async fn del_tag(&self, tag: &str) -> HpResult<(Vec<String>, Vec<String>)> {
    let members: Vec<String> = self
      .redis
      .query(redis::cmd("SMEMBERS").arg(self.tag_key(tag)))
      .await?;
    let mut deleted = Vec::new();
    for chunk in members.chunks(500) {
      for (k, existed) in chunk.iter().zip(self.del_many(chunk).await?) {
        if existed {
          deleted.push(k.clone());
        }
      }
    }
    let _: Value = self
      .redis
      .query(redis::cmd("DEL").arg(self.tag_key(tag)))
      .await?;
    Ok((members, deleted))
  }

  /// Delete this cache's keys and tag sets (SCAN + DEL; never FLUSHDB).
  pub async fn clear(&self) -> HpResult<()> {
    for prefix in [self.value_key(""), self.tag_key("")] {
      let pattern = format!("{}*", glob_escape(&prefix));
      let mut found: Vec<String> = Vec::new();
      self
        .redis
        .scan_each(&pattern, |keys| {
          found.extend(keys);
          Ok(())
        })
        .await?;
      for chunk in found.chunks(500) {
        if self.redis.is_cluster() {
          let cmds: Vec<redis::Cmd> = chunk
            .iter()
            .map(|k| redis::cmd("DEL").arg(k).to_owned())
            .collect();
          let _: Vec<Value> = self.redis.many(&cmds).await?;
        } else {
          let _: Value = self.redis.query(redis::cmd("DEL").arg(chunk)).await?;
        }
      }
    }
    Ok(())
  }
}
