//! One Redis connection as a state machine over a non-blocking socket, with
//! no event loop of its own: a driver (libuv on a JS thread, see `uv.rs`; a
//! plain `poll(2)` loop in tests) tells it when the socket is readable or
//! writable and when its deadline passed, and runs the completions it hands
//! back.
//!
//! Commands are appended to one write buffer and leave in one `write` when
//! the driver flushes (once per event-loop tick: auto-pipelining). Replies
//! are matched to commands in order (RESP is strictly FIFO). Before any
//! command it queues the handshake (`AUTH`, `SELECT`), so nothing waits for
//! the connect: the whole first tick goes out in one write behind it.
//!
//! Over TLS (`rediss://`, see `tls.rs`) a rustls `ClientConnection` sits
//! between the buffers and the socket: the tick's commands go into its
//! `writer()` and leave as one `write_tls`; what the socket gives goes
//! through `read_tls` and `process_new_packets`, and the plaintext from its
//! `reader()` is parsed as on plain TCP. The TLS handshake is part of
//! connecting: the connection is connected (and the handshake's `AUTH` /
//! `SELECT` and the queued commands leave) once it is done, and a handshake
//! that stalls past `connectTimeoutMs` is a connect that timed out.
//!
//! Failures (see `breaker.rs`): a refused or reset connection, a connect
//! (TLS handshake included) that timed out or failed, or a connection
//! silent for `commandTimeoutMs` while replies are owed closes the socket,
//! fails every owed command with `ERR_REDIS` and opens the endpoint's
//! breaker. A command that times out
//! while other replies keep arriving fails alone (its reply, when it comes,
//! is dropped) and the connection stays.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use super::breaker::{Breaker, Gate};
use super::resp::{self, Reply};
use crate::error::HpError;

/// Runs once with the replies of one send (or the error).
pub type Done = Box<dyn FnOnce(Result<Vec<Reply>, HpError>)>;

/// Completions to run once the connection is no longer borrowed.
pub type Out = Vec<(Done, Result<Vec<Reply>, HpError>)>;

/// Where and how to connect. Shared by every connection to one endpoint.
pub struct Target {
  pub addrs: Vec<SocketAddr>,
  /// `host:port` (never the password): what error messages name.
  pub name: String,
  pub username: Option<String>,
  pub password: Option<String>,
  pub db: i64,
  /// `rediss://`: TLS settings (verification, server name).
  pub tls: Option<super::tls::Tls>,
  pub connect_timeout_ms: f64,
  pub command_timeout_ms: f64,
  pub breaker: Arc<Breaker>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Internal {
  User,
  Handshake,
  Probe,
}

struct Pending {
  left: usize,
  got: Vec<Reply>,
  sent_at: f64,
  deadline: f64,
  done: Option<Done>,
  kind: Internal,
}

pub struct Conn {
  pub target: Arc<Target>,
  sock: Option<TcpStream>,
  /// TLS over `sock` (`rediss://`).
  tls: Option<rustls::ClientConnection>,
  /// The TCP connect finished (for TLS, the handshake may still run).
  tcp_up: bool,
  /// Ready for commands: TCP up and, over TLS, the handshake done.
  connected: bool,
  connect_deadline: f64,
  /// Half-open: this connection is the breaker's probe.
  probing: bool,
  wbuf: Vec<u8>,
  wpos: usize,
  rbuf: Vec<u8>,
  rpos: usize,
  pending: VecDeque<Pending>,
  last_read: f64,
  /// Bumped whenever the socket changes (the driver re-registers it).
  pub generation: u64,
  /// Commands sent (for tests and stats).
  pub sent: u64,
  /// Writes made (for tests: many commands, one write).
  pub writes: u64,
}

impl Conn {
  pub fn new(target: Arc<Target>) -> Conn {
    Conn {
      target,
      sock: None,
      tls: None,
      tcp_up: false,
      connected: false,
      connect_deadline: 0.0,
      probing: false,
      wbuf: Vec::with_capacity(4096),
      wpos: 0,
      rbuf: Vec::with_capacity(16 * 1024),
      rpos: 0,
      pending: VecDeque::new(),
      last_read: 0.0,
      generation: 0,
      sent: 0,
      writes: 0,
    }
  }

