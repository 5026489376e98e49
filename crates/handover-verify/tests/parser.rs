//! Property tests of the response parser: it never panics, and valid
//! responses round-trip whichever way they are framed and split.

use handover_verify::http::{ParseError, parse_response};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Framing {
    Length,
    /// Chunk sizes (cycled) used to split the body.
    Chunked(Vec<usize>),
    UntilClose,
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        Just(Framing::Length),
        proptest::collection::vec(1usize..40, 1..5).prop_map(Framing::Chunked),
        Just(Framing::UntilClose),
    ]
}

fn status() -> impl Strategy<Value = u16> {
    (200u16..600).prop_filter("no body by definition", |s| *s != 204 && *s != 304)
}

/// Header names the parser interprets, so it cannot be confused by extras.
fn extra_header() -> impl Strategy<Value = (String, String)> {
    ("[A-Za-z][A-Za-z0-9-]{0,12}", "[ -~]{0,30}")
        .prop_filter("framing headers are set by the test", |(name, _)| {
            let name = name.to_ascii_lowercase();
            !["content-length", "transfer-encoding", "connection"].contains(&name.as_str())
        })
        .prop_map(|(name, value)| (name, value.trim().to_owned()))
}

fn encode(
    status: u16,
    body: &[u8],
    framing: &Framing,
    extra: &[(String, String)],
    close: bool,
    lf_only: bool,
) -> Vec<u8> {
    let eol = if lf_only { "\n" } else { "\r\n" };
    let mut head = format!("HTTP/1.1 {status} Some Reason{eol}");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}{eol}"));
    }
    if close {
        head.push_str(&format!("Connection: close{eol}"));
    }
    let mut wire = Vec::new();
    match framing {
        Framing::Length => {
            head.push_str(&format!("Content-Length: {}{eol}{eol}", body.len()));
            wire.extend_from_slice(head.as_bytes());
            wire.extend_from_slice(body);
        }
        Framing::Chunked(sizes) => {
            head.push_str(&format!("Transfer-Encoding: chunked{eol}{eol}"));
            wire.extend_from_slice(head.as_bytes());
            let mut rest = body;
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                wire.extend_from_slice(format!("{n:X}{eol}").as_bytes());
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(eol.as_bytes());
                rest = &rest[n..];
                i += 1;
            }
            wire.extend_from_slice(format!("0{eol}{eol}").as_bytes());
        }
        Framing::UntilClose => {
            head.push_str(eol);
            wire.extend_from_slice(head.as_bytes());
            wire.extend_from_slice(body);
        }
    }
    wire
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), eof: bool) {
        let _ = parse_response(&bytes, eof);
    }

    #[test]
    fn mutated_responses_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..64),
        framing in framing(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        eof: bool,
    ) {
        let mut wire = encode(200, &body, &framing, &[], false, false);
        for (at, byte) in flips {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        let cut = cut.index(wire.len() + 1);
        if let Ok(Some((response, used))) = parse_response(&wire[..cut], eof) {
            prop_assert!(used <= cut);
            prop_assert!(response.body.len() <= used);
        }
    }

    #[test]
    fn valid_responses_round_trip(
        status in status(),
        body in proptest::collection::vec(any::<u8>(), 0..200),
        framing in framing(),
        extra in proptest::collection::vec(extra_header(), 0..4),
        close: bool,
        lf_only: bool,
        trailing in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let wire = encode(status, &body, &framing, &extra, close, lf_only);
        let until_close = matches!(framing, Framing::UntilClose);
        // Every strict prefix is incomplete, or truncated at EOF.
        for cut in 0..wire.len() {
            prop_assert_eq!(parse_response(&wire[..cut], false), Ok(None), "cut {}", cut);
            if !until_close {
                let at_eof = parse_response(&wire[..cut], true);
                prop_assert!(
                    matches!(at_eof, Err(ParseError::Truncated { received, .. }) if received == cut),
                    "cut {}: {:?}", cut, at_eof
                );
            }
        }
        // The whole response, followed by bytes of a next one.
        let mut stream = wire.clone();
        stream.extend_from_slice(&trailing);
        let (response, used) = if until_close {
            prop_assert_eq!(parse_response(&wire, false), Ok(None));
            let parsed = parse_response(&wire, true);
            prop_assert!(matches!(parsed, Ok(Some(_))), "{:?}", parsed);
            parsed.unwrap().unwrap()
        } else {
            let parsed = parse_response(&stream, false);
            match parsed {
                Ok(Some(ok)) => ok,
                // Trailing bytes are the start of a next response; only the
                // first one matters here.
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            }
        };
        prop_assert_eq!(response.status, status);
        prop_assert_eq!(&response.body, &body);
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!(response.close, close || until_close);
    }
}
