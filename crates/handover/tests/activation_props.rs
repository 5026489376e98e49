//! Property tests of the `LISTEN_*` parser: any input is an answer or a clear
//! error, never a panic, and what the sending side writes parses back to the
//! same names.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use handover::__private::{EnvVars, parse_env};
use handover::activation::{Activation, is_valid_name};
use proptest::prelude::*;

fn any_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        Just(None),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Some),
        "[0-9]{0,12}".prop_map(|s| Some(s.into_bytes())),
        "[a-z:]{0,20}".prop_map(|s| Some(s.into_bytes())),
    ]
}

fn valid_name() -> impl Strategy<Value = String> {
    "[ -9;-~]{1,40}" // printable ASCII without ':'
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics(pid in any_value(), fds in any_value(), names in any_value(), me in 1u32..100) {
        let vars = EnvVars {
            pid: pid.as_deref().map(OsStr::from_bytes),
            fds: fds.as_deref().map(OsStr::from_bytes),
            names: names.as_deref().map(OsStr::from_bytes),
        };
        match parse_env(vars, me) {
            Ok(names) => {
                for n in &names {
                    prop_assert!(is_valid_name(n), "{n:?}");
                }
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("LISTEN_"), "error does not name the variable: {msg}");
                prop_assert!(msg.contains("expected"), "error does not say what was expected: {msg}");
            }
        }
    }

    #[test]
    fn round_trips_with_the_sending_side(names in proptest::collection::vec(valid_name(), 1..12), me in 1u32..1_000_000) {
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut a = Activation::new();
        for n in &names {
            a.fd(n, f.as_fd()).unwrap();
        }
        let (count, fdnames) = a.env_values();
        let pid = me.to_string();
        let vars = EnvVars {
            pid: Some(OsStr::new(&pid)),
            fds: Some(OsStr::new(&count)),
            names: Some(OsStr::new(&fdnames)),
        };
        prop_assert_eq!(parse_env(vars, me).unwrap(), names.clone());
        // Another pid sees nothing.
        prop_assert!(parse_env(vars, me + 1).unwrap().is_empty());
    }

    #[test]
    fn invalid_names_are_refused_when_sending(name in proptest::collection::vec(any::<u8>(), 0..300)) {
        let name = String::from_utf8_lossy(&name).into_owned();
        let f = std::fs::File::open("/dev/null").unwrap();
        let ok = Activation::new().fd(&name, f.as_fd()).is_ok();
        let valid = !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b':');
        prop_assert_eq!(ok, valid);
    }
}
