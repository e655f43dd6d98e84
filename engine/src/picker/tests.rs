//! Tests of the picking policy as a whole: order, endgame, blame, priorities, deadlines.

use super::*;
use proptest::prelude::*;
use std::collections::HashSet;

/// Getters only tests need: the actor and the bench never ask.
impl Picker {
    /// How many connected peers have `piece` (0 out of range).
    fn availability(&self, piece: u32) -> u32 {
        self.avail.count(piece)
    }

    /// Blocks of wanted (not skipped) unverified pieces that have not been received.
    fn missing_blocks(&self) -> u64 {
        self.missing
    }

    /// The blocks currently requested from `peer`, in no particular order.
    fn requests_of(&self, peer: PeerKey) -> &[BlockInfo] {
        self.requests.of(peer)
    }
}

/// `pieces` pieces of `blocks` blocks each.
fn lengths(pieces: u32, blocks: u32) -> Lengths {
    let pl = u64::from(blocks) * 16_384;
    Lengths::new(pl * u64::from(pieces), pl).unwrap()
}

fn bf(len: u32, ones: impl IntoIterator<Item = u32>) -> Bitfield {
    let mut b = Bitfield::new(len);
    for i in ones {
        b.set(i);
    }
    b
}

fn pieces_of(blocks: &[BlockInfo]) -> Vec<u32> {
    let mut v: Vec<u32> = blocks.iter().map(|b| b.piece).collect();
    v.dedup();
    v
}

/// What the picker actor does when a peer chokes us without the fast extension: every
/// outstanding request is released.
fn choke(pk: &mut Picker, peer: PeerKey) {
    for b in pk.requests_of(peer).to_vec() {
        pk.block_released(peer, b);
    }
}

const A: PeerKey = PeerKey(1);
const B: PeerKey = PeerKey(2);
const C: PeerKey = PeerKey(3);

#[test]
fn random_first_varies_and_stays_in_peer_pieces() {
    let l = lengths(200, 2);
    let has = bf(200, (0..200).filter(|p| p % 3 == 0));
    let mut firsts = HashSet::new();
    for seed in 0..40 {
        let mut pk = Picker::with_seed(l, Bitfield::new(200), seed);
        pk.peer_bitfield(&has);
        let mut out = Vec::new();
        pk.pick(A, &has, 2, &mut out);
        assert_eq!(out.len(), 2);
        assert!(has.get(out[0].piece));
        assert_eq!(out[0].piece, out[1].piece, "whole piece first");
        firsts.insert(out[0].piece);
        pk.check();
    }
    assert!(firsts.len() > 10, "first picks barely vary: {firsts:?}");
}

#[test]
fn rarest_first_after_random_first() {
    let l = lengths(20, 1);
    for seed in 0..20 {
        let mut pk = Picker::with_seed(l, bf(20, 0..RANDOM_FIRST_PIECES), seed);
        let mut no7 = Bitfield::full(20);
        no7.clear(7);
        pk.peer_bitfield(&no7);
        pk.peer_bitfield(&no7);
        let rare_peer = bf(20, std::iter::once(7).chain(9..20));
        pk.peer_bitfield(&rare_peer);
        assert_eq!(pk.availability(7), 1);
        assert_eq!(pk.availability(8), 2);
        assert_eq!(pk.availability(9), 3);
        pk.check();
        // The rare peer: piece 7 (one peer) before its common ones.
        let mut out = Vec::new();
        pk.pick(C, &rare_peer, 2, &mut out);
        assert_eq!(out[0].piece, 7, "seed {seed}");
        assert!(out[1].piece >= 9);
        // Another peer: the availability-2 pieces 4, 5, 6, 8 before the 3s.
        let mut out = Vec::new();
        pk.pick(A, &no7, 4, &mut out);
        let mut got = pieces_of(&out);
        got.sort();
        assert_eq!(got, [4, 5, 6, 8], "seed {seed}");
        pk.check();
    }
}

