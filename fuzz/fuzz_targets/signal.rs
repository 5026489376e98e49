//! Fuzzes the signal name parser (`TERM`, `SIGTERM`, `15`).
#![no_main]

use handover::child::Signal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(sig) = text.parse::<Signal>() {
        assert_eq!(sig.to_string().parse::<Signal>().unwrap(), sig);
    }
});
