//! Fuzzes the control socket's request parser.
#![no_main]

use handover_cli::control::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data);
});
