//! `handover run --watch PATH`: reload when a watched file or directory
//! changes, the job consul-template's supervisor did for rendered templates.
//!
//! The interface is one function, [`start`]: it takes the paths and a
//! callback, and calls the callback once per settled burst of changes. The
//! callback asks for a reload through the same path as SIGHUP and the
//! control socket's `reload`; everything about watching stays in this file.
//!
//! # How files really change, and how each is seen
//!
//! Events only *wake* the watcher; what decides whether a path changed is a
//! fingerprint taken after the burst has settled, compared with the one taken
//! after the previous reload (or at start):
//!
//! - a **file**: `stat` through symlinks: device, inode, size, modification
//!   and change times. An in-place write changes the size or times; a
//!   rename-over (how editors and config tools save) brings a new inode; a
//!   Kubernetes ConfigMap update (the `..data` symlink swapped atomically to
//!   a new timestamped directory) makes the path resolve to a new inode.
//! - a **directory**: the same for every entry of the tree (without following
//!   symlinks, whose targets are part of the fingerprint instead).
//!
//! So a burst of events that leaves the path as it was (the server reading
//! its configuration, a change to another file in the same directory)
//! causes no reload, and a burst that changed it causes exactly one.
//! Rewriting a file with the same bytes counts as a change (its times
//! change), which makes `touch FILE` a way to ask for a reload. A watched
//! path that disappears causes no reload; its return does.
//!
//! Inotify watches sit on directories, never on a file's inode: the parent
//! directory of each watched path (where renames and symlink swaps happen),
//! the directory of the file it resolves to (where in-place writes to a
//! symlink's target happen), and for a watched directory the whole tree
//! below it. After each burst the set is recomputed from the paths as they
//! resolve now, so a swapped symlink is followed to its new target.
//!
//! Debounce: the fingerprints are taken once no event came for the debounce
//! time (`--watch-debounce`), or at the latest after 20 times that while
//! events keep coming, so a file rewritten non-stop still reloads.
//!
//! Why `notify` rather than inotify by hand: it is the maintained watcher
//! the Rust ecosystem uses (recursive watches that follow new
//! subdirectories, queue-overflow reporting), and its debouncer crates are
//! not used because what decides a reload here is the fingerprint
//! comparison, not the event stream: a plain quiet-period timer is all the
//! debouncing needed.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

/// At most this many entries are fingerprinted in a watched directory tree;
/// beyond it every event in the tree counts as a change.
const MAX_TREE_ENTRIES: usize = 10_000;

/// While a directory that should be watched is missing (a parent that was
/// removed), how often to try again.
const RETRY: Duration = Duration::from_secs(1);

/// A running watcher; dropping it stops watching.
pub struct Watch {
    stop: mpsc::Sender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.stop.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Msg {
    Event(notify::Result<notify::Event>),
    Stop,
}

/// Watches `paths` and calls `on_change` with the paths that changed, once
/// per settled burst of changes (see the module docs). Each path must exist.
/// Returns `None` when `paths` is empty.
pub fn start(
    paths: &[PathBuf],
    debounce: Duration,
    on_change: impl Fn(&[PathBuf]) + Send + 'static,
) -> Result<Option<Watch>, String> {
    if paths.is_empty() {
        return Ok(None);
    }
    let cwd =
        std::env::current_dir().map_err(|e| format!("--watch: the current directory: {e}"))?;
    let mut targets = Vec::new();
    for p in paths {
        let abs = cwd.join(p);
        let meta = std::fs::metadata(&abs).map_err(|e| {
            format!(
                "--watch {}: {e}; expected an existing file or directory (create it first, or \
                 fix the path)",
                p.display()
            )
        })?;
        if abs.parent().is_none() {
            return Err(format!(
                "--watch {}: watching / is not supported; watch the files or directories your \
                 server reads",
                p.display()
            ));
        }
        tracing::info!(
            path = %abs.display(),
            kind = if meta.is_dir() { "directory" } else { "file" },
            "watching for changes"
        );
        targets.push(abs);
    }
    let (tx, rx) = mpsc::channel();
    let events = tx.clone();
    let watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        let _ = events.send(Msg::Event(e));
    })
    .map_err(|e| format!("--watch: cannot start watching: {e}"))?;
    let mut state = State {
        watcher,
        watched: BTreeMap::new(),
        complete: true,
        baseline: Vec::new(),
        targets,
    };
    state.update_watches();
    if !state.complete {
        return Err(
            "--watch: could not watch every path (see the warnings above); check permissions and \
             the inotify limits (fs.inotify.max_user_watches)"
                .into(),
        );
    }
    state.baseline = state.targets.iter().map(|p| fingerprint(p)).collect();
    let thread = std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || state.run(rx, debounce, on_change))
        .map_err(|e| format!("--watch: cannot start the watcher thread: {e}"))?;
    Ok(Some(Watch {
        stop: tx,
        thread: Some(thread),
    }))
}

