//! Fuzzes the parser of `HANDOVER_REEXEC_FDS` (`FD=NAME` entries separated
//! by `:`), which an in-place re-executed image reads from its environment.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use handover::reexec::parse_fds;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(fds) = parse_fds(OsStr::from_bytes(data)) {
        // What parses names each descriptor and each name once, above stdio,
        // and reads back the same when written out again.
        let text = fds
            .iter()
            .map(|(fd, n)| format!("{fd}={n}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fds(OsStr::new(&text)).unwrap(), fds);
        for (i, (fd, name)) in fds.iter().enumerate() {
            assert!(*fd >= 3);
            assert!(handover::activation::is_valid_name(name));
            assert!(fds[..i].iter().all(|(f, n)| f != fd && n != name));
        }
    }
});
