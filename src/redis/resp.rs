//! RESP2 replies parsed incrementally from a read buffer, into redis-rs'
//! `Value` (so its `FromRedisValue` conversions apply). Commands are encoded
//! by redis-rs' `Cmd::write_packed_command`.

use redis::Value;

/// Append one command (`args` as binary-safe bulk strings) to `buf`.
pub fn encode(buf: &mut Vec<u8>, args: &[&[u8]]) {
  use std::io::Write;
  let _ = write!(buf, "*{}\r\n", args.len());
  for a in args {
    let _ = write!(buf, "${}\r\n", a.len());
    buf.extend_from_slice(a);
    buf.extend_from_slice(b"\r\n");
  }
}

/// One parsed reply: a value, or the server's error line (`-ERR ...`).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
  Value(Value),
  Error(String),
}

impl Reply {
  pub fn into_result(self) -> Result<Value, String> {
    match self {
      Reply::Value(v) => Ok(v),
      Reply::Error(e) => Err(e),
    }
  }
}

/// The reply starting at `buf[0]`: `Ok(Some((reply, bytes used)))`, `Ok(None)`
/// when more bytes are needed, `Err` on a protocol violation.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
  let mut pos = 0;
  match parse_at(buf, &mut pos, 0)? {
    Some(r) => Ok(Some((r, pos))),
    None => Ok(None),
  }
}

fn line(buf: &[u8], pos: &mut usize) -> Option<usize> {
  // The index of the '\r' of "\r\n" after *pos.
  let rest = &buf[*pos..];
  let mut i = 0;
  while i + 1 < rest.len() {
    if rest[i] == b'\r' && rest[i + 1] == b'\n' {
      return Some(*pos + i);
    }
    i += 1;
  }
  None
}

fn int(b: &[u8]) -> Result<i64, String> {
  std::str::from_utf8(b)
    .ok()
    .and_then(|s| s.parse().ok())
    .ok_or_else(|| {
      format!(
        "redis: bad integer in reply: {:?}",
        String::from_utf8_lossy(b)
      )
    })
}

fn parse_at(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Reply>, String> {
  if depth > 64 {
    return Err("redis: reply nested too deeply".into());
  }
  if *pos >= buf.len() {
    return Ok(None);
  }
  let kind = buf[*pos];
  let start = *pos + 1;
  let mut p = start;
  let Some(end) = line(buf, &mut p) else {
    return Ok(None);
  };
  let head = &buf[start..end];
  let after = end + 2;
  match kind {
    b'+' => {
      *pos = after;
      let s = String::from_utf8_lossy(head);
      Ok(Some(Reply::Value(if s == "OK" {
        Value::Okay
      } else {
        Value::SimpleString(s.into_owned())
      })))
    }
    b'-' => {
      *pos = after;
      Ok(Some(Reply::Error(
        String::from_utf8_lossy(head).into_owned(),
      )))
    }
    b':' => {
      *pos = after;
      Ok(Some(Reply::Value(Value::Int(int(head)?))))
    }
    b'$' => {
      let n = int(head)?;
      if n < 0 {
        *pos = after;
        return Ok(Some(Reply::Value(Value::Nil)));
      }
      let n = n as usize;
      if buf.len() < after + n + 2 {
        return Ok(None);
      }
      *pos = after + n + 2;
      Ok(Some(Reply::Value(Value::BulkString(
        buf[after..after + n].to_vec(),
      ))))
    }
    b'*' => {
      let n = int(head)?;
      if n < 0 {
        *pos = after;
        return Ok(Some(Reply::Value(Value::Nil)));
      }
      let mut items = Vec::with_capacity((n as usize).min(4096));
      let mut p = after;
      for _ in 0..n {
        match parse_at(buf, &mut p, depth + 1)? {
          None => return Ok(None),
          Some(Reply::Value(v)) => items.push(v),
          // An error inside an array (EXEC, scripts): kept as its text.
          Some(Reply::Error(e)) => items.push(Value::SimpleString(format!("-{e}"))),
        }
      }
      *pos = p;
      Ok(Some(Reply::Value(Value::Array(items))))
    }
    other => Err(format!(
      "redis: unexpected reply type byte 0x{other:02x} (RESP2 expected)"
    )),
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn parses_every_kind_and_waits_for_more() {
    let all =
      b"+OK\r\n-ERR bad\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\nx\r\n:-7\r\n*0\r\n+PONG\r\n";
    let mut at = 0;
    let mut got = Vec::new();
    while let Some((r, n)) = parse(&all[at..]).unwrap() {
      got.push(r);
      at += n;
    }
    assert_eq!(at, all.len());
    assert_eq!(
      got,
      vec![
        Reply::Value(Value::Okay),
        Reply::Error("ERR bad".into()),
        Reply::Value(Value::Int(42)),
        Reply::Value(Value::BulkString(b"abc".to_vec())),
        Reply::Value(Value::Nil),
        Reply::Value(Value::Array(vec![
          Value::BulkString(b"x".to_vec()),
          Value::Int(-7)
        ])),
        Reply::Value(Value::Array(vec![])),
        Reply::Value(Value::SimpleString("PONG".into())),
      ]
    );
    // Every strict prefix of a reply is "need more", never a wrong value.
    let one = b"*2\r\n$5\r\nhello\r\n$0\r\n\r\n";
    for cut in 0..one.len() {
      assert_eq!(parse(&one[..cut]).unwrap(), None, "cut at {cut}");
    }
    assert!(parse(&one[..]).unwrap().is_some());
    assert!(parse(b"?x\r\n").is_err());
    // Binary-safe bulk strings (CR LF inside).
    let (r, _) = parse(b"$4\r\na\r\nb\r\n").unwrap().unwrap();
    assert_eq!(r, Reply::Value(Value::BulkString(b"a\r\nb".to_vec())));
  }
}