  #[cfg(unix)]
  pub fn fd(&self) -> Option<i32> {
    use std::os::fd::AsRawFd;
    self.sock.as_ref().map(|s| s.as_raw_fd())
  }

  pub fn want_write(&self) -> bool {
    self.sock.is_some()
      && (!self.tcp_up
        || (self.connected && self.wpos < self.wbuf.len())
        || self.tls.as_ref().is_some_and(|t| t.wants_write()))
  }

  /// Replies owed to callers (the driver keeps the event loop alive then).
  pub fn owes_replies(&self) -> bool {
    self
      .pending
      .iter()
      .any(|p| p.kind == Internal::User && p.done.is_some())
  }

  pub fn has_unflushed(&self) -> bool {
    self.wpos < self.wbuf.len() || self.tls.as_ref().is_some_and(|t| t.wants_write())
  }

  pub fn is_probing(&self) -> bool {
    self.probing
  }

  pub fn is_connected(&self) -> bool {
    self.connected
  }

  /// The next time `on_timer` has work, if any.
  pub fn next_deadline(&self) -> Option<f64> {
    let mut d = None::<f64>;
    if self.sock.is_some() && !self.connected {
      d = Some(self.connect_deadline);
    }
    if let Some(p) = self
      .pending
      .iter()
      .find(|p| p.done.is_some() || p.kind != Internal::User)
    {
      d = Some(d.map_or(p.deadline, |x| x.min(p.deadline)));
    }
    d
  }

  /// Queue one send of `replies` commands (written by `encode`), answered
  /// through `done`. Fails fast (into `out`) while the breaker is open.
  pub fn send(
    &mut self,
    now: f64,
    encode: &dyn Fn(&mut Vec<u8>),
    replies: usize,
    done: Done,
    out: &mut Out,
  ) {
    match self.target.breaker.gate(now) {
      Gate::Pass => {}
      Gate::FailFast => {
        out.push((
          done,
          Err(HpError::redis(self.target.breaker.refusal("command"))),
        ));
        return;
      }
      Gate::Probe => {
        self.start_probe(now, out);
        out.push((
          done,
          Err(HpError::redis(self.target.breaker.refusal("command"))),
        ));
        return;
      }
    }
    if self.probing {
      out.push((
        done,
        Err(HpError::redis(self.target.breaker.refusal("command"))),
      ));
      return;
    }
    if self.sock.is_none() {
      if let Err(e) = self.connect(now) {
        self.fail(now, e, true, out);
        out.push((
          done,
          Err(HpError::redis(self.target.breaker.refusal("command"))),
        ));
        return;
      }
    }
    encode(&mut self.wbuf);
    self.sent += replies as u64;
    self.pending.push_back(Pending {
      left: replies,
      got: Vec::with_capacity(replies),
      sent_at: now,
      deadline: now + self.target.command_timeout_ms,
      done: Some(done),
      kind: Internal::User,
    });
  }

  /// The breaker's one probe: a fresh connection, the handshake and a PING.
  pub fn start_probe(&mut self, now: f64, out: &mut Out) {
    self.close_socket();
    self.fail_pending(HpError::redis("redis: connection replaced by a probe"), out);
    self.probing = true;
    if let Err(e) = self.connect(now) {
      self.fail(now, e, true, out);
      return;
    }
    self.internal(now, &["PING"], Internal::Probe);
  }

  fn internal(&mut self, now: f64, args: &[&str], kind: Internal) {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
      c.arg(*a);
    }
    c.write_packed_command(&mut self.wbuf);
    self.pending.push_back(Pending {
      left: 1,
      got: Vec::new(),
      sent_at: now,
      deadline: now + self.target.command_timeout_ms,
      done: None,
      kind,
    });
  }

