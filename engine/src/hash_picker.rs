//! BEP 52 hash requests without I/O: answering them from the piece layers we have
//! ([`PieceTrees`]), and fetching the piece layers a v2 torrent from a magnet lacks
//! ([`HashPicker`]), every answer checked against its file's `pieces root` before it is kept.
//!
//! # What is asked, and what comes back
//! A request names a file by its root and a run of `length` nodes of one layer of its tree
//! (`base_layer` counted from the 16 KiB leaves), from `index`, plus `proof_layers`: the answer
//! (`hashes`) carries the `length` nodes, then one *uncle* per layer from the height of the
//! run's own subtree up to `proof_layers` above the base, each the sibling of the run's
//! ancestor at that height, lowest first (as libtorrent 2.0.8 sends them). With every uncle up
//! to just below the root, the run proves itself: hash it to its subtree root, fold in the
//! uncles, and compare with the file's root.
//!
//! We only ask for piece layers (the base layer is the piece layer: `piece length / 16 KiB`
//! leaves per node), in runs of at most [`MAX_HASHES_PER_REQUEST`] (512) pieces aligned on
//! 512, each with the whole proof, as libtorrent does; and we only answer requests at the
//! piece layer (the block layer is not kept: we would have to read the file).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::merkle::{self, Hash256, BLOCK_LEN};
use crate::wire::HashRequest;

/// The most base-layer hashes one request may ask for, or we answer: 512 piece hashes (16 KiB
/// of answer) is what libtorrent asks at a time; more would let one request cost the answerer
/// unbounded memory and hashing.
pub const MAX_HASHES_PER_REQUEST: u32 = 512;

/// How long a peer has to answer a hash request before it is asked of another.
pub const HASH_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Hash requests outstanding with one peer at once (libtorrent keeps at most 2).
pub const MAX_HASH_REQUESTS_PER_PEER: usize = 2;

/// The most (peer, run) refusals remembered: beyond, the oldest are forgotten and the peer may
/// be asked again, which is harmless. Bounds what peers that refuse everything can make us keep.
const MAX_REFUSALS: usize = 4096;

/// How long a peer that refused a run (or let it time out) is not asked for it again: it may
/// get the layers meanwhile (a peer that came from a magnet too).
pub const REFUSAL_REST: Duration = Duration::from_secs(30);

/// A hash request or answer that cannot be served or accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashError {
    /// No file of the torrent has this root, or its file needs no piece layer.
    UnknownRoot,
    /// Only the piece layer is served.
    BaseLayer {
        /// The layer asked for.
        got: u32,
        /// The piece layer.
        piece_layer: u32,
    },
    /// `length` is zero, above [`MAX_HASHES_PER_REQUEST`], or not a power of two.
    Length(u32),
    /// `index` is not a multiple of `length`, or the run passes the end of the layer.
    OutOfRange {
        /// The first index asked for.
        index: u32,
        /// How many.
        length: u32,
        /// Nodes in the (padded) layer.
        layer_len: u32,
    },
    /// The proof would reach the root or beyond.
    ProofLayers(u32),
    /// Hashes that answer no request of ours to that peer.
    Unsolicited,
    /// An answer with the wrong number of hashes.
    Count {
        /// Hashes received.
        got: usize,
        /// Hashes expected: the run and its uncles.
        expected: usize,
    },
    /// The hashes and their proof do not lead to the file's root: the peer lied.
    ProofMismatch,
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownRoot => write!(f, "no file with a piece layer has this root"),
            Self::BaseLayer { got, piece_layer } => write!(
                f,
                "hashes of layer {got} asked for, only the piece layer ({piece_layer}) is served"
            ),
            Self::Length(n) => write!(
                f,
                "a run of {n} hashes, expected a power of two of at most {MAX_HASHES_PER_REQUEST}"
            ),
            Self::OutOfRange {
                index,
                length,
                layer_len,
            } => write!(
                f,
                "hashes {index}..{} asked of a layer of {layer_len}, or not aligned",
                u64::from(*index) + u64::from(*length)
            ),
            Self::ProofLayers(n) => write!(f, "a proof of {n} layers reaches the root"),
            Self::Unsolicited => write!(f, "hashes that answer no request of ours"),
            Self::Count { got, expected } => {
                write!(f, "{got} hashes in an answer, expected {expected}")
            }
            Self::ProofMismatch => write!(f, "hashes whose proof does not match the file's root"),
        }
    }
}

