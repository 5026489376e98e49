//! A description of the machine the figures come from.

use std::process::Command;

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8(text).ok()
        })
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| format!("({cmd} not found)"))
}

fn proc_field(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn run(python: &str) -> Result<serde_json::Value, String> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = proc_field("/proc/cpuinfo", "model name");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mem = proc_field("/proc/meminfo", "MemTotal");
    let rustc = first_line("rustc", &["--version"]);
    let py = first_line(python, &["--version"]);
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    Ok(serde_json::Value::String(format!(
        "- CPUs (nproc): {cpus}\n- CPU model: {model}\n- memory: {mem}\n- kernel: {kernel}\n\
         - rustc: {rustc}\n- Python: {py}\n- open-file limit (soft/hard, after raising): {}/{}\n",
        nofile.current.map_or("unlimited".into(), |v| v.to_string()),
        nofile.maximum.map_or("unlimited".into(), |v| v.to_string()),
    )))
}
