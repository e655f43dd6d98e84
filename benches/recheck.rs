//! Verifying 1 GiB of existing data (`Storage::recheck`, what `shoal verify` and every torrent
//! start run) against the SHA-1 speed of one core times the cores, measured in the same run.
//! Run with `cargo bench --bench recheck`.
//!
//! The data file is the throughput bench's (in the temp folder, kept between runs) and is read
//! before timing, so it is hot in the page cache: the figures are hashing plus copying from the
//! cache, not disk speed. Also shown: SHA-1 on every core at once over in-memory buffers, which
//! is what the machine really gives when it is shared (the ideal `one core x cores` assumes
//! idle cores). And the copy recheck pays on top of hashing: the same file read out of the page
//! cache on every core with nothing done to it, which gives the ceiling for a recheck that
//! reads with `pread` (hash and copy CPU seconds spread over the cores).
//!
//! Knobs: `SHOAL_BENCH_MIB` (1024), `SHOAL_BENCH_RUNS` (3).

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Instant;

use sha1::{Digest, Sha1};
use shoal_actors::disk::{Mode, Storage};
use shoal_engine::metainfo::Metainfo;
use shoal_engine::storage::Layout;
use support::median;

/// Bytes hashed in memory per thread for the reference.
const SHA_BUF: usize = 256 << 20;

/// Chunk of the read-only reference: `Storage::recheck`'s chunk.
const READ_CHUNK: usize = 128 * 1024;

/// MB/s of reading `path` out of the page cache with `threads` threads in [`READ_CHUNK`] preads
/// and doing nothing with it: the copy recheck pays on top of hashing.
fn read_only(path: &Path, threads: usize) -> f64 {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).expect("open data");
    let len = file.metadata().expect("stat data").len();
    let chunks = len.div_ceil(READ_CHUNK as u64);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads as u64 {
            let file = &file;
            s.spawn(move || {
                let mut buf = vec![0u8; READ_CHUNK];
                let mut c = t;
                while c < chunks {
                    let off = c * READ_CHUNK as u64;
                    let n = (len - off).min(READ_CHUNK as u64) as usize;
                    file.read_exact_at(&mut buf[..n], off).expect("read data");
                    std::hint::black_box(&buf);
                    c += threads as u64;
                }
            });
        }
    });
    len as f64 / 1e6 / start.elapsed().as_secs_f64()
}

/// The fastest a recheck can go on `cores` cores if every byte is hashed at `sha1_one` MB/s
/// (one core) and copied out of the page cache at `read_all` MB/s (all cores): the CPU seconds
/// of both, spread over the cores.
fn ceiling(sha1_one: f64, read_all: f64, cores: usize) -> f64 {
    let c = cores as f64;
    c / (1.0 / sha1_one + c / read_all)
}

/// SHA-1 MB/s of `threads` threads each hashing its own in-memory buffer, all at once.
fn sha1_mem(bufs: &[Vec<u8>], threads: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for b in bufs.iter().take(threads) {
            s.spawn(move || std::hint::black_box(Sha1::digest(b)));
        }
    });
    (threads * SHA_BUF) as f64 / 1e6 / start.elapsed().as_secs_f64()
}

fn main() {
    let mib = support::size_mib(1024);
    let runs = support::runs(3);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "machine: {}; load at start: {}",
        support::machine(),
        support::load()
    );
    let dir = support::bench_dir("throughput");
    let data = support::data_file(&dir, mib);
    let bufs: Vec<Vec<u8>> = (0..cores)
        .map(|i| {
            let mut b = vec![0u8; SHA_BUF];
            fastrand::Rng::with_seed(i as u64).fill(&mut b);
            b
        })
        .collect();
    println!("{mib} MiB file hot in page cache, {runs} runs, {cores} cores");
    let mut table = Vec::new();
    for piece_kib in [1024u32, 256] {
        let torrent = support::torrent_for(&data, piece_kib << 10);
        let meta = Metainfo::from_bytes(&std::fs::read(&torrent).expect("read torrent"))
            .expect("our torrent");
        let layout = Layout::new(meta.info.files.iter().map(|f| (data.clone(), f.length)));
        let storage = Storage::open(Path::new(""), layout, meta.info.lengths, Mode::ReadOnly)
            .expect("open data");
        support::warm(&data);
        let (mut ours, mut one, mut all, mut reads, mut loads) =
            (vec![], vec![], vec![], vec![], vec![]);
        for run in 0..runs {
            let s1 = sha1_mem(&bufs, 1);
            let start = Instant::now();
            let have = storage.recheck(&meta.info.pieces, 0, &|_| {});
            let secs = start.elapsed().as_secs_f64();
            assert!(have.all(), "every piece of our own data verifies");
            let sa = sha1_mem(&bufs, cores);
            let rd = read_only(&data, cores);
            let r = (mib << 20) as f64 / 1e6 / secs;
            let load = support::load();
            println!(
                "  {piece_kib:>4} KiB pieces, run {}: recheck {r:>6.0} MB/s ({secs:.2} s); sha1 one \
                 core {s1:>5.0} MB/s (x{cores} = {:>5.0}); sha1 on {cores} threads at once \
                 {sa:>5.0} MB/s; page-cache read alone {rd:>5.0} MB/s (ceiling {:>5.0}); \
                 load {load}",
                run + 1,
                s1 * cores as f64,
                ceiling(s1, rd, cores)
            );
            ours.push(r);
            one.push(s1);
            all.push(sa);
            reads.push(rd);
            loads.push(load);
        }
        table.push((
            piece_kib,
            median(ours),
            median(one),
            median(all),
            median(reads),
            loads,
        ));
    }
    println!("\nmedians:");
    println!(
        "{:>6}  {:>12} {:>16} {:>10} {:>16} {:>10} {:>10} {:>10} {:>10}  loads",
        "pieces",
        "recheck MB/s",
        "1 core x cores",
        "% of that",
        "all cores MB/s",
        "% of that",
        "read MB/s",
        "ceiling",
        "% of that"
    );
    for (p, r, s1, sa, rd, loads) in table {
        let top = ceiling(s1, rd, cores);
        let ideal = s1 * cores as f64;
        let l: Vec<&str> = loads
            .iter()
            .map(|l| l.split(' ').next().unwrap_or("?"))
            .collect();
        println!(
            "{p:>5}K  {r:>12.0} {ideal:>16.0} {:>9.0}% {sa:>16.0} {:>9.0}% {rd:>10.0} {top:>10.0} \
             {:>9.0}%  {}",
            100.0 * r / ideal,
            100.0 * r / sa,
            100.0 * r / top,
            l.join(" ")
        );
    }
}
