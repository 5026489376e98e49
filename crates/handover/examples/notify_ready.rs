//! Both sides of sd_notify in one program: a supervisor binds a notify socket
//! and starts this same program as its child with NOTIFY_SOCKET set; the
//! child reports STATUS, READY and STOPPING; the supervisor prints each
//! message with the pid the kernel says sent it.
//!
//! ```text
//! cargo run -p handover --example notify_ready
//! ```

use std::process::Command;
use std::time::Duration;

use handover::notify::{Notifier, NotifySocket, State};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        // Child: report progress to whoever supervises us.
        let n = Notifier::from_env()?;
        n.notify(&[State::Status("warming up")])?;
        std::thread::sleep(Duration::from_millis(200));
        n.notify(&[State::Ready, State::Status("serving")])?;
        n.notify(&[State::Stopping])?;
        return Ok(());
    }
    // Supervisor.
    let dir = std::env::temp_dir().join(format!("handover-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sock = NotifySocket::bind(&dir.join("notify"))?;
    let mut child = Command::new(std::env::current_exe()?)
        .env("NOTIFY_SOCKET", sock.env_value())
        .spawn()?;
    println!("started child {}", child.id());
    loop {
        match sock.recv_timeout(Some(Duration::from_secs(10)))? {
            Some(m) => {
                println!("from pid {:?}: {:?}", m.pid, m.fields);
                if m.is_stopping() {
                    break;
                }
            }
            None => {
                eprintln!("the child went quiet for 10s");
                break;
            }
        }
    }
    child.wait()?;
    drop(sock);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
