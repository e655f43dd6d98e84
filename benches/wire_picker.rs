//! Figures for the wire decoder and the piece picker, each next to a reference measured in the
//! same run. Run with `cargo bench --bench wire_picker`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use shoal_engine::bitfield::Bitfield;
use shoal_engine::lengths::{BlockInfo, Lengths, BLOCK_LEN};
use shoal_engine::picker::{PeerKey, Picker, Received};
use shoal_engine::wire::{decode, Decoded, Message, DEFAULT_MAX_MESSAGE_LEN};

/// Runs `f` until at least `min` has passed; returns the time and the number of runs.
fn time_for(min: Duration, mut f: impl FnMut()) -> (Duration, u64) {
    let start = Instant::now();
    let mut runs = 0;
    while start.elapsed() < min {
        f();
        runs += 1;
    }
    (start.elapsed(), runs)
}

/// Decodes every message in `buf`; returns how many and the payload bytes seen.
fn decode_all(buf: &[u8]) -> (u64, u64) {
    let (mut n, mut bytes, mut at) = (0, 0, 0);
    while at < buf.len() {
        match decode(&buf[at..], DEFAULT_MAX_MESSAGE_LEN) {
            Ok(Decoded::Message { message, consumed }) => {
                if let Message::Piece { data, .. } = message {
                    bytes += data.len() as u64;
                }
                n += 1;
                at += consumed;
            }
            _ => unreachable!("the bench buffer holds whole, valid messages"),
        }
    }
    (n, bytes)
}

fn bench_wire(min: Duration) {
    println!("== wire decode ==");
    let block = vec![0x5au8; BLOCK_LEN as usize];
    let mut buf = Vec::new();
    for i in 0..2048u32 {
        Message::Piece {
            piece: i / 16,
            begin: (i % 16) * BLOCK_LEN,
            data: &block,
        }
        .encode(&mut buf);
    }
    let mb = buf.len() as f64 / 1e6;
    let (t, runs) = time_for(min, || {
        black_box(decode_all(black_box(&buf)));
    });
    let per = t.as_secs_f64() / runs as f64;
    println!(
        "piece (16 KiB) messages, framing only (zero-copy): {:.0} MB/s, {:.1} ns/message ({} messages x {runs} runs)",
        mb / per,
        per * 1e9 / 2048.0,
        2048
    );
    // Reference: copying the same bytes once, what any reader must at least do.
    let mut dst = vec![0u8; buf.len()];
    let (t, runs) = time_for(min, || {
        dst.copy_from_slice(black_box(&buf));
        black_box(&dst);
    });
    println!(
        "reference memcpy of the same buffer: {:.0} MB/s",
        mb / (t.as_secs_f64() / runs as f64)
    );

    let mut small = Vec::new();
    for i in 0..100_000u32 {
        Message::Have(i).encode(&mut small);
    }
    let (t, runs) = time_for(min, || {
        black_box(decode_all(black_box(&small)));
    });
    println!(
        "have messages: {:.1} ns/message",
        t.as_secs_f64() * 1e9 / (runs as f64 * 100_000.0)
    );
}

/// A swarm of `peers` peers over `pieces` pieces of 16 blocks, each peer with about half the
/// pieces, a few of them seeds.
fn swarm(pieces: u32, peers: usize, seed: u64) -> (Lengths, Vec<Bitfield>) {
    let lengths = Lengths::new(u64::from(pieces) * 16 * u64::from(BLOCK_LEN), 16 * 16_384)
        .expect("valid lengths");
    let mut rng = fastrand::Rng::with_seed(seed);
    let bfs = (0..peers)
        .map(|k| {
            if k % 20 == 0 {
                return Bitfield::full(pieces);
            }
            let mut b = Bitfield::new(pieces);
            for p in 0..pieces {
                if rng.bool() {
                    b.set(p);
                }
            }
            b
        })
        .collect();
    (lengths, bfs)
}

