//! Message stream encryption (MSE/PE): the Diffie-Hellman and RC4 handshake that hides the
//! BitTorrent protocol on the wire, as a sans-IO state machine for both sides of a connection.
//!
//! # The handshake (A dials, B answers)
//! 1. A → B: `Ya`, `PadA`.
//! 2. B → A: `Yb`, `PadB`.
//! 3. A → B: `HASH('req1', S)`, `HASH('req2', SKEY) xor HASH('req3', S)`,
//!    `ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA))`, `ENCRYPT(IA)`.
//! 4. B → A: `ENCRYPT(VC, crypto_select, len(PadD), PadD)`, then B's stream.
//! 5. A → B: A's stream.
//!
//! `Ya`/`Yb` are 768-bit Diffie-Hellman public keys (96 bytes, big-endian) over the spec's prime
//! with generator 2, `S` the shared secret, `SKEY` the info hash, `HASH` SHA-1, `VC` eight zero
//! bytes. `ENCRYPT` is RC4 keyed with `HASH('keyA', S, SKEY)` from A to B and
//! `HASH('keyB', S, SKEY)` from B to A, its first 1024 bytes of keystream thrown away. The
//! streams after the handshake are RC4 (the same two keystreams, continued) or plaintext, as
//! `crypto_select` says; `IA` (the initial payload, usually A's BitTorrent handshake) is always
//! RC4. Each side finds where the other's random padding ends by scanning for a marker: B for
//! `HASH('req1', S)`, A for the encrypted `VC`, each within the 512 bytes a padding may have.
//!
//! # Use
//! [`Handshake::initiator`] or [`Handshake::responder`] makes the machine (the initiator's
//! first message is queued at once). The caller then loops: send everything
//! [`Handshake::poll_output`] gives, feed what the socket read to [`Handshake::handle_input`]
//! (which says how many bytes it took: it never takes a byte past the end of the handshake), and
//! once [`Handshake::poll_done`] gives the [`Done`] outcome, the bytes it did not take are the
//! start of the peer's stream, to pass through [`Cipher::decrypt`] when RC4 was selected. On an
//! incoming connection, [`looks_like_plaintext`] tells a plain BitTorrent handshake from an MSE
//! opening by its first bytes.
//!
//! # Randomness
//! The machine draws no randomness itself, so tests are deterministic: the caller passes
//! [`Secrets`] (the private key and the paddings). A real connection must fill them from the
//! operating system's generator (`Secrets::from_random` over [`Secrets::RANDOM_LEN`] bytes of it,
//! e.g. from the `getrandom` crate): a guessable private key gives the stream away.
//!
//! # Bounds
//! Paddings over 512 bytes are refused, the markers are looked for within the padding bound only,
//! the initial payload is at most [`MAX_INITIAL_PAYLOAD`] bytes, and the machine buffers at most
//! one step of the handshake (never more than [`MAX_BUFFERED`] bytes), so a peer cannot make it
//! allocate more. Nothing a peer sends can make it panic.
//!
//! # Examples
//! ```
//! use shoal_engine::mse::{Handshake, Policy, Secrets};
//! use shoal_engine::InfoHash;
//!
//! let hash = InfoHash([7; 20]);
//! let secrets = |k: u8| Secrets { private_key: [k; 20], pad: vec![k; 9], crypto_pad_len: 3 };
//! let mut a = Handshake::initiator(hash, Policy::PreferRc4, secrets(1), b"hello").unwrap();
//! let mut b = Handshake::responder_for(Policy::PreferRc4, secrets(2), &[hash]);
//! // Shuttle bytes both ways until both are done (a real caller reads and writes sockets).
//! while !(a.is_done() && b.is_done()) {
//!     while let Some(bytes) = a.poll_output() {
//!         assert_eq!(b.handle_input(&bytes).unwrap(), bytes.len());
//!     }
//!     while let Some(bytes) = b.poll_output() {
//!         assert_eq!(a.handle_input(&bytes).unwrap(), bytes.len());
//!     }
//! }
//! let (a, b) = (a.poll_done().unwrap(), b.poll_done().unwrap());
//! assert_eq!(b.info_hash, hash);
//! assert_eq!(b.initial_payload, b"hello");
//! let (mut ca, mut cb) = (a.cipher.unwrap(), b.cipher.unwrap());
//! let mut msg = *b"piece";
//! ca.encrypt(&mut msg);
//! cb.decrypt(&mut msg);
//! assert_eq!(&msg, b"piece");
//! ```

use std::fmt;
use std::sync::OnceLock;

use num_bigint::BigUint;
use sha1::{Digest, Sha1};

use crate::wire::PROTOCOL;
use crate::InfoHash;

/// Bytes in a Diffie-Hellman public key or shared secret: 768 bits.
pub const KEY_LEN: usize = 96;

/// Bytes of a private key: 160 bits, the size the spec recommends (at least 128).
pub const PRIVATE_KEY_LEN: usize = 20;

/// The most padding the spec allows in each of PadA, PadB, PadC and PadD.
pub const MAX_PAD_LEN: usize = 512;

/// The longest initial payload (IA) we send or accept. A BitTorrent handshake is 68 bytes and
/// libtorrent refuses anything longer; the room beyond it is for a client that sends its first
/// messages too, while a connection's buffer stays small (the field itself allows 65535).
pub const MAX_INITIAL_PAYLOAD: usize = 1024;

/// The most bytes the machine ever holds from the peer at once: a sync window (padding plus the
/// req1 hash) or the initial payload, whichever is larger.
pub const MAX_BUFFERED: usize = if RESPONDER_SYNC_LIMIT > MAX_INITIAL_PAYLOAD {
    RESPONDER_SYNC_LIMIT
} else {
    MAX_INITIAL_PAYLOAD
};

/// The 768-bit safe prime P of the spec (Oakley group 1), big-endian; the generator is 2.
const PRIME: [u8; KEY_LEN] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc9, 0x0f, 0xda, 0xa2, //
    0x21, 0x68, 0xc2, 0x34, 0xc4, 0xc6, 0x62, 0x8b, 0x80, 0xdc, 0x1c, 0xd1, //
    0x29, 0x02, 0x4e, 0x08, 0x8a, 0x67, 0xcc, 0x74, 0x02, 0x0b, 0xbe, 0xa6, //
    0x3b, 0x13, 0x9b, 0x22, 0x51, 0x4a, 0x08, 0x79, 0x8e, 0x34, 0x04, 0xdd, //
    0xef, 0x95, 0x19, 0xb3, 0xcd, 0x3a, 0x43, 0x1b, 0x30, 0x2b, 0x0a, 0x6d, //
    0xf2, 0x5f, 0x14, 0x37, 0x4f, 0xe1, 0x35, 0x6d, 0x6d, 0x51, 0xc2, 0x45, //
    0xe4, 0x85, 0xb5, 0x76, 0x62, 0x5e, 0x7e, 0xc6, 0xf4, 0x4c, 0x42, 0xe9, //
    0xa6, 0x3a, 0x36, 0x21, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x05, 0x63, //
];

/// The verification constant: eight zero bytes, encrypted, so each side can check the keys.
const VC: [u8; 8] = [0; 8];

/// `crypto_provide` / `crypto_select` bit: the stream after the handshake is plaintext.
const CRYPTO_PLAINTEXT: u32 = 0x01;
/// `crypto_provide` / `crypto_select` bit: the stream after the handshake is RC4.
const CRYPTO_RC4: u32 = 0x02;

/// Keystream bytes each RC4 direction throws away first (its start leaks the key).
const RC4_DISCARD: usize = 1024;

/// Bytes after `Ya` within which the responder must find `HASH('req1', S)`: PadA, then the hash.
const RESPONDER_SYNC_LIMIT: usize = MAX_PAD_LEN + 20;
/// Bytes after `Yb` within which the initiator must find the encrypted VC: PadB, then the VC.
const INITIATOR_SYNC_LIMIT: usize = MAX_PAD_LEN + VC.len();

/// Bytes of `ENCRYPT(VC, crypto_provide, len(PadC))` the responder reads after the SKEY hash.
const PROVIDE_LEN: usize = 8 + 4 + 2;
/// Bytes of `ENCRYPT(crypto_select, len(PadD))` the initiator reads after the VC.
const SELECT_LEN: usize = 4 + 2;

/// Whether the first bytes of an incoming connection are a plain BitTorrent handshake
/// (`\x13BitTorrent protocol`): `Some(true)` if so, `Some(false)` as soon as they cannot be (so an
/// MSE opening, or garbage), `None` while they are a prefix of it and more are needed.
pub fn looks_like_plaintext(first: &[u8]) -> Option<bool> {
    let mut header = [0u8; 20];
    header[0] = PROTOCOL.len() as u8;
    header[1..].copy_from_slice(PROTOCOL);
    let n = first.len().min(header.len());
    if first[..n] != header[..n] {
        Some(false)
    } else if n == header.len() {
        Some(true)
    } else {
        None
    }
}

/// `HASH('req2', info_hash)`: what an initiator's obfuscated SKEY hash reveals to a responder
/// that knows the shared secret. A session serving many torrents can keep these in a map for its
/// lookup callback (see [`Handshake::responder`]).
pub fn req2_hash(info_hash: &InfoHash) -> [u8; 20] {
    sha1_parts(&[b"req2", &info_hash.0])
}