#[test]
fn a_piece_only_one_peer_has_comes_first() {
    let l = lengths(50, 1);
    for seed in 0..20 {
        let mut pk = Picker::with_seed(l, bf(50, 0..4), seed);
        for _ in 0..5 {
            pk.peer_bitfield(&Bitfield::full(50));
        }
        // Four of the five leave piece 30 (as if they had only announced it).
        pk.peer_gone(PeerKey(50), &bf(50, [30]));
        pk.peer_gone(PeerKey(51), &bf(50, [30]));
        pk.peer_gone(PeerKey(52), &bf(50, [30]));
        pk.peer_gone(PeerKey(53), &bf(50, [30]));
        assert_eq!(pk.availability(30), 1);
        let mut out = Vec::new();
        pk.pick(A, &Bitfield::full(50), 1, &mut out);
        assert_eq!(out[0].piece, 30, "seed {seed}");
    }
}

#[test]
fn ties_are_broken_at_random() {
    let l = lengths(100, 1);
    let mut seen = HashSet::new();
    for seed in 0..30 {
        let mut pk = Picker::with_seed(l, bf(100, 0..4), seed);
        pk.peer_bitfield(&Bitfield::full(100));
        let mut out = Vec::new();
        pk.pick(A, &Bitfield::full(100), 1, &mut out);
        seen.insert(out[0].piece);
    }
    assert!(seen.len() > 10, "{seen:?}");
}

#[test]
fn partial_pieces_are_finished_first() {
    let l = lengths(30, 4);
    let mut pk = Picker::with_seed(l, Bitfield::new(30), 3);
    let all = Bitfield::full(30);
    pk.peer_bitfield(&all);
    pk.peer_bitfield(&all);
    let mut out = Vec::new();
    pk.pick(A, &all, 2, &mut out);
    let p = out[0].piece;
    assert_eq!(pieces_of(&out), [p]);
    // B gets the rest of A's piece before anything new.
    let mut out_b = Vec::new();
    pk.pick(B, &all, 3, &mut out_b);
    assert_eq!(out_b[0].piece, p);
    assert_eq!(out_b[1].piece, p);
    assert_ne!(out_b[2].piece, p);
    // Two partial pieces: the one with more blocks received goes first.
    assert_ne!(out_b[2].piece, p);
    choke(&mut pk, B); // q back to the pool (it held nothing); p's blocks 2, 3 free
    pk.check();
    pk.block_received(A, out[0]);
    let mut out_c = Vec::new();
    pk.pick(C, &all, 4, &mut out_c);
    assert_eq!(out_c[0], l.block(p, 2));
    assert_eq!(out_c[1], l.block(p, 3));
    pk.check();
}

#[test]
fn most_complete_partial_first() {
    let l = lengths(10, 4);
    let mut pk = Picker::with_seed(l, Bitfield::new(10), 5);
    let all = Bitfield::full(10);
    pk.peer_bitfield(&all);
    let mut a = Vec::new();
    pk.pick(A, &all, 8, &mut a); // two whole pieces
    let (p1, p2) = (a[0].piece, a[4].piece);
    // p2 gets 3 blocks, p1 gets 1; then A chokes: both partial.
    for b in &a[4..7] {
        pk.block_received(A, *b);
    }
    pk.block_received(A, a[0]);
    choke(&mut pk, A);
    pk.check();
    let mut out = Vec::new();
    pk.pick(B, &all, 4, &mut out);
    assert_eq!(out[0], l.block(p2, 3));
    assert_eq!(pieces_of(&out[1..]), [p1]);
}

