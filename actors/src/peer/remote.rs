//! What each side of one connection knows of the other: the remote's pieces, our pieces as the
//! remote has been told of them, and both sides' choke and interest (BEP 3's four flags).
//!
//! The transitions check what the peer claims (piece indices, bitfield lengths) and write the
//! messages they imply (INTERESTED, HAVE, CHOKE...) into the write buffer; telling the picker
//! is the run loop's job.

use std::time::{Duration, Instant};

use shoal_engine::bitfield::Bitfield;
use shoal_engine::wire::Message;

use super::conn::WriteBuf;
use super::Stop;

/// Both sides' state of one connection.
#[derive(Debug)]
pub(super) struct Remote {
    /// Our pieces, as this peer has been told about them (our bitfield, then each HAVE). Only
    /// these are served.
    our_have: Bitfield,
    /// While super-seeding (BEP 16): every piece we have, most of them not told to this peer
    /// (`our_have` holds those offered to it).
    hidden: Option<Bitfield>,
    /// The peer's pieces.
    has: Bitfield,
    /// Whether we refuse the peer's requests.
    am_choking: bool,
    /// Whether we told the peer we want some of its pieces.
    am_interested: bool,
    /// Whether the peer refuses our requests.
    peer_choking: bool,
    /// Whether the peer wants some of our pieces.
    peer_interested: bool,
    /// Whether the peer told us its pieces (a bitfield, HAVE ALL, HAVE NONE or a HAVE): until
    /// then an empty `has` says nothing (a peer fetching the metadata from us sends none).
    heard: bool,
}

impl Remote {
    /// A new connection: both sides choke, neither is interested, the peer has nothing yet;
    /// `our_have` are our pieces, which our first message will carry.
    pub(super) fn new(our_have: Bitfield) -> Self {
        Self {
            has: Bitfield::new(our_have.len()),
            our_have,
            hidden: None,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            heard: false,
        }
    }

    /// Whether we may send requests: the peer unchokes us and we want something.
    pub(super) fn may_request(&self) -> bool {
        !self.peer_choking && self.am_interested
    }

    /// Whether we would serve a request for `piece`: we unchoke the peer and have it.
    pub(super) fn may_serve(&self, piece: u32) -> bool {
        !self.am_choking && self.our_have.get(piece)
    }

    /// Our pieces, told to the peer or not.
    fn ours(&self) -> &Bitfield {
        self.hidden.as_ref().unwrap_or(&self.our_have)
    }

    /// Whether we have every piece (told to the peer or not).
    pub(super) fn we_are_seed(&self) -> bool {
        self.ours().all()
    }

    /// Super-seeding (BEP 16): the peer is told none of our pieces (before our first message),
    /// then only those offered to it ([`Self::offer`]), until [`Self::reveal`].
    pub(super) fn hide(&mut self) {
        if self.hidden.is_none() {
            let none = Bitfield::new(self.our_have.len());
            self.hidden = Some(std::mem::replace(&mut self.our_have, none));
        }
    }

    /// Super-seeding offers the peer `piece`: a HAVE, and its requests for it are served. An
    /// index out of range or a piece we lack is ignored.
    pub(super) fn offer(&mut self, piece: u32, out: &mut WriteBuf) {
        if self.ours().get(piece) && !self.our_have.get(piece) {
            self.our_have.set(piece);
            if !self.has.get(piece) {
                out.push(Message::Have(piece));
            }
        }
    }

    /// Super-seeding is over: the peer is told every piece it was not (a HAVE each, since
    /// a bitfield may only come first).
    pub(super) fn reveal(&mut self, out: &mut WriteBuf) {
        let Some(all) = self.hidden.take() else {
            return;
        };
        for piece in all.iter_ones() {
            if !self.our_have.get(piece) {
                self.our_have.set(piece);
                if !self.has.get(piece) {
                    out.push(Message::Have(piece));
                }
            }
        }
    }

    /// Whether we choke the peer.
    pub(super) fn am_choking(&self) -> bool {
        self.am_choking
    }

    /// Whether the peer has every piece.
    pub(super) fn is_seed(&self) -> bool {
        self.has.all()
    }

    /// The peer's pieces.
    pub(super) fn has(&self) -> &Bitfield {
        &self.has
    }