/// Which streams a side offers or accepts after the handshake.
///
/// The command line's `--encryption` maps onto it: `prefer` is [`Policy::PreferRc4`] (and the
/// dialler falls back to a plain connection when the peer hangs up on MSE), `require` is
/// [`Policy::RequireRc4`] (and plain BitTorrent is refused both ways), `off` skips MSE
/// altogether. [`Policy::PlaintextOnly`] is libtorrent's `allowed_enc_level` plaintext.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Only plaintext (`crypto_provide` 0x01): the handshake hides the info hash, the stream
    /// after it is clear.
    PlaintextOnly,
    /// Plaintext or RC4 (0x03); a responder selects plaintext when the initiator offers both,
    /// RC4 when it offers only RC4. The handshake is obfuscated either way; the stream is
    /// encrypted only for a peer that insists. This is libtorrent's default (`prefer_rc4`
    /// off): RC4 costs both sides about a CPU second per GiB, and a seeder serving many peers
    /// pays it for each. Not the command line's `prefer` yet: as its default, shoal to shoal,
    /// it stalled a swarm test 2 runs in 3 (DESIGN.md, "Policy").
    Either,
    /// Plaintext or RC4 (0x03); a responder selects RC4 whenever the initiator offers it
    /// (libtorrent's `prefer_rc4`).
    #[default]
    PreferRc4,
    /// RC4 only (0x02).
    RequireRc4,
}

impl Policy {
    /// The `crypto_provide` bits an initiator with this policy sends.
    fn provide(self) -> u32 {
        match self {
            Policy::PlaintextOnly => CRYPTO_PLAINTEXT,
            Policy::Either | Policy::PreferRc4 => CRYPTO_PLAINTEXT | CRYPTO_RC4,
            Policy::RequireRc4 => CRYPTO_RC4,
        }
    }

    /// The method a responder with this policy selects from an initiator's `crypto_provide`.
    fn select(self, offered: u32) -> Option<u32> {
        let common = offered & self.provide();
        if self == Policy::Either && common & CRYPTO_PLAINTEXT != 0 {
            Some(CRYPTO_PLAINTEXT)
        } else if common & CRYPTO_RC4 != 0 {
            Some(CRYPTO_RC4)
        } else if common & CRYPTO_PLAINTEXT != 0 {
            Some(CRYPTO_PLAINTEXT)
        } else {
            None
        }
    }
}

/// Why a handshake failed. Every one ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MseError {
    /// The peer's Diffie-Hellman public key is outside [2, P-2], which would force a trivial
    /// shared secret.
    BadPublicKey,
    /// The marker that ends the peer's padding (the req1 hash or the encrypted VC) did not come
    /// within 512 bytes of padding: garbage, or a peer speaking something else.
    SyncNotFound,
    /// The obfuscated SKEY hash names none of our torrents.
    UnknownSkey,
    /// The verification constant did not decrypt to zeros: the keys differ.
    BadVc,
    /// The peer announced a padding longer than the spec's 512 bytes.
    TooMuchPadding(u16),
    /// The initiator offered no stream method our policy accepts (its `crypto_provide`).
    NoCommonMethod(u32),
    /// The responder's `crypto_select` is not exactly one of the methods we offered.
    BadCryptoSelect(u32),
    /// An initial payload longer than [`MAX_INITIAL_PAYLOAD`] (announced by the peer, or given
    /// to [`Handshake::initiator`]).
    InitialPayloadTooLong(usize),
}

impl fmt::Display for MseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MseError::BadPublicKey => write!(f, "peer's diffie-hellman key is out of range"),
            MseError::SyncNotFound => {
                write!(f, "mse sync marker not found within the padding bound")
            }
            MseError::UnknownSkey => write!(f, "mse skey hash matches no torrent of ours"),
            MseError::BadVc => write!(f, "bad mse verification constant"),
            MseError::TooMuchPadding(n) => {
                write!(f, "mse padding of {n} bytes (at most {MAX_PAD_LEN})")
            }
            MseError::NoCommonMethod(offered) => {
                write!(f, "no common mse crypto method (peer offers {offered:#x})")
            }
            MseError::BadCryptoSelect(select) => {
                write!(
                    f,
                    "peer selected mse crypto method {select:#x}, not one we offered"
                )
            }
            MseError::InitialPayloadTooLong(n) => write!(
                f,
                "mse initial payload of {n} bytes (at most {MAX_INITIAL_PAYLOAD})"
            ),
        }
    }
}

impl std::error::Error for MseError {}

/// The random inputs of one handshake, drawn by the caller (from the OS generator on a real
/// connection; see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    /// The Diffie-Hellman private key `Xa` or `Xb`, big-endian.
    pub private_key: [u8; PRIVATE_KEY_LEN],
    /// PadA or PadB, sent in the clear after our public key, so it should be random; at most
    /// [`MAX_PAD_LEN`] bytes of it are used.
    pub pad: Vec<u8>,
    /// How long PadC or PadD is (at most [`MAX_PAD_LEN`]; more is cut). It is encrypted, so its
    /// bytes are zeros.
    pub crypto_pad_len: u16,
}

impl Secrets {
    /// How many random bytes [`Secrets::from_random`] takes.
    pub const RANDOM_LEN: usize = PRIVATE_KEY_LEN + 2 + 2 + MAX_PAD_LEN;

    /// Secrets from uniformly random bytes: the private key, then two lengths (each reduced to
    /// 0..=512, like libtorrent's), then the bytes of the clear padding.
    pub fn from_random(random: &[u8; Self::RANDOM_LEN]) -> Self {
        let mut private_key = [0u8; PRIVATE_KEY_LEN];
        private_key.copy_from_slice(&random[..PRIVATE_KEY_LEN]);
        let len = |at: usize| {
            usize::from(u16::from_be_bytes([random[at], random[at + 1]])) % (MAX_PAD_LEN + 1)
        };
        let pad_len = len(PRIVATE_KEY_LEN);
        let crypto_pad_len = len(PRIVATE_KEY_LEN + 2) as u16;
        let pad_from = PRIVATE_KEY_LEN + 4;
        Secrets {
            private_key,
            pad: random[pad_from..pad_from + pad_len].to_vec(),
            crypto_pad_len,
        }
    }

    /// The clear padding actually sent.
    fn clear_pad(&self) -> &[u8] {
        &self.pad[..self.pad.len().min(MAX_PAD_LEN)]
    }

    /// The length of the encrypted padding actually sent.
    fn crypto_pad_len(&self) -> usize {
        usize::from(self.crypto_pad_len).min(MAX_PAD_LEN)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key stays out of logs.
        f.debug_struct("Secrets")
            .field("pad_len", &self.clear_pad().len())
            .field("crypto_pad_len", &self.crypto_pad_len())
            .finish_non_exhaustive()
    }
}

/// One direction's RC4 keystream (RC4 as in RFC 6229's test vectors): the permutation and its
/// two indices.
///
/// Our own loop rather than the RustCrypto `rc4` crate, which the tests keep as the reference:
/// on the bench machine (AMD EPYC, x86-64 baseline) the crate runs at about 505 MB/s per core
/// and this loop at about 930 MB/s, as fast as OpenSSL's assembly (the figures and the
/// microbench are in BENCHMARKS.md). An encrypted download runs every byte through it, and
/// on loopback RC4 was most of its CPU. The speed comes from two things the crate's byte-at-a-time
/// generic backend does not do: the next `S[i]` is loaded before the current swap's stores
/// (so the load waits on no store; when the swap wrote that very entry, the value written is
/// taken instead), and eight keystream bytes are gathered into one word and XORed into the data
/// at once. Every index is masked to 0..=255 into a 256-entry array, so the compiler drops the
/// bounds checks without `unsafe`.
#[derive(Clone)]
struct Rc4 {
    /// The permutation `S`.
    s: [u8; 256],
    /// The index `i` of the last keystream byte made.
    i: u8,
    /// The index `j`.
    j: u8,
}

impl Rc4 {
    /// The keystream of `key` (1 to 256 bytes; ours are always 20), from its first byte.
    fn new(key: &[u8]) -> Self {
        debug_assert!(!key.is_empty() && key.len() <= 256);
        let mut s = [0u8; 256];
        for (n, x) in s.iter_mut().enumerate() {
            *x = n as u8;
        }
        let mut j = 0u8;
        for (i, &k) in (0..256).zip(key.iter().cycle()) {
            j = j.wrapping_add(s[i]).wrapping_add(k);
            s.swap(i, usize::from(j));
        }
        Rc4 { s, i: 0, j: 0 }
    }

    /// XORs the next `buf.len()` keystream bytes into `buf`.
    fn apply(&mut self, buf: &mut [u8]) {
        let s = &mut self.s;
        let mut j = usize::from(self.j);
        let mut words = buf.chunks_exact_mut(8);
        // `i` runs one step ahead, with `si = S[i]` already loaded.
        let mut i = (usize::from(self.i) + 1) & 0xff;
        let mut si = s[i];
        for word in &mut words {
            let mut ks = 0u64;
            for k in 0..8 {
                j = (j + usize::from(si)) & 0xff;
                let sj = s[j];
                let next = (i + 1) & 0xff;
                // Loaded before the swap's stores; the swap changes it only when j is next.
                let mut s_next = s[next];
                s[j] = si;
                s[i] = sj;
                if next == j {
                    s_next = si;
                }
                let out = s[(usize::from(si) + usize::from(sj)) & 0xff];
                ks |= u64::from(out) << (8 * k);
                i = next;
                si = s_next;
            }
            let clear = u64::from_le_bytes([
                word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
            ]);
            word.copy_from_slice(&(clear ^ ks).to_le_bytes());
        }
        // Back to the last index used; the tail goes a byte at a time.
        let mut i = (i + 255) & 0xff;
        for b in words.into_remainder() {
            i = (i + 1) & 0xff;
            let si = s[i];
            j = (j + usize::from(si)) & 0xff;
            let sj = s[j];
            s[i] = sj;
            s[j] = si;
            *b ^= s[(usize::from(si) + usize::from(sj)) & 0xff];
        }
        self.i = i as u8;
        self.j = j as u8;
    }
}

/// The two RC4 keystreams of an encrypted connection, one per direction, carried on from the
/// handshake: a stream layer passes every byte it writes through [`Cipher::encrypt`] and every
/// byte it reads through [`Cipher::decrypt`], in order.
pub struct Cipher {
    /// Our direction's keystream.
    send: Rc4,
    /// The peer's direction's keystream.
    recv: Rc4,
}

