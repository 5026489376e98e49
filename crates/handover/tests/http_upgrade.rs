//! `upgrade_http` upgraded under HTTP/2 and TLS load, with real processes:
//! HTTP/2 with many concurrent streams per connection, HTTP/1.1 and h2 over
//! TLS, a renewed certificate deployed by an upgrade, and third-party
//! clients: curl sees no failure, h2load gets every request it sent
//! answered.
//!
//! The server is `examples/upgrade_http.rs`, compiled into this test binary
//! and run as a role, as in `upgrade.rs`.

#[path = "../examples/upgrade_http.rs"]
#[allow(dead_code)]
mod upgrade_http;

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ARGS, Guard, ROLE, Server, runtime};
use handover_verify::{ClientTls, Load, LoadConfig, Mode, Protocol, Report};

#[test]
fn child_role() {
    if std::env::var(ROLE).as_deref() != Ok("upgrade_http") {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let args = std::env::var(ARGS).unwrap();
    let args = upgrade_http::Args::parse(args.split_whitespace().map(String::from)).unwrap();
    upgrade_http::run(args).unwrap();
}

impl Server {
    fn start(extra: &str) -> Server {
        Server::spawn("pid", extra, &[("RUST_LOG", "info")])
    }
}

fn assert_lossless(report: &Report, what: &str, server: &Server) {
    assert_eq!(
        report.failures_total(),
        0,
        "{what}: failed requests during the upgrades:\n{}\nstderr:\n{}",
        report.render_table(),
        server.log()
    );
}

/// `loads` running together across 20 upgrades; the first one drives
/// `Server::upgrade` (it must see each new pid).
fn twenty_upgrades(server: &mut Server, loads: Vec<(&str, LoadConfig)>) {
    let loads: Vec<(&str, Load)> = loads
        .into_iter()
        .map(|(name, cfg)| (name, Load::start(cfg).unwrap()))
        .collect();
    for (name, load) in &loads {
        assert!(
            load.wait_for_ok(50, Duration::from_secs(30)),
            "{name}: no load got through:\n{}",
            server.log()
        );
    }
    for _ in 0..20 {
        server.upgrade(&loads[0].1);
    }
    for (name, load) in loads {
        assert!(load.wait_for_ok(load.snapshot().ok + 50, Duration::from_secs(30)));
        let report = load.stop();
        assert_lossless(&report, name, server);
        assert!(
            report.distinct_pids() >= 15,
            "{name}: only {} generations answered:\n{}",
            report.distinct_pids(),
            report.render_table()
        );
        eprintln!("{name}:\n{}", report.render_table());
    }
}

#[test]
fn twenty_upgrades_http2_many_streams_per_connection_lose_nothing() {
    let mut server = Server::start("--idle-grace-ms 1000");
    let mut cfg = LoadConfig::new(server.addr, Mode::KeepAlive);
    cfg.protocol = Protocol::Http2;
    cfg.connections = 4;
    cfg.streams = 16;
    // HTTP/1.1 keep-alive clients on the same port at the same time.
    let mut h1 = LoadConfig::new(server.addr, Mode::KeepAlive);
    h1.connections = 4;
    twenty_upgrades(
        &mut server,
        vec![("h2c, 4 x 16 streams", cfg), ("HTTP/1.1", h1)],
    );
}

#[test]
fn twenty_upgrades_over_tls_http1_and_h2_lose_nothing() {
    let mut server = Server::start("--tls --idle-grace-ms 1000");
    let mut h2 = LoadConfig::new(server.addr, Mode::KeepAlive);
    h2.protocol = Protocol::Http2;
    h2.connections = 2;
    h2.streams = 8;
    h2.tls = Some(ClientTls::insecure());
    let mut h1 = LoadConfig::new(server.addr, Mode::KeepAlive);
    h1.connections = 4;
    h1.tls = Some(ClientTls::insecure());
    let mut h1_new = LoadConfig::new(server.addr, Mode::NewConnection);
    h1_new.connections = 2;
    h1_new.tls = Some(ClientTls::insecure());
    twenty_upgrades(
        &mut server,
        vec![
            ("h2 over TLS, 2 x 8 streams", h2),
            ("HTTP/1.1 keep-alive over TLS", h1),
            ("HTTP/1.1 over TLS, a connection per request", h1_new),
        ],
    );
}

/// A certificate for `localhost`, as PEM (certificate, key).
fn certificate() -> (String, String) {
    let made = rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

/// Whether a TLS handshake with `addr` succeeds when trusting only `ca`.
fn handshake_trusting(addr: std::net::SocketAddr, ca: &str) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

#[test]
fn a_renewed_certificate_is_served_after_an_upgrade() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let (old_cert, old_key) = certificate();
    std::fs::write(&cert, &old_cert).unwrap();
    std::fs::write(&key, &old_key).unwrap();
    let mut server = Server::start(&format!(
        "--tls-cert {} --tls-key {}",
        cert.display(),
        key.display()
    ));
    let mut cfg = LoadConfig::new(server.addr, Mode::KeepAlive);
    cfg.tls = Some(ClientTls::insecure());
    cfg.connections = 2;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(20, Duration::from_secs(30)));
    handshake_trusting(server.addr, &old_cert).expect("the first certificate is served");
    // Renew: new files, then an upgrade.
    let (new_cert, new_key) = certificate();
    std::fs::write(&cert, &new_cert).unwrap();
    std::fs::write(&key, &new_key).unwrap();
    handshake_trusting(server.addr, &old_cert)
        .expect("until the upgrade, the old certificate is still served");
    server.upgrade(&load);
    handshake_trusting(server.addr, &new_cert).expect("the renewed certificate is served");
    let err = handshake_trusting(server.addr, &old_cert).unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    let report = load.stop();
    assert_lossless(&report, "HTTP/1.1 over TLS", &server);
}

