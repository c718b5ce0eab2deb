//! Cross-instance L1 coherence over Redis pub/sub.
//!
//! Every instance has a random id. A write or delete publishes
//! `{"s":id,"k":[keys]}`, a pattern delete `{"s":id,"p":glob}`, a clear
//! `{"s":id,"all":true}`. Every other instance evicts those keys from its L1.
//! After the subscription reconnects, the instance flushes its whole L1,
//! since messages may have been missed while it was away. Each instance also
//! pings itself, `{"s":id,"ping":n}`, once a second: when three pings in a
//! row do not come back, it subscribes again (and flushes its L1 once).

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq, Default)]
pub struct Message {
  pub s: String,
  #[serde(default, skip_serializing_if = "Vec::is_empty")]
  pub k: Vec<String>,
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub p: Option<String>,
  #[serde(default, skip_serializing_if = "std::ops::Not::not")]
  pub all: bool,
  /// A health-check ping (only its sender acts on it).
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub ping: Option<u64>,
}

impl Message {
  pub fn keys(src: &str, keys: Vec<String>) -> Message {
    Message {
      s: src.to_string(),
      k: keys,
      ..Default::default()
    }
  }
  pub fn pattern(src: &str, glob: &str) -> Message {
    Message {
      s: src.to_string(),
      p: Some(glob.to_string()),
      ..Default::default()
    }
  }
  pub fn all(src: &str) -> Message {
    Message {
      s: src.to_string(),
      all: true,
      ..Default::default()
    }
  }
  pub fn encode(&self) -> Vec<u8> {
    serde_json::to_vec(self).expect("message encodes")
  }
  pub fn decode(b: &[u8]) -> Option<Message> {
    serde_json::from_slice(b).ok()
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  #[test]
  fn messages_round_trip() {
    for m in [
      Message::keys("a", vec!["k1".into(), "k2".into()]),
      Message::pattern("b", "user:*"),
      Message::all("c"),
    ] {
      assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }
    assert!(Message::decode(b"garbage").is_none());
  }
}
