//! L2: the cache's keys on Redis, through the shared Redis layer.
//!
//! Keys (README, "Redis"): a cache without a `name` uses `{keyPrefix}c:{key}`
//! for values, `{keyPrefix}t:{tag}` for the set of keys written with a tag and
//! the channel `{keyPrefix}c:__inv`; a cache named N uses `{keyPrefix}c@N:`,
//! `{keyPrefix}t@N:` and `{keyPrefix}c@N:__inv`, where N has `%` and `:`
//! percent-escaped, so the first `:` after `c@` ends the name and two names
//! never share a key.

use std::sync::Arc;

use redis::{FromRedisValue, Value};

use super::codec::Val;
use super::l1::glob_escape;
use crate::error::HpResult;
use crate::redis::resp::Reply;
use crate::redis::Redis;

pub struct L2 {
  pub redis: Arc<Redis>,
  /// `{keyPrefix}c:` or `{keyPrefix}c@{name}:`
  vprefix: String,
  /// `{keyPrefix}t:` or `{keyPrefix}t@{name}:`
  tprefix: String,
  /// `{keyPrefix}l:` or `{keyPrefix}l@{name}:` (singleFlight 'redis' leases)
  lprefix: String,
}

/// The name as it appears in keys: `%` and `:` percent-escaped.
pub fn escape_name(name: &str) -> String {
  name.replace('%', "%25").replace(':', "%3A")
}

/// KEYS: value key, tag sets. ARGV: encoded value, TTL ms (0: none), the
/// key, the value-key prefix.
const SET_TAGGED: &str = r#"
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
for i = 2, #KEYS do
  local tag = KEYS[i]
  local added = redis.call('SADD', tag, ARGV[3])
  local left = redis.call('PTTL', tag)
  if ttl == 0 then
    if left >= 0 then redis.call('PERSIST', tag) end
  elseif left >= 0 and left < ttl then
    redis.call('PEXPIRE', tag, ttl)
  elseif left == -1 and added == 1 and redis.call('SCARD', tag) == 1 then
    redis.call('PEXPIRE', tag, ttl)
  end
  for _, m in ipairs(redis.call('SRANDMEMBER', tag, 2)) do
    if redis.call('EXISTS', ARGV[4] .. m) == 0 then redis.call('SREM', tag, m) end
  end
end
return 1
"#;

