//! Redis Cluster helpers: hash slots, hash tags that a user key cannot
//! break, and per-node connection info that keeps the seed's credentials,
//! database and TLS settings (a node's address comes from `CLUSTER SLOTS`,
//! everything else from the first seed).

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::RedisConfig;
use crate::error::{HpError, HpResult};

/// The Redis Cluster slot of a key (CRC16/XMODEM of its hash tag, mod 16384).
pub fn slot(key: &[u8]) -> u16 {
  let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
    let rest = &key[open + 1..];
    rest
      .iter()
      .position(|&b| b == b'}')
      .filter(|&close| close > 0)
      .map(|close| &rest[..close])
  });
  let mut crc: u16 = 0;
  for &b in tagged.unwrap_or(key) {
    crc ^= (b as u16) << 8;
    for _ in 0..8 {
      crc = if crc & 0x8000 != 0 {
        (crc << 1) ^ 0x1021
      } else {
        crc << 1
      };
    }
  }
  crc % 16384
}

/// Append `{<key>}` to `out` as a hash tag that holds whatever `key` is: `{`
/// and `}` (and the escape `\`) are escaped, so a key like `}x` or `a{b}`
/// can neither end the tag early nor leave it empty. Different keys stay
/// different (the escape is reversible).
pub fn push_tag(out: &mut String, key: &str) {
  out.push('{');
  for ch in key.chars() {
    match ch {
      '\\' => out.push_str("\\\\"),
      '{' => out.push_str("\\("),
      '}' => out.push_str("\\)"),
      c => out.push(c),
    }
  }
  out.push('}');
}

/// The seeds' connection info (each URL parsed as given).
pub fn seed_infos(cfg: &RedisConfig) -> HpResult<Vec<ConnectionInfo>> {
  cfg
    .cluster
    .iter()
    .map(|u| {
      u.as_str().into_connection_info().map_err(|e| {
        HpError::invalid(cfg.scrub(&format!(
          "redis.cluster URL \"{}\" is not valid: {e}",
          super::redact(u)
        )))
      })
    })
    .collect()
}

/// Connection info for the node at `host:port`: the seed's credentials,
/// database and TLS settings, that node's address.
pub fn node_info(seed: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
  let addr = match seed.addr() {
    ConnectionAddr::TcpTls {
      insecure,
      tls_params,
      ..
    } => ConnectionAddr::TcpTls {
      host: host.to_string(),
      port,
      insecure: *insecure,
      tls_params: tls_params.clone(),
    },
    _ => ConnectionAddr::Tcp(host.to_string(), port),
  };
  seed.clone().set_addr(addr)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn slots_follow_the_hash_tag() {
    // `CLUSTER KEYSLOT foo`, and the CRC16/XMODEM check value.
    assert_eq!(slot(b"foo"), 12182);
    assert_eq!(slot(b"123456789"), 0x31C3);
    assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
    // An empty tag is no tag: the whole name is hashed.
    assert_ne!(slot(b"{}user1000"), slot(b"user1000"));
  }

  #[test]
  fn a_user_key_cannot_break_the_tag() {
    for k in ["}", "}x", "{", "a{b}c", "x}{y", "\\", "\\)", "plain", "{}"] {
      let mut a = String::from("p:rl:x:");
      push_tag(&mut a, k);
      let b = format!("{a}:log");
      assert_eq!(slot(a.as_bytes()), slot(b.as_bytes()), "key {k:?}");
      // The tag is exactly the escaped key: never empty, never cut.
      let inner = &a[a.find('{').unwrap() + 1..a.len() - 1];
      assert!(!inner.is_empty() && !inner.contains('{') && !inner.contains('}'));
    }
    // Distinct keys, distinct tags.
    let tag = |k: &str| {
      let mut s = String::new();
      push_tag(&mut s, k);
      s
    };
    assert_ne!(tag("a}"), tag("a\\)"));
    assert_ne!(tag("\\("), tag("{"));
  }

  #[test]
  fn node_info_keeps_credentials_db_and_tls() {
    let seed = "rediss://user:s3cret@127.0.0.1:7000/2#insecure"
      .into_connection_info()
      .unwrap();
    let n = node_info(&seed, "127.0.0.1", 7001);
    assert_eq!(n.redis_settings().password(), Some("s3cret"));
    assert_eq!(n.redis_settings().username(), Some("user"));
    assert_eq!(n.redis_settings().db(), 2);
    match n.addr() {
      ConnectionAddr::TcpTls { port, insecure, .. } => {
        assert_eq!(*port, 7001);
        assert!(*insecure);
      }
      a => panic!("TLS lost: {a:?}"),
    }
  }
}
