//! Fuzzes the descriptor-passing decoder on bytes plus "arrived"
//! descriptor counts, without sockets.
//!
//! Input: byte 0 picks the side (bit 0) and whether to signal EOF at the
//! end (bit 1). Then chunks, each `[ctl][len][len bytes]`: `ctl` says how
//! many descriptors arrive with the chunk (see `fds_for`), the bytes are
//! cut to what the decoder wants. Descriptors are tokens that count
//! themselves: after an error the decoder must hold none, and after
//! everything is dropped none may be alive.
#![no_main]

use std::sync::atomic::{AtomicIsize, Ordering};

use handover::__private::wire::{Decoder, Event, Side};
use handover::pass::Meta;
use libfuzzer_sys::fuzz_target;

static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Token;

impl Drop for Token {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

fn tokens(n: usize) -> Vec<Token> {
    LIVE.fetch_add(n as isize, Ordering::SeqCst);
    (0..n).map(|_| Token).collect()
}

fn fds_for(ctl: u8) -> usize {
    match ctl {
        0..=159 => 0,
        160..=249 => usize::from(ctl - 159),
        250 => 253,
        251 => 254,
        252 => 1000,
        _ => 1,
    }
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

fuzz_target!(|data: &[u8]| {
    // The metadata decoder on the raw input; a decoded map re-encodes to
    // something that decodes to the same map.
    if let Ok(m) = Meta::from_bytes(data) {
        let again = Meta::from_bytes(&m.to_bytes().expect("a decoded map re-encodes")).unwrap();
        assert_eq!(again, m);
    }

    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let side = if mode & 1 == 0 {
        Side::Client
    } else {
        Side::Server
    };
    let before = LIVE.load(Ordering::SeqCst);
    let mut d: Decoder<Token> = Decoder::new(side);
    let mut events = Vec::new();
    while let [ctl, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (bytes, tail) = tail.split_at(n);
        rest = tail;
        let want = d.want();
        let bytes = if want == 0 {
            bytes
        } else {
            &bytes[..n.min(want)]
        };
        match d.feed(bytes, tokens(fds_for(*ctl))) {
            Ok(Some(e)) => events.push(e),
            Ok(None) => {}
            Err(_) => {
                assert_eq!(LIVE.load(Ordering::SeqCst) - before, held(&events));
                assert_eq!(d.want(), 0);
                break;
            }
        }
    }
    if mode & 2 != 0 {
        // At end of stream the decoder gives up any unfinished record.
        let _ = d.eof();
        assert_eq!(LIVE.load(Ordering::SeqCst) - before, held(&events));
    }
    drop(d);
    drop(events);
    assert_eq!(LIVE.load(Ordering::SeqCst), before);
});