  fn connect(&mut self, now: f64) -> Result<(), String> {
    use socket2::{Domain, Socket, Type};
    let t = self.target.clone();
    let addr = *t
      .addrs
      .first()
      .ok_or_else(|| format!("redis: {}: no address", t.name))?;
    let io = |e: std::io::Error| format!("redis: connect to {}: {e}", t.name);
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(io)?;
    s.set_nonblocking(true).map_err(io)?;
    let _ = s.set_tcp_nodelay(true);
    match s.connect(&addr.into()) {
      Ok(()) => {}
      Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
      Err(e) if e.kind() == ErrorKind::WouldBlock => {}
      Err(e) => return Err(io(e)),
    }
    self.tls = match &t.tls {
      Some(tls) => {
        let mut c = rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())
          .map_err(|e| format!("redis: TLS to {}: {e}", t.name))?;
        // The tick's commands go in whole (they are in `wbuf` already).
        c.set_buffer_limit(None);
        Some(c)
      }
      None => None,
    };
    self.sock = Some(s.into());
    self.tcp_up = false;
    self.connected = false;
    self.connect_deadline = now + t.connect_timeout_ms;
    self.last_read = now;
    self.generation += 1;
    self.wbuf.clear();
    self.wpos = 0;
    self.rbuf.clear();
    self.rpos = 0;
    if let Some(p) = &t.password {
      match &t.username {
        Some(u) => self.internal(now, &["AUTH", u, p], Internal::Handshake),
        None => self.internal(now, &["AUTH", p], Internal::Handshake),
      }
    }
    if t.db != 0 {
      let db = t.db.to_string();
      self.internal(now, &["SELECT", &db], Internal::Handshake);
    }
    Ok(())
  }

  fn close_socket(&mut self) {
    if self.sock.take().is_some() {
      self.generation += 1;
    }
    self.tls = None;
    self.tcp_up = false;
    self.connected = false;
    self.wbuf.clear();
    self.wpos = 0;
    self.rbuf.clear();
    self.rpos = 0;
  }

  fn fail_pending(&mut self, err: HpError, out: &mut Out) {
    for p in self.pending.drain(..) {
      if let Some(d) = p.done {
        out.push((d, Err(err.clone())));
      }
    }
  }

  /// Close the connection and fail what it owes; `level`: a connection-level
  /// failure (opens the breaker).
  fn fail(&mut self, now: f64, msg: String, level: bool, out: &mut Out) {
    self.close_socket();
    let err = HpError::redis(msg.clone());
    crate::redis::debug_log(&err);
    self.fail_pending(err, out);
    if self.probing || level {
      self.probing = false;
      self.target.breaker.failure(now, &msg);
    }
  }

  /// Write what the buffer holds (one `write` for the whole tick).
  pub fn flush(&mut self, now: f64, out: &mut Out) {
    if !self.connected {
      return;
    }
    if let Some(tls) = self.tls.as_mut() {
      if self.wpos < self.wbuf.len() {
        // No buffer limit: rustls takes (and encrypts) it all.
        if let Err(e) = tls.writer().write_all(&self.wbuf[self.wpos..]) {
          let msg = format!("redis: TLS write to {}: {e}", self.target.name);
          return self.fail(now, msg, true, out);
        }
        self.wbuf.clear();
        self.wpos = 0;
      }
      return self.write_tls(now, out);
    }
    if self.wpos >= self.wbuf.len() {
      return;
    }
    let Some(s) = self.sock.as_mut() else { return };
    let mut s: &TcpStream = s;
    while self.wpos < self.wbuf.len() {
      match s.write(&self.wbuf[self.wpos..]) {
        Ok(0) => break,
        Ok(n) => {
          self.wpos += n;
          self.writes += 1;
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
        Err(e) if e.kind() == ErrorKind::Interrupted => {}
        Err(e) => {
          let msg = format!("redis: write to {}: {e}", self.target.name);
          return self.fail(now, msg, true, out);
        }
      }
    }
    if self.wpos == self.wbuf.len() {
      self.wbuf.clear();
      self.wpos = 0;
    }
  }

  /// Write what rustls holds (handshake messages, encrypted commands).
  fn write_tls(&mut self, now: f64, out: &mut Out) {
    loop {
      let (Some(s), Some(tls)) = (self.sock.as_mut(), self.tls.as_mut()) else {
        return;
      };
      if !tls.wants_write() {
        return;
      }
      let mut s: &TcpStream = s;
      match tls.write_tls(&mut s) {
        Ok(0) => return,
        Ok(_) => {
          if self.connected {
            self.writes += 1;
          }
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => return,
        Err(e) if e.kind() == ErrorKind::Interrupted => {}
        Err(e) => {
          let msg = format!("redis: write to {}: {e}", self.target.name);
          return self.fail(now, msg, true, out);
        }
      }
    }
  }

  /// The socket is readable and/or writable (or in error).
  pub fn on_io(&mut self, now: f64, readable: bool, writable: bool, out: &mut Out) {
    if self.sock.is_none() {
      return;
    }
    if !self.tcp_up && (writable || readable) {
      let err = self
        .sock
        .as_ref()
        .and_then(|s| s.take_error().ok().flatten());
      if let Some(e) = err {
        let msg = format!("redis: connect to {}: {e}", self.target.name);
        return self.fail(now, msg, true, out);
      }
      // Writable without error: connected (a peer check confirms it).
      if self.sock.as_ref().is_some_and(|s| s.peer_addr().is_ok()) {
        self.tcp_up = true;
        // Over TLS, connected once the handshake is done (in `read_tls`).
        self.connected = self.tls.is_none();
      } else if writable {
        let msg = format!("redis: connect to {}: connection refused", self.target.name);
        return self.fail(now, msg, true, out);
      }
    }
    if self.tls.is_some() {
      // Read first: the handshake may finish, and then the queued commands
      // (and the client's Finished) leave in the flush after it.
      if readable {
        self.read(now, out);
      }
      if self.connected {
        self.flush(now, out);
      } else if self.tcp_up {
        self.write_tls(now, out);
      }
      return;
    }
    if self.connected {
      self.flush(now, out);
    }
    if readable && self.sock.is_some() {
      self.read(now, out);
    }
  }

  /// Read from the socket into `rbuf`: `Ok(true)` at EOF.
  fn fill_plain(&mut self, now: f64) -> Result<bool, String> {
    loop {
      let Some(s) = self.sock.as_mut() else {
        return Ok(false);
      };
      let mut s: &TcpStream = s;
      let len = self.rbuf.len();
      if self.rbuf.capacity() - len < 16 * 1024 {
        self.rbuf.reserve(64 * 1024);
      }
      let cap = self.rbuf.capacity();
      // Read straight into the spare capacity.
      let spare =
        unsafe { std::slice::from_raw_parts_mut(self.rbuf.as_mut_ptr().add(len), cap - len) };
      match s.read(spare) {
        Ok(0) => return Ok(true),
        Ok(n) => {
          unsafe { self.rbuf.set_len(len + n) };
          self.last_read = now;
          if n < cap - len {
            return Ok(false);
          }
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
        Err(e) if e.kind() == ErrorKind::Interrupted => {}
        Err(e) => return Err(format!("redis: read from {}: {e}", self.target.name)),
      }
    }
  }

  /// Read TLS records from the socket, process them (the handshake, too)
  /// and move the plaintext into `rbuf`: `Ok(true)` at EOF.
  fn fill_tls(&mut self, now: f64) -> Result<bool, String> {
    let name = &self.target.name;
    loop {
      let (Some(s), Some(tls)) = (self.sock.as_mut(), self.tls.as_mut()) else {
        return Ok(false);
      };
      let mut s: &TcpStream = s;
      let mut eof = false;
      match tls.read_tls(&mut s) {
        Ok(0) => eof = true,
        Ok(_) => self.last_read = now,
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
        Err(e) => return Err(format!("redis: read from {name}: {e}")),
      }
      if let Err(e) = tls.process_new_packets() {
        // Tell the server why (the alert rustls queued), then give up.
        let _ = tls.write_tls(&mut s);
        let what = if self.connected {
          "TLS error from"
        } else {
          "TLS handshake failed with"
        };
        return Err(format!("redis: {what} {name}: {e}"));
      }
      if !self.connected && !tls.is_handshaking() {
        self.connected = true;
      }
      loop {
        let len = self.rbuf.len();
        if self.rbuf.capacity() - len < 16 * 1024 {
          self.rbuf.reserve(64 * 1024);
        }
        let cap = self.rbuf.capacity();
        let spare =
          unsafe { std::slice::from_raw_parts_mut(self.rbuf.as_mut_ptr().add(len), cap - len) };
        match tls.reader().read(spare) {
          Ok(0) => return Ok(true),
          Ok(n) => unsafe { self.rbuf.set_len(len + n) },
          Err(e) if e.kind() == ErrorKind::WouldBlock => break,
          Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(true),
          Err(e) if e.kind() == ErrorKind::Interrupted => {}
          Err(e) => return Err(format!("redis: TLS read from {name}: {e}")),
        }
      }
      if eof {
        return Ok(true);
      }
    }
  }

  fn read(&mut self, now: f64, out: &mut Out) {
    let filled = if self.tls.is_some() {
      self.fill_tls(now)
    } else {
      self.fill_plain(now)
    };
    let eof = match filled {
      Ok(eof) => eof,
      Err(msg) => return self.fail(now, msg, true, out),
    };
    self.parse_replies(now, out);
    if eof && self.sock.is_some() {
      let owed = !self.pending.is_empty();
      let msg = format!(
        "redis: connection to {} closed by the server",
        self.target.name
      );
      if owed || self.probing {
        self.fail(now, msg, true, out);
      } else {
        // An idle connection the server closed: reconnect on next use.
        self.close_socket();
      }
    }
  }

  fn parse_replies(&mut self, now: f64, out: &mut Out) {
    loop {
      let parsed = match resp::parse(&self.rbuf[self.rpos..]) {
        Ok(Some(x)) => x,
        Ok(None) => break,
        Err(e) => return self.fail(now, e, true, out),
      };
      let (reply, used) = parsed;
      self.rpos += used;
      let Some(head) = self.pending.front_mut() else {
        let msg = format!("redis: {} sent a reply nobody asked for", self.target.name);
        return self.fail(now, msg, true, out);
      };
      head.got.push(reply);
      head.left -= 1;
      if head.left > 0 {
        continue;
      }
      let p = self.pending.pop_front().expect("head");
      match p.kind {
        Internal::User => {
          if let Some(d) = p.done {
            out.push((d, Ok(p.got)));
          }
          self.target.breaker.success();
        }
        Internal::Handshake => {
          if let Some(Reply::Error(e)) = p.got.first() {
            let msg = format!("redis: {} refused the handshake: {e}", self.target.name);
            return self.fail(now, msg, true, out);
          }
        }
        Internal::Probe => {
          self.probing = false;
          self.target.breaker.success();
        }
      }
    }
    if self.rpos == self.rbuf.len() {
      self.rbuf.clear();
      self.rpos = 0;
    } else if self.rpos > 64 * 1024 {
      self.rbuf.drain(..self.rpos);
      self.rpos = 0;
    }
  }

  /// Deadlines: a connect that took too long, replies that did not come.
  pub fn on_timer(&mut self, now: f64, out: &mut Out) {
    if self.sock.is_some() && !self.connected && now >= self.connect_deadline {
      let what = if self.tcp_up {
        "TLS handshake with"
      } else {
        "connect to"
      };
      let msg = format!(
        "redis: {what} {} timed out after {} ms",
        self.target.name, self.target.connect_timeout_ms
      );
      return self.fail(now, msg, true, out);
    }
    let Some(head) = self.pending.front() else {
      return;
    };
    if now < head.deadline {
      return;
    }
    if self.last_read <= head.sent_at || self.probing {
      // Nothing at all came back for a whole commandTimeoutMs: the server
      // or the path to it is gone (or stopped).
      let msg = format!(
        "redis: no reply from {} within {} ms",
        self.target.name, self.target.command_timeout_ms
      );
      return self.fail(now, msg, true, out);
    }
    // Replies keep coming: only the late commands fail.
    let msg = format!(
      "redis: command timed out after {} ms",
      self.target.command_timeout_ms
    );
    for p in self.pending.iter_mut() {
      if p.deadline > now {
        break;
      }
      if let Some(d) = p.done.take() {
        out.push((d, Err(HpError::redis(msg.clone()))));
      }
    }
  }

  /// Close (the thread is going away): fail everything owed.
  pub fn shutdown(&mut self, out: &mut Out) {
    self.close_socket();
    self.probing = false;
    self.fail_pending(HpError::redis("redis: connection closed"), out);
  }
}

/// The first reply as a Result (server errors become `ERR_REDIS`).
pub fn first(r: Result<Vec<Reply>, HpError>) -> Result<redis::Value, HpError> {
  let mut v = r?;
  if v.is_empty() {
    return Err(HpError::redis("redis: no reply"));
  }
  match v.swap_remove(0) {
    Reply::Value(x) => Ok(x),
    Reply::Error(e) => Err(HpError::redis(format!("redis: {e}"))),
  }
}

#[cfg(test)]
pub(crate) mod tests {
  use super::*;
  use crate::redis::breaker::Phase;
  use crate::redis::uv::real_ms;
  use redis::Value;
  use std::cell::RefCell;
  use std::os::fd::AsRawFd;
  use std::rc::Rc;

  /// A stand-in for the libuv driver: poll(2) on the socket, then the
  /// connection's events and deadlines, until `done()` or `ms` pass.
  pub(crate) fn drive(c: &mut Conn, ms: f64, done: &dyn Fn() -> bool) {
    let end = real_ms() + ms;
    while !done() && real_ms() < end {
      let mut out = Vec::new();
      c.flush(real_ms(), &mut out);
      if let Some(fd) = c.fd() {
        let mut p = libc::pollfd {
          fd,
          events: libc::POLLIN | if c.want_write() { libc::POLLOUT } else { 0 },
          revents: 0,
        };
        unsafe { libc::poll(&mut p, 1, 5) };
        let (r, w) = (
          p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0,
          p.revents & (libc::POLLOUT | libc::POLLERR) != 0,
        );
        if r || w {
          c.on_io(real_ms(), r, w, &mut out);
        }
      } else {
        std::thread::sleep(std::time::Duration::from_millis(2));
      }
      c.on_timer(real_ms(), &mut out);
      for (d, r) in out {
        d(r);
      }
    }
  }

  fn target(addr: std::net::SocketAddr, cmd_ms: f64) -> Arc<Target> {
    Arc::new(Target {
      addrs: vec![addr],
      name: addr.to_string(),
      username: None,
      password: None,
      db: 0,
      tls: None,
      connect_timeout_ms: 500.0,
      command_timeout_ms: cmd_ms,
      breaker: Arc::new(Breaker::default()),
    })
  }

  fn redis_addr() -> Option<std::net::SocketAddr> {
    let url = match std::env::var("REDIS_URL") {
      Ok(u) => u,
      Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
        panic!("REDIS_URL must be set in CI")
      }
      Err(_) => {
        eprintln!("SKIP Redis core tests: REDIS_URL is not set");
        return None;
      }
    };
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
    match info.addr() {
      redis::ConnectionAddr::Tcp(h, p) => {
        use std::net::ToSocketAddrs;
        (h.as_str(), *p).to_socket_addrs().unwrap().next()
      }
      _ => None,
    }
  }

  /// Send one command now (one reply); returns what failed at once, in the
  /// call (the breaker failing fast).
  pub(crate) fn send_now(c: &mut Conn, args: &[&[u8]], done: Done) -> Out {
    let mut out = Vec::new();
    c.send(real_ms(), &|b| resp::encode(b, args), 1, done, &mut out);
    out
  }

  pub(crate) type Log = Rc<RefCell<Vec<(usize, Result<Vec<Reply>, HpError>)>>>;

  pub(crate) fn recorder(log: &Log, i: usize) -> Done {
    let log = log.clone();
    Box::new(move |r| log.borrow_mut().push((i, r)))
  }

  /// Commands sent in one tick leave in one write, and each caller gets its
  /// own replies, in order.
  #[test]
  fn one_write_per_tick_and_replies_in_order() {
    let Some(addr) = redis_addr() else { return };
    let mut c = Conn::new(target(addr, 2000.0));
    let log: Log = Rc::default();
    let key = format!("hotpath-core-test:{}", rand::random::<u32>());
    let mut out = Vec::new();
    let now = real_ms();
    c.send(
      now,
      &|b| resp::encode(b, &[b"DEL", key.as_bytes()]),
      1,
      recorder(&log, 0),
      &mut out,
    );
    for i in 1..=200usize {
      // INCR, and every 10th a pair (INCR + GET) in one send.
      if i % 10 == 0 {
        let enc = |b: &mut Vec<u8>| {
          resp::encode(b, &[b"INCR", key.as_bytes()]);
          resp::encode(b, &[b"GET", key.as_bytes()]);
        };
        c.send(now, &enc, 2, recorder(&log, i), &mut out);
      } else {
        let enc = |b: &mut Vec<u8>| resp::encode(b, &[b"INCR", key.as_bytes()]);
        c.send(now, &enc, 1, recorder(&log, i), &mut out);
      }
    }
    assert!(out.is_empty());
    let l2 = log.clone();
    drive(&mut c, 5000.0, &|| l2.borrow().len() == 201);
    let log = log.borrow();
    assert_eq!(log.len(), 201);
    assert_eq!(c.writes, 1, "the whole tick left in one write");
    for (n, (i, r)) in log.iter().enumerate() {
      assert_eq!(*i, n, "callers answered in order");
      let r = r.as_ref().unwrap();
      if n == 0 {
        continue;
      }
      assert_eq!(r[0], Reply::Value(Value::Int(n as i64)), "INCR #{n}");
      if n % 10 == 0 {
        assert_eq!(
          r[1],
          Reply::Value(Value::BulkString(n.to_string().into_bytes()))
        );
      }
    }
    let _ = send_now(&mut c, &[b"DEL", key.as_bytes()], Box::new(|_| {}));
    drive(&mut c, 1000.0, &|| false);
  }

  /// A refused connection opens the breaker: calls fail at once (no new
  /// connect) until the backoff is over; then one probe runs while the
  /// others still fail fast; a failed probe doubles the backoff.
  #[test]
  fn refused_connection_opens_the_breaker_and_probes_once() {
    // A port nobody listens on.
    let addr = {
      let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
      l.local_addr().unwrap()
    };
    let t = target(addr, 300.0);
    let mut c = Conn::new(t.clone());
    let log: Log = Rc::default();
    assert!(send_now(&mut c, &[b"PING"], recorder(&log, 0)).is_empty());
    let l2 = log.clone();
    drive(&mut c, 2000.0, &|| !l2.borrow().is_empty());
    assert!(log.borrow()[0].1.is_err());
    assert!(matches!(t.breaker.phase(), Phase::Open { .. }));
    // Open: fails at once, in the call, without a socket.
    let out = send_now(&mut c, &[b"PING"], recorder(&log, 1));
    assert_eq!(out.len(), 1);
    assert!(c.fd().is_none());
    let msg = match &out[0].1 {
      Err(e) => e.message.clone(),
      Ok(_) => panic!("should fail fast"),
    };
    assert!(msg.contains("unreachable"), "{msg}");
    // After the backoff: this call starts the probe and still fails fast.
    std::thread::sleep(std::time::Duration::from_millis(
      crate::redis::breaker::BASE_BACKOFF_MS as u64 + 5,
    ));
    let out = send_now(&mut c, &[b"PING"], recorder(&log, 2));
    assert_eq!(out.len(), 1);
    assert!(c.is_probing());
    assert_eq!(t.breaker.phase(), Phase::HalfOpen);
    let out = send_now(&mut c, &[b"PING"], recorder(&log, 3));
    assert_eq!(out.len(), 1, "one probe at a time: the others fail fast");
    drive(&mut c, 2000.0, &|| c_probing_done(&t));
    match t.breaker.phase() {
      Phase::Open { until } => {
        assert!(
          until - real_ms() > crate::redis::breaker::BASE_BACKOFF_MS,
          "backoff doubled"
        )
      }
      p => panic!("probe failed: should be open, is {p:?}"),
    }
  }

  fn c_probing_done(t: &Target) -> bool {
    t.breaker.phase() != Phase::HalfOpen
  }

  /// A server that accepts and never answers (a stopped process, a
  /// blackhole): after commandTimeoutMs everything owed fails, the breaker
  /// opens, and the next calls fail at once.
  #[test]
  fn a_silent_server_opens_the_breaker_after_one_timeout() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let t = target(l.local_addr().unwrap(), 150.0);
    let mut c = Conn::new(t.clone());
    let log: Log = Rc::default();
    let started = real_ms();
    for i in 0..50 {
      assert!(send_now(&mut c, &[b"GET", b"k"], recorder(&log, i)).is_empty());
    }
    let l2 = log.clone();
    drive(&mut c, 3000.0, &|| l2.borrow().len() == 50);
    let took = real_ms() - started;
    assert_eq!(log.borrow().len(), 50);
    assert!(log.borrow().iter().all(|(_, r)| r.is_err()));
    assert!(took >= 150.0, "not before the timeout: {took}");
    assert!(matches!(t.breaker.phase(), Phase::Open { .. }));
    let msg = match &log.borrow()[0].1 {
      Err(e) => e.message.clone(),
      _ => unreachable!(),
    };
    assert!(msg.contains("no reply"), "{msg}");
    let out = send_now(&mut c, &[b"GET", b"k"], recorder(&log, 99));
    assert_eq!(out.len(), 1, "fails fast while open");
    drop(l.accept());
  }

  /// The probe against a live server closes the breaker, and calls flow.
  #[test]
  fn a_probe_that_answers_closes_the_breaker() {
    let Some(addr) = redis_addr() else { return };
    let t = target(addr, 2000.0);
    t.breaker.failure(real_ms() - 1000.0, "test");
    let mut c = Conn::new(t.clone());
    let log: Log = Rc::default();
    // Backoff already over (opened 1 s "ago"): this call probes.
    let out = send_now(&mut c, &[b"PING"], recorder(&log, 0));
    assert_eq!(out.len(), 1);
    assert!(c.is_probing());
    drive(&mut c, 3000.0, &|| t.breaker.is_closed());
    assert_eq!(t.breaker.phase(), Phase::Closed);
    let out = send_now(&mut c, &[b"PING"], recorder(&log, 1));
    assert!(out.is_empty());
    let l2 = log.clone();
    drive(&mut c, 3000.0, &|| l2.borrow().len() == 1);
    assert_eq!(
      log.borrow()[0].1.as_ref().unwrap()[0],
      Reply::Value(Value::SimpleString("PONG".into()))
    );
  }

  /// A bad password fails the handshake: every queued command gets the
  /// error, which never contains the password.
  #[test]
  fn a_refused_handshake_fails_queued_commands_without_the_password() {
    let Some(addr) = redis_addr() else { return };
    let mut t = target(addr, 2000.0);
    Arc::get_mut(&mut t).unwrap().password = Some("wrong-s3cret-pw".into());
    let mut c = Conn::new(t.clone());
    let log: Log = Rc::default();
    assert!(send_now(&mut c, &[b"PING"], recorder(&log, 0)).is_empty());
    let l2 = log.clone();
    drive(&mut c, 3000.0, &|| !l2.borrow().is_empty());
    let e = log.borrow()[0].1.clone().unwrap_err();
    assert!(!e.message.contains("wrong-s3cret-pw"), "{}", e.message);
    let _ = c.fd().map(|fd| fd.as_raw_fd());
  }
}