struct State {
    watcher: RecommendedWatcher,
    /// Directories watched now, and how.
    watched: BTreeMap<PathBuf, RecursiveMode>,
    /// Whether every wanted directory is watched.
    complete: bool,
    targets: Vec<PathBuf>,
    baseline: Vec<Print>,
}

impl State {
    fn run(mut self, rx: mpsc::Receiver<Msg>, debounce: Duration, on_change: impl Fn(&[PathBuf])) {
        let max_wait = debounce.saturating_mul(20);
        loop {
            // Wait for something that may be a change.
            let first = if self.complete {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(RETRY)
            };
            match first {
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Msg::Event(e)) if !wakes(&e) => continue,
                Ok(Msg::Event(_)) | Err(RecvTimeoutError::Timeout) => {}
            }
            // Let the burst settle.
            let burst = Instant::now();
            loop {
                let left = max_wait.saturating_sub(burst.elapsed());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(debounce.min(left)) {
                    Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                    Ok(Msg::Event(_)) => {}
                    Err(RecvTimeoutError::Timeout) => break,
                }
            }
            self.update_watches();
            let now: Vec<Print> = self.targets.iter().map(|p| fingerprint(p)).collect();
            let mut changed = Vec::new();
            for (i, print) in now.iter().enumerate() {
                let path = &self.targets[i];
                match print {
                    Print::Missing => {
                        if self.baseline[i] != Print::Missing {
                            tracing::warn!(
                                path = %path.display(),
                                "a watched path is gone; no reload until it is back"
                            );
                        }
                        // Keep the old baseline: its return is a change.
                        continue;
                    }
                    Print::TooBig => changed.push(path.clone()),
                    p if *p != self.baseline[i] => changed.push(path.clone()),
                    _ => {}
                }
                self.baseline[i] = print.clone();
            }
            if changed.is_empty() {
                tracing::debug!("watched paths touched but unchanged: no reload");
                continue;
            }
            tracing::info!(
                changed = %changed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                "watched path changed: reloading"
            );
            on_change(&changed);
        }
    }

    /// Makes the set of watched directories match what the targets resolve
    /// to now.
    fn update_watches(&mut self) {
        let mut want: BTreeMap<PathBuf, RecursiveMode> = BTreeMap::new();
        for t in &self.targets {
            // Where renames and symlink swaps of the path itself happen.
            if let Some(parent) = t.parent()
                && let Ok(parent) = std::fs::canonicalize(parent)
            {
                want.entry(parent).or_insert(RecursiveMode::NonRecursive);
            }
            // What it resolves to now.
            if let Ok(real) = std::fs::canonicalize(t) {
                if real.is_dir() {
                    want.insert(real, RecursiveMode::Recursive);
                } else if let Some(dir) = real.parent() {
                    want.entry(dir.to_path_buf())
                        .or_insert(RecursiveMode::NonRecursive);
                }
            }
        }
        // A directory inside a recursively watched tree is already watched
        // (and one inotify watch per directory is all notify keeps).
        let trees: Vec<PathBuf> = want
            .iter()
            .filter(|(_, m)| **m == RecursiveMode::Recursive)
            .map(|(p, _)| p.clone())
            .collect();
        want.retain(|p, m| {
            *m == RecursiveMode::Recursive || !trees.iter().any(|t| p != t && p.starts_with(t))
        });
        let stale: Vec<PathBuf> = self
            .watched
            .iter()
            .filter(|(p, m)| want.get(*p) != Some(*m))
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            let _ = self.watcher.unwatch(&p);
            self.watched.remove(&p);
        }
        self.complete = true;
        for (p, m) in want {
            if self.watched.contains_key(&p) {
                continue;
            }
            match self.watcher.watch(&p, m) {
                Ok(()) => {
                    tracing::debug!(dir = %p.display(), recursive = (m == RecursiveMode::Recursive), "inotify watch");
                    self.watched.insert(p, m);
                }
                Err(e) => {
                    self.complete = false;
                    tracing::warn!(dir = %p.display(), error = %e, "cannot watch a directory; retrying");
                }
            }
        }
    }
}