impl Cipher {
    /// The keystreams of a connection with shared secret `secret` about `skey`, already past
    /// the discarded first 1024 bytes.
    fn new(secret: &[u8; KEY_LEN], skey: &InfoHash, initiator: bool) -> Self {
        let key = |name: &[u8]| {
            let digest = sha1_parts(&[name, secret, &skey.0]);
            let mut rc4 = Rc4::new(&digest);
            let mut discard = [0u8; RC4_DISCARD];
            rc4.apply(&mut discard);
            rc4
        };
        let (a, b) = (key(b"keyA"), key(b"keyB"));
        if initiator {
            Cipher { send: a, recv: b }
        } else {
            Cipher { send: b, recv: a }
        }
    }

    /// Encrypts bytes we are about to send, in place.
    pub fn encrypt(&mut self, buf: &mut [u8]) {
        self.send.apply(buf);
    }

    /// Decrypts bytes the peer sent, in place.
    pub fn decrypt(&mut self, buf: &mut [u8]) {
        self.recv.apply(buf);
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cipher").finish_non_exhaustive()
    }
}

/// What a completed handshake hands to the stream layer.
#[derive(Debug)]
pub struct Done {
    /// The torrent the connection is about (the initiator's, or the one the responder found).
    pub info_hash: InfoHash,
    /// The RC4 keystreams when RC4 was selected; `None` when the stream is plaintext.
    pub cipher: Option<Cipher>,
    /// The initiator's initial payload (IA), decrypted: for a responder, usually the peer's
    /// BitTorrent handshake, which the stream layer must read before the bytes that follow.
    /// Always empty for an initiator.
    pub initial_payload: Vec<u8>,
}

/// The responder's way to find a torrent by `HASH('req2', info_hash)` (see [`req2_hash`]).
pub type Lookup = Box<dyn FnMut(&[u8; 20]) -> Option<InfoHash> + Send>;

/// Which side we are.
enum Side {
    /// We dialled: we know the torrent and carry an initial payload.
    Initiator {
        /// The torrent we ask for.
        info_hash: InfoHash,
        /// IA, sent encrypted in message 3.
        payload: Vec<u8>,
    },
    /// We answered: the torrent comes from the lookup.
    Responder {
        /// Finds the torrent by its req2 hash.
        lookup: Lookup,
    },
}

/// Where the handshake is; each state names what it reads next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Both: the peer's 96-byte public key.
    PeerKey,
    /// Initiator: PadB, scanning for the encrypted VC.
    SyncVc,
    /// Initiator: `crypto_select` and `len(PadD)`, encrypted.
    Select,
    /// Initiator: this many bytes of PadD left.
    PadD(usize),
    /// Responder: PadA, scanning for `HASH('req1', S)`.
    SyncReq1,
    /// Responder: the obfuscated SKEY hash.
    Skey,
    /// Responder: VC, `crypto_provide` and `len(PadC)`, encrypted.
    Provide,
    /// Responder: this many bytes of PadC left.
    PadC(usize),
    /// Responder: `len(IA)`.
    IaLen,
    /// Responder: IA of this length.
    Ia(usize),
    /// Finished; the outcome waits in `done` until taken.
    Done,
    /// Failed with this error; every later input gets it again.
    Failed(MseError),
}

/// One side of an MSE handshake. See the module docs for the loop that drives it.
pub struct Handshake {
    /// Initiator or responder, with what that side needs.
    side: Side,
    /// Which streams we accept.
    policy: Policy,
    /// Our private key and paddings.
    secrets: Secrets,
    /// What we read next.
    state: State,
    /// The bytes of the step being read (a key, a sync window, a field, IA); at most
    /// [`MAX_BUFFERED`].
    buf: Vec<u8>,
    /// Bytes to send, taken by [`Handshake::poll_output`].
    out: Vec<u8>,
    /// The marker being scanned for: the req1 hash or the encrypted VC (its first
    /// `marker_len` bytes).
    marker: [u8; 20],
    /// How many bytes of `marker` count.
    marker_len: usize,
    /// The shared secret S, once known.
    secret: [u8; KEY_LEN],
    /// The keystreams, once the torrent is known.
    cipher: Option<Cipher>,
    /// The torrent, once known.
    info_hash: Option<InfoHash>,
    /// The selected method (`CRYPTO_PLAINTEXT` or `CRYPTO_RC4`), once known.
    selected: u32,
    /// The decrypted IA, for a responder.
    payload_received: Vec<u8>,
    /// The outcome, until taken.
    done: Option<Done>,
}

impl Handshake {
    /// The dialling side, asking for `info_hash`, offering what `policy` allows and carrying
    /// `initial_payload` (usually our 68-byte BitTorrent handshake, which saves a round trip;
    /// may be empty). Its first message (`Ya`, PadA) is queued for [`Handshake::poll_output`].
    ///
    /// Fails only when `initial_payload` is longer than [`MAX_INITIAL_PAYLOAD`].
    pub fn initiator(
        info_hash: InfoHash,
        policy: Policy,
        secrets: Secrets,
        initial_payload: &[u8],
    ) -> Result<Self, MseError> {
        if initial_payload.len() > MAX_INITIAL_PAYLOAD {
            return Err(MseError::InitialPayloadTooLong(initial_payload.len()));
        }
        let side = Side::Initiator {
            info_hash,
            payload: initial_payload.to_vec(),
        };
        let mut hs = Self::new(side, policy, secrets);
        hs.queue_public_key();
        Ok(hs)
    }

    /// The answering side of an incoming MSE connection (see [`looks_like_plaintext`]),
    /// accepting what `policy` allows. `lookup` finds a torrent we serve by its
    /// `HASH('req2', info_hash)` ([`req2_hash`]); `None` fails the handshake. Our public key is
    /// sent once the peer's has arrived.
    pub fn responder(policy: Policy, secrets: Secrets, lookup: Lookup) -> Self {
        Self::new(Side::Responder { lookup }, policy, secrets)
    }

    /// [`Handshake::responder`] for a list of candidate torrents.
    pub fn responder_for(policy: Policy, secrets: Secrets, candidates: &[InfoHash]) -> Self {
        let table: Vec<([u8; 20], InfoHash)> =
            candidates.iter().map(|h| (req2_hash(h), *h)).collect();
        let lookup = move |req2: &[u8; 20]| {
            table
                .iter()
                .find_map(|(hash, info)| (hash == req2).then_some(*info))
        };
        Self::responder(policy, secrets, Box::new(lookup))
    }

    fn new(side: Side, policy: Policy, secrets: Secrets) -> Self {
        Handshake {
            side,
            policy,
            secrets,
            state: State::PeerKey,
            buf: Vec::new(),
            out: Vec::new(),
            marker: [0; 20],
            marker_len: 0,
            secret: [0; KEY_LEN],
            cipher: None,
            info_hash: None,
            selected: 0,
            payload_received: Vec::new(),
            done: None,
        }
    }

    /// Whether we dialled.
    pub fn is_initiator(&self) -> bool {
        matches!(self.side, Side::Initiator { .. })
    }