#[test]
fn endgame_duplicates_and_cancels() {
    let l = lengths(3, 2);
    let mut pk = Picker::with_seed(l, Bitfield::new(3), 9);
    let all = Bitfield::full(3);
    for _ in 0..4 {
        pk.peer_bitfield(&all);
    }
    let mut a = Vec::new();
    pk.pick(A, &all, 100, &mut a);
    assert_eq!(a.len(), 6);
    assert!(pk.in_endgame());
    pk.check();
    // B gets duplicates of all six, C too, a fourth peer nothing (two extra requesters).
    let mut b = Vec::new();
    pk.pick(B, &all, 100, &mut b);
    assert_eq!(b.len(), 6);
    let mut c = Vec::new();
    pk.pick(C, &all, 100, &mut c);
    assert_eq!(c.len(), 6);
    let mut d = Vec::new();
    pk.pick(PeerKey(4), &all, 100, &mut d);
    assert!(d.is_empty());
    // Asking again gives nothing new to the same peer.
    let mut b2 = Vec::new();
    pk.pick(B, &all, 100, &mut b2);
    assert!(b2.is_empty());
    pk.check();
    // B delivers a block: cancel it at A and C.
    match pk.block_received(B, a[0]) {
        Received::New {
            cancel,
            piece_complete,
        } => {
            let mut cancel = cancel;
            cancel.sort();
            assert_eq!(cancel, [A, C]);
            assert!(!piece_complete);
        }
        other => panic!("{other:?}"),
    }
    assert!(!pk.requests_of(A).contains(&a[0]));
    assert_eq!(pk.block_received(A, a[0]), Received::Duplicate);
    // The block is done: nobody gets it again, not even the peer left out.
    let mut d = Vec::new();
    pk.pick(PeerKey(4), &all, 100, &mut d);
    assert!(!d.contains(&a[0]));
    pk.check();
}

#[test]
fn endgame_prefers_least_requested() {
    let l = lengths(1, 4);
    let mut pk = Picker::with_seed(l, Bitfield::new(1), 9);
    let all = Bitfield::full(1);
    pk.peer_bitfield(&all);
    let mut a = Vec::new();
    pk.pick(A, &all, 4, &mut a);
    let mut b = Vec::new();
    pk.pick(B, &all, 2, &mut b);
    let mut c = Vec::new();
    pk.pick(C, &all, 2, &mut c);
    // B took blocks 0, 1; C must take 2, 3 (one requester) before 0, 1 (two).
    assert_eq!(b, [l.block(0, 0), l.block(0, 1)]);
    assert_eq!(c, [l.block(0, 2), l.block(0, 3)]);
}

#[test]
fn choke_and_gone_release_blocks() {
    let l = lengths(4, 2);
    let mut pk = Picker::with_seed(l, Bitfield::new(4), 2);
    let all = Bitfield::full(4);
    pk.peer_bitfield(&all);
    pk.peer_bitfield(&all);
    let mut a = Vec::new();
    pk.pick(A, &all, 8, &mut a);
    assert_eq!(a.len(), 8);
    assert!(pk.in_endgame());
    choke(&mut pk, A);
    assert!(!pk.in_endgame());
    assert!(pk.requests_of(A).is_empty());
    assert_eq!(pk.availability(0), 2);
    pk.check();
    let mut b = Vec::new();
    pk.pick(B, &all, 8, &mut b);
    let got: HashSet<_> = b.iter().copied().collect();
    assert_eq!(got.len(), 8, "everything A had is B's now");
    pk.peer_gone(B, &all);
    assert_eq!(pk.availability(0), 1);
    assert!(pk.requests_of(B).is_empty());
    pk.check();
    let mut c = Vec::new();
    pk.pick(C, &all, 8, &mut c);
    assert_eq!(c.len(), 8);
    pk.check();
}

#[test]
fn released_block_goes_back_and_late_data_counts() {
    let l = lengths(4, 2);
    let mut pk = Picker::with_seed(l, bf(4, 0..3), 2);
    let all = Bitfield::full(4);
    pk.peer_bitfield(&all);
    let mut a = Vec::new();
    pk.pick(A, &all, 1, &mut a);
    assert_eq!(a, [l.block(3, 0)]);
    pk.block_released(A, a[0]);
    pk.check();
    let mut b = Vec::new();
    pk.pick(B, &all, 1, &mut b);
    assert_eq!(b, a);
    // A's late answer still counts, and B is told to cancel.
    assert_eq!(
        pk.block_received(A, a[0]),
        Received::New {
            piece_complete: false,
            cancel: vec![B]
        }
    );
    assert!(pk.requests_of(B).is_empty());
    // Bad blocks and pieces nobody fetches are NotRequested.
    let off = BlockInfo {
        piece: 3,
        begin: 1,
        len: 16_384,
    };
    assert_eq!(pk.block_received(A, off), Received::NotRequested);
    assert_eq!(pk.block_received(A, l.block(0, 0)), Received::Duplicate);
    assert_eq!(pk.block_received(A, l.block(99, 0)), Received::NotRequested);
    pk.check();
}

