//! An axum server that restarts under `handover run` without losing a
//! request. See README.md for what each part is for.

use std::time::Duration;

use axum::{Router, routing::get};
use handover::activation::ListenFds;
use handover::drain::http::{HttpOptions, serve_connection};
use handover::drain::{self, Drain, Listener};
use handover::notify::{Notifier, State};
use hyper_util::service::TowerToHyperService;
use tokio::signal::unix::{SignalKind, signal};

async fn hello() -> String {
    format!("pid={}\n", std::process::id())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The listening socket comes from handover (LISTEN_FDS, fd 3): every
    //    generation shares it. Read the environment before anything else
    //    opens a descriptor (the runtime does).
    let mut fds = ListenFds::from_env()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let socket: tokio::net::TcpListener = fds.take("http").map_err(|e| {
            format!("{e}: run me with `handover run --bind http=tcp://...` (or a systemd .socket unit with FileDescriptorName=http)")
        })?;
        let app = Router::new().route("/", get(hello));

        // 2. Draining: the listener stops accepting once the drain closes;
        //    serve_connection then answers with "Connection: close" and
        //    closes a keep-alive connection only after it has been idle for
        //    DRAIN_GRACE (a request already on its way is answered).
        let drain = Drain::new();
        let listener = Listener::new(socket, &drain);
        let grace = std::env::var("DRAIN_GRACE")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(Duration::from_secs(2), Duration::from_secs_f64);
        let options = HttpOptions::default().idle_grace(grace);

        let mut term = signal(SignalKind::terminate())?;
        let closer = drain.clone();
        tokio::spawn(async move {
            term.recv().await;
            // 4. Stop accepting: the new generation, which shares the
            //    socket, accepts from now on.
            closer.close();
        });

        // 3. Readiness: handover stops the old generation only after READY=1.
        Notifier::from_env()?.notify(&[State::Ready])?;

        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) if drain::is_closed_error(&e) => break,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let service = TowerToHyperService::new(app.clone());
            let (drain, options) = (drain.clone(), options.clone());
            tokio::spawn(async move {
                let _ = serve_connection(stream, service, &drain, &options).await;
            });
        }
        // 5. Wait for the connections (handover's --stop-timeout bounds it).
        let _ = drain.wait_async(Duration::from_secs(60)).await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
