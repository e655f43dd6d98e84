//! `shoal create` speed against mktorrent on the same 1 GiB file, and the raw SHA-1 speed of the
//! `sha1` crate on one core. Run with `cargo bench --bench create`.
//!
//! The data file is kept in the temp folder between runs. Before timing it is dropped from the
//! page cache and read back once (`support::warm`), so it is hot in the cache, in the same state
//! for both tools and every run: the figures are hashing plus copy-from-cache speed, not disk
//! speed.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{mb_per_s, median};

use sha1::{Digest, Sha1};
use shoal_engine::create::{create_torrent, CreateOptions};
use shoal_engine::metainfo::Metainfo;

const FILE_LEN: u64 = 1 << 30;
const PIECE_LEN: u32 = 1 << 20;
const RUNS: usize = 3;
const SHA_BUF: usize = 512 << 20;

/// The 1 GiB data file, written once with pseudo-random bytes and reused afterwards.
fn data_file() -> PathBuf {
    let dir = std::env::temp_dir().join("shoal-bench-create");
    std::fs::create_dir_all(&dir).expect("create bench dir");
    let path = dir.join("data-1GiB.bin");
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(FILE_LEN) {
        eprintln!("writing {} ...", path.display());
        let mut rng = fastrand::Rng::with_seed(0x5ea1);
        let mut buf = vec![0u8; 1 << 20];
        let mut f = std::fs::File::create(&path).expect("create data file");
        for _ in 0..FILE_LEN / buf.len() as u64 {
            rng.fill(&mut buf);
            std::io::Write::write_all(&mut f, &buf).expect("write data file");
        }
    }
    path
}

fn run_shoal(path: &Path) -> (Duration, Metainfo) {
    let opts = CreateOptions {
        piece_length: Some(PIECE_LEN),
        threads: 0,
        ..Default::default()
    };
    let start = Instant::now();
    let bytes = create_torrent(path, &opts).expect("create_torrent");
    let elapsed = start.elapsed();
    (
        elapsed,
        Metainfo::from_bytes(&bytes).expect("our torrent reads back"),
    )
}

fn run_mktorrent(path: &Path, out: &Path) -> (Duration, Metainfo) {
    let _ = std::fs::remove_file(out);
    let start = Instant::now();
    let status = Command::new("mktorrent")
        .args([
            "-t",
            "2",
            "-l",
            "20",
            "-a",
            "http://127.0.0.1:1/announce",
            "-o",
        ])
        .arg(out)
        .arg(path)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run mktorrent (is it installed?)");
    let elapsed = start.elapsed();
    assert!(status.success(), "mktorrent failed");
    let bytes = std::fs::read(out).expect("read mktorrent output");
    (
        elapsed,
        Metainfo::from_bytes(&bytes).expect("mktorrent's torrent reads"),
    )
}

fn sha1_one_core() -> f64 {
    let mut buf = vec![0u8; SHA_BUF];
    fastrand::Rng::with_seed(7).fill(&mut buf);
    let mut best = 0f64;
    for _ in 0..RUNS {
        let start = Instant::now();
        let digest = Sha1::digest(&buf);
        let speed = mb_per_s(SHA_BUF as u64, start.elapsed());
        std::hint::black_box(digest);
        best = best.max(speed);
    }
    best
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    #[cfg(target_arch = "x86_64")]
    let sha_ni = if is_x86_feature_detected!("sha") {
        "yes"
    } else {
        "no"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let sha_ni = "n/a (not x86_64)";
    println!("cores: {cores}; CPU SHA extensions (SHA-NI): {sha_ni}");

    let sha = sha1_one_core();
    println!(
        "sha1 crate, one core, {} MiB in memory: {sha:.0} MB/s (best of {RUNS})",
        SHA_BUF >> 20
    );

    let path = data_file();
    let out = path.with_file_name("mktorrent-out.torrent");
    support::warm(&path);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut hashes = None;
    for run in 0..RUNS {
        let (t_ours, m_ours) = run_shoal(&path);
        let (t_mk, m_mk) = run_mktorrent(&path, &out);
        // Same piece length, same file, same info keys: the info hashes must agree.
        assert_eq!(
            m_ours.info.pieces, m_mk.info.pieces,
            "piece hashes differ from mktorrent's"
        );
        hashes = Some((m_ours.info_hash, m_mk.info_hash));
        ours.push(mb_per_s(FILE_LEN, t_ours));
        theirs.push(mb_per_s(FILE_LEN, t_mk));
        println!(
            "run {}: shoal {:>6.0} MB/s ({:.2} s)   mktorrent -t 2 {:>6.0} MB/s ({:.2} s)",
            run + 1,
            ours[run],
            t_ours.as_secs_f64(),
            theirs[run],
            t_mk.as_secs_f64()
        );
    }
    let _ = std::fs::remove_file(&out);
    let (a, b) = (median(ours), median(theirs));
    if let Some((h_ours, h_mk)) = hashes {
        println!("info hash: shoal {h_ours}, mktorrent {h_mk}");
    }
    println!(
        "1 GiB file hot in page cache, 1 MiB pieces, median of {RUNS}: shoal (all {cores} cores) \
         {a:.0} MB/s, mktorrent -t 2 {b:.0} MB/s, ratio shoal/mktorrent {:.2}",
        a / b
    );
}
