//! `handover verify --http2`, `--grpc`, `--streams`, `--tls`: the flags, and
//! an HTTP/2 run against a server of the library's (`drain::http::serve`).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use handover::drain::http::{HttpOptions, serve};
use handover::drain::{Drain, Listener};
use http_body_util::Full;
use hyper::service::service_fn;

/// `drain::http::serve` (HTTP/1.1 and h2c) on a thread of its own.
fn server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let drain = Drain::new();
            let listener =
                Listener::new(tokio::net::TcpListener::from_std(listener).unwrap(), &drain);
            let service = service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                    b"pid=7\n",
                ))))
            });
            serve(&listener, service, &HttpOptions::default())
                .await
                .unwrap();
        });
    });
    addr
}

fn verify(args: &[&str]) -> (std::process::ExitStatus, serde_json::Value, String) {
    let out = Command::new(support::handover_bin())
        .arg("verify")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status, json, stderr)
}

#[test]
fn http2_with_many_streams_passes_on_a_drained_server() {
    let addr = server().to_string();
    let (status, report, stderr) = verify(&[
        "--addr",
        &addr,
        "--http2",
        "--keep-alive",
        "--connections",
        "2",
        "--streams",
        "8",
        "--duration",
        "1s",
        "--json",
    ]);
    assert!(status.success(), "{report}\n{stderr}");
    assert_eq!(report["protocol"], "http2", "{report}");
    assert_eq!(report["streams"], 8, "{report}");
    assert!(report["ok"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(report["connects"], 2, "{report}");
}

#[test]
fn http2_and_tls_flags_are_explained() {
    let bad = |args: &[&str], expected: &str| {
        let (status, _, stderr) = verify(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    };
    bad(
        &[
            "--addr",
            "127.0.0.1:1",
            "--streams",
            "4",
            "--duration",
            "1s",
        ],
        "--streams 4 needs --http2 or --grpc",
    );
    bad(
        &["--addr", "127.0.0.1:1", "--tls", "--duration", "1s"],
        "--insecure for a self-signed certificate",
    );
    bad(&["--addr", "127.0.0.1:1", "--insecure"], "--tls");
    bad(
        &["--addr", "127.0.0.1:1", "--http2", "--grpc"],
        "cannot be used with",
    );
    let (status, _, stderr) = verify(&[
        "--addr",
        "127.0.0.1:1",
        "--tls",
        "--ca-file",
        "/nonexistent/ca.pem",
        "--duration",
        "1s",
    ]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}
