//! Property tests of the descriptor-passing wire format: whatever a sender
//! encodes, a receiver decodes to the same records however its reads are
//! split; and no input (random, or a valid session with damage) makes the
//! decoder panic or lose a descriptor. Descriptors are stood in for by
//! tokens that count themselves, so a leak would show as a live token.

use std::cell::Cell;

use handover::__private::wire::{self, Decoder, Event, Side};
use handover::pass::{MAX_FDS_PER_MESSAGE, Meta, Metadata, PassError, VERSION};
use proptest::prelude::*;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

/// A stand-in for a descriptor: counts how many exist on this thread.
#[derive(Debug)]
struct Token;

impl Token {
    fn many(n: usize) -> Vec<Token> {
        LIVE.with(|l| l.set(l.get() + n as isize));
        (0..n).map(|_| Token).collect()
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        LIVE.with(|l| l.set(l.get() - 1));
    }
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

fn meta_strategy() -> impl Strategy<Value = Metadata> {
    prop_oneof![
        Just(Metadata::None),
        proptest::collection::btree_map("[a-z\u{e9}\u{4e16}]{1,12}", "\\PC{0,24}", 0..6)
            .prop_map(|m| Metadata::Pairs(m.into_iter().collect::<Meta>())),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Metadata::Bytes),
    ]
}

fn records_strategy() -> impl Strategy<Value = Vec<(usize, Metadata)>> {
    let nfds = prop_oneof![1usize..5, 250usize..260, 500usize..800];
    proptest::collection::vec((nfds, meta_strategy()), 0..5)
}

/// A whole server-to-client session: each frame's bytes and how many
/// descriptors ride with its first byte.
fn session(records: &[(usize, Metadata)]) -> Vec<(Vec<u8>, usize)> {
    let mut frames = vec![(wire::hello(VERSION).to_vec(), 0)];
    for (n, meta) in records {
        for f in wire::encode_record(*n, meta).unwrap() {
            assert!(f.fds.len() <= MAX_FDS_PER_MESSAGE);
            frames.push((f.bytes, f.fds.len()));
        }
    }
    frames.push((wire::encode_end(records.len() as u32).to_vec(), 0));
    frames
}

/// Feeds `frames` to a decoder, splitting reads by `cuts`, the way a
/// receiver reads a socket: never past what the decoder wants, descriptors
/// with the first byte of their frame.
fn decode(
    side: Side,
    frames: &[(Vec<u8>, usize)],
    cuts: &[usize],
) -> (Vec<Event<Token>>, Result<(), PassError>) {
    let mut d: Decoder<Token> = Decoder::new(side);
    let mut events = Vec::new();
    let mut cut = cuts.iter().cycle();
    for (bytes, nfds) in frames {
        let mut at = 0;
        while at < bytes.len() {
            let want = d.want();
            if want == 0 {
                // Done (or failed): anything more is an error.
                let r = d.feed(&bytes[at..], Token::many(if at == 0 { *nfds } else { 0 }));
                return (events, r.map(|_| ()));
            }
            let n = (*cut.next().unwrap_or(&usize::MAX)).clamp(1, want.min(bytes.len() - at));
            let fds = Token::many(if at == 0 { *nfds } else { 0 });
            match d.feed(&bytes[at..at + n], fds) {
                Ok(Some(e)) => events.push(e),
                Ok(None) => {}
                Err(e) => {
                    assert_eq!(d.want(), 0, "a failed decoder wants nothing");
                    return (events, Err(e));
                }
            }
            at += n;
        }
    }
    let r = d.eof();
    (events, r)
}