/// h2load's summary line: `requests: T total, S started, D done, OK
/// succeeded, F failed, E errored, X timeout`.
fn h2load_counts(out: &str) -> Option<[u64; 7]> {
    let line = out.lines().find(|l| l.starts_with("requests:"))?;
    let numbers: Vec<u64> = line
        .trim_start_matches("requests:")
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    numbers.try_into().ok()
}

/// Streams received and requests served over every HTTP/2 connection the
/// server's generations have ended, from their debug log lines.
fn server_h2_counts(server: &Server) -> (u64, u64, usize) {
    let (mut streams, mut requests, mut connections) = (0, 0, 0);
    for line in server
        .log()
        .lines()
        .filter(|l| l.contains("HTTP/2 connection ended"))
    {
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        streams += field("streams=");
        requests += field("requests=");
        connections += 1;
    }
    (streams, requests, connections)
}

/// `upgrade_http` with a debug line per HTTP/2 connection (streams
/// received, requests served).
fn start_counting() -> Server {
    Server::spawn(
        "pid",
        "--idle-grace-ms 1000",
        &[("RUST_LOG", "info,handover::drain::http=debug")],
    )
}

/// Runs `h2load args` `runs` times in a row against the server while it is
/// upgraded every `every`, and checks what h2load and the server counted.
///
/// h2load does not reconnect after a GOAWAY, and counts as failed (and
/// errored) the requests a client had queued when it read the GOAWAY, which
/// its nghttp2 then refuses to send (nghttp2_session.c,
/// `session_predicate_request_headers_send`): up to `-m` per client. So
/// h2load's own counts cannot tell those from requests the server lost.
/// The server's can: every HTTP/2 stream it received (HEADERS frames read)
/// must have been served, and every request it served must be one h2load
/// counts as succeeded. What h2load counts as failed then never reached the
/// server.
fn h2load_across_upgrades(server: &mut Server, args: &[&str], every: Duration, runs: usize) {
    // A small load of our own (HTTP/1.1), to see each new generation answer.
    let mut cfg = LoadConfig::new(server.addr, Mode::KeepAlive);
    cfg.connections = 1;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(5, Duration::from_secs(30)));
    let url = format!("http://{}/", server.addr);
    let (upgrades, outputs) = std::thread::scope(|s| {
        let h2load = s.spawn(|| {
            let mut outputs = Vec::new();
            for _ in 0..runs {
                let child = Command::new("h2load")
                    .args(args)
                    .arg(&url)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("h2load starts");
                outputs.push(wait_output(Guard(child), Duration::from_secs(60)));
            }
            outputs
        });
        let mut upgrades = 0;
        while !h2load.is_finished() {
            let next = Instant::now() + every;
            server.upgrade(&load);
            upgrades += 1;
            while Instant::now() < next && !h2load.is_finished() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        (upgrades, h2load.join().unwrap())
    });
    assert!(upgrades >= runs, "only {upgrades} upgrades during h2load");
    let (mut succeeded_all, mut unsent) = (0, 0);
    for out in &outputs {
        let counts = h2load_counts(out)
            .unwrap_or_else(|| panic!("no `requests:` line in h2load's output:\n{out}"));
        let [total, started, done, succeeded, failed, errored, timeout] = counts;
        assert!(succeeded > 0, "{out}");
        assert_eq!(
            timeout,
            0,
            "h2load timed out:\n{out}\nstderr:\n{}",
            server.log()
        );
        assert_eq!(
            (total, started, done),
            (started, done, succeeded + failed),
            "{out}"
        );
        assert_eq!(failed, errored, "{out}");
        succeeded_all += succeeded;
        unsent += failed;
    }
    // Each h2load run opens 16 connections; wait for the server to log
    // the end of every one.
    let expected = 16 * runs;
    let deadline = Instant::now() + Duration::from_secs(30);
    while server_h2_counts(server).2 < expected {
        assert!(
            Instant::now() < deadline,
            "{} of {expected} HTTP/2 connections logged:\n{}",
            server_h2_counts(server).2,
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (streams, requests, connections) = server_h2_counts(server);
    assert_eq!(connections, expected, "{}", server.log());
    assert_eq!(
        streams, requests,
        "the server received {streams} HTTP/2 streams but served {requests}"
    );
    assert_eq!(
        requests, succeeded_all,
        "the server served {requests} requests, h2load got {succeeded_all} whole"
    );
    eprintln!(
        "h2load: {succeeded_all} requests answered over {upgrades} upgrades, {unsent} \
         counted as failed that h2load never sent; the server received and served \
         {requests} streams\n{}",
        outputs.join("\n")
    );
    let report = load.stop();
    assert_lossless(&report, "HTTP/1.1 alongside h2load", server);
}

/// Waits for the child's exit and returns its stdout (its stderr goes to
/// the failure message).
fn wait_output(mut guard: Guard, deadline: Duration) -> String {
    use std::io::Read;
    let mut stdout = guard.0.stdout.take().unwrap();
    let mut stderr = guard.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        let mut e = String::new();
        let _ = stderr.read_to_string(&mut e);
        (s, e)
    });
    let status = common::wait_exit(&mut guard, deadline);
    let (out, err) = reader.join().unwrap();
    assert!(status.success(), "{status}:\n{out}\n{err}");
    out
}

