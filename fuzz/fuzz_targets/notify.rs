//! Fuzzes the notify message parser and the NOTIFY_SOCKET address parser.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use handover::__private::parse_notify_socket;
use handover::notify::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fields = Message::parse(data);
    for (k, v) in &fields {
        assert!(!k.is_empty() && !k.contains('\n') && !v.contains('\n'));
    }
    let m = Message {
        pid: None,
        uid: None,
        fields,
    };
    let _ = (m.is_ready(), m.status(), m.main_pid());
    let _ = parse_notify_socket(OsStr::from_bytes(data));
});