/// Whether an event may be a change (opening or reading a file is not:
/// the server reading its configuration must not cause a reload).
fn wakes(e: &notify::Result<notify::Event>) -> bool {
    match e {
        Err(e) => {
            tracing::warn!(error = %e, "file watcher");
            true
        }
        Ok(e) => match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => e.need_rescan(),
            _ => true,
        },
    }
}

/// What a watched path looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Print {
    Missing,
    File(Stat),
    /// The directory's real path and its entries (relative path, stat).
    Dir(PathBuf, Vec<(PathBuf, Stat)>),
    /// Too many entries to fingerprint: every event is a change.
    TooBig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    dev: u64,
    ino: u64,
    mode: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    link: Option<PathBuf>,
}

impl Stat {
    fn of(m: &std::fs::Metadata, link: Option<PathBuf>) -> Stat {
        Stat {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            link,
        }
    }
}

fn fingerprint(path: &Path) -> Print {
    let Ok(meta) = std::fs::metadata(path) else {
        return Print::Missing;
    };
    if !meta.is_dir() {
        return Print::File(Stat::of(&meta, None));
    }
    let Ok(real) = std::fs::canonicalize(path) else {
        return Print::Missing;
    };
    let mut entries = vec![(PathBuf::new(), Stat::of(&meta, None))];
    let mut dirs = vec![real.clone()];
    while let Some(dir) = dirs.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in read.flatten() {
            let p = entry.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let link = if m.file_type().is_symlink() {
                std::fs::read_link(&p).ok()
            } else {
                None
            };
            if m.is_dir() {
                dirs.push(p.clone());
            }
            let rel = p.strip_prefix(&real).unwrap_or(&p).to_path_buf();
            entries.push((rel, Stat::of(&m, link)));
            if entries.len() > MAX_TREE_ENTRIES {
                return Print::TooBig;
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Print::Dir(real, entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::{Arc, Mutex};

    /// Starts a watch whose callback records each call.
    fn watch(paths: &[PathBuf]) -> (Watch, Arc<Mutex<Vec<Vec<PathBuf>>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let c = calls.clone();
        let w = start(paths, Duration::from_millis(250), move |p| {
            c.lock().unwrap().push(p.to_vec())
        })
        .unwrap()
        .unwrap();
        (w, calls)
    }

    /// Waits until `calls` has `n` entries, then a while longer to see that
    /// no more come.
    fn expect_calls(calls: &Mutex<Vec<Vec<PathBuf>>>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(1000));
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), n, "{calls:?}");
    }

    #[test]
    fn an_in_place_write_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("app.conf");
        std::fs::write(&f, "a=1\n").unwrap();
        let (_w, calls) = watch(std::slice::from_ref(&f));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&f)
            .and_then(|mut h| std::io::Write::write_all(&mut h, b"b=2\n"))
            .unwrap();
        expect_calls(&calls, 1);
        assert_eq!(calls.lock().unwrap()[0], vec![f]);
    }

    #[test]
    fn a_rename_over_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("app.conf");
        std::fs::write(&f, "a=1\n").unwrap();
        let (_w, calls) = watch(std::slice::from_ref(&f));
        let tmp = dir.path().join(".app.conf.swp");
        std::fs::write(&tmp, "a=2\n").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        expect_calls(&calls, 1);
        // And the watch follows the new inode: a second save is seen too.
        std::fs::write(&tmp, "a=3\n").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        expect_calls(&calls, 2);
    }

    /// The layout the kubelet gives a mounted ConfigMap, and its update: a
    /// new timestamped directory, then `..data` swapped to it by rename.
    fn configmap(dir: &Path, version: u32) {
        let ts = dir.join(format!("..2024_01_0{version}"));
        std::fs::create_dir(&ts).unwrap();
        std::fs::write(ts.join("app.conf"), format!("version={version}\n")).unwrap();
        let tmp = dir.join("..data_tmp");
        symlink(ts.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        if version == 1 {
            symlink("..data/app.conf", dir.join("app.conf")).unwrap();
        } else {
            std::fs::remove_dir_all(dir.join(format!("..2024_01_0{}", version - 1))).unwrap();
        }
    }

    #[test]
    fn a_configmap_symlink_swap_is_a_change_for_the_file_and_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        configmap(dir.path(), 1);
        let file = dir.path().join("app.conf");
        let (_w1, file_calls) = watch(std::slice::from_ref(&file));
        let (_w2, dir_calls) = watch(&[dir.path().to_path_buf()]);
        configmap(dir.path(), 2);
        expect_calls(&file_calls, 1);
        expect_calls(&dir_calls, 1);
        // The watch now follows the new target.
        configmap(dir.path(), 3);
        expect_calls(&file_calls, 2);
        expect_calls(&dir_calls, 2);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "version=3\n");
    }

    #[test]
    fn a_symlink_swap_to_a_file_elsewhere_is_a_change() {
        // Like a release directory: the watched path is a symlink swapped
        // between files that both stay in place.
        let dir = tempfile::tempdir().unwrap();
        let (etc, releases) = (dir.path().join("etc"), dir.path().join("releases"));
        std::fs::create_dir(&etc).unwrap();
        std::fs::create_dir(&releases).unwrap();
        std::fs::write(releases.join("v1.conf"), "v=1\n").unwrap();
        std::fs::write(releases.join("v2.conf"), "v=2\n").unwrap();
        let link = etc.join("app.conf");
        symlink(releases.join("v1.conf"), &link).unwrap();
        let (_w, calls) = watch(std::slice::from_ref(&link));
        let tmp = etc.join(".app.conf.new");
        symlink(releases.join("v2.conf"), &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        expect_calls(&calls, 1);
        // An in-place write to the new target is seen too.
        std::fs::write(releases.join("v2.conf"), "v=22\n").unwrap();
        expect_calls(&calls, 2);
    }

    #[test]
    fn a_burst_of_changes_is_one_call() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("app.conf");
        std::fs::write(&f, "0").unwrap();
        let (_w, calls) = watch(&[f.clone(), dir.path().to_path_buf()]);
        for i in 0..20 {
            std::fs::write(&f, format!("{i}")).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        expect_calls(&calls, 1);
        let mut got = calls.lock().unwrap()[0].clone();
        got.sort();
        let mut want = vec![f, dir.path().to_path_buf()];
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn reading_or_touching_a_neighbour_is_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("app.conf");
        std::fs::write(&f, "a=1\n").unwrap();
        let (_w, calls) = watch(std::slice::from_ref(&f));
        for _ in 0..5 {
            let _ = std::fs::read_to_string(&f).unwrap();
        }
        std::fs::write(dir.path().join("other.conf"), "x").unwrap();
        std::fs::remove_file(dir.path().join("other.conf")).unwrap();
        expect_calls(&calls, 0);
    }

    #[test]
    fn a_path_that_is_gone_then_back_is_one_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("app.conf");
        std::fs::write(&f, "a=1\n").unwrap();
        let (_w, calls) = watch(std::slice::from_ref(&f));
        std::fs::remove_file(&f).unwrap();
        expect_calls(&calls, 0);
        std::fs::write(&f, "a=2\n").unwrap();
        expect_calls(&calls, 1);
    }

    #[test]
    fn a_new_file_deep_in_a_watched_tree_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let (_w, calls) = watch(&[dir.path().to_path_buf()]);
        std::fs::create_dir(dir.path().join("a/b/c")).unwrap();
        expect_calls(&calls, 1);
        // A file in the directory created after the watch started.
        std::fs::write(dir.path().join("a/b/c/site.conf"), "x").unwrap();
        expect_calls(&calls, 2);
    }

    #[test]
    fn a_missing_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = start(
            &[dir.path().join("nope.conf")],
            Duration::from_millis(100),
            |_| {},
        )
        .err()
        .unwrap();
        assert!(
            e.contains("nope.conf") && e.contains("expected an existing file or directory"),
            "{e}"
        );
        assert!(
            start(&[], Duration::from_millis(100), |_| {})
                .unwrap()
                .is_none()
        );
    }
}