#[test]
fn piece_failed_blames_and_repicks() {
    let l = lengths(2, 2);
    let mut pk = Picker::with_seed(l, bf(2, [0]), 4);
    let all = Bitfield::full(2);
    pk.peer_bitfield(&all);
    let mut a = Vec::new();
    pk.pick(A, &all, 1, &mut a);
    let mut b = Vec::new();
    pk.pick(B, &all, 1, &mut b);
    assert_eq!(pk.missing_blocks(), 2);
    pk.block_received(A, a[0]);
    let r = pk.block_received(B, b[0]);
    assert_eq!(
        r,
        Received::New {
            piece_complete: true,
            cancel: vec![]
        }
    );
    assert_eq!(pk.missing_blocks(), 0);
    let mut none = Vec::new();
    pk.pick(C, &all, 4, &mut none);
    assert!(none.is_empty(), "complete piece waiting for its hash");
    let mut blame = pk.piece_failed(1);
    blame.sort();
    assert_eq!(blame, [A, B]);
    assert_eq!(pk.missing_blocks(), 2);
    pk.check();
    let mut c = Vec::new();
    pk.pick(C, &all, 4, &mut c);
    assert_eq!(c, [l.block(1, 0), l.block(1, 1)]);
    for blk in &c {
        pk.block_received(C, *blk);
    }
    pk.piece_verified(1);
    assert!(pk.is_complete());
    assert_eq!(pk.missing_blocks(), 0);
    assert!(!pk.in_endgame());
    pk.check();
}

#[test]
fn interest_and_have() {
    let l = lengths(10, 1);
    let mut pk = Picker::with_seed(l, bf(10, [1, 2]), 0);
    pk.peer_have(3);
    pk.peer_have(3);
    pk.peer_have(1000);
    assert_eq!(pk.availability(3), 2);
    assert_eq!(pk.availability(1000), 0);
    pk.check();
    pk.piece_verified(3);
    assert!(pk.have().get(3));
    assert_eq!(pk.availability(3), 2, "counts stay for pieces we have");
    pk.check();
}

#[test]
fn whole_download_from_a_swarm() {
    let l = lengths(64, 3);
    let mut pk = Picker::with_seed(l, Bitfield::new(64), 11);
    let mut rng = fastrand::Rng::with_seed(1);
    let peers: Vec<Bitfield> = (0..8)
        .map(|_| bf(64, (0..64).filter(|_| rng.u8(..) < 140)))
        .collect();
    let mut union = Bitfield::new(64);
    for p in &peers {
        pk.peer_bitfield(p);
        for i in p.iter_ones() {
            union.set(i);
        }
    }
    let mut rounds = 0;
    while !pk.have().as_bytes().eq(union.as_bytes()) {
        rounds += 1;
        assert!(rounds < 1000);
        for (k, has) in peers.iter().enumerate() {
            let key = PeerKey(k as u64);
            let mut out = Vec::new();
            pk.pick(key, has, 5, &mut out);
            for b in out {
                assert!(has.get(b.piece));
                if rng.u8(..) < 30 {
                    pk.block_released(key, b);
                    continue;
                }
                if let Received::New {
                    piece_complete: true,
                    ..
                } = pk.block_received(key, b)
                {
                    if rng.u8(..) < 20 {
                        assert!(!pk.piece_failed(b.piece).is_empty());
                    } else {
                        pk.piece_verified(b.piece);
                    }
                }
            }
            pk.check();
        }
    }
}