impl std::error::Error for HashError {}

/// The height of the piece layer above the leaves: `log2(piece length / 16 KiB)`.
pub fn piece_layer_height(piece_length: u64) -> u32 {
    (piece_length / BLOCK_LEN).max(1).trailing_zeros()
}

/// How many uncle hashes answer a run of `length` (a power of two) with `proof_layers`.
pub fn uncle_count(length: u32, proof_layers: u32) -> u32 {
    let run_height = length.max(1).trailing_zeros();
    (proof_layers + 1).saturating_sub(run_height)
}

/// The tree of one file above its piece layer: `levels[0]` is the piece layer padded to a
/// power of two, the last level is the root alone.
#[derive(Clone, Debug)]
struct LayerTree {
    /// Every level from the piece layer up.
    levels: Vec<Vec<Hash256>>,
}

impl LayerTree {
    /// Builds the tree of a piece layer whose padding node is `pad`.
    fn new(layer: &[Hash256], pad: Hash256) -> Self {
        let n = layer.len().max(1).next_power_of_two();
        let mut cur = layer.to_vec();
        cur.resize(n, pad);
        let mut levels = vec![cur];
        while levels.last().map_or(0, Vec::len) > 1 {
            let below = levels.last().expect("a level");
            let up: Vec<Hash256> = below
                .chunks_exact(2)
                .map(|p| merkle::parent(&p[0], &p[1]))
                .collect();
            levels.push(up);
        }
        Self { levels }
    }
}

/// The piece layers we serve, as whole trees (twice the layers' size), built once per torrent
/// so a request costs a copy, not hashing.
#[derive(Clone, Debug)]
pub struct PieceTrees {
    /// The piece layer's height above the leaves.
    piece_layer: u32,
    /// Each file's tree, by root.
    trees: HashMap<Hash256, LayerTree>,
}

impl PieceTrees {
    /// The trees of `layers` (by root, as [`crate::metainfo::Metainfo::piece_layers`]), for
    /// pieces of `piece_length` bytes.
    pub fn new(piece_length: u64, layers: &BTreeMap<Hash256, Vec<Hash256>>) -> Self {
        let piece_layer = piece_layer_height(piece_length);
        let pad = merkle::pad_hash(piece_layer);
        let trees = layers
            .iter()
            .map(|(root, layer)| (*root, LayerTree::new(layer, pad)))
            .collect();
        Self { piece_layer, trees }
    }

    /// Whether there is anything to serve.
    pub fn is_empty(&self) -> bool {
        self.trees.is_empty()
    }

    /// The answer to `req`: its hashes then its uncles, or why it is refused (answer a
    /// `hash reject`). Never panics, whatever the numbers.
    pub fn answer(&self, req: &HashRequest) -> Result<Vec<Hash256>, HashError> {
        let tree = self
            .trees
            .get(&req.pieces_root)
            .ok_or(HashError::UnknownRoot)?;
        if req.base_layer != self.piece_layer {
            return Err(HashError::BaseLayer {
                got: req.base_layer,
                piece_layer: self.piece_layer,
            });
        }
        check_run(
            req,
            tree.levels[0].len() as u32,
            tree.levels.len() as u32 - 1,
        )?;
        let start = req.index as usize;
        let mut out = tree.levels[0][start..start + req.length as usize].to_vec();
        let run_height = req.length.trailing_zeros();
        for h in run_height..=req.proof_layers {
            let level = &tree.levels[h as usize];
            out.push(level[(start >> h) ^ 1]);
        }
        Ok(out)
    }
}

/// Checks a run against a layer of `layer_len` nodes (a power of two) in a tree `height`
/// levels above that layer.
fn check_run(req: &HashRequest, layer_len: u32, height: u32) -> Result<(), HashError> {
    let n = req.length;
    if n == 0 || n > MAX_HASHES_PER_REQUEST || !n.is_power_of_two() {
        return Err(HashError::Length(n));
    }
    if req.index % n != 0 || u64::from(req.index) + u64::from(n) > u64::from(layer_len) {
        return Err(HashError::OutOfRange {
            index: req.index,
            length: n,
            layer_len,
        });
    }
    if req.proof_layers >= height {
        return Err(HashError::ProofLayers(req.proof_layers));
    }
    Ok(())
}

