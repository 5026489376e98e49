//! The control socket of `handover run`: one JSON request per connection,
//! one JSON answer.
//!
//! ```text
//! -> {"cmd":"reload"}\n
//! <- {"ok":true,"pid":1234,"ready_after_ms":152.3,...}\n
//! ```
//!
//! The socket file has mode 0600 and the peer's uid is checked with
//! `SO_PEERCRED` (same uid as handover, or root). A request must arrive
//! within [`REQUEST_TIMEOUT`] and be at most [`MAX_REQUEST`] bytes; anything
//! else gets an error answer (or nothing, for a refused peer) and never
//! blocks other clients: each connection is served on a task of its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use handover::address::{Address, BindOptions};

/// The largest request accepted, in bytes.
pub const MAX_REQUEST: usize = 4096;

/// How long a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How many clients are served at once; more get "busy".
pub const MAX_CLIENTS: usize = 64;

/// A request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Start a new generation and switch to it when ready.
    Reload,
    /// Describe the supervisor.
    Status,
    /// Drain and exit.
    Stop,
}

/// Parses a request line.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "the request is not UTF-8".to_string())?;
    serde_json::from_str(text.trim()).map_err(|e| {
        format!(
            "the request {:?} is not valid: {e}; expected one JSON object per line, \
             {{\"cmd\":\"reload\"}}, {{\"cmd\":\"status\"}} or {{\"cmd\":\"stop\"}}",
            truncate(text.trim(), 80)
        )
    })
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

/// An answer: `{"ok":true, ...fields}` or `{"ok":false,"error":"..."}`.
pub type Answer = serde_json::Value;

/// Builds an error answer.
pub fn error_answer(msg: impl Into<String>) -> Answer {
    serde_json::json!({"ok": false, "error": msg.into()})
}

/// A request from a client, with the channel for its answer.
#[derive(Debug)]
pub struct Incoming {
    /// The request.
    pub request: Request,
    /// Where the answer goes (the client may have gone; sending then fails
    /// quietly).
    pub reply: oneshot::Sender<Answer>,
    /// Resolves once the answer was written (or given up on), for callers
    /// that exit right after answering.
    pub written: oneshot::Receiver<()>,
}

/// Binds the control socket at `path` (mode 0600; a stale file is replaced,
/// a live one is an error naming the path).
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    let fd = Address::Unix(path.to_owned())
        .bind(&BindOptions::default().unix_mode(0o600))
        .map_err(|e| match e {
            handover::address::AddressError::UnixInUse { .. } => format!(
                "another handover instance is serving at {}; stop it, or give this one its own \
                 --control PATH",
                path.display()
            ),
            other => format!("control socket: {other}"),
        })?;
    let std = std::os::unix::net::UnixListener::from(fd);
    std.set_nonblocking(true)
        .map_err(|e| format!("control socket: {e}"))?;
    UnixListener::from_std(std).map_err(|e| format!("control socket: {e}"))
}

/// Serves the control socket forever, sending each valid request to `tx`.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Incoming>) {
    let slots = std::sync::Arc::new(Semaphore::new(MAX_CLIENTS));
    let me = rustix::process::getuid();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = answer(
                    stream,
                    &error_answer("busy: too many control clients, try again"),
                )
                .await;
            });
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            match rustix::net::sockopt::socket_peercred(&stream) {
                Ok(cred) if cred.uid == me || cred.uid.is_root() => {}
                Ok(cred) => {
                    tracing::warn!(
                        pid = cred.pid.as_raw_nonzero().get(),
                        uid = cred.uid.as_raw(),
                        "control socket: refused a client of another user"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: could not check a client");
                    return;
                }
            }
            handle(stream, tx).await;
        });
    }
}

async fn handle(stream: UnixStream, tx: mpsc::Sender<Incoming>) {
    let mut done_tx: Option<oneshot::Sender<()>> = None;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    let got = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let reply = match got {
        Err(_) => error_answer(format!(
            "no complete request within {REQUEST_TIMEOUT:?}; send one JSON line ending in a newline"
        )),
        Ok(Err(e)) => error_answer(format!("could not read the request: {e}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST => {
            error_answer(format!("the request is longer than {MAX_REQUEST} bytes"))
        }
        Ok(Ok(_)) if !line.ends_with(b"\n") => error_answer(
            "the request ended without a newline; send one JSON line ending in a newline",
        ),
        Ok(Ok(_)) => match parse_request(&line) {
            Err(e) => error_answer(e),
            Ok(request) => {
                let (reply, rx) = oneshot::channel();
                let (done, written) = oneshot::channel();
                done_tx = Some(done);
                if tx
                    .send(Incoming {
                        request,
                        reply,
                        written,
                    })
                    .await
                    .is_err()
                {
                    error_answer("handover is shutting down")
                } else {
                    rx.await
                        .unwrap_or_else(|_| error_answer("handover is shutting down"))
                }
            }
        },
    };
    let mut text = serde_json::to_vec(&reply).unwrap_or_default();
    text.push(b'\n');
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(&text)).await;
    if let Some(done) = done_tx {
        let _ = done.send(());
    }
}

