//! Fuzzes the socket address parser (without name resolution).
#![no_main]

use handover::address::Address;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Address::parse_literal(&text) {
        // What parses prints back to something that parses to the same.
        Ok(a) => assert_eq!(Address::parse_literal(&a.to_string()).unwrap(), a),
        Err(e) => assert!(e.to_string().contains("Expected tcp://HOST:PORT")),
    }
});
