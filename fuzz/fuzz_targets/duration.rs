//! Fuzzes the duration parser (`500ms`, `3s`, `1m30s`).
#![no_main]

use handover_cli::duration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(d) = duration::parse(&text) {
        // Formatting rounds to milliseconds; that must parse again.
        let _ = duration::parse(&duration::format(d)).unwrap();
    }
});