fn held(events: &[Event<Token>]) -> isize {
    events
        .iter()
        .map(|e| match e {
            Event::Record { fds, .. } => fds.len() as isize,
            _ => 0,
        })
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip(records in records_strategy(), cuts in proptest::collection::vec(1usize..40, 1..8)) {
        let before = live();
        let frames = session(&records);
        let (events, result) = decode(Side::Client, &frames, &cuts);
        prop_assert!(result.is_ok(), "{:?}", result);
        prop_assert_eq!(events.len(), records.len() + 2);
        let hello_ok = matches!(events[0], Event::Hello { version: VERSION });
        prop_assert!(hello_ok);
        for (e, (n, meta)) in events[1..].iter().zip(&records) {
            match e {
                Event::Record { fds, meta: m } => {
                    prop_assert_eq!(fds.len(), *n);
                    prop_assert_eq!(m, meta);
                }
                other => prop_assert!(false, "expected a record, got {:?}", other),
            }
        }
        let end_ok = matches!(events.last(), Some(Event::End { records: r }) if *r as usize == records.len());
        prop_assert!(end_ok);
        prop_assert_eq!(live() - before, held(&events));
        drop(events);
        prop_assert_eq!(live(), before);
    }

    #[test]
    fn meta_round_trip(meta in meta_strategy()) {
        if let Metadata::Pairs(m) = meta {
            let bytes = m.to_bytes().unwrap();
            prop_assert_eq!(Meta::from_bytes(&bytes).unwrap(), m);
        }
    }

    /// Random bytes and random descriptor counts: never a panic, and after
    /// an error the decoder holds nothing.
    #[test]
    fn garbage_never_panics_or_leaks(
        server_side in any::<bool>(),
        chunks in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..40), 0usize..300), 0..12),
    ) {
        let before = live();
        let side = if server_side { Side::Server } else { Side::Client };
        let mut d: Decoder<Token> = Decoder::new(side);
        let mut events = Vec::new();
        for (bytes, nfds) in chunks {
            let n = bytes.len().min(d.want().max(1));
            match d.feed(&bytes[..n], Token::many(nfds)) {
                Ok(Some(e)) => events.push(e),
                Ok(None) => {}
                Err(_) => {
                    prop_assert_eq!(live() - before, held(&events));
                    break;
                }
            }
        }
        let _ = d.eof();
        prop_assert_eq!(live() - before, held(&events));
        drop(d);
        drop(events);
        prop_assert_eq!(live(), before);
    }

    /// A valid session with one byte changed, cut short, or with the wrong
    /// number of descriptors on one frame.
    #[test]
    fn damaged_sessions_fail_cleanly(
        records in records_strategy(),
        damage in 0u8..3,
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cuts in proptest::collection::vec(1usize..40, 1..8),
    ) {
        let before = live();
        let mut frames = session(&records);
        let i = at.index(frames.len());
        match damage {
            0 => {
                let j = at.index(frames[i].0.len());
                frames[i].0[j] ^= value | 1;
            }
            1 => {
                let total: usize = frames.iter().map(|f| f.0.len()).sum();
                let mut keep = at.index(total);
                frames.retain_mut(|f| {
                    if keep == 0 { return false; }
                    let k = keep.min(f.0.len());
                    f.0.truncate(k);
                    keep -= k;
                    true
                });
            }
            _ => frames[i].1 = (frames[i].1 + 1 + usize::from(value) % 254) % (MAX_FDS_PER_MESSAGE + 2),
        }
        let (events, result) = decode(Side::Client, &frames, &cuts);
        if damage != 0 {
            prop_assert!(result.is_err(), "damage {} went unnoticed", damage);
        }
        prop_assert_eq!(live() - before, held(&events));
        drop(events);
        prop_assert_eq!(live(), before);
    }
}

#[test]
fn oversized_lengths_are_refused_before_reading() {
    let mut d: Decoder<Token> = Decoder::new(Side::Client);
    d.feed(&wire::hello(VERSION), Token::many(0)).unwrap();
    let h = wire::Header {
        frame: wire::FRAME_RECORD,
        meta_kind: wire::META_BYTES,
        fds: 1,
        count: 1,
        len: u32::MAX,
    };
    let err = d.feed(&h.to_bytes(), Token::many(1)).unwrap_err();
    assert!(matches!(err, PassError::TooLarge { .. }), "{err}");
    assert_eq!(live(), 0);
    let h = wire::Header {
        count: u32::MAX,
        len: 0,
        ..h
    };
    let mut d: Decoder<Token> = Decoder::new(Side::Client);
    d.feed(&wire::hello(VERSION), Token::many(0)).unwrap();
    let err = d.feed(&h.to_bytes(), Token::many(1)).unwrap_err();
    assert!(err.to_string().contains("descriptors"), "{err}");
    assert_eq!(live(), 0);
}
