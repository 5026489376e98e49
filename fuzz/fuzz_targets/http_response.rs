//! Fuzzes the HTTP/1.1 response parser of the load generator (`verify`).
#![no_main]

use handover_verify::http::parse_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if let Ok(Some((_, used))) = parse_response(rest, flags & 1 == 1) {
        assert!(used <= rest.len());
    }
});