/// Folds a run's hashes and uncles up to the root they prove (an error when the counts are
/// off): compare it with the file's root.
pub fn proven_root(
    req: &HashRequest,
    hashes: &[Hash256],
    pad: Hash256,
) -> Result<Hash256, HashError> {
    let n = req.length as usize;
    let expected = n + uncle_count(req.length, req.proof_layers) as usize;
    if hashes.len() != expected || n == 0 || !req.length.is_power_of_two() {
        return Err(HashError::Count {
            got: hashes.len(),
            expected,
        });
    }
    let mut node = merkle::merkle_root(&hashes[..n], pad);
    let mut at = req.index >> req.length.trailing_zeros();
    for uncle in &hashes[n..] {
        node = if at % 2 == 0 {
            merkle::parent(&node, uncle)
        } else {
            merkle::parent(uncle, &node)
        };
        at >>= 1;
    }
    Ok(node)
}

/// One file whose piece layer we fetch.
#[derive(Clone, Debug)]
struct Wanted {
    /// Its root.
    root: Hash256,
    /// Its pieces.
    pieces: u32,
    /// The runs verified so far, by run: memory grows only as proved hashes arrive (a small
    /// dictionary may claim millions of pieces).
    runs: BTreeMap<usize, Vec<Hash256>>,
    /// One flag per run of 512 pieces: verified and kept.
    have: Vec<bool>,
}

impl Wanted {
    /// The request for run `run`: 512 pieces from `run * 512` (fewer at the end: the next
    /// power of two of what is left), proved up to just below the root.
    fn request(&self, run: usize, piece_layer: u32) -> HashRequest {
        let padded = self.pieces.next_power_of_two();
        let index = run as u32 * MAX_HASHES_PER_REQUEST;
        let left = self.pieces - index;
        HashRequest {
            pieces_root: self.root,
            base_layer: piece_layer,
            index,
            length: left.next_power_of_two().min(MAX_HASHES_PER_REQUEST),
            proof_layers: padded.trailing_zeros() - 1,
        }
    }
}

/// A request we sent and wait for.
#[derive(Clone, Copy, Debug)]
struct InFlight<P> {
    /// To whom.
    peer: P,
    /// The file (index into `files`) and run.
    file: usize,
    /// The run.
    run: usize,
    /// What was sent.
    req: HashRequest,
    /// When.
    at: Instant,
}

/// What an accepted answer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Kept; more runs are missing.
    Stored,
    /// Kept, and every piece layer is here.
    Done,
    /// An answer to a run we already had (another peer was faster): dropped.
    Duplicate,
}

/// Fetches the piece layers of a v2 torrent's files from its peers (a torrent from a v2
/// magnet: the layers are not in the info dictionary). `P` is the caller's key for a peer.
#[derive(Clone, Debug)]
pub struct HashPicker<P> {
    /// The piece layer's height.
    piece_layer: u32,
    /// The files larger than a piece, one per root.
    files: Vec<Wanted>,
    /// Requests outstanding.
    in_flight: Vec<InFlight<P>>,
    /// (peer, file, run, when) a peer refused or timed out on: not asked again of it for
    /// [`REFUSAL_REST`], oldest first.
    refused: std::collections::VecDeque<(P, usize, usize, Instant)>,
}

impl<P: Copy + Eq + Hash + fmt::Debug> HashPicker<P> {
    /// A picker for `files` (each `(pieces root, length)`; empty files and files of one piece
    /// or less need no layer and are skipped) with pieces of `piece_length` bytes.
    pub fn new(piece_length: u64, files: impl IntoIterator<Item = (Hash256, u64)>) -> Self {
        let mut seen = BTreeMap::new();
        for (root, length) in files {
            if length > piece_length && piece_length > 0 {
                let pieces = length.div_ceil(piece_length).min(u64::from(u32::MAX / 2)) as u32;
                seen.entry(root).or_insert(pieces);
            }
        }
        let files = seen
            .into_iter()
            .map(|(root, pieces)| Wanted {
                root,
                pieces,
                runs: BTreeMap::new(),
                have: vec![false; pieces.div_ceil(MAX_HASHES_PER_REQUEST) as usize],
            })
            .collect();
        Self {
            piece_layer: piece_layer_height(piece_length),
            files,
            in_flight: Vec::new(),
            refused: std::collections::VecDeque::new(),
        }
    }

    /// Whether every piece layer is here.
    pub fn is_done(&self) -> bool {
        self.files.iter().all(|f| f.have.iter().all(|&h| h))
    }