    /// Whether the handshake has completed (its outcome may already have been taken).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The error the handshake failed with, if it did.
    pub fn error(&self) -> Option<MseError> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Feeds bytes read from the peer. Returns how many were taken: all of them while the
    /// handshake goes on, fewer once it completes (the rest is the start of the peer's stream,
    /// for the caller to decrypt with the outcome's cipher). A failure ends the handshake, and
    /// every later call returns the same error.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<usize, MseError> {
        let mut used = 0;
        loop {
            match self.state {
                State::Failed(e) => return Err(e),
                State::Done => return Ok(used),
                _ if used == input.len() => return Ok(used),
                _ => {}
            }
            match self.step(&input[used..]) {
                // Each step takes at least one byte of non-empty input or finishes.
                Ok(n) => used += n,
                Err(e) => {
                    self.state = State::Failed(e);
                    self.buf = Vec::new();
                    self.out.clear();
                    self.cipher = None;
                    return Err(e);
                }
            }
        }
    }

    /// The next bytes to send to the peer, if any.
    pub fn poll_output(&mut self) -> Option<Vec<u8>> {
        if self.out.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.out))
        }
    }

    /// The outcome, once the handshake is complete and everything it queued has been taken by
    /// [`Handshake::poll_output`] (the responder's last message must reach the peer before the
    /// stream starts). Given once.
    pub fn poll_done(&mut self) -> Option<Done> {
        if self.out.is_empty() {
            self.done.take()
        } else {
            None
        }
    }

    /// Reads from `input` in the current state; returns the bytes taken.
    fn step(&mut self, input: &[u8]) -> Result<usize, MseError> {
        match self.state {
            State::PeerKey => {
                let (n, full) = self.fill(input, KEY_LEN);
                if full {
                    self.on_peer_key()?;
                }
                Ok(n)
            }
            State::SyncVc | State::SyncReq1 => {
                let limit = if self.state == State::SyncVc {
                    INITIATOR_SYNC_LIMIT
                } else {
                    RESPONDER_SYNC_LIMIT
                };
                let (n, found) = self.scan(input, limit)?;
                if found {
                    self.state = if self.state == State::SyncVc {
                        State::Select
                    } else {
                        State::Skey
                    };
                }
                Ok(n)
            }
            State::Select => {
                let (n, full) = self.fill(input, SELECT_LEN);
                if full {
                    self.on_select()?;
                }
                Ok(n)
            }
            State::Skey => {
                let (n, full) = self.fill(input, 20);
                if full {
                    self.on_skey()?;
                }
                Ok(n)
            }
            State::Provide => {
                let (n, full) = self.fill(input, PROVIDE_LEN);
                if full {
                    self.on_provide()?;
                }
                Ok(n)
            }
            State::PadD(left) | State::PadC(left) => {
                let n = self.skip_encrypted(input, left);
                self.state = match (self.state, left - n) {
                    (State::PadD(_), 0) => {
                        self.finish();
                        State::Done
                    }
                    (State::PadD(_), rest) => State::PadD(rest),
                    (_, 0) => State::IaLen,
                    (_, rest) => State::PadC(rest),
                };
                Ok(n)
            }
            State::IaLen => {
                let (n, full) = self.fill(input, 2);
                if full {
                    let mut len = [self.buf[0], self.buf[1]];
                    self.buf.clear();
                    self.decrypt(&mut len);
                    let len = usize::from(u16::from_be_bytes(len));
                    if len > MAX_INITIAL_PAYLOAD {
                        return Err(MseError::InitialPayloadTooLong(len));
                    }
                    if len == 0 {
                        self.finish();
                    } else {
                        self.state = State::Ia(len);
                    }
                }
                Ok(n)
            }
            State::Ia(len) => {
                let (n, full) = self.fill(input, len);
                if full {
                    let mut payload = std::mem::take(&mut self.buf);
                    self.decrypt(&mut payload);
                    self.payload_received = payload;
                    self.finish();
                }
                Ok(n)
            }
            State::Done | State::Failed(_) => Ok(0),
        }
    }

    /// Appends input to `buf` until it holds `need` bytes; returns (bytes taken, whether full).
    fn fill(&mut self, input: &[u8], need: usize) -> (usize, bool) {
        let take = need.saturating_sub(self.buf.len()).min(input.len());
        self.buf.extend_from_slice(&input[..take]);
        (take, self.buf.len() >= need)
    }

    /// Appends input to the sync window in `buf` (at most `limit` bytes in all) and looks for
    /// the marker; returns (bytes taken, found). Taking stops right after the marker, so no byte
    /// of the next field is swallowed.
    fn scan(&mut self, input: &[u8], limit: usize) -> Result<(usize, bool), MseError> {
        let marker = &self.marker[..self.marker_len];
        let old = self.buf.len();
        let take = limit.saturating_sub(old).min(input.len());
        self.buf.extend_from_slice(&input[..take]);
        // Windows ending at or before `old` were searched by earlier calls.
        let from = old.saturating_sub(marker.len() - 1);
        if let Some(at) = self.buf[from..]
            .windows(marker.len())
            .position(|w| w == marker)
        {
            let end = from + at + marker.len();
            self.buf.clear();
            return Ok((end - old, true));
        }
        if self.buf.len() >= limit {
            return Err(MseError::SyncNotFound);
        }
        Ok((take, false))
    }

    /// Runs up to `left` bytes of encrypted padding through the keystream and drops them;
    /// returns how many.
    fn skip_encrypted(&mut self, input: &[u8], left: usize) -> usize {
        let n = left.min(input.len());
        let mut scratch = [0u8; MAX_PAD_LEN];
        scratch[..n].copy_from_slice(&input[..n]);
        self.decrypt(&mut scratch[..n]);
        n
    }

    fn decrypt(&mut self, buf: &mut [u8]) {
        if let Some(c) = &mut self.cipher {
            c.decrypt(buf);
        }
    }

    /// Queues our public key and clear padding.
    fn queue_public_key(&mut self) {
        let key = modpow(&BigUint::from(2u32), &self.secrets.private_key);
        self.out.extend_from_slice(&key);
        self.out.extend_from_slice(self.secrets.clear_pad());
    }

    /// The peer's public key is in `buf`: compute S and go on.
    fn on_peer_key(&mut self) -> Result<(), MseError> {
        let peer = BigUint::from_bytes_be(&self.buf);
        self.buf.clear();
        let p = prime();
        if peer < BigUint::from(2u32) || peer >= p - 1u32 {
            return Err(MseError::BadPublicKey);
        }
        self.secret = modpow(&peer, &self.secrets.private_key);
        match &self.side {
            Side::Initiator { info_hash, payload } => {
                let info_hash = *info_hash;
                let mut cipher = Cipher::new(&self.secret, &info_hash, true);
                self.out
                    .extend_from_slice(&sha1_parts(&[b"req1", &self.secret]));
                let mask = sha1_parts(&[b"req3", &self.secret]);
                let skey = req2_hash(&info_hash);
                self.out.extend(skey.iter().zip(&mask).map(|(a, b)| a ^ b));
                let start = self.out.len();
                self.out.extend_from_slice(&VC);
                self.out
                    .extend_from_slice(&self.policy.provide().to_be_bytes());
                let pad = self.secrets.crypto_pad_len();
                self.out.extend_from_slice(&(pad as u16).to_be_bytes());
                self.out.resize(self.out.len() + pad, 0);
                self.out
                    .extend_from_slice(&(payload.len() as u16).to_be_bytes());
                self.out.extend_from_slice(payload);
                cipher.encrypt(&mut self.out[start..]);
                // The responder's VC, as it will look on the wire; decrypting it here also
                // moves our receiving keystream past it.
                self.marker = [0; 20];
                self.marker_len = VC.len();
                cipher.decrypt(&mut self.marker[..VC.len()]);
                self.cipher = Some(cipher);
                self.info_hash = Some(info_hash);
                self.state = State::SyncVc;
            }
            Side::Responder { .. } => {
                self.queue_public_key();
                self.marker = sha1_parts(&[b"req1", &self.secret]);
                self.marker_len = 20;
                self.state = State::SyncReq1;
            }
        }
        Ok(())
    }

    /// Initiator: `crypto_select` and `len(PadD)` are in `buf`.
    fn on_select(&mut self) -> Result<(), MseError> {
        let mut field = [0u8; SELECT_LEN];
        field.copy_from_slice(&self.buf);
        self.buf.clear();
        self.decrypt(&mut field);
        let select = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
        let pad = u16::from_be_bytes([field[4], field[5]]);
        if (select != CRYPTO_PLAINTEXT && select != CRYPTO_RC4)
            || select & self.policy.provide() == 0
        {
            return Err(MseError::BadCryptoSelect(select));
        }
        if usize::from(pad) > MAX_PAD_LEN {
            return Err(MseError::TooMuchPadding(pad));
        }
        self.selected = select;
        if pad == 0 {
            self.finish();
        } else {
            self.state = State::PadD(usize::from(pad));
        }
        Ok(())
    }

    /// Responder: the obfuscated SKEY hash is in `buf`: find the torrent.
    fn on_skey(&mut self) -> Result<(), MseError> {
        let mask = sha1_parts(&[b"req3", &self.secret]);
        let mut req2 = [0u8; 20];
        for (r, (a, b)) in req2.iter_mut().zip(self.buf.iter().zip(&mask)) {
            *r = a ^ b;
        }
        self.buf.clear();
        let Side::Responder { lookup } = &mut self.side else {
            return Err(MseError::UnknownSkey);
        };
        let info_hash = lookup(&req2).ok_or(MseError::UnknownSkey)?;
        self.cipher = Some(Cipher::new(&self.secret, &info_hash, false));
        self.info_hash = Some(info_hash);
        self.state = State::Provide;
        Ok(())
    }

    /// Responder: VC, `crypto_provide` and `len(PadC)` are in `buf`: check, select, answer.
    fn on_provide(&mut self) -> Result<(), MseError> {
        let mut field = [0u8; PROVIDE_LEN];
        field.copy_from_slice(&self.buf);
        self.buf.clear();
        self.decrypt(&mut field);
        if field[..8] != VC {
            return Err(MseError::BadVc);
        }
        let offered = u32::from_be_bytes([field[8], field[9], field[10], field[11]]);
        let pad = u16::from_be_bytes([field[12], field[13]]);
        if usize::from(pad) > MAX_PAD_LEN {
            return Err(MseError::TooMuchPadding(pad));
        }
        let select = self
            .policy
            .select(offered)
            .ok_or(MseError::NoCommonMethod(offered))?;
        self.selected = select;
        // Message 4: ENCRYPT(VC, crypto_select, len(PadD), PadD).
        let start = self.out.len();
        self.out.extend_from_slice(&VC);
        self.out.extend_from_slice(&select.to_be_bytes());
        let pad_d = self.secrets.crypto_pad_len();
        self.out.extend_from_slice(&(pad_d as u16).to_be_bytes());
        self.out.resize(self.out.len() + pad_d, 0);
        if let Some(c) = &mut self.cipher {
            c.encrypt(&mut self.out[start..]);
        }
        self.state = if pad == 0 {
            State::IaLen
        } else {
            State::PadC(usize::from(pad))
        };
        Ok(())
    }

    /// The handshake is complete: file the outcome.
    fn finish(&mut self) {
        let cipher = self.cipher.take();
        self.done = Some(Done {
            info_hash: self.info_hash.unwrap_or_default(),
            cipher: if self.selected == CRYPTO_RC4 {
                cipher
            } else {
                None
            },
            initial_payload: std::mem::take(&mut self.payload_received),
        });
        self.buf = Vec::new();
        self.state = State::Done;
    }
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.is_initiator())
            .field("policy", &self.policy)
            .field("state", &self.state)
            .field("buffered", &self.buf.len())
            .field("pending_output", &self.out.len())
            .finish_non_exhaustive()
    }
}

/// The prime P.
fn prime() -> &'static BigUint {
    static P: OnceLock<BigUint> = OnceLock::new();
    P.get_or_init(|| BigUint::from_bytes_be(&PRIME))
}

