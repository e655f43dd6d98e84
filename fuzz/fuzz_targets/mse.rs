//! The MSE handshake fed arbitrary bytes: a responder, or an initiator after its first message
//! (the input picks which), given an honest prefix of its peer's messages (so the fuzzer reaches
//! the encrypted fields past the Diffie-Hellman keys) followed by the fuzzer's bytes, in reads of
//! a size the input picks. It may not panic, take more bytes than it was given, take fewer
//! unless done, or forget a failure.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shoal_engine::mse::{Handshake, Policy, Secrets};
use shoal_engine::InfoHash;

const HASH: InfoHash = InfoHash([0x42; 20]);

fn secrets(k: u8, pad: usize, crypto_pad_len: u16) -> Secrets {
    // A 16-bit private key: weak, but each modular exponentiation is 10 times cheaper than
    // with 160 bits, and that is where a run spends its time.
    let mut private_key = [0; 20];
    private_key[18..].copy_from_slice(&[k, k]);
    Secrets {
        private_key,
        pad: vec![k; pad],
        crypto_pad_len,
    }
}

fn initiator() -> Handshake {
    Handshake::initiator(HASH, Policy::PreferRc4, secrets(1, 40, 7), b"initial payload").unwrap()
}

fn responder() -> Handshake {
    Handshake::responder_for(Policy::PreferRc4, secrets(2, 30, 5), &[InfoHash([1; 20]), HASH])
}

/// The honest bytes each side sends (initiator's first, then responder's), computed once: the
/// secrets are fixed, so a fresh machine follows the same transcript.
fn transcript() -> &'static (Vec<u8>, Vec<u8>) {
    static T: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    T.get_or_init(|| {
        let (mut a, mut b) = (initiator(), responder());
        let (mut to_b, mut to_a) = (Vec::new(), Vec::new());
        while !(a.is_done() && b.is_done()) {
            while let Some(out) = a.poll_output() {
                assert_eq!(b.handle_input(&out), Ok(out.len()));
                to_b.extend_from_slice(&out);
            }
            while let Some(out) = b.poll_output() {
                assert_eq!(a.handle_input(&out), Ok(out.len()));
                to_a.extend_from_slice(&out);
            }
        }
        (to_b, to_a)
    })
}

fn feed(mut hs: Handshake, input: &[u8], chunk: usize) {
    let mut rest = input;
    while !rest.is_empty() && !hs.is_done() {
        let piece = &rest[..chunk.min(rest.len())];
        match hs.handle_input(piece) {
            Ok(n) => {
                assert!(n <= piece.len(), "took {n} of {}", piece.len());
                assert!(n == piece.len() || hs.is_done(), "stopped early");
                rest = &rest[n..];
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                assert_eq!(hs.handle_input(b"more"), Err(e), "a failure is final");
                assert_eq!(hs.error(), Some(e));
                assert!(hs.poll_output().is_none() && hs.poll_done().is_none());
                return;
            }
        }
        let _ = hs.poll_output();
    }
    if hs.is_done() {
        let _ = hs.poll_output();
        let mut done = hs.poll_done().expect("the outcome of a completed handshake");
        assert_eq!(done.info_hash, HASH);
        if let Some(c) = &mut done.cipher {
            let mut rest = rest.to_vec();
            c.decrypt(&mut rest);
        }
        assert_eq!(hs.handle_input(b"stream"), Ok(0));
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // The first two bytes cut the honest prefix; the third picks the side (its low bit) and
    // sizes the reads.
    let cut = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let chunk = usize::from(data[2] >> 1) + 1;
    let tail = &data[3..];
    let (to_b, to_a) = transcript();
    if data[2] & 1 == 0 {
        let mut input = to_b[..cut.min(to_b.len())].to_vec();
        input.extend_from_slice(tail);
        feed(responder(), &input, chunk);
    } else {
        let mut a = initiator();
        assert!(a.poll_output().is_some(), "the initiator speaks first");
        let mut input = to_a[..cut.min(to_a.len())].to_vec();
        input.extend_from_slice(tail);
        feed(a, &input, chunk);
    }
});
