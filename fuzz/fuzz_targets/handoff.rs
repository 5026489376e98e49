//! Fuzzes the decoder of the connection hand-over protocol
//! (`handover::pass::connection`) on bytes plus "arrived" descriptor
//! counts, without sockets.
//!
//! Input: byte 0 picks the side (bit 0) and whether to signal EOF at the
//! end (bit 1). Then chunks, each `[ctl][len][len bytes]`: `ctl` says how
//! many descriptors arrive with the chunk (0 below 200, else `ctl - 199`),
//! the bytes are cut to what the decoder wants. Descriptors are tokens that
//! count themselves: after an error the decoder must hold none, a message
//! holds at most one, and once everything is dropped none may be alive. A
//! decoded message re-encodes to the bytes it came from.
#![no_main]

use std::sync::atomic::{AtomicIsize, Ordering};

use handover::__private::connection::{Decoder, Message, Side, encode};
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

fn held(messages: &[Message<Token>]) -> isize {
    messages
        .iter()
        .filter(|m| matches!(m, Message::Conn { .. }))
        .count() as isize
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let side = if mode & 1 == 0 {
        Side::Giver
    } else {
        Side::Taker
    };
    let before = LIVE.load(Ordering::SeqCst);
    let mut d: Decoder<Token> = Decoder::new(side);
    let mut messages = Vec::new();
    let mut frame = Vec::new();
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
        let fds = if *ctl < 200 {
            0
        } else {
            usize::from(*ctl - 199)
        };
        frame.extend_from_slice(bytes);
        match d.feed(bytes, tokens(fds)) {
            Ok(Some(m)) => {
                // What was decoded encodes back to the same bytes.
                let again = encode(&m).expect("a decoded message re-encodes");
                assert_eq!(again, frame);
                frame.clear();
                messages.push(m);
            }
            Ok(None) => {}
            Err(_) => {
                assert_eq!(LIVE.load(Ordering::SeqCst) - before, held(&messages));
                assert_eq!(d.want(), 0);
                break;
            }
        }
    }
    if mode & 2 != 0 {
        let _ = d.eof();
        assert_eq!(LIVE.load(Ordering::SeqCst) - before, held(&messages));
    }
    drop(d);
    drop(messages);
    assert_eq!(LIVE.load(Ordering::SeqCst), before);
});