    /// Our first message: our pieces, as a bitfield, or HAVE ALL / HAVE NONE with the fast
    /// extension; nothing at all for no pieces without it.
    pub(super) fn send_our_pieces(&self, fast: bool, out: &mut WriteBuf) {
        let n = self.our_have.count_ones();
        if fast && n == self.our_have.len() {
            out.push(Message::HaveAll);
        } else if fast && n == 0 {
            out.push(Message::HaveNone);
        } else if n > 0 {
            out.push(Message::Bitfield(self.our_have.as_bytes()));
        }
    }

    /// We have new pieces (from the have-log): each joins what the peer is told, with a HAVE
    /// if `announce` (false before our bitfield goes out: it will carry them, and nothing may
    /// precede it). The HAVE is skipped only when the peer is a seed: a peer that has the
    /// piece but not every piece may be a super-seeder (BEP 16), which hides its pieces and
    /// learns from our HAVE that the piece it offered us arrived (libtorrent too sends these
    /// by default, `send_redundant_have`).
    /// While pieces are hidden (super-seeding), they are only added to the hidden ones.
    pub(super) fn add_our_pieces(&mut self, pieces: &[u32], announce: bool, out: &mut WriteBuf) {
        if let Some(hidden) = self.hidden.as_mut() {
            for &piece in pieces {
                if piece < hidden.len() {
                    hidden.set(piece);
                }
            }
            return;
        }
        for &piece in pieces {
            if !self.our_have.get(piece) {
                self.our_have.set(piece);
                if announce && !self.has.all() {
                    out.push(Message::Have(piece));
                }
            }
        }
    }

    /// Whether we are interested in the peer's pieces.
    pub(super) fn am_interested(&self) -> bool {
        self.am_interested
    }

    /// Tells the peer when our interest changed: we are interested while it has a piece we
    /// lack.
    pub(super) fn update_interest(&mut self, out: &mut WriteBuf) {
        let want = self.has.has_any_not_in(self.ours());
        if want != self.am_interested {
            self.am_interested = want;
            out.push(if want {
                Message::Interested
            } else {
                Message::NotInterested
            });
        }
    }

    /// The torrent chokes the peer; true if that changed anything (its queued requests must
    /// then be dropped).
    pub(super) fn choke(&mut self, out: &mut WriteBuf) -> bool {
        if self.am_choking {
            return false;
        }
        self.am_choking = true;
        out.push(Message::Choke);
        true
    }

    /// The torrent unchokes the peer.
    pub(super) fn unchoke(&mut self, out: &mut WriteBuf) {
        if self.am_choking {
            self.am_choking = false;
            out.push(Message::Unchoke);
        }
    }

    /// The peer choked us.
    pub(super) fn handle_choke(&mut self) {
        self.peer_choking = true;
    }

    /// The peer unchoked us.
    pub(super) fn handle_unchoke(&mut self) {
        self.peer_choking = false;
    }

    /// The peer is interested; true if it was not before.
    pub(super) fn handle_interested(&mut self) -> bool {
        !std::mem::replace(&mut self.peer_interested, true)
    }

    /// The peer is not interested.
    pub(super) fn handle_not_interested(&mut self) {
        self.peer_interested = false;
    }

    /// The peer has `piece`: true if that is news (the picker must hear it). A piece beyond
    /// the torrent is a lie.
    pub(super) fn handle_have(&mut self, piece: u32) -> Result<bool, Stop> {
        let n = self.has.len();
        if piece >= n {
            return Err(Stop::Misbehaved(format!("have for piece {piece} of {n}")));
        }
        self.heard = true;
        if self.has.get(piece) {
            return Ok(false);
        }
        self.has.set(piece);
        Ok(true)
    }

    /// The peer's bitfield. A bitfield is meant to come first, but aria2 sends its extended
    /// handshake and allowed-fast set before it, and later sends a whole bitfield in place of
    /// 20 or more haves: a later one replaces what we knew, as HAVE ALL does. A bitfield of the
    /// wrong length, or with bits set beyond the last piece, is a lie.
    pub(super) fn handle_bitfield(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        let bf = Bitfield::from_bytes(bytes, self.has.len())
            .map_err(|e| Stop::Misbehaved(format!("bad bitfield: {e}")))?;
        self.set_has(bf)
    }