#[test]
fn h2load_every_request_sent_is_answered_while_upgraded_every_second() {
    let test = "h2load_every_request_sent_is_answered_while_upgraded_every_second";
    if !runtime::require_program(test, "h2load", "apt-get install nghttp2-client") {
        return;
    }
    let mut server = start_counting();
    h2load_across_upgrades(
        &mut server,
        &["-D", "10", "-c", "16", "-m", "8"],
        Duration::from_secs(1),
        1,
    );
}

/// h2load does not open a new connection after a GOAWAY: once all its
/// clients have seen one, it sends nothing more. Ten one-second runs in a
/// row, one upgrade a second, put its load on every upgrade.
#[test]
fn h2load_back_to_back_every_request_sent_is_answered_across_upgrades() {
    let test = "h2load_back_to_back_every_request_sent_is_answered_across_upgrades";
    if !runtime::require_program(test, "h2load", "apt-get install nghttp2-client") {
        return;
    }
    let mut server = start_counting();
    h2load_across_upgrades(
        &mut server,
        &["-D", "1", "-c", "16", "-m", "8"],
        Duration::from_millis(500),
        10,
    );
}

/// curl over TLS (ALPN h2), multiplexing 16 transfers on a connection and
/// opening a new one after each GOAWAY. (Over h2c with prior knowledge,
/// curl 7.88.1 fails every transfer after the first on a connection: curl
/// issue 10634, fixed in 8.0.)
#[test]
fn curl_http2_transfers_across_upgrades_all_succeed() {
    let test = "curl_http2_transfers_across_upgrades_all_succeed";
    if !runtime::require_program(test, "curl", "apt-get install curl") {
        return;
    }
    let mut server = Server::start("--tls --idle-grace-ms 1000");
    let mut cfg = LoadConfig::new(server.addr, Mode::KeepAlive);
    cfg.connections = 1;
    cfg.tls = Some(ClientTls::insecure());
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(5, Duration::from_secs(30)));
    const TRANSFERS: usize = 20_000;
    let url = format!("https://{}/?n=[1-{TRANSFERS}]", server.addr);
    let child = Command::new("curl")
        .args([
            "--http2",
            "--insecure",
            "--silent",
            "--show-error",
            "--no-progress-meter",
            "--parallel",
            "--parallel-max",
            "16",
            "--write-out",
            "%{http_code} %{http_version}\\n",
        ])
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl starts");
    let curl = std::thread::spawn(move || wait_output(Guard(child), Duration::from_secs(300)));
    let mut upgrades = 0;
    while !curl.is_finished() {
        server.upgrade(&load);
        upgrades += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = curl.join().unwrap();
    // Each transfer prints its body (`pid=N`) and then its status line.
    let statuses: Vec<&str> = out.lines().filter(|l| !l.starts_with("pid=")).collect();
    let pids: std::collections::BTreeSet<&str> =
        out.lines().filter(|l| l.starts_with("pid=")).collect();
    assert_eq!(statuses.len(), TRANSFERS, "{out}");
    let bad: Vec<&&str> = statuses.iter().filter(|l| **l != "200 2").collect();
    assert!(
        bad.is_empty(),
        "curl transfers that failed: {bad:?}\n{}",
        server.log()
    );
    assert!(
        upgrades >= 3,
        "only {upgrades} upgrades during the curl run"
    );
    assert!(
        pids.len() >= 3,
        "curl was answered by {} generations only",
        pids.len()
    );
    let report = load.stop();
    assert_lossless(&report, "HTTP/1.1 alongside curl", &server);
}