/// `base ^ exponent mod P`, as 96 big-endian bytes.
fn modpow(base: &BigUint, exponent: &[u8]) -> [u8; KEY_LEN] {
    let value = base.modpow(&BigUint::from_bytes_be(exponent), prime());
    let bytes = value.to_bytes_be();
    let mut out = [0u8; KEY_LEN];
    // Below P, so at most 96 bytes; left-padded with zeros.
    let n = bytes.len().min(KEY_LEN);
    out[KEY_LEN - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    out
}

/// SHA-1 over the concatenation of `parts`.
fn sha1_parts(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Handshake as BtHandshake, HANDSHAKE_LEN};
    use crate::PeerId;
    use proptest::prelude::*;

    const HASH: InfoHash = InfoHash([0x5a; 20]);
    const OTHER: InfoHash = InfoHash([0x11; 20]);

    /// Deterministic secrets: a private key and clear padding from `seed`.
    fn secrets(seed: u64, pad: usize, crypto_pad_len: u16) -> Secrets {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut private_key = [0u8; PRIVATE_KEY_LEN];
        rng.fill(&mut private_key);
        let mut pad_bytes = vec![0u8; pad];
        rng.fill(&mut pad_bytes);
        Secrets {
            private_key,
            pad: pad_bytes,
            crypto_pad_len,
        }
    }

    fn initiator(policy: Policy, seed: u64, pad: usize, cpad: u16, ia: &[u8]) -> Handshake {
        Handshake::initiator(HASH, policy, secrets(seed, pad, cpad), ia).unwrap()
    }

    fn responder(policy: Policy, seed: u64, pad: usize, cpad: u16) -> Handshake {
        Handshake::responder_for(policy, secrets(seed, pad, cpad), &[OTHER, HASH])
    }

    /// How bytes in flight are cut into reads.
    #[derive(Clone, Copy, Debug)]
    enum Feed {
        /// Everything available at once.
        Whole,
        /// One byte per read.
        OneByte,
        /// Reads of 1 to 300 bytes, sizes drawn from this seed.
        Random(u64),
    }

    const FEEDS: [Feed; 4] = [
        Feed::Whole,
        Feed::OneByte,
        Feed::Random(1),
        Feed::Random(99),
    ];

    /// How one side ended.
    #[derive(Debug)]
    #[allow(clippy::large_enum_variant)] // a test value, moved a few times
    enum End {
        Done(Done),
        Failed(MseError),
        Stuck,
    }

    impl End {
        fn done(self) -> Done {
            match self {
                End::Done(d) => d,
                other => panic!("expected done, got {other:?}"),
            }
        }
        fn failed(&self) -> MseError {
            match self {
                End::Failed(e) => *e,
                other => panic!("expected a failure, got {other:?}"),
            }
        }
    }

    /// One direction of the connection, with the reader's chunking.
    struct Pipe {
        bytes: Vec<u8>,
        rng: Option<fastrand::Rng>,
        one: bool,
    }

    impl Pipe {
        fn new(feed: Feed) -> Self {
            Pipe {
                bytes: Vec::new(),
                rng: match feed {
                    Feed::Random(s) => Some(fastrand::Rng::with_seed(s)),
                    _ => None,
                },
                one: matches!(feed, Feed::OneByte),
            }
        }

        fn next_len(&mut self) -> usize {
            let n = if self.one {
                1
            } else if let Some(rng) = &mut self.rng {
                rng.usize(1..=300)
            } else {
                self.bytes.len()
            };
            n.min(self.bytes.len())
        }

        /// Feeds the next read to `hs`; returns whether anything was taken.
        fn deliver(&mut self, hs: &mut Handshake) -> Result<bool, MseError> {
            let n = self.next_len();
            if n == 0 || hs.is_done() {
                return Ok(false);
            }
            let used = hs.handle_input(&self.bytes[..n])?;
            assert!(used <= n);
            if used < n {
                assert!(hs.is_done(), "took {used} of {n} bytes before the end");
            }
            self.bytes.drain(..used);
            Ok(used > 0)
        }
    }

    /// The outcome of a run: how each side ended and the raw bytes left in the pipe towards
    /// it (the start of the peer's stream).
    struct Run {
        a: End,
        b: End,
        to_a: Vec<u8>,
        to_b: Vec<u8>,
    }

    /// Drives `a` (initiator) and `b` (responder) against each other. The moment a side is
    /// done, it sends `stream_a` / `stream_b` through its cipher, as a peer sends its first
    /// messages right after the handshake.
    fn run(
        mut a: Handshake,
        mut b: Handshake,
        feed: Feed,
        stream_a: &[u8],
        stream_b: &[u8],
    ) -> Run {
        let (mut to_a, mut to_b) = (Pipe::new(feed), Pipe::new(feed));
        let (mut end_a, mut end_b) = (None, None);
        let mut idle = 0;
        while idle < 3 && (end_a.is_none() || end_b.is_none()) {
            let mut moved = false;
            while let Some(out) = a.poll_output() {
                to_b.bytes.extend_from_slice(&out);
                moved = true;
            }
            while let Some(out) = b.poll_output() {
                to_a.bytes.extend_from_slice(&out);
                moved = true;
            }
            moved |= side_step(&mut a, &mut to_a, &mut end_a, &mut to_b, stream_a);
            moved |= side_step(&mut b, &mut to_b, &mut end_b, &mut to_a, stream_b);
            idle = if moved { 0 } else { idle + 1 };
        }
        Run {
            a: end_a.unwrap_or(End::Stuck),
            b: end_b.unwrap_or(End::Stuck),
            to_a: to_a.bytes,
            to_b: to_b.bytes,
        }
    }

    /// One side reads what is in flight towards it; returns whether anything moved.
    fn side_step(
        hs: &mut Handshake,
        pipe: &mut Pipe,
        end: &mut Option<End>,
        out: &mut Pipe,
        stream: &[u8],
    ) -> bool {
        if end.is_some() {
            return false;
        }
        let moved = match pipe.deliver(hs) {
            Ok(m) => m,
            Err(e) => {
                assert_eq!(hs.error(), Some(e));
                *end = Some(End::Failed(e));
                return true;
            }
        };
        if !hs.is_done() {
            return moved;
        }
        while let Some(bytes) = hs.poll_output() {
            out.bytes.extend_from_slice(&bytes);
        }
        let mut done = hs.poll_done().expect("outcome once done");
        assert!(hs.poll_done().is_none(), "the outcome is given once");
        let mut s = stream.to_vec();
        if let Some(c) = &mut done.cipher {
            c.encrypt(&mut s);
        }
        out.bytes.extend_from_slice(&s);
        *end = Some(End::Done(done));
        true
    }

    /// Checks that both ends agree and that the streams after the handshake decrypt, both the
    /// bytes sent at once and more sent afterwards in odd pieces.
    fn check_pair(r: Run, stream_a: &[u8], stream_b: &[u8], rc4: bool) -> (Done, Done) {
        let (mut a, mut b) = (r.a.done(), r.b.done());
        assert_eq!(a.info_hash, HASH);
        assert_eq!(b.info_hash, HASH);
        assert_eq!(a.cipher.is_some(), rc4);
        assert_eq!(b.cipher.is_some(), rc4);
        let (mut at_a, mut at_b) = (r.to_a, r.to_b);
        if let Some(c) = &mut a.cipher {
            c.decrypt(&mut at_a);
        }
        if let Some(c) = &mut b.cipher {
            c.decrypt(&mut at_b);
        }
        assert_eq!(at_a, stream_b, "the responder's first stream bytes");
        assert_eq!(at_b, stream_a, "the initiator's first stream bytes");
        if let (Some(ca), Some(cb)) = (&mut a.cipher, &mut b.cipher) {
            let mut rng = fastrand::Rng::with_seed(7);
            roundtrip(ca, cb, &mut rng);
            roundtrip(cb, ca, &mut rng);
        }
        (a, b)
    }

    /// Random bytes encrypted by `from` in odd pieces decrypt with `to` in one go.
    fn roundtrip(from: &mut Cipher, to: &mut Cipher, rng: &mut fastrand::Rng) {
        let plain: Vec<u8> = (0..5000).map(|_| rng.u8(..)).collect();
        let mut wire = plain.clone();
        let mut at = 0;
        while at < wire.len() {
            let n = rng.usize(1..=700).min(wire.len() - at);
            from.encrypt(&mut wire[at..at + n]);
            at += n;
        }
        assert_ne!(wire, plain, "rc4 changes the bytes");
        to.decrypt(&mut wire);
        assert_eq!(wire, plain);
    }

    /// Hex of bytes, for comparing with the vectors below.
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// RFC 6229's test vectors (section 2) for three of its keys: keystream offset, then the
    /// 16 keystream bytes from there, in hex.
    const RFC_6229: [(&str, &str); 3] = [
        // 40-bit key
        (
            "0102030405",
            "0000 b2396305f03dc027ccc3524a0a1118a8\n\
             0010 6982944f18fc82d589c403a47a0d0919\n\
             00f0 28cb1132c96ce286421dcaadb8b69eae\n\
             0100 1cfcf62b03eddb641d77dfcf7f8d8c93\n\
             01f0 42b7d0cdd918a8a33dd51781c81f4041\n\
             0200 6459844432a7da923cfb3eb4980661f6\n\
             02f0 ec10327bde2beefd18f9277680457e22\n\
             0300 eb62638d4f0ba1fe9fca20e05bf8ff2b\n\
             03f0 45129048e6a0ed0b56b490338f078da5\n\
             0400 30abbcc7c20b01609f23ee2d5f6bb7df\n\
             05f0 3294f744d8f9790507e70f62e5bbceea\n\
             0600 d8729db41882259bee4f825325f5a130\n\
             07f0 1eb14a0c13b3bf47fa2a0ba93ad45b8b\n\
             0800 cc582f8ba9f265e2b1be9112e975d2d7\n\
             0bf0 f2e30f9bd102ecbf75aaade9bc35c43c\n\
             0c00 ec0e11c479dc329dc8da7968fe965681\n\
             0ff0 068326a2118416d21f9d04b2cd1ca050\n\
             1000 ff25b58995996707e51fbdf08b34d875",
        ),
        // 128-bit key
        (
            "0102030405060708090a0b0c0d0e0f10",
            "0000 9ac7cc9a609d1ef7b2932899cde41b97\n\
             0010 5248c4959014126a6e8a84f11d1a9e1c\n\
             00f0 065902e4b620f6cc36c8589f66432f2b\n\
             0100 d39d566bc6bce3010768151549f3873f\n\
             01f0 b6d1e6c4a5e4771cad79538df295fb11\n\
             0200 c68c1d5c559a974123df1dbc52a43b89\n\
             02f0 c5ecf88de897fd57fed301701b82a259\n\
             0300 eccbe13de1fcc91c11a0b26c0bc8fa4d\n\
             03f0 e7a72574f8782ae26aabcf9ebcd66065\n\
             0400 bdf0324e6083dcc6d3cedd3ca8c53c16\n\
             05f0 b40110c4190b5622a96116b0017ed297\n\
             0600 ffa0b514647ec04f6306b892ae661181\n\
             07f0 d03d1bc03cd33d70dff9fa5d71963ebd\n\
             0800 8a44126411eaa78bd51e8d87a8879bf5\n\
             0bf0 fabeb76028ade2d0e48722e46c4615a3\n\
             0c00 c05d88abd50357f935a63c59ee537623\n\
             0ff0 ff38265c1642c1abe8d3c2fe5e572bf8\n\
             1000 a36a4c301ae8ac13610ccbc12256cacc",
        ),
        // 256-bit key (the second key set)
        (
            "1ada31d5cf688221c109163908ebe51debb46227c6cc8b37641910833222772a",
            "0000 dd5bcb0018e922d494759d7c395d02d3\n\
             0010 c8446f8f77abf737685353eb89a1c9eb\n\
             00f0 af3e30f9c095045938151575c3fb9098\n\
             0100 f8cb6274db99b80b1d2012a98ed48f0e\n\
             01f0 25c3005a1cb85de076259839ab7198ab\n\
             0200 9dcbc183e8cb994b727b75be3180769c\n\
             02f0 a1d3078dfa9169503ed9d4491dee4eb2\n\
             0300 8514a5495858096f596e4bcd66b10665\n\
             03f0 5f40d59ec1b03b33738efa60b2255d31\n\
             0400 3477c7f764a41baceff90bf14f92b7cc\n\
             05f0 ac4e95368d99b9eb78b8da8f81ffa795\n\
             0600 8c3c13f8c2388bb73f38576e65b7c446\n\
             07f0 13c4b9c1dfb66579eddd8a280b9f7316\n\
             0800 ddd27820550126698efaadc64b64f66e\n\
             0bf0 f08f2e66d28ed143f3a237cf9de73559\n\
             0c00 9ea36c525531b880ba124334f57b0b70\n\
             0ff0 d5a39e3dfcc50280bac4a6b5aa0dca7d\n\
             1000 370b1c1fe655916d97fd0d47ca1d72b8",
        ),
    ];

    /// Bytes of a hex string.
    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|n| u8::from_str_radix(&s[n..n + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rc4_matches_rfc_6229() {
        for (key, table) in RFC_6229 {
            let mut stream = vec![0u8; 4096 + 16];
            Rc4::new(&unhex(key)).apply(&mut stream);
            // The same keystream made in odd pieces, as a connection does.
            let mut pieces = vec![0u8; stream.len()];
            let mut rc4 = Rc4::new(&unhex(key));
            for piece in pieces.chunks_mut(13) {
                rc4.apply(piece);
            }
            assert_eq!(pieces, stream);
            for line in table.lines() {
                let (offset, bytes) = line.trim().split_once(' ').unwrap();
                let offset = usize::from_str_radix(offset, 16).unwrap();
                assert_eq!(
                    hex(&stream[offset..offset + 16]),
                    bytes,
                    "{key} at {offset:#x}"
                );
            }
        }
    }

    /// Seconds this thread has run on a CPU (Linux's `/proc/thread-self/schedstat`, in ns),
    /// or wall-clock seconds where that is not readable.
    fn thread_seconds(start: std::time::Instant) -> f64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .map_or_else(|| start.elapsed().as_secs_f64(), |ns| ns as f64 * 1e-9)
    }

    /// Per-core speed of our RC4 loop against the crate's (not a check: a measurement, so it
    /// is ignored by default). Run it with `cargo test --release -p shoal-engine rc4_speed --
    /// --ignored --nocapture`: the best of several passes over a 64 KiB buffer (the size of a
    /// connection's reads and writes), timed in this thread's CPU time, so that other work on
    /// the machine moves it little.
    #[test]
    #[ignore]
    fn rc4_speed() {
        use rc4::cipher::generic_array::GenericArray;
        use rc4::{consts::U20, KeyInit, StreamCipher};
        let key = [7u8; 20];
        let mut buf = vec![0u8; 64 * 1024];
        let passes = 2000;
        let origin = std::time::Instant::now();
        let best = |f: &mut dyn FnMut(&mut [u8]), buf: &mut [u8]| {
            (0..7)
                .map(|_| {
                    let t = thread_seconds(origin);
                    for _ in 0..passes {
                        f(buf);
                    }
                    thread_seconds(origin) - t
                })
                .fold(f64::MAX, f64::min)
        };
        let mut ours = Rc4::new(&key);
        let mut crate_rc4 = rc4::Rc4::<U20>::new(GenericArray::from_slice(&key));
        let t_ours = best(&mut |b| ours.apply(b), &mut buf);
        let t_crate = best(&mut |b| crate_rc4.apply_keystream(b), &mut buf);
        let bytes = (buf.len() * passes) as f64;
        for (name, t) in [("ours", t_ours), ("rc4 crate", t_crate)] {
            println!(
                "{name}: {:.0} MB/s, {:.2} CPU s/GiB",
                bytes / t / 1e6,
                t / bytes * (1u64 << 30) as f64
            );
        }
    }

    #[test]
    fn rc4_matches_the_rc4_crate() {
        use rc4::cipher::generic_array::GenericArray;
        use rc4::{consts::U20, KeyInit, StreamCipher};
        let mut rng = fastrand::Rng::with_seed(6229);
        for round in 0..200 {
            let key: [u8; 20] = std::array::from_fn(|_| rng.u8(..));
            let mut ours = Rc4::new(&key);
            let mut reference = rc4::Rc4::<U20>::new(GenericArray::from_slice(&key));
            // Pieces of every small length (each tail of the 8-byte loop) and some long ones,
            // over data, not zeros, so the XOR is checked too.
            let total = rng.usize(0..40_000);
            let data: Vec<u8> = (0..total).map(|_| rng.u8(..)).collect();
            let (mut a, mut b) = (data.clone(), data.clone());
            let mut at = 0;
            while at < total {
                let n = match rng.u8(0..4) {
                    0 => rng.usize(0..=17),
                    1 => rng.usize(0..=300),
                    _ => rng.usize(0..=9000),
                }
                .min(total - at);
                ours.apply(&mut a[at..at + n]);
                at += n;
            }
            reference.apply_keystream(&mut b);
            assert_eq!(hex(&a), hex(&b), "round {round}, {total} bytes");
        }
        // Short keys and the longest one, through the key schedule's cycling.
        for len in [1, 5, 255, 256] {
            let key: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let mut a = vec![0u8; 3000];
            Rc4::new(&key).apply(&mut a);
            let mut b = vec![0u8; 3000];
            match len {
                1 => rc4::Rc4::<rc4::consts::U1>::new(GenericArray::from_slice(&key))
                    .apply_keystream(&mut b),
                5 => rc4::Rc4::<rc4::consts::U5>::new(GenericArray::from_slice(&key))
                    .apply_keystream(&mut b),
                255 => rc4::Rc4::<rc4::consts::U255>::new(GenericArray::from_slice(&key))
                    .apply_keystream(&mut b),
                _ => rc4::Rc4::<rc4::consts::U256>::new(GenericArray::from_slice(&key))
                    .apply_keystream(&mut b),
            }
            assert_eq!(hex(&a), hex(&b), "key of {len} bytes");
        }
    }

    #[test]
    fn matches_an_independent_implementation() {
        // Vectors from a separate implementation (Python's pow, hashlib and a textbook RC4)
        // for private keys of twenty 0x01 and twenty 0x02 bytes and info hash HASH: message 3
        // offers 0x03 with no PadC and no IA, message 4 selects RC4 with no PadD.
        let key = |k: u8| Secrets {
            private_key: [k; PRIVATE_KEY_LEN],
            pad: Vec::new(),
            crypto_pad_len: 0,
        };
        let mut a = Handshake::initiator(HASH, Policy::PreferRc4, key(1), &[]).unwrap();
        let mut b = Handshake::responder_for(Policy::RequireRc4, key(2), &[HASH]);
        let (m1, m2, m3) = honest_until_message_3(&mut a, &mut b);
        assert_eq!(hex(&m1[..16]), "d0e3956c8bb7401546dd5f47415fec48");
        assert_eq!(hex(&m2[..16]), "2cbb4686366f1a543bfe0a9b60b4c3d7");
        assert_eq!(hex(&m3[..20]), "0a6d483c3bc61484a210fa0f37d99062fd569483");
        assert_eq!(hex(&m3[20..40]), "de38282b1ba63106e705c94f9dbc9a646150bfce");
        assert_eq!(hex(&m3[40..]), "228d199627b46053511b1df8a2f989be");
        assert_eq!(b.handle_input(&m3), Ok(m3.len()));
        assert_eq!(
            hex(&b.poll_output().unwrap()),
            "0b31733dbe56814011ccf81d45f6"
        );
    }

    #[test]
    fn handshakes_and_ciphers_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Handshake>();
        send::<Done>();
    }

    #[test]
    fn every_policy_pair() {
        use Policy::*;
        let cases = [
            (PlaintextOnly, PlaintextOnly, Ok(false)),
            (PlaintextOnly, PreferRc4, Ok(false)),
            (PlaintextOnly, RequireRc4, Err(MseError::NoCommonMethod(1))),
            (PreferRc4, PlaintextOnly, Ok(false)),
            (PreferRc4, PreferRc4, Ok(true)),
            (Either, Either, Ok(false)),
            (Either, PreferRc4, Ok(true)),
            (PreferRc4, Either, Ok(false)),
            (Either, PlaintextOnly, Ok(false)),
            (PlaintextOnly, Either, Ok(false)),
            (RequireRc4, Either, Ok(true)),
            (Either, RequireRc4, Ok(true)),
            (PreferRc4, RequireRc4, Ok(true)),
            (RequireRc4, PlaintextOnly, Err(MseError::NoCommonMethod(2))),
            (RequireRc4, PreferRc4, Ok(true)),
            (RequireRc4, RequireRc4, Ok(true)),
        ];
        for (i, (pa, pb, want)) in cases.into_iter().enumerate() {
            for feed in FEEDS {
                let seed = i as u64 * 10;
                let a = initiator(pa, seed, 17 * i, 3 * i as u16, b"initial payload");
                let b = responder(pb, seed + 1, 40 + i, 5 * i as u16);
                let r = run(a, b, feed, b"from a", b"from b, longer than that");
                match want {
                    Ok(rc4) => {
                        let (_, b) = check_pair(r, b"from a", b"from b, longer than that", rc4);
                        assert_eq!(b.initial_payload, b"initial payload");
                    }
                    Err(e) => {
                        assert_eq!(r.b.failed(), e, "{pa:?} -> {pb:?}");
                        assert!(matches!(r.a, End::Stuck));
                    }
                }
            }
        }
    }

    #[test]
    fn padding_at_both_bounds() {
        for (pad, cpad) in [
            (0, 0),
            (MAX_PAD_LEN, MAX_PAD_LEN as u16),
            (0, 512),
            (512, 0),
        ] {
            for feed in FEEDS {
                let a = initiator(Policy::PreferRc4, 1, pad, cpad, &[]);
                let b = responder(Policy::PreferRc4, 2, pad, cpad);
                let (_, b) = check_pair(run(a, b, feed, b"x", b"yz"), b"x", b"yz", true);
                assert!(b.initial_payload.is_empty());
            }
        }
        // Longer than the bound is cut to it, not refused.
        let a = initiator(Policy::PreferRc4, 1, 2000, 2000, &[]);
        let b = responder(Policy::PreferRc4, 2, 2000, 2000);
        check_pair(run(a, b, Feed::Whole, b"", b""), b"", b"", true);
    }

    #[test]
    fn ia_carries_a_bittorrent_handshake() {
        let ours = BtHandshake::new(HASH, PeerId(*b"-SH0001-abcdefghijkl"));
        for policy in [Policy::PlaintextOnly, Policy::PreferRc4] {
            for feed in FEEDS {
                let a = initiator(policy, 5, 100, 7, &ours.to_bytes());
                let b = responder(policy, 6, 200, 9);
                let theirs = BtHandshake::new(HASH, PeerId(*b"-LT2080-mnopqrstuvwx")).to_bytes();
                let r = run(a, b, feed, b"", &theirs);
                let (_, b) = check_pair(r, b"", &theirs, policy == Policy::PreferRc4);
                assert_eq!(b.initial_payload.len(), HANDSHAKE_LEN);
                assert_eq!(BtHandshake::decode(&b.initial_payload), Ok(Some(ours)));
            }
        }
        let long = vec![1u8; MAX_INITIAL_PAYLOAD + 1];
        assert_eq!(
            Handshake::initiator(HASH, Policy::PreferRc4, secrets(1, 0, 0), &long).unwrap_err(),
            MseError::InitialPayloadTooLong(MAX_INITIAL_PAYLOAD + 1)
        );
        let most = vec![1u8; MAX_INITIAL_PAYLOAD];
        let a = Handshake::initiator(HASH, Policy::PreferRc4, secrets(1, 0, 0), &most).unwrap();
        let r = run(
            a,
            responder(Policy::PreferRc4, 2, 0, 0),
            Feed::Random(3),
            b"",
            b"",
        );
        assert_eq!(check_pair(r, b"", b"", true).1.initial_payload, most);
    }

    #[test]
    fn unknown_torrent_is_refused() {
        for feed in FEEDS {
            let a = initiator(Policy::PreferRc4, 1, 30, 0, &[]);
            let b = Handshake::responder_for(Policy::PreferRc4, secrets(2, 30, 0), &[OTHER]);
            let r = run(a, b, feed, b"", b"");
            assert_eq!(r.b.failed(), MseError::UnknownSkey);
        }
        // A lookup callback sees HASH('req2', info hash) and may say no.
        let a = initiator(Policy::PreferRc4, 1, 30, 0, &[]);
        let b = Handshake::responder(
            Policy::PreferRc4,
            secrets(2, 30, 0),
            Box::new(|req2: &[u8; 20]| {
                assert_eq!(*req2, req2_hash(&HASH));
                None
            }),
        );
        assert_eq!(
            run(a, b, Feed::Whole, b"", b"").b.failed(),
            MseError::UnknownSkey
        );
    }

    /// The three messages of an honest exchange (A's first, B's first, A's second), without B
    /// having read A's second.
    fn honest_until_message_3(a: &mut Handshake, b: &mut Handshake) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let m1 = a.poll_output().unwrap();
        assert_eq!(b.handle_input(&m1), Ok(m1.len()));
        let m2 = b.poll_output().unwrap();
        assert_eq!(a.handle_input(&m2), Ok(m2.len()));
        let m3 = a.poll_output().unwrap();
        (m1, m2, m3)
    }

    /// Offsets into message 3 (no PadA bytes in it): hashes, then the encrypted fields.
    const M3_VC: usize = 40;
    const M3_PROVIDE: usize = 48;
    const M3_PAD_C: usize = 52;

    /// Runs B on message 3 with `flip` xored in at `at` (a change to the plaintext under RC4).
    fn responder_on_tampered(at: usize, flip: &[u8]) -> Result<usize, MseError> {
        let mut a = initiator(Policy::PreferRc4, 1, 10, 0, &[]);
        let mut b = responder(Policy::PreferRc4, 2, 10, 0);
        let (_, _, mut m3) = honest_until_message_3(&mut a, &mut b);
        for (i, f) in flip.iter().enumerate() {
            m3[at + i] ^= f;
        }
        let got = b.handle_input(&m3);
        // A failed handshake stays failed.
        if let Err(e) = got {
            assert_eq!(b.handle_input(b"more"), Err(e));
            assert!(b.poll_output().is_none() && b.poll_done().is_none());
        }
        got
    }

    #[test]
    fn tampered_message_3() {
        assert_eq!(responder_on_tampered(M3_VC + 3, &[1]), Err(MseError::BadVc));
        assert_eq!(
            responder_on_tampered(20, &[0x80]),
            Err(MseError::UnknownSkey)
        );
        // A broken req1 hash leaves B scanning; the rest of the bytes are not enough to fail.
        assert_eq!(responder_on_tampered(0, &[1]), Ok(56));
        assert_eq!(
            responder_on_tampered(M3_PAD_C, &[0x02, 0x01]),
            Err(MseError::TooMuchPadding(513))
        );
        assert_eq!(
            responder_on_tampered(M3_PAD_C, &[0xff, 0xff]),
            Err(MseError::TooMuchPadding(0xffff))
        );
        // PreferRc4 offers 3; 3 ^ 3 = nothing.
        assert_eq!(
            responder_on_tampered(M3_PROVIDE + 3, &[0x03]),
            Err(MseError::NoCommonMethod(0))
        );
        // len(IA) follows an empty PadC: 0 ^ 0x0401 = 1025.
        assert_eq!(
            responder_on_tampered(M3_PAD_C + 2, &[0x04, 0x01]),
            Err(MseError::InitialPayloadTooLong(1025))
        );
        assert_eq!(responder_on_tampered(M3_PAD_C + 2, &[0, 0]), Ok(56));
    }

    /// Runs A on message 4 with `flip` xored in at `at`.
    fn initiator_on_tampered(policy: Policy, at: usize, flip: &[u8]) -> Result<usize, MseError> {
        let mut a = initiator(policy, 1, 0, 0, &[]);
        let mut b = responder(Policy::PreferRc4, 2, 0, 0);
        let (_, _, m3) = honest_until_message_3(&mut a, &mut b);
        assert_eq!(b.handle_input(&m3), Ok(m3.len()));
        let mut m4 = b.poll_output().unwrap();
        for (i, f) in flip.iter().enumerate() {
            m4[at + i] ^= f;
        }
        a.handle_input(&m4)
    }

    #[test]
    fn tampered_message_4() {
        assert_eq!(initiator_on_tampered(Policy::PreferRc4, 0, &[0]), Ok(14));
        // A looks for the encrypted VC: a broken one is never found.
        assert_eq!(
            initiator_on_tampered(Policy::PreferRc4, 2, &[4]),
            Ok(14),
            "still looking"
        );
        assert_eq!(
            initiator_on_tampered(Policy::PreferRc4, 11, &[1]),
            Err(MseError::BadCryptoSelect(3))
        );
        assert_eq!(
            initiator_on_tampered(Policy::PreferRc4, 8, &[0x80]),
            Err(MseError::BadCryptoSelect(0x8000_0002))
        );
        assert_eq!(
            initiator_on_tampered(Policy::PreferRc4, 11, &[2]),
            Err(MseError::BadCryptoSelect(0))
        );
        // RequireRc4 offered only RC4; plaintext selected is a lie.
        assert_eq!(
            initiator_on_tampered(Policy::RequireRc4, 11, &[3]),
            Err(MseError::BadCryptoSelect(1))
        );
        assert_eq!(
            initiator_on_tampered(Policy::PreferRc4, 12, &[0x02, 0x01]),
            Err(MseError::TooMuchPadding(513))
        );
    }

    #[test]
    fn a_broken_vc_fails_after_the_bound() {
        let mut a = initiator(Policy::PreferRc4, 1, 0, 0, &[]);
        let mut b = responder(Policy::PreferRc4, 2, 0, 0);
        let (_, m2, m3) = honest_until_message_3(&mut a, &mut b);
        assert_eq!(m2.len(), KEY_LEN);
        b.handle_input(&m3).unwrap();
        let mut m4 = b.poll_output().unwrap();
        m4[0] ^= 1;
        // PadB plus the VC may span 520 bytes after Yb; A has read none of them yet.
        let mut fed = m4.clone();
        fed.resize(INITIATOR_SYNC_LIMIT - 1, 0);
        assert_eq!(a.handle_input(&fed), Ok(fed.len()));
        assert_eq!(a.handle_input(&[0]), Err(MseError::SyncNotFound));
    }

    #[test]
    fn input_past_the_handshake_is_left_alone() {
        // B must stop right after IA, even when more follows in the same read.
        let mut a = initiator(Policy::RequireRc4, 1, 5, 5, b"ia");
        let mut b = responder(Policy::PreferRc4, 2, 5, 5);
        let (_, _, mut m3) = honest_until_message_3(&mut a, &mut b);
        let len = m3.len();
        m3.extend_from_slice(b"stream");
        assert_eq!(b.handle_input(&m3), Ok(len));
        assert!(b.is_done());
        assert_eq!(b.handle_input(b"more"), Ok(0));
        assert!(b.poll_done().is_none(), "message 4 must be sent first");
        let m4 = b.poll_output().unwrap();
        let done = b.poll_done().unwrap();
        assert_eq!(done.initial_payload, b"ia");
        // A likewise stops right after PadD.
        let mut m4x = m4.clone();
        m4x.extend_from_slice(b"tail");
        assert_eq!(a.handle_input(&m4x), Ok(m4.len()));
        assert!(a.poll_done().unwrap().cipher.is_some());
    }

    #[test]
    fn garbage_fails_within_the_spec_bounds() {
        let mut rng = fastrand::Rng::with_seed(42);
        let garbage: Vec<u8> = (0..2000).map(|_| rng.u8(..)).collect();
        // The responder: a 96-byte key, then at most 512 bytes of PadA and the 20-byte hash.
        let limit = KEY_LEN + RESPONDER_SYNC_LIMIT;
        assert_eq!(limit, 628);
        for feed in [Feed::OneByte, Feed::Whole, Feed::Random(5)] {
            let mut b = responder(Policy::PreferRc4, 2, 0, 0);
            let mut pipe = Pipe::new(feed);
            pipe.bytes = garbage.clone();
            let mut err = None;
            while err.is_none() {
                match pipe.deliver(&mut b) {
                    Ok(moved) => assert!(moved, "garbage must fail, not stall"),
                    Err(e) => err = Some(e),
                }
            }
            assert_eq!(err, Some(MseError::SyncNotFound));
            assert!(garbage.len() - pipe.bytes.len() < limit);
            assert!(b.poll_output().is_none(), "nothing sent after a failure");
        }
        let mut b = responder(Policy::PreferRc4, 2, 0, 0);
        assert_eq!(b.handle_input(&garbage[..limit - 1]), Ok(limit - 1));
        assert_eq!(
            b.handle_input(&garbage[limit - 1..]),
            Err(MseError::SyncNotFound)
        );
        // The initiator, after its first message: Yb, then at most 520 bytes of PadB and VC.
        let mut a = initiator(Policy::PreferRc4, 1, 0, 0, &[]);
        let limit = KEY_LEN + INITIATOR_SYNC_LIMIT;
        assert_eq!(a.handle_input(&garbage[..limit - 1]), Ok(limit - 1));
        assert!(a.poll_output().is_some(), "message 1, then message 3");
        assert_eq!(
            a.handle_input(&garbage[limit - 1..]),
            Err(MseError::SyncNotFound)
        );
    }

    #[test]
    fn degenerate_public_keys_are_refused() {
        let p = prime();
        let mut keys: Vec<[u8; KEY_LEN]> = vec![[0; KEY_LEN], [0xff; KEY_LEN], PRIME];
        let mut one = [0u8; KEY_LEN];
        one[KEY_LEN - 1] = 1;
        keys.push(one);
        let mut p_minus_1 = PRIME;
        p_minus_1[KEY_LEN - 1] -= 1;
        keys.push(p_minus_1);
        for key in keys {
            let mut b = responder(Policy::PreferRc4, 2, 0, 0);
            assert_eq!(b.handle_input(&key), Err(MseError::BadPublicKey));
            let mut a = initiator(Policy::PreferRc4, 1, 0, 0, &[]);
            assert_eq!(a.handle_input(&key), Err(MseError::BadPublicKey));
        }
        // 2 and P-2 are fine.
        let mut two = [0u8; KEY_LEN];
        two[KEY_LEN - 1] = 2;
        let p_minus_2 = modpow(&(p - 2u32), &[1]);
        for key in [two, p_minus_2] {
            let mut b = responder(Policy::PreferRc4, 2, 0, 0);
            assert_eq!(b.handle_input(&key), Ok(KEY_LEN));
        }
    }

    #[test]
    fn public_key_is_two_to_the_private_key() {
        let mut s = secrets(0, 3, 0);
        s.private_key = [0; PRIVATE_KEY_LEN];
        s.private_key[PRIVATE_KEY_LEN - 1] = 10;
        let mut a = Handshake::initiator(HASH, Policy::PreferRc4, s, &[]).unwrap();
        let m1 = a.poll_output().unwrap();
        assert_eq!(m1.len(), KEY_LEN + 3);
        assert!(m1[..KEY_LEN - 2].iter().all(|&b| b == 0));
        assert_eq!(&m1[KEY_LEN - 2..KEY_LEN], &[0x04, 0x00], "2^10");
        assert!(a.poll_output().is_none());
    }

    #[test]
    fn plaintext_is_told_from_mse() {
        let header = BtHandshake::new(HASH, PeerId([1; 20])).to_bytes();
        assert_eq!(looks_like_plaintext(&header), Some(true));
        assert_eq!(looks_like_plaintext(&header[..20]), Some(true));
        for n in 0..20 {
            assert_eq!(looks_like_plaintext(&header[..n]), None, "prefix of {n}");
        }
        let mut wrong = header;
        wrong[19] = b'X';
        assert_eq!(looks_like_plaintext(&wrong), Some(false));
        assert_eq!(looks_like_plaintext(&[0x13, b'b']), Some(false));
        let mut a = initiator(Policy::PreferRc4, 3, 0, 0, &[]);
        assert_eq!(looks_like_plaintext(&a.poll_output().unwrap()), Some(false));
    }

    #[test]
    fn secrets_from_random_bytes() {
        let mut rng = fastrand::Rng::with_seed(8);
        for _ in 0..200 {
            let mut random = [0u8; Secrets::RANDOM_LEN];
            rng.fill(&mut random);
            let s = Secrets::from_random(&random);
            assert_eq!(s.private_key, random[..20]);
            assert!(s.pad.len() <= MAX_PAD_LEN && usize::from(s.crypto_pad_len) <= MAX_PAD_LEN);
            assert_eq!(s.pad, random[24..24 + s.pad.len()]);
        }
        let mut random = [0xffu8; Secrets::RANDOM_LEN];
        random[20..24].copy_from_slice(&[0x02, 0x00, 0x02, 0x01]);
        let s = Secrets::from_random(&random);
        assert_eq!((s.pad.len(), s.crypto_pad_len), (512, 0));
        let shown = format!("{s:?}");
        assert!(!shown.contains("255"), "{shown}");
    }

    #[test]
    fn errors_read_lowercase() {
        let all = [
            MseError::BadPublicKey,
            MseError::SyncNotFound,
            MseError::UnknownSkey,
            MseError::BadVc,
            MseError::TooMuchPadding(600),
            MseError::NoCommonMethod(1),
            MseError::BadCryptoSelect(3),
            MseError::InitialPayloadTooLong(2000),
        ];
        for e in all {
            let s = e.to_string();
            assert!(s.chars().next().unwrap().is_lowercase(), "{s}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Arbitrary bytes after an honest prefix of the peer's messages: no panic, never more
        /// taken than given, never more buffered than the bound.
        #[test]
        fn arbitrary_input_never_panics(
            cut in 0usize..700,
            tail in proptest::collection::vec(any::<u8>(), 0..1200),
            chunk in 1usize..200,
        ) {
            let mut a = initiator(Policy::PreferRc4, 1, 50, 20, b"ia");
            let mut b = responder(Policy::PreferRc4, 2, 60, 30);
            let (m1, m2, m3) = honest_until_message_3(&mut a, &mut b);
            b.handle_input(&m3).unwrap();
            let m4 = b.poll_output().unwrap();
            for (mut hs, honest) in [
                (responder(Policy::PreferRc4, 2, 60, 30), [m1, m3].concat()),
                (initiator(Policy::PreferRc4, 1, 50, 20, b"ia"), [m2, m4].concat()),
            ] {
                let mut input = honest[..cut.min(honest.len())].to_vec();
                input.extend_from_slice(&tail);
                for piece in input.chunks(chunk) {
                    match hs.handle_input(piece) {
                        Ok(n) => prop_assert!(n <= piece.len()),
                        Err(e) => { prop_assert_eq!(hs.error(), Some(e)); break; }
                    }
                    prop_assert!(hs.buf.len() <= MAX_BUFFERED);
                    let _ = hs.poll_output();
                    if hs.is_done() { break; }
                }
            }
        }
    }
}
