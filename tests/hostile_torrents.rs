//! The hostile corpus in tests/hostile/ (written by tests/helpers/make_hostile.py): every file
//! is refused by the engine and by `shoal info` with one clear line naming the problem, and
//! nothing panics.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::shoal;
use shoal_engine::metainfo::Metainfo;

fn hostile_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("hostile")
}

/// NAME -> text its error must contain, from expected.txt.
fn expectations() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(hostile_dir().join("expected.txt")).expect("expected.txt");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, expect) = l.split_once('\t').expect("NAME<TAB>TEXT");
            (name.to_string(), expect.to_string())
        })
        .collect()
}

/// The corpus files, and a check that every one has an expectation and vice versa.
fn corpus() -> Vec<(String, PathBuf, String)> {
    let expect = expectations();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(hostile_dir()).expect("tests/hostile") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("torrent") {
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            let text = expect
                .get(&name)
                .unwrap_or_else(|| panic!("{name} has no line in expected.txt"))
                .clone();
            files.push((name, path, text));
        }
    }
    files.sort();
    assert_eq!(
        files.len(),
        expect.len(),
        "expected.txt lists files that are missing"
    );
    assert!(files.len() >= 70, "the corpus has {} files", files.len());
    files
}

#[test]
fn engine_refuses_every_hostile_torrent_clearly() {
    for (name, path, expect) in corpus() {
        let bytes = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| Metainfo::from_bytes(&bytes));
        let result = result.unwrap_or_else(|_| panic!("{name}: from_bytes panicked"));
        let err = match result {
            Ok(m) => panic!("{name}: accepted as {:?}", m.info.name),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&expect),
            "{name}: error {err:?} lacks {expect:?}"
        );
        assert!(!err.contains('\n'), "{name}: error spans lines: {err:?}");
        let first = err.chars().next().unwrap();
        assert!(
            !first.is_uppercase(),
            "{name}: error starts uppercase: {err:?}"
        );
    }
}

#[test]
fn shoal_info_refuses_every_hostile_torrent_with_one_line() {
    for (name, path, expect) in corpus() {
        for json in [false, true] {
            let mut args = vec!["info", path.to_str().unwrap()];
            if json {
                args.push("--json");
            }
            let out = shoal(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name}: shoal info succeeded");
            assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
            assert!(!stderr.contains("panicked"), "{name}: {stderr}");
            assert!(
                out.stdout.is_empty(),
                "{name}: printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{name}: stderr is not one line: {stderr}");
            assert!(lines[0].starts_with("shoal: error: "), "{name}: {stderr}");
            assert!(
                lines[0].contains(&expect),
                "{name}: {stderr:?} lacks {expect:?}"
            );
        }
    }
}

#[test]
fn a_valid_torrent_next_to_the_corpus_is_accepted() {
    // The corpus is built by mutating this torrent: make sure the base itself is fine, so each
    // case fails for its own reason.
    let mut bytes = b"d8:announce27:http://127.0.0.1:1/announce4:infod6:lengthi40000e4:name8:file.bin12:piece lengthi16384e6:pieces60:".to_vec();
    bytes.extend_from_slice(&[1; 60]);
    bytes.extend_from_slice(b"ee");
    let m = Metainfo::from_bytes(&bytes).expect("the base torrent is valid");
    assert_eq!(m.total_length(), 40_000);
}
