//! TLS for the JS-thread connections (`rediss://`): the rustls client
//! settings a [`super::conn::Conn`] runs its `ClientConnection` with.
//!
//! The same verification as the Tokio side (redis-rs built with
//! `tls-rustls-webpki-roots` and `tls-rustls-insecure`): the server's
//! certificate must chain to a webpki root and name the URL's host (SNI is
//! that host name); `#insecure` at the end of the URL turns verification off
//! (and SNI with it, as redis-rs does).

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// What a connection needs to speak TLS to one endpoint.
pub struct Tls {
  pub config: Arc<ClientConfig>,
  pub server_name: ServerName<'static>,
}

impl Tls {
  /// TLS to `host`, verified against the webpki roots unless `insecure`.
  pub fn new(host: &str, insecure: bool) -> Result<Tls, String> {
    static VERIFIED: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    static INSECURE: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    let config = if insecure {
      INSECURE.get_or_init(|| config(RootCertStore::empty(), true))
    } else {
      VERIFIED.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        config(roots, false)
      })
    };
    Tls::with_config(host, config.clone()?)
  }

  pub fn with_config(host: &str, config: Arc<ClientConfig>) -> Result<Tls, String> {
    let server_name = ServerName::try_from(host)
      .map_err(|e| format!("redis: TLS server name {host:?}: {e}"))?
      .to_owned();
    Ok(Tls {
      config,
      server_name,
    })
  }
}

fn provider() -> Arc<CryptoProvider> {
  static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
  P.get_or_init(|| Arc::new(ring::default_provider())).clone()
}

/// A client config trusting `roots` (or nothing, when `insecure`).
pub fn config(roots: RootCertStore, insecure: bool) -> Result<Arc<ClientConfig>, String> {
  let p = provider();
  let mut c = ClientConfig::builder_with_provider(p.clone())
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("redis: TLS settings: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
  if insecure {
    c.enable_sni = false;
    c.dangerous()
      .set_certificate_verifier(Arc::new(NoVerification(
        p.signature_verification_algorithms,
      )));
  }
  Ok(Arc::new(c))
}

/// `#insecure`: any certificate is accepted (redis-rs' own behaviour).
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
  fn verify_server_cert(
    &self,
    _end_entity: &CertificateDer<'_>,
    _intermediates: &[CertificateDer<'_>],
    _server_name: &ServerName<'_>,
    _ocsp_response: &[u8],
    _now: UnixTime,
  ) -> Result<ServerCertVerified, rustls::Error> {
    Ok(ServerCertVerified::assertion())
  }

  fn verify_tls12_signature(
    &self,
    _message: &[u8],
    _cert: &CertificateDer<'_>,
    _dss: &DigitallySignedStruct,
  ) -> Result<HandshakeSignatureValid, rustls::Error> {
    Ok(HandshakeSignatureValid::assertion())
  }

  fn verify_tls13_signature(
    &self,
    _message: &[u8],
    _cert: &CertificateDer<'_>,
    _dss: &DigitallySignedStruct,
  ) -> Result<HandshakeSignatureValid, rustls::Error> {
    Ok(HandshakeSignatureValid::assertion())
  }

  fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
    self.0.supported_schemes()
  }
}

/// The JS-thread connection over TLS, against a redis-server the test starts
/// with `--tls-port` and a throwaway self-signed certificate (made with
/// openssl, for `IP:127.0.0.1`), driven by the `poll(2)` stand-in of
/// `conn.rs`'s tests.
#[cfg(test)]
mod tests {
  use super::*;
  use crate::redis::breaker::{Breaker, Phase};
  use crate::redis::conn::tests::{drive, recorder, send_now, Log};
  use crate::redis::conn::{Conn, Target};
  use crate::redis::resp::{self, Reply};
  use crate::redis::uv::real_ms;
  use redis::Value;
  use std::process::{Child, Command, Stdio};
  use std::rc::Rc;

  /// A TLS-only redis-server of the test's own (killed on drop).
  struct TlsServer {
    proc: Child,
    port: u16,
    dir: std::path::PathBuf,
    /// The CA that signed the server's certificate (DER), to trust it.
    cert: Vec<u8>,
  }

  impl Drop for TlsServer {
    fn drop(&mut self) {
      unsafe { libc::kill(self.proc.id() as i32, libc::SIGCONT) };
      let _ = self.proc.kill();
      let _ = self.proc.wait();
      let _ = std::fs::remove_dir_all(&self.dir);
    }
  }

  fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
  }

  impl TlsServer {
    /// None (the test skips) when there is no redis-server here, outside CI.
    fn start(password: Option<&str>) -> Option<TlsServer> {
      let bin = std::env::var("HOTPATH_TEST_REDIS_BIN").unwrap_or_else(|_| "redis-server".into());
      if Command::new(&bin).arg("--version").output().is_err() {
        if std::env::var("CI").as_deref() == Ok("true") {
          panic!("redis-server ({bin}) must be installed in CI");
        }
        eprintln!("SKIP TLS core tests: no {bin}");
        return None;
      }
      let dir = std::env::temp_dir().join(format!(
        "hotpath-tls-core-{}-{}",
        std::process::id(),
        rand::random::<u32>()
      ));
      std::fs::create_dir_all(&dir).unwrap();
      // A throwaway CA and a server certificate it signs for IP:127.0.0.1
      // (webpki refuses a CA certificate as the server's own).
      let f = |n: &str| dir.join(n);
      let (key, cert) = (f("key.pem"), f("cert.pem"));
      std::fs::write(
        f("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
      )
      .unwrap();
      let openssl = |args: &[&std::ffi::OsStr]| {
        let o = Command::new("openssl")
          .args(args)
          .output()
          .expect("openssl");
        assert!(o.status.success(), "openssl {args:?}: {o:?}");
        o.stdout
      };
      let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
      ];
      let os = |s: &'static str| std::ffi::OsStr::new(s);
      let p = |b: &std::path::PathBuf| b.as_os_str().to_owned();
      let (ca, ca_key, csr, ext) = (f("ca.pem"), f("ca.key"), f("leaf.csr"), f("ext.cnf"));
      let mut a: Vec<std::ffi::OsString> = vec!["req".into(), "-x509".into()];
      a.extend(ec.iter().map(|s| os(s).to_owned()));
      a.extend(["-keyout".into(), p(&ca_key), "-out".into(), p(&ca)]);
      a.extend(["-days", "1", "-subj", "/CN=hotpath test CA"].map(|s| os(s).to_owned()));
      openssl(&a.iter().map(|s| s.as_os_str()).collect::<Vec<_>>());
      let mut a: Vec<std::ffi::OsString> = vec!["req".into()];
      a.extend(ec.iter().map(|s| os(s).to_owned()));
      a.extend(["-keyout".into(), p(&key), "-out".into(), p(&csr)]);
      a.extend(["-subj".into(), "/CN=127.0.0.1".into()]);
      openssl(&a.iter().map(|s| s.as_os_str()).collect::<Vec<_>>());
      let a: Vec<std::ffi::OsString> = vec![
        "x509".into(),
        "-req".into(),
        "-in".into(),
        p(&csr),
        "-CA".into(),
        p(&ca),
        "-CAkey".into(),
        p(&ca_key),
        "-CAcreateserial".into(),
        "-out".into(),
        p(&cert),
        "-days".into(),
        "1".into(),
        "-extfile".into(),
        p(&ext),
      ];
      openssl(&a.iter().map(|s| s.as_os_str()).collect::<Vec<_>>());
      let der = openssl(&[
        os("x509"),
        os("-outform"),
        os("DER"),
        os("-in"),
        ca.as_os_str(),
      ]);
      let port = free_port();
      let mut cmd = Command::new(&bin);
      cmd
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--tls-cert-file"])
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&ca)
        .args([
          "--tls-auth-clients",
          "no",
          "--save",
          "",
          "--appendonly",
          "no",
        ])
        .arg("--dir")
        .arg(&dir);
      if let Some(p) = password {
        cmd.args(["--requirepass", p]);
      }
      let proc = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
      let s = TlsServer {
        proc,
        port,
        dir,
        cert: der,
      };
      let end = real_ms() + 10_000.0;
      while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(real_ms() < end, "TLS redis-server on {port} did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
      }
      Some(s)
    }

    fn signal(&self, sig: i32) {
      unsafe { libc::kill(self.proc.id() as i32, sig) };
    }
  }

  fn target(port: u16, tls: Tls, password: Option<&str>, db: i64, ms: f64) -> Arc<Target> {
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    Arc::new(Target {
      addrs: vec![addr],
      name: addr.to_string(),
      username: None,
      password: password.map(str::to_string),
      db,
      tls: Some(tls),
      connect_timeout_ms: ms,
      command_timeout_ms: ms,
      breaker: Arc::new(Breaker::default()),
    })
  }

  fn insecure() -> Tls {
    Tls::new("127.0.0.1", true).unwrap()
  }

  fn message(r: &Result<Vec<Reply>, crate::error::HpError>) -> String {
    match r {
      Err(e) => e.message.clone(),
      Ok(v) => panic!("expected an error, got {v:?}"),
    }
  }

  /// Over TLS, with AUTH and SELECT in the handshake: the commands of one
  /// tick leave in one write and every caller gets its own replies, in order.
  #[test]
  fn commands_and_replies_in_order_over_tls() {
    let Some(srv) = TlsServer::start(Some("tls-s3cret")) else {
      return;
    };
    let mut c = Conn::new(target(srv.port, insecure(), Some("tls-s3cret"), 3, 3000.0));
    let log: Log = Rc::default();
    let mut out = Vec::new();
    let now = real_ms();
    let key = b"hotpath-tls-core:n";
    for i in 0..=300usize {
      if i == 0 {
        c.send(
          now,
          &|b| resp::encode(b, &[b"DEL", key]),
          1,
          recorder(&log, 0),
          &mut out,
        );
      } else if i % 10 == 0 {
        let enc = |b: &mut Vec<u8>| {
          resp::encode(b, &[b"INCR", key]);
          resp::encode(b, &[b"GET", key]);
        };
        c.send(now, &enc, 2, recorder(&log, i), &mut out);
      } else {
        c.send(
          now,
          &|b| resp::encode(b, &[b"INCR", key]),
          1,
          recorder(&log, i),
          &mut out,
        );
      }
    }
    c.send(
      now,
      &|b| resp::encode(b, &[b"CLIENT", b"INFO"]),
      1,
      recorder(&log, 301),
      &mut out,
    );
    assert!(out.is_empty());
    let l2 = log.clone();
    drive(&mut c, 10_000.0, &|| l2.borrow().len() == 302);
    let log = log.borrow();
    assert_eq!(log.len(), 302);
    assert_eq!(
      c.writes, 1,
      "the whole tick left in one write, after the handshake"
    );
    for (n, (i, r)) in log.iter().enumerate() {
      assert_eq!(*i, n, "callers answered in order");
      let r = r.as_ref().unwrap_or_else(|e| panic!("#{n}: {}", e.message));
      if n == 0 {
        continue;
      }
      if n == 301 {
        let Reply::Value(Value::BulkString(info)) = &r[0] else {
          panic!("CLIENT INFO: {r:?}")
        };
        let info = String::from_utf8_lossy(info);
        assert!(info.contains(" db=3 "), "SELECT ran: {info}");
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
    // A reply bigger than one TLS record (16 KiB) and than one read.
    let big = vec![b'x'; 200_000];
    let log2: Log = Rc::default();
    let _ = send_now(
      &mut c,
      &[b"SET", b"hotpath-tls-core:big", &big],
      recorder(&log2, 0),
    );
    let _ = send_now(
      &mut c,
      &[b"GET", b"hotpath-tls-core:big"],
      recorder(&log2, 1),
    );
    let l3 = log2.clone();
    drive(&mut c, 10_000.0, &|| l3.borrow().len() == 2);
    let log2 = log2.borrow();
    assert_eq!(
      log2[1].1.as_ref().unwrap()[0],
      Reply::Value(Value::BulkString(big))
    );
    assert!(c.target.breaker.is_closed());
  }

  /// Verification is on unless `#insecure`: the throwaway certificate is
  /// accepted when trusted for its name, refused with a clear error (that
  /// never names the password) when not in the roots or not for the name,
  /// and the refusal opens the breaker.
  #[test]
  fn an_untrusted_certificate_is_refused() {
    let Some(srv) = TlsServer::start(Some("tls-s3cret")) else {
      return;
    };
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(srv.cert.clone())).unwrap();
    let trusted = config(roots, false).unwrap();
    let ping = |tls: Tls| {
      let t = target(srv.port, tls, Some("tls-s3cret"), 0, 3000.0);
      let mut c = Conn::new(t.clone());
      let log: Log = Rc::default();
      assert!(send_now(&mut c, &[b"PING"], recorder(&log, 0)).is_empty());
      let l2 = log.clone();
      drive(&mut c, 5000.0, &|| !l2.borrow().is_empty());
      let r = log.borrow_mut().remove(0).1;
      (r, t, c)
    };
    // Trusted, for its name (an IP address SAN): verified and answered.
    let (r, _, _) = ping(Tls::with_config("127.0.0.1", trusted.clone()).unwrap());
    assert_eq!(
      r.unwrap()[0],
      Reply::Value(Value::SimpleString("PONG".into()))
    );
    // The webpki roots (the default): refused.
    let (r, t, mut c) = ping(Tls::new("127.0.0.1", false).unwrap());
    let msg = message(&r);
    assert!(
      msg.contains("TLS handshake failed with 127.0.0.1:"),
      "{msg}"
    );
    assert!(
      msg.contains("invalid peer certificate: UnknownIssuer"),
      "{msg}"
    );
    assert!(!msg.contains("tls-s3cret"), "{msg}");
    assert!(matches!(t.breaker.phase(), Phase::Open { .. }));
    let log: Log = Rc::default();
    assert_eq!(
      send_now(&mut c, &[b"PING"], recorder(&log, 0)).len(),
      1,
      "fails fast"
    );
    // Trusted, but for another name: refused.
    let (r, _, _) = ping(Tls::with_config("localhost", trusted).unwrap());
    let msg = message(&r);
    assert!(msg.contains("invalid peer certificate"), "{msg}");
    assert!(msg.contains("not valid for name \"localhost\""), "{msg}");
  }

  /// A server that takes the TCP connection and never answers the TLS
  /// handshake: a connect that timed out (connectTimeoutMs), which fails
  /// what was queued and opens the breaker.
  #[test]
  fn a_stalled_handshake_times_out_and_opens_the_breaker() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let t = target(l.local_addr().unwrap().port(), insecure(), None, 0, 200.0);
    let mut c = Conn::new(t.clone());
    let log: Log = Rc::default();
    let started = real_ms();
    for i in 0..20 {
      assert!(send_now(&mut c, &[b"GET", b"k"], recorder(&log, i)).is_empty());
    }
    let l2 = log.clone();
    drive(&mut c, 5000.0, &|| l2.borrow().len() == 20);
    let took = real_ms() - started;
    assert_eq!(log.borrow().len(), 20);
    assert!(took >= 200.0, "not before the timeout: {took}");
    let msg = message(&log.borrow()[0].1);
    assert!(msg.contains("TLS handshake with"), "{msg}");
    assert!(msg.contains("timed out after 200 ms"), "{msg}");
    assert!(matches!(t.breaker.phase(), Phase::Open { .. }));
    assert_eq!(
      send_now(&mut c, &[b"GET", b"k"], recorder(&log, 99)).len(),
      1
    );
    drop(l);
  }

  /// A TLS server that stops (SIGSTOP) with replies owed: after one
  /// commandTimeoutMs everything owed fails and the breaker opens; a new
  /// connection's handshake to it stalls and times out too; once it runs
  /// again the probe (over TLS) closes the breaker and calls flow.
  #[test]
  fn a_stopped_tls_server_opens_the_breaker_and_a_probe_closes_it() {
    let Some(srv) = TlsServer::start(None) else {
      return;
    };
    let t = target(srv.port, insecure(), None, 0, 300.0);
    let mut c = Conn::new(t.clone());
    let log: Log = Rc::default();
    let _ = send_now(&mut c, &[b"PING"], recorder(&log, 0));
    let l2 = log.clone();
    drive(&mut c, 5000.0, &|| l2.borrow().len() == 1);
    assert!(log.borrow()[0].1.is_ok());
    srv.signal(libc::SIGSTOP);
    for i in 1..=50 {
      assert!(send_now(&mut c, &[b"GET", b"k"], recorder(&log, i)).is_empty());
    }
    drive(&mut c, 5000.0, &|| l2.borrow().len() == 51);
    assert!(log.borrow()[1..].iter().all(|(_, r)| r.is_err()));
    let msg = message(&log.borrow()[1].1);
    assert!(msg.contains("no reply"), "{msg}");
    assert!(matches!(t.breaker.phase(), Phase::Open { .. }));
    // Stopped: a fresh connection's handshake gets no answer.
    let t2 = target(srv.port, insecure(), None, 0, 300.0);
    let mut c2 = Conn::new(t2.clone());
    let log2: Log = Rc::default();
    let _ = send_now(&mut c2, &[b"PING"], recorder(&log2, 0));
    let l3 = log2.clone();
    drive(&mut c2, 5000.0, &|| l3.borrow().len() == 1);
    let msg = message(&log2.borrow()[0].1);
    assert!(msg.contains("TLS handshake with"), "{msg}");
    assert!(matches!(t2.breaker.phase(), Phase::Open { .. }));
    // Running again: after the backoff the next call probes (and fails
    // fast), the probe's answer closes the breaker.
    srv.signal(libc::SIGCONT);
    let until = match t.breaker.phase() {
      Phase::Open { until } => until,
      p => panic!("{p:?}"),
    };
    std::thread::sleep(std::time::Duration::from_millis(
      (until - real_ms()).max(0.0) as u64 + 5,
    ));
    assert_eq!(send_now(&mut c, &[b"PING"], recorder(&log, 100)).len(), 1);
    assert!(c.is_probing());
    drive(&mut c, 5000.0, &|| t.breaker.is_closed());
    assert_eq!(t.breaker.phase(), Phase::Closed);
    let _ = send_now(&mut c, &[b"PING"], recorder(&log, 101));
    drive(&mut c, 5000.0, &|| l2.borrow().len() == 52);
    assert_eq!(
      log.borrow()[51].1.as_ref().unwrap()[0],
      Reply::Value(Value::SimpleString("PONG".into()))
    );
  }
}
