//! Fuzzes the signal name parser (`TERM`, `SIGTERM`, `15`).
#![no_main]

use handover::child::parse_signal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(sig) = parse_signal(&text) {
        assert_eq!(parse_signal(&sig.to_string()).unwrap(), sig);
    }
});