/// KEYS: the tag set. ARGV: the value-key prefix, the invalidation channel
/// ('' for none) and the sender's id. Returns the members and the members
/// whose value existed (and was deleted). The invalidation of the members is
/// published by the script itself, so it reaches the other instances exactly
/// when the delete happened: it cannot be lost to a failed PUBLISH after a
/// delete that landed.
const DEL_TAG: &str = r#"
local members = redis.call('SMEMBERS', KEYS[1])
local deleted = {}
for _, m in ipairs(members) do
  if redis.call('DEL', ARGV[1] .. m) == 1 then deleted[#deleted + 1] = m end
end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' and #members > 0 then
  redis.call('PUBLISH', ARGV[2], cjson.encode({s = ARGV[3], k = members}))
end
return {members, deleted}
"#;

pub struct Write {
  pub key: String,
  pub val: Val,
  pub ttl_ms: Option<u64>,
  pub tags: Option<Box<[String]>>,
}

impl L2 {
  pub fn new(redis: Arc<Redis>, name: Option<&str>) -> L2 {
    let lprefix = match name {
      None => redis.key("l:"),
      Some(n) => redis.key(&format!("l@{}:", escape_name(n))),
    };
    let (vprefix, tprefix) = match name {
      None => (redis.key("c:"), redis.key("t:")),
      Some(n) => {
        let n = escape_name(n);
        (redis.key(&format!("c@{n}:")), redis.key(&format!("t@{n}:")))
      }
    };
    L2 {
      redis,
      vprefix,
      tprefix,
      lprefix,
    }
  }
  pub fn value_key(&self, key: &str) -> String {
    let mut s = String::with_capacity(self.vprefix.len() + key.len());
    s.push_str(&self.vprefix);
    s.push_str(key);
    s
  }
  fn tag_key(&self, tag: &str) -> String {
    format!("{}{tag}", self.tprefix)
  }
  pub fn channel(&self) -> String {
    format!("{}__inv", self.vprefix)
  }
  fn strip<'a>(&self, full: &'a str) -> &'a str {
    let p = self.vprefix.len();
    &full[p.min(full.len())..]
  }

  /// The commands of one write, in order. A write with tags is one script
  /// on a single node (SET, then SADD to each tag set; each tag set expires
  /// with its longest-lived member and drops up to two members that no
  /// longer exist), so `deleteTag` (also one script) sees it whole or not at
  /// all. On a Cluster, where the keys may be on different nodes, it is SET
  /// then SADD.
  pub fn write_cmds(&self, w: &Write, out: &mut Vec<redis::Cmd>) {
    let tags = w.tags.as_deref().unwrap_or(&[]);
    if !tags.is_empty() && !self.redis.is_cluster() {
      let mut c = redis::cmd("EVAL");
      c.arg(SET_TAGGED)
        .arg(1 + tags.len())
        .arg(self.value_key(&w.key));
      for t in tags {
        c.arg(self.tag_key(t));
      }
      c.arg(w.val.encode())
        .arg(w.ttl_ms.map(|t| t.max(1)).unwrap_or(0))
        .arg(&w.key)
        .arg(&self.vprefix);
      out.push(c);
      return;
    }
    let mut c = redis::cmd("SET");
    c.arg(self.value_key(&w.key)).arg(w.val.encode());
    if let Some(ttl) = w.ttl_ms {
      c.arg("PX").arg(ttl.max(1));
    }
    out.push(c);
    for t in tags {
      out.push(
        redis::cmd("SADD")
          .arg(self.tag_key(t))
          .arg(&w.key)
          .to_owned(),
      );
    }
  }

  /// Take the lease on `key` for `ms` (SET NX PX): true when taken.
  pub async fn lease_take(&self, key: &str, token: &str, ms: u64) -> HpResult<bool> {
    let r: Option<String> = self
      .redis
      .query(
        redis::cmd("SET")
          .arg(format!("{}{key}", self.lprefix))
          .arg(token)
          .arg("NX")
          .arg("PX")
          .arg(ms),
      )
      .await?;
    Ok(r.is_some())
  }

  /// Extend the lease if it is still `token`'s.
  pub async fn lease_renew(&self, key: &str, token: &str, ms: u64) -> HpResult<bool> {
    let n: i64 = self
      .redis
      .query(
        redis::cmd("EVAL")
          .arg("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end")
          .arg(1)
          .arg(format!("{}{key}", self.lprefix))
          .arg(token)
          .arg(ms),
      )
      .await?;
    Ok(n == 1)
  }

  /// Release the lease if it is still `token`'s.
  pub async fn lease_release(&self, key: &str, token: &str) -> HpResult<()> {
    let _: i64 = self
      .redis
      .query(
        redis::cmd("EVAL")
          .arg("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end")
          .arg(1)
          .arg(format!("{}{key}", self.lprefix))
          .arg(token),
      )
      .await?;
    Ok(())
  }

  pub fn del_cmd(&self, key: &str) -> redis::Cmd {
    redis::cmd("DEL").arg(self.value_key(key)).to_owned()
  }

  /// Each value and its remaining TTL from the replies of one MGET of `n`
  /// keys followed by a PTTL per key (see `flush_gets` in the binding).
  #[allow(clippy::type_complexity)]
  pub fn got_many(
    replies: HpResult<Vec<Reply>>,
    n: usize,
  ) -> HpResult<Vec<HpResult<Option<(Val, Option<u64>)>>>> {
    let mut v = crate::redis::uv::values(replies)?.into_iter();
    let raws = match v.next() {
      Some(Value::Array(a)) if a.len() == n => a,
      other => {
        return Err(crate::error::HpError::redis(format!(
          "redis: MGET returned {other:?}"
        )))
      }
    };
    Ok(
      raws
        .into_iter()
        .map(|raw| {
          let pttl = match v.next() {
            Some(Value::Int(t)) if t > 0 => Some(t as u64),
            _ => None,
          };
          match raw {
            Value::BulkString(b) => Val::decode_owned(b).map(|x| Some((x, pttl))),
            Value::Nil => Ok(None),
            other => Err(crate::error::HpError::redis(format!(
              "redis: MGET returned {other:?}"
            ))),
          }
        })
        .collect(),
    )
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

  /// One round trip for all keys (MGET plus a PTTL per key, pipelined): each
  /// value with its remaining TTL in Redis.
  #[allow(clippy::type_complexity)]
  pub async fn get_many(&self, keys: &[String]) -> HpResult<Vec<Option<(Val, Option<u64>)>>> {
    if keys.is_empty() {
      return Ok(Vec::new());
    }
    let full: Vec<String> = keys.iter().map(|k| self.value_key(k)).collect();
    let (raws, pttls): (Vec<Option<Vec<u8>>>, Vec<i64>) = if self.redis.is_cluster() {
      // Keys hash to different slots: commands sent concurrently, routed per node.
      let gets: Vec<redis::Cmd> = full
        .iter()
        .map(|k| redis::cmd("GET").arg(k).to_owned())
        .collect();
      let ttls: Vec<redis::Cmd> = full
        .iter()
        .map(|k| redis::cmd("PTTL").arg(k).to_owned())
        .collect();
      (self.redis.many(&gets).await?, self.redis.many(&ttls).await?)
    } else {
      let mut p = redis::pipe();
      p.cmd("MGET").arg(&full);
      for k in &full {
        p.cmd("PTTL").arg(k);
      }
      let vals: Vec<Value> = self.redis.pipe(&p).await?;
      let mut it = vals.into_iter();
      let raws = <Vec<Option<Vec<u8>>> as FromRedisValue>::from_redis_value(
        it.next()
          .ok_or_else(|| crate::error::HpError::redis("redis: empty MGET reply"))?,
      )
      .map_err(|e| crate::error::HpError::redis(format!("redis: {e}")))?;
      let pttls = it.map(|v| i64::from_redis_value(v).unwrap_or(-1)).collect();
      (raws, pttls)
    };
    raws
      .into_iter()
      .zip(pttls)
      .map(|(r, t)| {
        r.map(|b| Val::decode(&b).map(|v| (v, if t > 0 { Some(t as u64) } else { None })))
          .transpose()
      })
      .collect()
  }

  /// One pipeline for all writes.
  pub async fn set_many(&self, writes: &[Write]) -> HpResult<()> {
    if writes.is_empty() {
      return Ok(());
    }
    let mut cmds = Vec::with_capacity(writes.len());
    for w in writes {
      self.write_cmds(w, &mut cmds);
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
    let cmds: Vec<redis::Cmd> = keys.iter().map(|k| self.del_cmd(k)).collect();
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
  /// Deletes every member of `tag`. Returns the members, the members whose
  /// value existed, and whether the invalidation of the members was already
  /// published (by the script, on a single node) for `publish_as`.
  pub async fn del_tag(
    &self,
    tag: &str,
    publish_as: Option<&str>,
  ) -> HpResult<(Vec<String>, Vec<String>, bool)> {
    if !self.redis.is_cluster() {
      // One script: no tagged write can land between reading the members and
      // deleting the set, and the invalidation goes out with the delete.
      let (channel, sender) = match publish_as {
        Some(id) => (self.channel(), id),
        None => (String::new(), ""),
      };
      let (members, deleted): (Vec<String>, Vec<String>) = self
        .redis
        .query(
          redis::cmd("EVAL")
            .arg(DEL_TAG)
            .arg(1)
            .arg(self.tag_key(tag))
            .arg(&self.vprefix)
            .arg(channel)
            .arg(sender),
        )
        .await?;
      return Ok((members, deleted, true));
    }
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
    Ok((members, deleted, false))
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
