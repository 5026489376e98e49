//! Fuzzes the LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES parser: any values,
//! and the pid this process is supposed to have. Byte 0 says which
//! variables are set; 0xFF separates the three values.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use handover::__private::{EnvVars, parse_env};
use handover::activation::is_valid_name;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0xFF);
    let mut next = |bit: u8| {
        let v = parts.next().unwrap_or(&[]);
        (flags & bit != 0).then(|| OsStr::from_bytes(v))
    };
    let vars = EnvVars {
        pid: next(1),
        fds: next(2),
        names: next(4),
    };
    let my_pid = u32::from(flags >> 3) + 1;
    match parse_env(vars, my_pid) {
        Ok(names) => assert!(names.iter().all(|n| is_valid_name(n))),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("LISTEN_") && msg.contains("expected"), "{msg}");
        }
    }
});