    /// The peer has every piece (fast extension).
    pub(super) fn handle_have_all(&mut self) -> Result<(), Stop> {
        self.set_has(Bitfield::full(self.has.len()))
    }

    /// The peer has no piece (fast extension).
    pub(super) fn handle_have_none(&mut self) -> Result<(), Stop> {
        self.set_has(Bitfield::new(self.has.len()))
    }

    /// Whether the peer has every piece we have (so it will never want one of ours), as far
    /// as it told us.
    fn has_all_of_ours(&self) -> bool {
        self.heard && !self.ours().has_any_not_in(&self.has)
    }

    /// Whether the peer told us of some piece and does not want any of ours.
    fn quiet_partner(&self) -> bool {
        self.heard && !self.peer_interested && !self.has.none()
    }

    /// Two seeds have nothing to say to each other: that ends the connection.
    fn set_has(&mut self, bf: Bitfield) -> Result<(), Stop> {
        self.has = bf;
        self.heard = true;
        if self.ours().all() && self.has.all() {
            return Err(Stop::Local("both sides are seeds".into()));
        }
        Ok(())
    }
}

/// How long a connection that looks useless is kept before it is closed, when only the peer's
/// lack of interest says so: the INTERESTED that our last HAVE may bring takes a round trip.
pub(super) const REDUNDANT_GRACE: Duration = Duration::from_secs(5);

/// Tells when a connection has become useless to both sides, so it can be closed (as libtorrent
/// closes "redundant" connections): we want nothing more (every wanted piece is verified) and
/// the peer wants none of our pieces.
///
/// Either the peer has every piece we have (by its bitfield and HAVEs: at once), or it has
/// some pieces and stayed not interested for [`REDUNDANT_GRACE`] since the connection began
/// and since we completed. The second catches a peer that completed without our knowing: a
/// HAVE is not sent for a piece the other side has, so two downloaders that finish one after
/// the other never see each other's last pieces. A peer that told us of no piece is kept: it
/// may be fetching the metadata from us.
#[derive(Debug)]
pub(super) struct Redundancy {
    /// When the connection began.
    since: Instant,
    /// Since when we have wanted nothing more; `None` while we still download.
    complete_since: Option<Instant>,
}