fn bench_picker(min: Duration) {
    const PIECES: u32 = 10_000;
    const PEERS: usize = 200;
    const BATCH: usize = 16;
    println!("== picker: {PIECES} pieces x 16 blocks, {PEERS} peers, {BATCH} blocks per pick ==");
    let (lengths, bfs) = swarm(PIECES, PEERS, 7);

    let mut have = Bitfield::new(PIECES);
    for p in 0..8 {
        have.set(p * 1000); // past random first
    }
    let setup = Instant::now();
    let mut pk = Picker::with_seed(lengths, have, 1);
    for b in &bfs {
        pk.peer_bitfield(b);
    }
    println!(
        "setup (200 bitfields): {:.2} ms",
        setup.elapsed().as_secs_f64() * 1e3
    );

    // Steady state: each peer in turn asks for a batch; the blocks arrive at once; complete
    // pieces verify. Only `pick` is timed. Stops at endgame.
    let mut out = Vec::with_capacity(BATCH);
    let (mut pick_time, mut calls, mut blocks) = (Duration::ZERO, 0u64, 0u64);
    let mut other_time = Duration::ZERO;
    let mut k = 0usize;
    while !pk.in_endgame() && !pk.is_complete() {
        let peer = PeerKey(k as u64);
        out.clear();
        let t = Instant::now();
        pk.pick(peer, &bfs[k], BATCH, &mut out);
        pick_time += t.elapsed();
        calls += 1;
        blocks += out.len() as u64;
        let t = Instant::now();
        for &b in &out {
            if let Received::New {
                piece_complete: true,
                ..
            } = pk.block_received(peer, b)
            {
                pk.piece_verified(b.piece);
            }
        }
        other_time += t.elapsed();
        k = (k + 1) % PEERS;
    }
    println!(
        "pick: {:.0} ns/call, {:.1} M blocks/s over {calls} calls to endgame ({blocks} blocks)",
        pick_time.as_secs_f64() * 1e9 / calls as f64,
        blocks as f64 / pick_time.as_secs_f64() / 1e6,
    );
    println!(
        "block_received + piece_verified: {:.0} ns/block",
        other_time.as_secs_f64() * 1e9 / blocks as f64
    );

    // Pipelined: every peer keeps up to 64 requests outstanding; in its turn it delivers its
    // 16 oldest (a peer answers in order) and asks for 16 more, so hundreds of pieces are in
    // progress at once. Each peer's queue is kept here, as the peer actor keeps its own.
    let mut have = Bitfield::new(PIECES);
    for p in 0..8 {
        have.set(p * 1000);
    }
    let mut pk = Picker::with_seed(lengths, have, 2);
    for b in &bfs {
        pk.peer_bitfield(b);
    }
    let (mut pick_time, mut calls, mut blocks) = (Duration::ZERO, 0u64, 0u64);
    let mut k = 0usize;
    let mut done = Vec::with_capacity(BATCH);
    let mut queues: Vec<VecDeque<BlockInfo>> = vec![VecDeque::new(); PEERS];
    while !pk.in_endgame() && !pk.is_complete() {
        let peer = PeerKey(k as u64);
        let queue = &mut queues[k];
        done.clear();
        done.extend(queue.drain(..BATCH.min(queue.len())));
        for &b in &done {
            if let Received::New {
                piece_complete: true,
                ..
            } = pk.block_received(peer, b)
            {
                pk.piece_verified(b.piece);
            }
        }
        let room = 64 - queue.len();
        out.clear();
        let t = Instant::now();
        pk.pick(peer, &bfs[k], room.min(BATCH), &mut out);
        pick_time += t.elapsed();
        queue.extend(&out);
        calls += 1;
        blocks += out.len() as u64;
        k = (k + 1) % PEERS;
    }
    println!(
        "pick, pipelined 64 per peer: {:.0} ns/call, {:.1} M blocks/s over {calls} calls",
        pick_time.as_secs_f64() * 1e9 / calls as f64,
        blocks as f64 / pick_time.as_secs_f64() / 1e6,
    );
    println!("  state at endgame: {pk:?}");

    // Reference: the naive policy, a scan of every piece for the rarest one the peer has,
    // per call, on the fresh swarm.
    let avail: Vec<u32> = (0..PIECES)
        .map(|p| bfs.iter().filter(|b| b.get(p)).count() as u32)
        .collect();
    let mut k = 0;
    let (t, runs) = time_for(min / 2, || {
        let has = &bfs[k];
        let best = (0..PIECES)
            .filter(|&p| has.get(p))
            .min_by_key(|&p| avail[p as usize]);
        black_box(best);
        k = (k + 1) % PEERS;
    });
    println!(
        "reference naive O(pieces) rarest scan: {:.0} ns/call",
        t.as_secs_f64() * 1e9 / runs as f64
    );
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`, an unoptimized build)
    // run every loop briefly, as a smoke test, and say the figures mean nothing.
    let full = std::env::args().any(|a| a == "--bench");
    if !full {
        println!("(smoke run: use `cargo bench --bench wire_picker` for figures)");
    }
    let min = if full {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(10)
    };
    bench_wire(min);
    bench_picker(min);
}