proptest! {
    #[test]
    fn never_a_piece_the_peer_lacks(
        seed in any::<u64>(),
        have in proptest::collection::vec(any::<bool>(), 40),
        peers in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 40), 1..6),
        ops in proptest::collection::vec((0usize..6, 0u8..6, 1usize..12), 1..60),
    ) {
        let l = lengths(40, 3);
        let have = bf(40, (0..40).filter(|&i| have[i as usize]));
        let peers: Vec<Bitfield> = peers.iter().map(|v| bf(40, (0..40).filter(|&i| v[i as usize]))).collect();
        let mut pk = Picker::with_seed(l, have.clone(), seed);
        for p in &peers { pk.peer_bitfield(p); }
        let mut received = HashSet::new();
        let mut gone = HashSet::new();
        for (who, op, max) in ops {
            let who = who % peers.len();
            if gone.contains(&who) { continue; }
            let key = PeerKey(who as u64);
            let has = &peers[who];
            match op {
                0..=2 => {
                    let before = pk.requests_of(key).len();
                    let mut out = Vec::new();
                    pk.pick(key, has, max, &mut out);
                    prop_assert!(out.len() <= max);
                    prop_assert_eq!(pk.requests_of(key).len(), before + out.len());
                    for b in &out {
                        prop_assert!(has.get(b.piece), "piece {} the peer lacks", b.piece);
                        prop_assert!(!pk.have().get(b.piece));
                        prop_assert!(!received.contains(b));
                        prop_assert!(l.is_our_block(b));
                    }
                    let distinct: HashSet<_> = pk.requests_of(key).iter().collect();
                    prop_assert_eq!(distinct.len(), pk.requests_of(key).len());
                }
                3 => {
                    if let Some(&b) = pk.requests_of(key).first() {
                        if let Received::New { piece_complete, .. } = pk.block_received(key, b) {
                            received.insert(b);
                            if piece_complete {
                                pk.piece_verified(b.piece);
                            }
                        }
                    }
                }
                4 => choke(&mut pk, key),
                _ => {
                    pk.peer_gone(key, has);
                    gone.insert(who);
                }
            }
            pk.check();
        }
    }
}

#[test]
fn a_failed_piece_is_refetched_from_one_peer_only() {
    let lengths = Lengths::new(4 * 32_768, 32_768).unwrap();
    let mut pk = Picker::with_seed(lengths, Bitfield::new(4), 1);
    let all = Bitfield::full(4);
    pk.peer_bitfield(&all);
    pk.peer_bitfield(&all);
    let (a, b) = (PeerKey(1), PeerKey(2));
    // Both peers fetch piece blocks; pick them all and deliver piece 0 from both.
    let mut out = Vec::new();
    pk.pick(a, &all, 8, &mut out);
    let first: Vec<BlockInfo> = out
        .iter()
        .copied()
        .filter(|x| x.piece == out[0].piece)
        .collect();
    let piece = first[0].piece;
    for blk in &first {
        pk.block_received(a, *blk);
    }
    let blame = pk.piece_failed(piece);
    assert_eq!(blame, vec![a]);
    // Peer b starts the failed piece: it is reserved for b; a gets none of its blocks.
    let mut only = Bitfield::new(4);
    only.set(piece);
    let mut got_b = Vec::new();
    pk.pick(b, &only, 1, &mut got_b);
    assert_eq!(got_b.len(), 1);
    assert_eq!(got_b[0].piece, piece);
    let mut got_a = Vec::new();
    pk.pick(a, &only, 8, &mut got_a);
    assert!(got_a.iter().all(|x| x.piece != piece), "{got_a:?}");
    // When b gives up a block, the piece opens to everyone.
    pk.block_released(b, got_b[0]);
    let mut again = Vec::new();
    pk.pick(a, &only, 8, &mut again);
    assert!(again.iter().any(|x| x.piece == piece));
}

/// Delivers every block of `blocks` from `peer`, verifying each piece that completes.
fn deliver(pk: &mut Picker, peer: PeerKey, blocks: &[BlockInfo]) {
    for &b in blocks {
        if let Received::New {
            piece_complete: true,
            ..
        } = pk.block_received(peer, b)
        {
            pk.piece_verified(b.piece);
        }
    }
}

