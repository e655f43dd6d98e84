//! The peer wire codec fed an arbitrary byte stream: `decode` consumes messages until it needs
//! more or refuses one, never panics, never claims more bytes than it has, re-encodes what it
//! decoded to the same bytes, and asks only for bytes the message really has. The handshake
//! decoder and `Bitfield::from_bytes` get the same input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_engine::bitfield::Bitfield;
use shoal_engine::wire::{decode, Decoded, Handshake, DEFAULT_MAX_MESSAGE_LEN, HANDSHAKE_LEN};

fuzz_target!(|data: &[u8]| {
    handshake(data);
    bitfield(data);
    // The first byte picks a small limit now and then, so `MessageTooLong` is reached too.
    let max_len = match data.first() {
        Some(&b) if b < 16 => u32::from(b) * 4,
        _ => DEFAULT_MAX_MESSAGE_LEN,
    };
    let mut rest = data;
    let mut out = Vec::new();
    loop {
        match decode(rest, max_len) {
            Ok(Decoded::Message { message, consumed }) => {
                assert!(
                    consumed >= 4 && consumed <= rest.len(),
                    "consumed {consumed}"
                );
                assert_eq!(message.encoded_len(), consumed);
                out.clear();
                message.encode(&mut out);
                assert_eq!(out, &rest[..consumed], "re-encoding gives the same bytes");
                // Every prefix of a whole message asks for more, and never past its end.
                for k in [0, 1, 3, 4, 5, consumed / 2, consumed - 1] {
                    if k < consumed {
                        match decode(&rest[..k], max_len) {
                            Ok(Decoded::NeedMore(m)) => {
                                assert!(m > 0 && k + m <= consumed, "k {k} m {m} of {consumed}")
                            }
                            other => panic!("prefix {k} of {consumed}: {other:?}"),
                        }
                    }
                }
                let _ = format!("{message:?}");
                rest = &rest[consumed..];
            }
            Ok(Decoded::NeedMore(m)) => {
                assert!(m > 0);
                break;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                break;
            }
        }
    }
});

fn handshake(data: &[u8]) {
    match Handshake::decode(data) {
        Ok(Some(h)) => {
            assert!(data.len() >= HANDSHAKE_LEN);
            assert_eq!(&h.to_bytes()[..], &data[..HANDSHAKE_LEN]);
            let _ = (h.supports_extended(), h.supports_fast(), h.supports_dht());
        }
        Ok(None) => assert!(data.len() < HANDSHAKE_LEN),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn bitfield(data: &[u8]) {
    // The first two bytes give the piece count, the rest is the payload.
    if data.len() < 2 {
        return;
    }
    let len = u32::from(u16::from_be_bytes([data[0], data[1]]));
    let payload = &data[2..];
    match Bitfield::from_bytes(payload, len) {
        Ok(bf) => {
            assert_eq!(bf.as_bytes(), payload);
            assert_eq!(bf.len(), len);
            let ones = bf.iter_ones().inspect(|&i| assert!(i < len)).count();
            assert_eq!(ones as u32, bf.count_ones());
            assert_eq!(bf.all(), ones as u32 == len);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