    /// Runs verified, and runs in all.
    pub fn progress(&self) -> (usize, usize) {
        let all = self.files.iter().map(|f| f.have.len()).sum();
        let have = self
            .files
            .iter()
            .map(|f| f.have.iter().filter(|&&h| h).count())
            .sum();
        (have, all)
    }

    /// The piece layers fetched, by root (complete once [`HashPicker::is_done`]; before, the
    /// runs verified so far, in order).
    pub fn layers(&self) -> BTreeMap<Hash256, Vec<Hash256>> {
        self.files
            .iter()
            .map(|f| (f.root, f.runs.values().flatten().copied().collect()))
            .collect()
    }

    /// The next request to send `peer` (a peer that speaks v2), if any: a run nobody is asked
    /// for, that this peer did not refuse, within [`MAX_HASH_REQUESTS_PER_PEER`].
    pub fn next_request(&mut self, peer: P, now: Instant) -> Option<HashRequest> {
        let asked = self.in_flight.iter().filter(|r| r.peer == peer).count();
        if asked >= MAX_HASH_REQUESTS_PER_PEER {
            return None;
        }
        while self
            .refused
            .front()
            .is_some_and(|r| now >= r.3 + REFUSAL_REST)
        {
            self.refused.pop_front();
        }
        for (fi, f) in self.files.iter().enumerate() {
            for (run, &have) in f.have.iter().enumerate() {
                if have
                    || self.in_flight.iter().any(|r| r.file == fi && r.run == run)
                    || self
                        .refused
                        .iter()
                        .any(|r| (r.0, r.1, r.2) == (peer, fi, run))
                {
                    continue;
                }
                let req = f.request(run, self.piece_layer);
                self.in_flight.push(InFlight {
                    peer,
                    file: fi,
                    run,
                    req,
                    at: now,
                });
                return Some(req);
            }
        }
        None
    }

    /// Remembers that `peer` did not give (file, run) at `at`.
    fn refuse(&mut self, peer: P, file: usize, run: usize, at: Instant) {
        if self.refused.len() >= MAX_REFUSALS {
            self.refused.pop_front();
        }
        self.refused.push_back((peer, file, run, at));
    }

    /// Takes the in-flight request `req` of `peer` out.
    fn take(&mut self, peer: P, req: &HashRequest) -> Option<InFlight<P>> {
        let i = self
            .in_flight
            .iter()
            .position(|r| r.peer == peer && r.req == *req)?;
        Some(self.in_flight.swap_remove(i))
    }

    /// `peer` answered `req` with `hashes` (32 bytes each, as the wire message has them).
    /// An error other than [`HashError::Unsolicited`] means the peer lied or broke the
    /// protocol: blame it. Hashes are kept only when their proof leads to the file's root.
    pub fn handle_hashes(
        &mut self,
        peer: P,
        req: &HashRequest,
        hashes: &[u8],
    ) -> Result<Accepted, HashError> {
        let Some(r) = self.take(peer, req) else {
            return Err(HashError::Unsolicited);
        };
        let hashes: Vec<Hash256> = hashes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        let pad = merkle::pad_hash(self.piece_layer);
        let root = match proven_root(req, &hashes, pad) {
            Ok(root) => root,
            Err(e) => {
                self.refuse(peer, r.file, r.run, r.at);
                return Err(e);
            }
        };
        let f = &mut self.files[r.file];
        if root != f.root {
            self.refuse(peer, r.file, r.run, r.at);
            return Err(HashError::ProofMismatch);
        }
        if f.have[r.run] {
            return Ok(Accepted::Duplicate);
        }
        let start = req.index as usize;
        let real = (f.pieces as usize - start).min(req.length as usize);
        f.runs.insert(r.run, hashes[..real].to_vec());
        f.have[r.run] = true;
        Ok(if self.is_done() {
            Accepted::Done
        } else {
            Accepted::Stored
        })
    }

    /// `peer` refused `req`: it is asked of another peer.
    pub fn handle_reject(&mut self, peer: P, req: &HashRequest) {
        if let Some(r) = self.take(peer, req) {
            self.refuse(peer, r.file, r.run, r.at);
        }
    }

    /// `peer` is gone: its requests go to others.
    pub fn remove_peer(&mut self, peer: P) {
        self.in_flight.retain(|r| r.peer != peer);
        self.refused.retain(|r| r.0 != peer);
    }

