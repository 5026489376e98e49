//! Who is in a process group, read from `/proc`.
//!
//! `kill(-pgid, 0)` cannot answer "does anyone besides the leader remain?"
//! while the leader is an unreaped zombie (the zombie is still a member), and
//! after the leader is reaped it can no longer prove the group is ours. So
//! the graceful phase of a kill looks at `/proc/<pid>/stat` instead.

/// `(state, pgrp)` from the text of `/proc/<pid>/stat`.
pub(super) fn parse_stat(stat: &[u8]) -> Option<(u8, i32)> {
    // The command name (field 2) is in parentheses and may itself contain
    // ") " and spaces: the fields after it start after the last ')'.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// How many processes of group `pgid`, other than `except`, are not zombies
/// (a dying process counts until it is one). `None` when `/proc` cannot be read.
pub(super) fn live_members(pgid: i32, except: Option<i32>) -> Option<usize> {
    let dir = std::fs::read_dir("/proc").ok()?;
    let mut count = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if Some(pid) == except {
            continue;
        }
        // A process may vanish between readdir and read: not a member then.
        let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((state, pgrp)) = parse_stat(&stat)
            && pgrp == pgid
            && state != b'Z'
        {
            count += 1;
        }
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        assert_eq!(
            parse_stat(b"42 (sh) S 1 42 42 0 -1 4194560 0"),
            Some((b'S', 42))
        );
        assert_eq!(
            parse_stat(b"7 (a) b) (c) Z 1 99 7 0"),
            Some((b'Z', 99)),
            "names with parentheses"
        );
        assert_eq!(parse_stat(b"garbage"), None);
        assert_eq!(parse_stat(b"1 (x)"), None);
    }

    #[test]
    fn own_group_is_seen() {
        let me = rustix::process::getpgrp().as_raw_pid();
        let n = live_members(me, None).expect("/proc is readable");
        assert!(n >= 1);
    }
}
