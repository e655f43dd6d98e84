//! `.torrent` parsing: `Metainfo::from_bytes` never panics, and whatever it accepts survives a
//! round trip through `to_bytes` with the same info hash (and the same fields).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_engine::metainfo::Metainfo;

fuzz_target!(|data: &[u8]| {
    let Ok(meta) = Metainfo::from_bytes(data) else {
        return;
    };
    // The accessors a client calls right after parsing.
    let _ = meta.tiers();
    let lengths = meta.info.lengths;
    assert_eq!(meta.total_length(), lengths.total_length());
    for f in &meta.info.files {
        let _ = f.relative_path();
    }
    let n = lengths.num_pieces();
    if meta.info.version.has_v1() {
        assert_eq!(meta.info.pieces.len(), n as usize, "one hash per piece");
    }
    if n > 0 {
        for piece in [0, n / 2, n - 1] {
            let blocks: u64 = lengths.blocks(piece).map(|b| u64::from(b.len)).sum();
            assert_eq!(blocks, u64::from(lengths.piece_len(piece)));
        }
    }

    let bytes = meta.to_bytes();
    let again = Metainfo::from_bytes(&bytes).expect("the output of to_bytes parses");
    assert_eq!(
        again.info_hash, meta.info_hash,
        "round trip keeps the info hash"
    );
    assert_eq!(again, meta, "round trip keeps every field");
});
