//! A server that uses the socket systemd (or `handover run`, or any
//! socket-activating parent) passed it as "http", or binds one itself.
//!
//! ```text
//! cargo run -p handover --example activation_server           # binds 127.0.0.1:8080
//! systemd-socket-activate -l 127.0.0.1:8080 --fdname=http \
//!     target/debug/examples/activation_server                 # receives it
//! curl http://127.0.0.1:8080/                                 # pid=<its pid>
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use handover::activation::ListenFds;
use handover::notify::{Notifier, State};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut fds = ListenFds::from_env()?;
    let listener: TcpListener = match fds.take("http") {
        Ok(l) => {
            eprintln!("using the inherited socket \"http\"");
            l
        }
        // systemd-socket-activate without --fdname calls it "unknown".
        Err(e) if e.is_not_found() => match fds.take_index(0) {
            Ok(l) => l,
            Err(e) if e.is_not_found() => TcpListener::bind("127.0.0.1:8080")?,
            Err(e) => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    eprintln!("listening on {}", listener.local_addr()?);
    Notifier::from_env()?.notify(&[State::Ready])?;

    for stream in listener.incoming() {
        let mut stream = stream?;
        // Read the request head, then answer and close.
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 2 {
            line.clear();
        }
        let body = format!("pid={}\n", std::process::id());
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
    }
    Ok(())
}