async fn answer(mut stream: UnixStream, a: &Answer) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(a).unwrap_or_default();
    text.push(b'\n');
    stream.write_all(&text).await
}

/// Sends `request` to the handover at `path` and waits up to `timeout` for
/// the answer (blocking; used by the `reload`, `status` and `stop`
/// commands).
pub fn request(path: &Path, request: Request, timeout: Duration) -> Result<Answer, String> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach handover at {}: {e}. Is `handover run` running with this --control path?",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(REQUEST_TIMEOUT)).ok();
    let mut line = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| format!("sending the request to {}: {e}", path.display()))?;
    let mut reader = std::io::BufReader::new(s);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!("no answer from handover within {timeout:?}")
        } else {
            format!("reading the answer: {e}")
        }
    })?;
    if answer.is_empty() {
        return Err(
            "handover closed the connection without an answer (was this user refused?)".into(),
        );
    }
    serde_json::from_str(&answer)
        .map_err(|e| format!("handover's answer is not JSON ({e}): {answer}"))
}

/// The default control socket path: `$XDG_RUNTIME_DIR/handover/control.sock`,
/// else `/tmp/handover-UID/control.sock`.
pub fn default_path() -> PathBuf {
    runtime_dir().join("control.sock")
}

/// handover's private runtime directory (created with mode 0700 by
/// [`ensure_private_dir`]).
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("handover"),
        _ => PathBuf::from(format!(
            "/tmp/handover-{}",
            rustix::process::getuid().as_raw()
        )),
    }
}

/// Creates `dir` with mode 0700 if missing; refuses one owned by another
/// user or open to others.
pub fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let me = rustix::process::getuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to this user ({me}); choose another --control path",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by other users; fix its mode (chmod 700) or choose another --control path",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_parse() {
        assert_eq!(
            parse_request(b"{\"cmd\":\"reload\"}\n").unwrap(),
            Request::Reload
        );
        assert_eq!(
            parse_request(b" {\"cmd\":\"status\"} ").unwrap(),
            Request::Status
        );
        for bad in [&b"reload"[..], b"{\"cmd\":\"explode\"}", b"\xff", b""] {
            let e = parse_request(bad).unwrap_err();
            assert!(
                e.contains("expected one JSON object") || e.contains("UTF-8"),
                "{e}"
            );
        }
    }

    proptest! {
        #[test]
        fn parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_request(&data);
        }
    }

    #[tokio::test]
    async fn bad_clients_get_errors_and_do_not_block_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let listener = bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(serve(listener, tx));
        tokio::spawn(async move {
            while let Some(i) = rx.recv().await {
                let _ = i
                    .reply
                    .send(serde_json::json!({"ok": true, "echo": format!("{:?}", i.request)}));
            }
        });
        // A slow-loris client holds a connection open without a newline.
        let mut slow = UnixStream::connect(&path).await.unwrap();
        slow.write_all(b"{\"cmd\":").await.unwrap();
        // Meanwhile good and bad clients are answered at once.
        let p = path.clone();
        let ok = tokio::task::spawn_blocking(move || {
            request(&p, Request::Status, Duration::from_secs(5))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(ok["ok"], true);
        let mut garbage = UnixStream::connect(&path).await.unwrap();
        garbage.write_all(b"not json\n").await.unwrap();
        let mut buf = String::new();
        BufReader::new(garbage).read_line(&mut buf).await.unwrap();
        assert!(buf.contains("expected one JSON object"), "{buf}");
        let mut big = UnixStream::connect(&path).await.unwrap();
        let _ = big.write_all(&vec![b'x'; MAX_REQUEST + 10]).await;
        let mut buf = String::new();
        BufReader::new(big).read_line(&mut buf).await.unwrap();
        assert!(buf.contains("longer than 4096"), "{buf}");
        // The slow client gets a timeout answer eventually.
        let mut buf = String::new();
        tokio::time::timeout(
            REQUEST_TIMEOUT + Duration::from_secs(5),
            BufReader::new(slow).read_line(&mut buf),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(buf.contains("no complete request within"), "{buf}");
        // Mode 0600.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A second instance at the same path is refused.
        let e = bind(&path).unwrap_err();
        assert!(e.contains("another handover instance is serving at"), "{e}");
    }
}