#[test]
fn skipped_pieces_are_never_picked_not_even_in_endgame() {
    let l = lengths(10, 2);
    let mut pk = Picker::with_seed(l, Bitfield::new(10), 1);
    let all = Bitfield::full(10);
    pk.peer_bitfield(&all);
    pk.set_range_priority(0..=4, Priority::Skip);
    assert_eq!(pk.missing_blocks(), 10);
    pk.check();
    let mut a = Vec::new();
    pk.pick(A, &all, 100, &mut a);
    assert_eq!(a.len(), 10);
    assert!(a.iter().all(|b| b.piece >= 5), "{a:?}");
    assert!(pk.in_endgame());
    for peer in [B, C, PeerKey(4)] {
        let mut d = Vec::new();
        pk.pick(peer, &all, 100, &mut d);
        assert!(d.iter().all(|b| b.piece >= 5), "{d:?}");
    }
    pk.check();
    deliver(&mut pk, A, &a);
    assert!(pk.is_complete_wanted());
    assert!(!pk.is_complete());
    assert_eq!(pk.missing_blocks(), 0);
    let mut none = Vec::new();
    pk.pick(B, &all, 100, &mut none);
    assert!(none.is_empty());
    // Wanted again: picked again.
    pk.set_piece_priority(3, Priority::Normal);
    assert!(!pk.is_complete_wanted());
    pk.pick(B, &all, 100, &mut none);
    assert_eq!(pieces_of(&none), [3]);
    pk.check();
}

#[test]
fn skipping_a_piece_in_progress_stops_new_requests_for_it() {
    let l = lengths(4, 4);
    let mut pk = Picker::with_seed(l, bf(4, [0, 1]), 2);
    let all = Bitfield::full(4);
    pk.peer_bitfield(&all);
    let mut a = Vec::new();
    pk.pick(A, &all, 2, &mut a);
    let p = a[0].piece;
    deliver(&mut pk, A, &a[..1]);
    pk.set_piece_priority(p, Priority::Skip);
    assert_eq!(pk.missing_blocks(), 4, "only the other piece counts");
    pk.check();
    let mut b = Vec::new();
    pk.pick(B, &all, 100, &mut b);
    assert!(b.iter().all(|x| x.piece != p), "{b:?}");
    // The block still requested from A may arrive: it is kept.
    assert!(matches!(pk.block_received(A, a[1]), Received::New { .. }));
    pk.check();
    // Wanted again: its two free blocks come first (a piece in progress).
    pk.set_piece_priority(p, Priority::High);
    pk.check();
    let mut c = Vec::new();
    pk.pick(C, &all, 2, &mut c);
    assert_eq!(c, [l.block(p, 2), l.block(p, 3)]);
    pk.check();
}

#[test]
fn high_before_normal_before_low_rarest_within_each() {
    let l = lengths(40, 1);
    for seed in 0..10 {
        let mut pk = Picker::with_seed(l, bf(40, 0..RANDOM_FIRST_PIECES), seed);
        let all = Bitfield::full(40);
        pk.peer_bitfield(&all);
        pk.peer_bitfield(&all);
        // Pieces 30 and 31 are rare, but normal.
        pk.peer_lost(&bf(40, [30, 31]));
        pk.peer_lost(&bf(40, [21]));
        pk.set_piece_priorities(&[Priority::Low; 10]);
        pk.set_range_priority(20..=22, Priority::High);
        pk.check();
        let mut out = Vec::new();
        pk.pick(A, &all, 3, &mut out);
        // High first, its rarest (21) first.
        assert_eq!(out[0].piece, 21, "seed {seed}");
        let mut high = pieces_of(&out);
        high.sort();
        assert_eq!(high, [20, 21, 22]);
        // Then normal, rarest first.
        out.clear();
        pk.pick(A, &all, 2, &mut out);
        let mut got = pieces_of(&out);
        got.sort();
        assert_eq!(got, [30, 31], "seed {seed}");
        out.clear();
        pk.pick(A, &all, 30, &mut out);
        // Low (pieces 4..10) last.
        assert_eq!(out.len(), 30);
        assert!(out[..25].iter().all(|b| b.piece >= 10), "{out:?}");
        assert!(out[25..].iter().all(|b| (4..10).contains(&b.piece)));
        pk.check();
    }
}

