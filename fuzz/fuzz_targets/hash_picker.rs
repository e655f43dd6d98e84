//! BEP 52 hash requests fed arbitrary numbers: `PieceTrees::answer` never panics, answers only
//! runs that fit the layer with the number of hashes the header asks for, and a full-proof
//! answer folds up to the file's root; a `HashPicker` fed arbitrary answers to its own
//! requests never panics and keeps only hashes that are the true layer.
#![no_main]

use std::collections::BTreeMap;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use shoal_engine::hash_picker::{proven_root, uncle_count, HashPicker, PieceTrees};
use shoal_engine::merkle::{pad_hash, root_from_layer, sha256};
use shoal_engine::wire::HashRequest;

/// Pieces of 64 KiB: the piece layer is 2 above the leaves.
const PIECE: u64 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if data.len() < 20 {
        return;
    }
    let pieces = 2 + usize::from(u16::from_be_bytes([data[0], data[1]]) % 3000);
    let layer: Vec<[u8; 32]> = (0..pieces)
        .map(|i| sha256(&(i as u32 ^ u32::from(data[2])).to_be_bytes()))
        .collect();
    let root = root_from_layer(&layer, PIECE);
    let mut map = BTreeMap::new();
    map.insert(root, layer.clone());
    let trees = PieceTrees::new(PIECE, &map);
    let n = |i: usize| u32::from_be_bytes(data[i..i + 4].try_into().unwrap());
    let req = HashRequest {
        pieces_root: if data[3] & 1 == 0 {
            root
        } else {
            [data[3]; 32]
        },
        base_layer: if data[3] & 2 == 0 { 2 } else { n(4) },
        index: n(8) % 4096,
        length: n(12) % 1100,
        proof_layers: n(16) % 16,
    };
    let height = (pieces.next_power_of_two().trailing_zeros()) as u32;
    if let Ok(hashes) = trees.answer(&req) {
        assert!(req.length.is_power_of_two() && req.length <= 512);
        assert!(req.index as usize + req.length as usize <= pieces.next_power_of_two());
        assert_eq!(
            hashes.len(),
            (req.length + uncle_count(req.length, req.proof_layers)) as usize
        );
        if req.proof_layers + 1 == height {
            assert_eq!(proven_root(&req, &hashes, pad_hash(2)), Ok(root));
        }
    }
    // The picker: answers from the trees, one of them corrupted where the input says.
    let mut picker: HashPicker<u8> = HashPicker::new(PIECE, [(root, pieces as u64 * PIECE)]);
    let now = Instant::now();
    let corrupt = data.get(20).copied();
    let mut k = 0u8;
    while let Some(r) = picker.next_request(k % 4, now) {
        let mut answer: Vec<u8> = trees.answer(&r).unwrap().into_iter().flatten().collect();
        if let Some(c) = corrupt.filter(|c| c % 4 == k % 4) {
            let at = usize::from(c) * 7 % answer.len();
            answer[at] ^= 1;
        }
        let _ = picker.handle_hashes(k % 4, &r, &answer);
        k = k.wrapping_add(1);
        if k > 40 {
            break;
        }
    }
    if picker.is_done() {
        assert_eq!(picker.layers()[&root], layer);
    }
});
