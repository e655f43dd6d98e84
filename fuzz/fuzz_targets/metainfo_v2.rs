//! v2 and hybrid `.torrent` parsing (BEP 52): `Metainfo::from_bytes` never panics on a mutated
//! file tree or piece layers, and what it accepts is consistent: every real file of a v2 torrent
//! starts on a piece boundary, every layer it kept hashes to its file's root, and a round trip
//! through `to_bytes` keeps both info hashes. Seeds: libtorrent's v2 and hybrid torrents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_engine::merkle;
use shoal_engine::metainfo::Metainfo;

fuzz_target!(|data: &[u8]| {
    let Ok(meta) = Metainfo::from_bytes(data) else {
        return;
    };
    let info = &meta.info;
    let pl = u64::from(info.piece_length);
    assert_eq!(
        meta.info_hash_v2.is_some(),
        info.version.has_v2(),
        "a v2 hash exactly for v2 and hybrid torrents"
    );
    if info.version.has_v1() {
        assert_eq!(info.pieces.len(), info.lengths.num_pieces() as usize);
    } else {
        assert!(info.pieces.is_empty());
    }
    if info.version.has_v2() {
        let mut offset = 0u64;
        for f in &info.files {
            if !f.pad && f.length > 0 {
                assert_eq!(offset % pl, 0, "v2 files start on a piece boundary");
                let root = f.pieces_root.expect("a v2 file with data has a root");
                if f.length > pl {
                    let layer = &meta.piece_layers[&root];
                    assert_eq!(layer.len() as u64, f.length.div_ceil(pl));
                    assert_eq!(merkle::root_from_layer(layer, pl), root);
                }
            }
            offset += f.length;
        }
    }
    let bytes = meta.to_bytes();
    let again = Metainfo::from_bytes(&bytes).expect("the output of to_bytes parses");
    assert_eq!(again.info_hash, meta.info_hash);
    assert_eq!(again.info_hash_v2, meta.info_hash_v2);
    assert_eq!(again, meta, "round trip keeps every field");
});