#[test]
fn sequential_picks_lowest_index_first() {
    let l = lengths(20, 2);
    let mut pk = Picker::with_seed(l, bf(20, [1]), 3);
    let all = Bitfield::full(20);
    let odd = bf(20, (0..20).filter(|p| p % 2 == 1));
    pk.peer_bitfield(&all);
    pk.peer_bitfield(&odd);
    pk.set_sequential(true);
    let mut a = Vec::new();
    pk.pick(A, &all, 6, &mut a);
    assert_eq!(pieces_of(&a), [0, 2, 3]);
    // Another peer works on other pieces: the next it has.
    let mut b = Vec::new();
    pk.pick(B, &odd, 2, &mut b);
    assert_eq!(pieces_of(&b), [5]);
    // A piece going back to the pool is the lowest again.
    choke(&mut pk, A);
    pk.check();
    let mut c = Vec::new();
    pk.pick(C, &all, 2, &mut c);
    assert_eq!(pieces_of(&c), [0]);
    // Priorities still come first.
    pk.set_piece_priority(17, Priority::High);
    let mut c = Vec::new();
    pk.pick(C, &all, 4, &mut c);
    assert_eq!(pieces_of(&c), [17, 2]);
    // Off again: rarest first (past random first) leaves the even pieces first.
    pk.set_sequential(false);
    for p in [2, 3, 4, 6] {
        pk.piece_verified(p);
    }
    let mut d = Vec::new();
    pk.pick(PeerKey(4), &all, 2, &mut d);
    assert_eq!(d[0].piece % 2, 0, "{d:?}");
    pk.check();
}

#[test]
fn deadline_pieces_come_first_in_order_and_race_at_the_end() {
    let l = lengths(50, 2);
    let mut pk = Picker::with_seed(l, Bitfield::new(50), 4);
    let all = Bitfield::full(50);
    pk.peer_bitfield(&all);
    pk.set_deadline(Some(10..=17));
    pk.set_piece_priority(12, Priority::Skip);
    let mut a = Vec::new();
    pk.pick(A, &all, 6, &mut a);
    assert_eq!(pieces_of(&a), [10, 11, 13]);
    // B gets the rest of the range; seven pieces are left, so no race yet.
    let mut b = Vec::new();
    pk.pick(B, &all, 10, &mut b);
    assert_eq!(&pieces_of(&b)[..4], [14, 15, 16, 17]);
    assert!(!(10..=17).contains(&b[8].piece));
    pk.check();
    // A delivers: four are left, all requested from B; C races B for them, in order.
    deliver(&mut pk, A, &a);
    let mut c = Vec::new();
    pk.pick(C, &all, 3, &mut c);
    assert_eq!(c, [l.block(14, 0), l.block(14, 1), l.block(15, 0)]);
    assert!(matches!(
        pk.block_received(C, c[0]),
        Received::New { ref cancel, .. } if cancel == &[B]
    ));
    pk.check();
    deliver(&mut pk, B, &b);
    deliver(&mut pk, C, &c);
    assert!(pk.have().get(17) && !pk.have().get(12));
    // Done: the deadline clears itself and picking goes on as usual.
    let mut c = Vec::new();
    pk.pick(C, &all, 2, &mut c);
    assert!(c
        .iter()
        .all(|x| x.piece != 12 && !(10..=17).contains(&x.piece)));
    assert!(format!("{pk:?}").contains("deadline: None"));
    pk.check();
}