    /// When the oldest request times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.in_flight
            .iter()
            .map(|r| r.at + HASH_REQUEST_TIMEOUT)
            .min()
    }

    /// Expires requests older than [`HASH_REQUEST_TIMEOUT`]: their runs are asked of others.
    pub fn handle_timeout(&mut self, now: Instant) {
        let (late, keep): (Vec<_>, Vec<_>) = self
            .in_flight
            .iter()
            .partition(|r| now >= r.at + HASH_REQUEST_TIMEOUT);
        self.in_flight = keep;
        for r in late {
            self.refuse(r.peer, r.file, r.run, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::root_from_layer;

    const PIECE: u64 = 64 * 1024;

    fn layer(n: usize, seed: u8) -> Vec<Hash256> {
        (0..n)
            .map(|i| merkle::sha256(&[seed, (i >> 8) as u8, i as u8]))
            .collect()
    }

    fn flat(h: &[Hash256]) -> Vec<u8> {
        h.iter().flatten().copied().collect()
    }

    fn trees(layers: &[Vec<Hash256>]) -> (PieceTrees, Vec<Hash256>) {
        let mut map = BTreeMap::new();
        let mut roots = Vec::new();
        for l in layers {
            let root = root_from_layer(l, PIECE);
            roots.push(root);
            map.insert(root, l.clone());
        }
        (PieceTrees::new(PIECE, &map), roots)
    }

    #[test]
    fn answers_prove_themselves_small_and_large_files() {
        // 3 pieces (one run, padded to 4) and 1200 pieces (runs of 512, 512, 176 padded to 256).
        let small = layer(3, 1);
        let large = layer(1200, 2);
        let (trees, roots) = trees(&[small.clone(), large.clone()]);
        let mut picker: HashPicker<u8> = HashPicker::new(
            PIECE,
            [
                (roots[0], 3 * PIECE - 5),
                (roots[1], 1200 * PIECE),
                ([9; 32], PIECE),
            ],
        );
        assert_eq!(picker.progress(), (0, 4));
        let t0 = Instant::now();
        let mut asked = Vec::new();
        for peer in 0..3u8 {
            while let Some(r) = picker.next_request(peer, t0) {
                asked.push((peer, r));
            }
        }
        assert_eq!(asked.len(), 4, "{asked:?}");
        let small_req = asked
            .iter()
            .find(|(_, r)| r.pieces_root == roots[0])
            .unwrap()
            .1;
        assert_eq!(
            (
                small_req.base_layer,
                small_req.index,
                small_req.length,
                small_req.proof_layers
            ),
            (2, 0, 4, 1)
        );
        let last = asked.iter().find(|(_, r)| r.index == 1024).unwrap().1;
        assert_eq!((last.length, last.proof_layers), (256, 10));
        for (i, (peer, r)) in asked.iter().enumerate() {
            let hashes = trees.answer(r).unwrap();
            assert_eq!(
                hashes.len() as u32,
                r.length + uncle_count(r.length, r.proof_layers)
            );
            let got = picker.handle_hashes(*peer, r, &flat(&hashes)).unwrap();
            let want = if i == asked.len() - 1 {
                Accepted::Done
            } else {
                Accepted::Stored
            };
            assert_eq!(got, want);
        }
        assert!(picker.is_done());
        let layers = picker.layers();
        assert_eq!(layers[&roots[0]], small);
        assert_eq!(layers[&roots[1]], large);
        assert_eq!(layers.len(), 2, "the one-piece file needs no layer");
    }

    #[test]
    fn a_wrong_proof_or_count_is_refused_and_not_kept() {
        let large = layer(1100, 3);
        let (trees, roots) = trees(std::slice::from_ref(&large));
        let mut picker: HashPicker<u8> = HashPicker::new(PIECE, [(roots[0], 1100 * PIECE)]);
        let t0 = Instant::now();
        let r = picker.next_request(1, t0).unwrap();
        let mut hashes = trees.answer(&r).unwrap();
        // A lying uncle.
        let last = hashes.len() - 1;
        hashes[last][0] ^= 1;
        assert_eq!(
            picker.handle_hashes(1, &r, &flat(&hashes)),
            Err(HashError::ProofMismatch)
        );
        // The liar is not asked that run again; another peer is, and its answer is kept.
        let again = picker.next_request(1, t0).unwrap();
        assert_ne!(again.index, r.index);
        let r2 = picker.next_request(2, t0).unwrap();
        assert_eq!(r2, r);
        let good = trees.answer(&r2).unwrap();
        // Too few hashes, and an answer nobody asked for.
        assert!(matches!(
            picker.handle_hashes(2, &r2, &flat(&good[1..])),
            Err(HashError::Count { .. })
        ));
        assert_eq!(
            picker.handle_hashes(3, &r2, &flat(&good)),
            Err(HashError::Unsolicited)
        );
        let r3 = picker.next_request(3, t0).unwrap();
        assert_eq!(r3, r);
        assert_eq!(
            picker.handle_hashes(3, &r3, &flat(&good)),
            Ok(Accepted::Stored)
        );
        assert_eq!(picker.layers()[&roots[0]][..512], large[..512]);
    }

    #[test]
    fn rejects_and_timeouts_move_the_run_to_another_peer() {
        let (_, roots) = trees(&[layer(10, 4)]);
        let mut picker: HashPicker<u8> = HashPicker::new(PIECE, [(roots[0], 10 * PIECE)]);
        let t0 = Instant::now();
        let r = picker.next_request(1, t0).unwrap();
        assert_eq!(picker.next_request(2, t0), None, "the only run is asked");
        picker.handle_reject(1, &r);
        assert_eq!(picker.next_request(1, t0), None, "1 refused it");
        // After a rest it may be asked again (it may have the layers by then).
        let mut again = picker.clone();
        assert_eq!(again.next_request(1, t0 + REFUSAL_REST), Some(r));
        assert_eq!(picker.next_request(2, t0), Some(r));
        assert_eq!(picker.poll_timeout(), Some(t0 + HASH_REQUEST_TIMEOUT));
        picker.handle_timeout(t0 + HASH_REQUEST_TIMEOUT);
        assert_eq!(picker.next_request(3, t0), Some(r));
        picker.remove_peer(3);
        assert_eq!(picker.next_request(4, t0), Some(r));
    }

    #[test]
    fn serving_refuses_what_it_cannot_answer_without_panicking() {
        let (trees, roots) = trees(&[layer(700, 5)]);
        let ok = HashRequest {
            pieces_root: roots[0],
            base_layer: 2,
            index: 512,
            length: 512,
            proof_layers: 9,
        };
        assert_eq!(trees.answer(&ok).unwrap().len(), 512 + 1);
        let cases = [
            (
                HashRequest {
                    pieces_root: [1; 32],
                    ..ok
                },
                HashError::UnknownRoot,
            ),
            (
                HashRequest {
                    base_layer: 0,
                    ..ok
                },
                HashError::BaseLayer {
                    got: 0,
                    piece_layer: 2,
                },
            ),
            (
                HashRequest {
                    length: 1024,
                    index: 0,
                    ..ok
                },
                HashError::Length(1024),
            ),
            (HashRequest { length: 0, ..ok }, HashError::Length(0)),
            (HashRequest { length: 3, ..ok }, HashError::Length(3)),
            (
                HashRequest { index: 1024, ..ok },
                HashError::OutOfRange {
                    index: 1024,
                    length: 512,
                    layer_len: 1024,
                },
            ),
            (
                HashRequest { index: 256, ..ok },
                HashError::OutOfRange {
                    index: 256,
                    length: 512,
                    layer_len: 1024,
                },
            ),
            (
                HashRequest {
                    index: u32::MAX - 1,
                    length: 2,
                    ..ok
                },
                HashError::OutOfRange {
                    index: u32::MAX - 1,
                    length: 2,
                    layer_len: 1024,
                },
            ),
            (
                HashRequest {
                    proof_layers: 10,
                    ..ok
                },
                HashError::ProofLayers(10),
            ),
            (
                HashRequest {
                    proof_layers: u32::MAX,
                    ..ok
                },
                HashError::ProofLayers(u32::MAX),
            ),
        ];
        for (req, err) in cases {
            assert_eq!(trees.answer(&req), Err(err.clone()), "{req:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn a_short_proof_answer_has_only_the_uncles_asked() {
        let l = layer(8, 6);
        let (trees, roots) = trees(std::slice::from_ref(&l));
        let req = HashRequest {
            pieces_root: roots[0],
            base_layer: 2,
            index: 2,
            length: 2,
            proof_layers: 1,
        };
        let a = trees.answer(&req).unwrap();
        // The run, then the sibling of its subtree (pieces 0 and 1).
        assert_eq!(a.len(), 3);
        assert_eq!(&a[..2], &l[2..4]);
        assert_eq!(a[2], merkle::parent(&l[0], &l[1]));
    }
}
