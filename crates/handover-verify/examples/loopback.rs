//! Runs `verify()` against a tiny in-process HTTP server whose "pid" changes
//! on every reload, and prints the report.
//!
//! ```text
//! cargo run --release -p handover-verify --example loopback -- [keep-alive|new] [connections] [seconds]
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use handover_verify::{LoadConfig, Mode, Trigger, VerifyConfig, stderr_is_terminal, verify};

/// Answers `pid=<generation>\n` to every request on one connection.
fn serve(stream: TcpStream, generation: &AtomicU32) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    loop {
        let mut close = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            close |= line.eq_ignore_ascii_case("connection: close\r\n");
            if line == "\r\n" {
                break;
            }
        }
        let body = format!("pid={}\n", generation.load(Ordering::SeqCst));
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        writer.write_all(format!("{head}{body}").as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = match args.next().as_deref() {
        Some("new") => Mode::NewConnection,
        _ => Mode::KeepAlive,
    };
    let connections = args.next().and_then(|s| s.parse().ok()).unwrap_or(8);
    let seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let generation = Arc::new(AtomicU32::new(1));
    {
        let generation = Arc::clone(&generation);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let generation = Arc::clone(&generation);
                thread::spawn(move || serve(stream, &generation));
            }
        });
    }

    let mut load = LoadConfig::new(addr, mode);
    load.connections = connections;
    let reload = Trigger::custom(move || {
        generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    let mut cfg = VerifyConfig::new(load, Duration::from_secs(seconds))
        .with_reloads(Duration::from_secs(1), reload);
    cfg.progress = stderr_is_terminal();
    let report = verify(cfg)?;
    print!("{}", report.render_table());
    Ok(())
}