impl Redundancy {
    /// A connection that begins at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            since: now,
            complete_since: None,
        }
    }

    /// The once-a-second check: `Some(why)` when the connection should be closed.
    /// `complete`: every piece we want is verified (and `remote` knows of all our pieces).
    pub(super) fn check(
        &mut self,
        now: Instant,
        complete: bool,
        remote: &Remote,
    ) -> Option<&'static str> {
        if !complete {
            self.complete_since = None;
            return None;
        }
        let complete_since = *self.complete_since.get_or_insert(now);
        if remote.hidden.is_some() {
            // Super-seeding: the peer waits, not interested, for its next offer; it is the
            // point of the connection, never redundant.
            return None;
        }
        if remote.has_all_of_ours() {
            return Some("redundant: the peer has every piece we have and we want no more");
        }
        let waited = |t: Instant| now.saturating_duration_since(t) >= REDUNDANT_GRACE;
        (remote.quiet_partner() && waited(self.since) && waited(complete_since))
            .then_some("redundant: we want no more and the peer wants none of ours")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_engine::wire::{decode, Decoded};

    /// The ids of the messages in the write buffer, emptying it.
    fn sent(out: &mut WriteBuf) -> Vec<Option<u8>> {
        let mut ids = Vec::new();
        let mut rest = out.pending();
        while let Ok(Decoded::Message { message, consumed }) = decode(rest, 1 << 20) {
            ids.push(message.id());
            rest = &rest[consumed..];
        }
        out.clear();
        ids
    }

    fn have(n: u32, pieces: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(n);
        for &p in pieces {
            b.set(p);
        }
        b
    }

    #[test]
    fn haves_are_checked_and_only_news_counts() {
        let mut r = Remote::new(Bitfield::new(10));
        assert!(r.handle_have(3).unwrap());
        assert!(!r.handle_have(3).unwrap());
        assert!(matches!(r.handle_have(10), Err(Stop::Misbehaved(_))));
        assert!(!r.is_seed());
    }

    #[test]
    fn bitfields_are_checked_and_a_later_one_replaces_the_first() {
        let mut r = Remote::new(Bitfield::new(10));
        assert!(matches!(
            r.handle_bitfield(&[0xff]),
            Err(Stop::Misbehaved(_))
        ));
        // Bits beyond piece 9 are set: a lie.
        assert!(matches!(
            r.handle_bitfield(&[0xff, 0xff]),
            Err(Stop::Misbehaved(_))
        ));
        r.handle_bitfield(&[0x80, 0x00]).unwrap();
        assert!(r.has().get(0));
        r.handle_bitfield(&[0x40, 0x00]).unwrap();
        assert!(!r.has().get(0) && r.has().get(1));
        r.handle_have_all().unwrap();
        assert!(r.is_seed());
        r.handle_have_none().unwrap();
        assert!(r.has().none());
    }

    #[test]
    fn super_seeding_tells_only_offered_pieces_and_serves_only_those() {
        let mut r = Remote::new(Bitfield::full(6));
        r.hide();
        assert!(r.we_are_seed());
        let mut out = WriteBuf::default();
        r.send_our_pieces(true, &mut out);
        assert_eq!(sent(&mut out), vec![Some(15)], "HAVE NONE, not HAVE ALL");
        r.send_our_pieces(false, &mut out);
        assert!(
            sent(&mut out).is_empty(),
            "no bitfield at all without the fast extension"
        );
        r.unchoke(&mut out);
        sent(&mut out);
        assert!(!r.may_serve(2));
        r.offer(2, &mut out);
        r.offer(2, &mut out);
        r.offer(9, &mut out);
        assert_eq!(sent(&mut out), vec![Some(4)], "one HAVE, once");
        assert!(r.may_serve(2) && !r.may_serve(3));
        // Never interested in a peer that has pieces we did not tell it of.
        r.handle_have(3).unwrap();
        r.update_interest(&mut out);
        assert!(!r.am_interested());
        // The end: every piece told, except the one the peer has.
        r.reveal(&mut out);
        assert_eq!(sent(&mut out), vec![Some(4); 4]);
        assert!((0..6).all(|p| r.may_serve(p)));
    }

    #[test]
    fn a_connection_useless_to_both_sides_is_found() {
        let t0 = Instant::now();
        let secs = |s: u64| t0 + Duration::from_secs(s);
        // We seed; the peer has told us nothing yet (it may want the metadata): kept.
        let mut r = Remote::new(Bitfield::full(8));
        let mut red = Redundancy::new(t0);
        assert_eq!(red.check(secs(60), true, &r), None);
        // A downloader that wants our pieces: kept, however long.
        r.handle_bitfield(&[0x0f]).unwrap();
        r.handle_interested();
        assert_eq!(red.check(secs(61), true, &r), None);
        // It completes by HAVEs: closed at the next check.
        for p in 0..4 {
            r.handle_have(p).unwrap();
        }
        assert!(red.check(secs(62), true, &r).is_some());

        // A partial download (skipped files) complete in what it wants: a peer with every
        // piece we have is of no use, nor are we to it.
        let mut r = Remote::new(have(8, &[0, 1]));
        let mut red = Redundancy::new(t0);
        r.handle_bitfield(&[0xc1]).unwrap();
        assert_eq!(red.check(t0, false, &r), None, "still downloading");
        assert!(red.check(t0, true, &r).is_some());

        // A peer that lacks pieces we have (as far as it told us) and stays not interested:
        // closed once both it and our completion are old enough.
        let mut r = Remote::new(Bitfield::full(8));
        r.handle_bitfield(&[0x0f]).unwrap();
        let mut red = Redundancy::new(t0);
        assert_eq!(red.check(secs(1), false, &r), None);
        assert_eq!(red.check(secs(10), true, &r), None, "we just completed");
        assert_eq!(red.check(secs(14), true, &r), None);
        assert!(red.check(secs(15), true, &r).is_some());
        // An interested one is kept.
        r.handle_interested();
        assert_eq!(red.check(secs(30), true, &r), None);
        // Downloading again (more files wanted): kept, and the wait starts over.
        r.handle_not_interested();
        assert_eq!(red.check(secs(31), false, &r), None);
        assert_eq!(red.check(secs(32), true, &r), None);
        assert!(red.check(secs(37), true, &r).is_some());

        // Super-seeding: a peer that holds every piece offered to it, not interested, waits
        // for its next offer: never redundant.
        let mut r = Remote::new(Bitfield::full(8));
        r.hide();
        let mut out = WriteBuf::default();
        r.offer(0, &mut out);
        r.handle_have(0).unwrap();
        let mut red = Redundancy::new(t0);
        assert_eq!(red.check(secs(1), true, &r), None);
        assert_eq!(red.check(secs(60), true, &r), None);
    }

    #[test]
    fn two_seeds_part() {
        let mut r = Remote::new(Bitfield::full(4));
        assert!(matches!(r.handle_have_all(), Err(Stop::Local(_))));
        let mut r = Remote::new(Bitfield::full(4));
        assert!(matches!(r.handle_bitfield(&[0xf0]), Err(Stop::Local(_))));
    }

    #[test]
    fn interest_follows_the_pieces_we_lack() {
        let mut out = WriteBuf::default();
        let mut r = Remote::new(have(4, &[0]));
        r.update_interest(&mut out);
        assert!(out.is_empty(), "nothing to want yet");
        r.handle_have(0).unwrap();
        r.update_interest(&mut out);
        assert!(out.is_empty(), "we have piece 0");
        r.handle_have(1).unwrap();
        r.update_interest(&mut out);
        r.update_interest(&mut out);
        assert_eq!(sent(&mut out), vec![Some(2)], "INTERESTED, once");
        assert!(!r.may_request(), "still choked");
        r.handle_unchoke();
        assert!(r.may_request());
        r.add_our_pieces(&[1], true, &mut out);
        assert_eq!(
            sent(&mut out),
            vec![Some(4)],
            "a HAVE for a piece the peer has: it may be a super-seeder waiting for it"
        );
        r.update_interest(&mut out);
        assert_eq!(sent(&mut out), vec![Some(3)], "NOT INTERESTED");
        assert!(!r.may_request());
    }

    #[test]
    fn our_first_message_and_later_haves() {
        let mut out = WriteBuf::default();
        Remote::new(have(4, &[])).send_our_pieces(false, &mut out);
        assert_eq!(sent(&mut out), vec![]);
        Remote::new(have(4, &[])).send_our_pieces(true, &mut out);
        assert_eq!(sent(&mut out), vec![Some(15)], "HAVE NONE");
        Remote::new(have(4, &[0, 1, 2, 3])).send_our_pieces(true, &mut out);
        assert_eq!(sent(&mut out), vec![Some(14)], "HAVE ALL");
        let mut r = Remote::new(have(4, &[0, 1, 2, 3]));
        r.send_our_pieces(false, &mut out);
        assert_eq!(sent(&mut out), vec![Some(5)], "a bitfield");
        let mut r2 = Remote::new(have(4, &[]));
        r2.add_our_pieces(&[2], false, &mut out);
        assert_eq!(sent(&mut out), vec![], "before the bitfield: no HAVE");
        r2.send_our_pieces(false, &mut out);
        assert_eq!(sent(&mut out), vec![Some(5)]);
        r2.add_our_pieces(&[2, 3], true, &mut out);
        assert_eq!(sent(&mut out), vec![Some(4)], "one HAVE, for piece 3");
        assert!(!r.may_serve(0), "choked");
        r.unchoke(&mut out);
        r.unchoke(&mut out);
        assert_eq!(sent(&mut out), vec![Some(1)]);
        assert!(r.may_serve(0) && !r2.may_serve(0));
        assert!(r.choke(&mut out));
        assert!(!r.choke(&mut out));
        assert_eq!(sent(&mut out), vec![Some(0)]);
    }

    #[test]
    fn interest_is_news_once() {
        let mut r = Remote::new(Bitfield::new(1));
        assert!(r.handle_interested());
        assert!(!r.handle_interested());
        r.handle_not_interested();
        assert!(r.handle_interested());
    }
}