#[test]
fn deadline_range_is_cut_and_cleared() {
    let l = lengths(1000, 1);
    let mut pk = Picker::with_seed(l, Bitfield::new(1000), 5);
    let all = Bitfield::full(1000);
    pk.peer_bitfield(&all);
    pk.set_deadline(Some(990..=5000));
    let mut a = Vec::new();
    pk.pick(A, &all, 20, &mut a);
    assert_eq!(a.len(), 20);
    assert_eq!(pieces_of(&a[..10]), (990..1000).collect::<Vec<_>>());
    pk.set_deadline(Some(0..=u32::MAX));
    let mut b = Vec::new();
    pk.pick(B, &all, 300, &mut b);
    // The range is cut to its first pieces; those A already fetches are not repeated.
    let expect: Vec<u32> = (0..MAX_DEADLINE_PIECES)
        .filter(|p| a.iter().all(|x| x.piece != *p))
        .collect();
    assert_eq!(pieces_of(&b[..expect.len()]), expect);
    assert!(!(0..MAX_DEADLINE_PIECES).contains(&b[expect.len()].piece));
    pk.set_deadline(Some(RangeInclusive::new(5, 4))); // empty
    pk.set_deadline(Some(2000..=3000));
    assert!(format!("{pk:?}").contains("deadline: None"));
    pk.check();
}

proptest! {
    #[test]
    fn priorities_and_modes_keep_every_invariant(
        seed in any::<u64>(),
        ops in proptest::collection::vec((0usize..4, 0u8..10, 0u32..30, 1usize..10), 1..80),
    ) {
        let l = lengths(30, 3);
        let mut pk = Picker::with_seed(l, bf(30, [0, 1, 2, 3]), seed);
        let peers: Vec<Bitfield> = (0..4)
            .map(|k| bf(30, (0..30).filter(|p| (p + k) % 3 != 0)))
            .collect();
        for p in &peers { pk.peer_bitfield(p); }
        let prios = [Priority::Skip, Priority::Low, Priority::Normal, Priority::High];
        for (who, op, piece, max) in ops {
            let key = PeerKey(who as u64);
            match op {
                0..=3 => {
                    let mut out = Vec::new();
                    pk.pick(key, &peers[who], max, &mut out);
                    for b in &out {
                        prop_assert!(pk.piece_priority(b.piece).is_wanted());
                        prop_assert!(peers[who].get(b.piece));
                    }
                }
                4 => {
                    let mine = pk.requests_of(key).to_vec();
                    deliver(&mut pk, key, &mine[..mine.len().min(max)]);
                }
                5 => pk.set_piece_priority(piece, prios[max % 4]),
                6 => pk.set_sequential(max % 2 == 0),
                7 => pk.set_deadline(Some(piece..=piece + max as u32)),
                8 => choke(&mut pk, key),
                _ => {
                    if let Some(&b) = pk.requests_of(key).first() {
                        if let Received::New { piece_complete: true, .. } = pk.block_received(key, b) {
                            pk.piece_failed(b.piece);
                        }
                    }
                }
            }
            pk.check();
            let wanted_left = (0..30).any(|p| !pk.have().get(p) && pk.piece_priority(p).is_wanted());
            prop_assert_eq!(pk.is_complete_wanted(), !wanted_left);
        }
    }
}

#[test]
fn sole_copies_are_our_pieces_no_connected_peer_has() {
    let l = lengths(10, 1);
    let mut pk = Picker::with_seed(l, bf(10, 0..6), 1);
    assert_eq!(pk.sole_copies(), 6, "nobody connected has any");
    pk.peer_bitfield(&bf(10, [0, 1, 7]));
    pk.peer_bitfield(&bf(10, [1, 2]));
    assert_eq!(pk.sole_copies(), 3, "pieces 3, 4, 5");
    pk.peer_have(3);
    assert_eq!(pk.sole_copies(), 2);
    pk.peer_gone(PeerKey(9), &bf(10, [0, 1, 7]));
    assert_eq!(
        pk.sole_copies(),
        3,
        "piece 0 left with its only other holder"
    );
    pk.peer_bitfield(&Bitfield::full(10));
    assert_eq!(pk.sole_copies(), 0, "a seed holds every piece");
}
