//! The uTP side of one UDP socket, still without I/O: a bounded table of connections keyed by
//! (peer address, receive id), routing of incoming datagrams, accepting, and RESETs for strays.
//!
//! A driver owns the real socket and this value. For each datagram it calls
//! [`UtpSocket::handle_datagram`]; a [`Routed::NotUtp`] answer (a KRPC message, say) goes to the
//! DHT. It sends what [`UtpSocket::poll_transmit`] returns until `None`, and calls
//! [`UtpSocket::handle_timeout`] at [`UtpSocket::poll_timeout`]. The application reaches a
//! connection through its [`ConnectionHandle`] ([`UtpSocket::connection_mut`]) and gives it up
//! with [`UtpSocket::release`]; the table forgets it once it is closed and drained.
//!
//! # Packet sizes
//! Each connection searches for the largest datagram its path carries (see `conn`), up to a
//! ceiling this socket sets from the peer's address alone ([`path_ceiling`]): a loopback
//! address gets [`LOOPBACK_PACKET_SIZE`], any other the UDP payload of a 1500-byte Ethernet
//! MTU (1472 over IPv4, 1452 over IPv6). Reading the route's interface MTU would take system
//! calls per connection and only matters for jumbo frames, which the internet does not carry;
//! a tunnel's smaller MTU is found by the search. A datagram that is an MTU probe is named by
//! [`UtpSocket::last_transmit_probe`], so the driver sends it with don't-fragment.
//!
//! # Bounds
//! The table holds at most `max_connections` connections (connecting, established and closing);
//! at most [`MAX_PENDING_ACCEPTS`] of them may wait for [`UtpSocket::accept`]. A SYN beyond
//! either limit is answered with a RESET, so a SYN flood costs one table entry per accepted SYN
//! and no more. RESETs waiting to go out are capped at [`MAX_PENDING_RESETS`]; beyond that,
//! strays are dropped unanswered.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::conn::{Config, Connection, LOOPBACK_PACKET_SIZE, UNANNOUNCED_PEER_DATAGRAM};
use super::packet::{Packet, PacketType};
use super::{classify, DatagramKind, UtpError};

/// The default bound on the connection table: more uTP peers than a BitTorrent session keeps.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Accepted connections the application has not taken yet: a burst of honest peers fits; a
/// flood waits for the application, not for memory.
pub const MAX_PENDING_ACCEPTS: usize = 64;
/// RESETs queued for sending: one flood of strays cannot grow the queue.
pub const MAX_PENDING_RESETS: usize = 64;

/// The largest datagram the path to `addr` may carry, judged from the address (see the module
/// documentation): where a connection's MTU search starts its ceiling.
pub fn path_ceiling(addr: &SocketAddr) -> usize {
    let (loopback, v4) = match addr.ip() {
        std::net::IpAddr::V4(ip) => (ip.is_loopback(), true),
        std::net::IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => (v4.is_loopback(), true),
            None => (ip.is_loopback(), false),
        },
    };
    if loopback {
        LOOPBACK_PACKET_SIZE
    } else if v4 {
        UNANNOUNCED_PEER_DATAGRAM
    } else {
        1500 - 48 // IPv6 (40) and UDP (8) headers
    }
}

/// A connection of a [`UtpSocket`]; stays unique even after its slot is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionHandle {
    /// The slot in the table.
    index: usize,
    /// The slot's generation when the connection took it.
    generation: u64,
}

/// What [`UtpSocket::handle_datagram`] did with a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routed {
    /// Not a uTP packet: a KRPC message (for the DHT) or junk.
    NotUtp(DatagramKind),
    /// Delivered to this connection (which may now be readable, writable or closed).
    Connection(ConnectionHandle),
    /// A SYN opened this connection; [`UtpSocket::accept`] hands it out.
    Accepted(ConnectionHandle),
    /// Dropped: malformed, unknown (and answered with RESET when it was not one), or refused.
    Dropped,
}

/// One slot of the table.
#[derive(Debug)]
struct Slot {
    /// Bumped each time the slot is freed.
    generation: u64,
    /// The connection there, if any.
    entry: Option<Entry>,
}

/// A connection in the table.
#[derive(Debug)]
struct Entry {
    /// The peer's address.
    addr: SocketAddr,
    /// The state machine.
    conn: Connection,
    /// The application gave it up: forget it once it is drained.
    released: bool,
}

/// The uTP demultiplexer of one UDP socket. See the module documentation.
#[derive(Debug)]
pub struct UtpSocket {
    /// The instant every connection's timestamps count from.
    epoch: Instant,
    /// Settings for new connections.
    config: Config,
    /// The table's bound.
    max_connections: usize,
    /// Random connection ids and sequence numbers.
    rng: fastrand::Rng,
    /// The table.
    slots: Vec<Slot>,
    /// Free slot indices.
    free: Vec<usize>,
    /// (peer address, receive id) to slot.
    by_key: HashMap<(SocketAddr, u16), usize>,
    /// Accepted connections not yet handed out.
    accept_queue: VecDeque<ConnectionHandle>,
    /// RESETs to send for strays.
    resets: VecDeque<(SocketAddr, Packet)>,
    /// Where the next [`UtpSocket::poll_transmit`] starts looking, for fairness.
    cursor: usize,
    /// The connection whose MTU probe the last [`UtpSocket::poll_transmit`] returned.
    last_probe: Option<ConnectionHandle>,
}

impl UtpSocket {
    /// A socket whose timestamps count from `epoch`, new connections using `config`, at most
    /// `max_connections` at once, and ids drawn from a generator seeded with `seed`.
    pub fn new(epoch: Instant, config: Config, max_connections: usize, seed: u64) -> Self {
        Self {
            epoch,
            config,
            max_connections: max_connections.max(1),
            rng: fastrand::Rng::with_seed(seed),
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            accept_queue: VecDeque::new(),
            resets: VecDeque::new(),
            cursor: 0,
            last_probe: None,
        }
    }

    /// Connections in the table.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The connection behind `handle`, while the table holds it.
    pub fn connection(&self, handle: ConnectionHandle) -> Option<&Connection> {
        self.entry(handle).map(|e| &e.conn)
    }

    /// The connection behind `handle`, to write, read or close.
    pub fn connection_mut(&mut self, handle: ConnectionHandle) -> Option<&mut Connection> {
        let slot = self.slots.get_mut(handle.index)?;
        if slot.generation != handle.generation {
            return None;
        }
        slot.entry.as_mut().map(|e| &mut e.conn)
    }

    /// The peer address of a connection.
    pub fn peer_addr(&self, handle: ConnectionHandle) -> Option<SocketAddr> {
        self.entry(handle).map(|e| e.addr)
    }

    fn entry(&self, handle: ConnectionHandle) -> Option<&Entry> {
        let slot = self.slots.get(handle.index)?;
        if slot.generation != handle.generation {
            return None;
        }
        slot.entry.as_ref()
    }

    fn insert(&mut self, addr: SocketAddr, conn: Connection) -> ConnectionHandle {
        let key = (addr, conn.recv_id());
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        slot.entry = Some(Entry {
            addr,
            conn,
            released: false,
        });
        self.by_key.insert(key, index);
        ConnectionHandle {
            index,
            generation: slot.generation,
        }
    }

    fn remove(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if let Some(e) = slot.entry.take() {
            self.by_key.remove(&(e.addr, e.conn.recv_id()));
            slot.generation += 1;
            self.free.push(index);
        }
    }

    /// The settings for a connection with `addr`: the socket's, the ceiling lowered to the
    /// path's.
    fn config_for(&self, addr: &SocketAddr) -> Config {
        let mut c = self.config.clone();
        c.max_packet_size = c.max_packet_size.min(path_ceiling(addr));
        c
    }

    /// Opens a connection to `addr` with a fresh receive id.
    pub fn connect(
        &mut self,
        now: Instant,
        addr: SocketAddr,
    ) -> Result<ConnectionHandle, UtpError> {
        if self.len() >= self.max_connections {
            return Err(UtpError::TableFull);
        }
        // A receive id not in use with this peer; a few tries find one unless nearly all
        // 65,536 are taken, which only a table larger than the id space could do.
        let id = (0..64)
            .map(|_| self.rng.u16(..))
            .find(|&id| !self.by_key.contains_key(&(addr, id)))
            .ok_or(UtpError::TableFull)?;
        let conn = Connection::connect(now, self.epoch, id, 1, self.config_for(&addr));
        Ok(self.insert(addr, conn))
    }

    /// The next connection a peer opened, if any.
    pub fn accept(&mut self) -> Option<ConnectionHandle> {
        while let Some(h) = self.accept_queue.pop_front() {
            if self.entry(h).is_some() {
                return Some(h);
            }
        }
        None
    }

    /// The application gives the connection up: it is closed gracefully (if still open) and
    /// forgotten once drained.
    pub fn release(&mut self, handle: ConnectionHandle) {
        if let Some(slot) = self.slots.get_mut(handle.index) {
            if slot.generation == handle.generation {
                if let Some(e) = slot.entry.as_mut() {
                    e.conn.close();
                    e.released = true;
                }
            }
        }
    }

    fn queue_reset(&mut self, addr: SocketAddr, to: &Packet) {
        if self.resets.len() >= MAX_PENDING_RESETS {
            return;
        }
        // The stray's id is our peer's send id; its receive id is one off either way, so echo
        // the id as libutp does, and its lookup tries both neighbours.
        let mut r = Packet::new(PacketType::Reset, to.connection_id);
        r.seq_nr = self.rng.u16(..);
        r.ack_nr = to.seq_nr;
        self.resets.push_back((addr, r));
    }

    /// Routes one datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Routed {
        let kind = classify(data);
        if kind != DatagramKind::Utp {
            return Routed::NotUtp(kind);
        }
        let Ok((packet, payload)) = Packet::decode(data) else {
            return Routed::Dropped;
        };
        let id = packet.connection_id;
        let index = match packet.ty {
            PacketType::Syn => self.by_key.get(&(from, id.wrapping_add(1))).copied(),
            // A RESET carries the receive id or the send id; the send id is one off either way.
            PacketType::Reset => [id, id.wrapping_add(1), id.wrapping_sub(1)]
                .iter()
                .find_map(|&k| self.by_key.get(&(from, k)).copied()),
            _ => self.by_key.get(&(from, id)).copied(),
        };
        if let Some(index) = index {
            let slot = &mut self.slots[index];
            let generation = slot.generation;
            if let Some(e) = slot.entry.as_mut() {
                e.conn.handle_packet(now, &packet, payload);
            }
            return Routed::Connection(ConnectionHandle { index, generation });
        }
        match packet.ty {
            PacketType::Syn => {
                let full = self.len() >= self.max_connections
                    || self.accept_queue.len() >= MAX_PENDING_ACCEPTS;
                if full {
                    self.queue_reset(from, &packet);
                    return Routed::Dropped;
                }
                let seq = self.rng.u16(..);
                let config = self.config_for(&from);
                let conn = Connection::accept(now, self.epoch, &packet, seq, config);
                let h = self.insert(from, conn);
                self.accept_queue.push_back(h);
                Routed::Accepted(h)
            }
            PacketType::Reset => Routed::Dropped,
            _ => {
                self.queue_reset(from, &packet);
                Routed::Dropped
            }
        }
    }

    /// The next datagram to send and its destination, written into `buf` (which should hold
    /// the configured packet size). Call until `None`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        self.last_probe = None;
        if let Some((addr, r)) = self.resets.pop_front() {
            if let Some(n) = r.encode(buf) {
                return Some((addr, n));
            }
        }
        let n = self.slots.len();
        for step in 0..n {
            let index = (self.cursor + step) % n;
            let generation = self.slots[index].generation;
            let Some(e) = self.slots[index].entry.as_mut() else {
                continue;
            };
            if let Some(len) = e.conn.poll_transmit(now, buf) {
                // Next time start after this one, so no connection starves the others.
                self.cursor = (index + 1) % n;
                if e.conn.transmit_is_probe() {
                    self.last_probe = Some(ConnectionHandle { index, generation });
                }
                return Some((e.addr, len));
            }
        }
        None
    }

    /// The connection whose MTU probe the datagram the last [`UtpSocket::poll_transmit`]
    /// returned is, if it is one: send it with don't-fragment, and if the kernel refuses it as
    /// too big, say so with [`UtpSocket::handle_probe_refused`].
    pub fn last_transmit_probe(&self) -> Option<ConnectionHandle> {
        self.last_probe
    }

    /// The kernel refused connection `handle`'s probe as too big for the path: a lost probe,
    /// never an error (see [`Connection::handle_probe_refused`]).
    pub fn handle_probe_refused(&mut self, now: Instant, handle: ConnectionHandle) {
        if let Some(c) = self.connection_mut(handle) {
            c.handle_probe_refused(now);
        }
    }

    /// When [`UtpSocket::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| s.entry.as_ref())
            .filter_map(|e| {
                let t = e.conn.poll_timeout();
                match e.conn.drained_at() {
                    // Wake to forget a released connection once it is drained.
                    Some(d) if e.released => Some(t.map_or(d, |t| t.min(d))),
                    _ => t,
                }
            })
            .min()
    }

    /// Runs every connection's timers and forgets released connections that are drained.
    pub fn handle_timeout(&mut self, now: Instant) {
        for index in 0..self.slots.len() {
            let generation = self.slots[index].generation;
            let Some(e) = self.slots[index].entry.as_mut() else {
                continue;
            };
            e.conn.handle_timeout(now);
            if !e.conn.is_drained(now) {
                continue;
            }
            // A released connection goes once drained; so does one that failed before the
            // application took it (it waits in the accept queue for nobody).
            let h = ConnectionHandle { index, generation };
            if e.released || (e.conn.error().is_some() && self.accept_queue.contains(&h)) {
                self.remove(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::utp::conn::TIME_WAIT;
    use std::time::Duration;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Sends everything `from` has; datagrams for `to_addr` go to `to`, the rest are returned.
    fn shuttle(
        now: Instant,
        from: &mut UtpSocket,
        from_addr: SocketAddr,
        to: &mut UtpSocket,
        to_addr: SocketAddr,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; 2048];
        let mut other = Vec::new();
        while let Some((dest, n)) = from.poll_transmit(now, &mut buf) {
            if dest == to_addr {
                to.handle_datagram(now, from_addr, &buf[..n]);
            } else {
                other.push((dest, buf[..n].to_vec()));
            }
        }
        other
    }

    fn pair() -> (Instant, UtpSocket, UtpSocket, SocketAddr, SocketAddr) {
        let now = Instant::now();
        let a = UtpSocket::new(now, Config::default(), 16, 1);
        let b = UtpSocket::new(now - Duration::from_secs(5), Config::default(), 16, 2);
        (now, a, b, addr("10.0.0.1:6881"), addr("10.0.0.2:6881"))
    }

    #[test]
    fn connect_accept_exchange_close_and_forget() {
        let (mut now, mut a, mut b, aa, ba) = pair();
        let ha = a.connect(now, ba).unwrap();
        a.connection_mut(ha).unwrap().write(b"hello");
        assert!(b.accept().is_none());
        for _ in 0..4 {
            shuttle(now, &mut a, aa, &mut b, ba);
            shuttle(now, &mut b, ba, &mut a, aa);
        }
        let hb = b.accept().expect("a connection to accept");
        assert!(b.accept().is_none());
        assert_eq!(b.peer_addr(hb), Some(aa));
        assert!(a.connection(ha).unwrap().is_connected());
        let mut buf = [0u8; 16];
        assert_eq!(b.connection_mut(hb).unwrap().read(&mut buf), 5);
        assert_eq!(&buf[..5], b"hello");
        // Both give the connection up: FINs cross, and after TIME_WAIT both tables are empty.
        a.release(ha);
        b.release(hb);
        for _ in 0..4 {
            shuttle(now, &mut a, aa, &mut b, ba);
            shuttle(now, &mut b, ba, &mut a, aa);
        }
        assert!(a.connection(ha).unwrap().is_closed());
        assert!(b.connection(hb).unwrap().is_closed());
        assert!(a.connection(ha).unwrap().error().is_none());
        now += TIME_WAIT;
        assert!(a.poll_timeout().is_some_and(|t| t <= now));
        a.handle_timeout(now);
        b.handle_timeout(now);
        assert!(a.is_empty() && b.is_empty());
        assert!(a.connection(ha).is_none(), "the handle is stale");
    }

    /// libtorrent's SYN (captured, see packet.rs): we answer on its id with a STATE that
    /// acknowledges its seq_nr, and take its id + 1 as ours.
    #[test]
    fn answers_a_libtorrent_syn() {
        let (now, _, mut b, aa, _) = pair();
        let syn = [
            0x41, 0x00, 0x20, 0x37, 0x0c, 0xde, 0xf5, 0xdb, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x16, 0x7b, 0x00, 0x00,
        ];
        let Routed::Accepted(h) = b.handle_datagram(now, aa, &syn) else {
            panic!("a SYN opens a connection");
        };
        assert_eq!(b.connection(h).unwrap().recv_id(), 0x2038);
        let mut buf = [0u8; 1500];
        let (to, n) = b.poll_transmit(now, &mut buf).expect("a STATE");
        assert_eq!(to, aa);
        let (state, _) = Packet::decode(&buf[..n]).unwrap();
        assert_eq!(state.ty, PacketType::State);
        assert_eq!(state.connection_id, 0x2037);
        assert_eq!(state.ack_nr, 0x167b);
        assert!(state.wnd_size > 0);
        // The same SYN again (our STATE was lost): the same connection answers again.
        assert_eq!(b.handle_datagram(now, aa, &syn), Routed::Connection(h));
        let (_, n2) = b.poll_transmit(now, &mut buf).expect("the STATE again");
        assert_eq!(Packet::decode(&buf[..n2]).unwrap().0.seq_nr, state.seq_nr);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn krpc_and_junk_are_not_utp() {
        let (now, _, mut b, aa, _) = pair();
        assert_eq!(
            b.handle_datagram(
                now,
                aa,
                b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:xx1:y1:qe"
            ),
            Routed::NotUtp(DatagramKind::Krpc)
        );
        assert_eq!(
            b.handle_datagram(now, aa, b"hi"),
            Routed::NotUtp(DatagramKind::Other)
        );
        // Looks like uTP but its extension runs past the end.
        let mut bad = [0u8; 21];
        bad[0] = 0x01;
        bad[1] = 1;
        assert_eq!(b.handle_datagram(now, aa, &bad), Routed::Dropped);
        assert!(b.poll_transmit(now, &mut [0u8; 64]).is_none());
    }

    #[test]
    fn strays_get_a_reset_and_resets_get_nothing() {
        let (now, _, mut b, aa, _) = pair();
        let mut p = Packet::new(PacketType::Data, 0x4242);
        p.seq_nr = 77;
        let mut buf = [0u8; 64];
        let n = p.encode(&mut buf).unwrap();
        assert_eq!(b.handle_datagram(now, aa, &buf[..n]), Routed::Dropped);
        let (to, len) = b.poll_transmit(now, &mut buf).expect("a RESET");
        assert_eq!(to, aa);
        let (r, _) = Packet::decode(&buf[..len]).unwrap();
        assert_eq!(
            (r.ty, r.connection_id, r.ack_nr),
            (PacketType::Reset, 0x4242, 77)
        );
        let reset = Packet::new(PacketType::Reset, 9);
        let n = reset.encode(&mut buf).unwrap();
        assert_eq!(b.handle_datagram(now, aa, &buf[..n]), Routed::Dropped);
        assert!(
            b.poll_transmit(now, &mut buf).is_none(),
            "never reset a reset"
        );
        assert!(b.is_empty());
    }

    /// The peer forgot the connection (restarted): our next packet draws its RESET, which finds
    /// our connection though it carries the peer's view of the ids.
    #[test]
    fn a_reset_from_a_forgetful_peer_ends_the_connection() {
        for initiator_forgets in [false, true] {
            let (now, mut a, mut b, aa, ba) = pair();
            let ha = a.connect(now, ba).unwrap();
            for _ in 0..3 {
                shuttle(now, &mut a, aa, &mut b, ba);
                shuttle(now, &mut b, ba, &mut a, aa);
            }
            // The initiator speaks first (as in BitTorrent), which confirms the acceptor.
            a.connection_mut(ha).unwrap().write(b"hi");
            shuttle(now, &mut a, aa, &mut b, ba);
            let hb = b.accept().unwrap();
            let (mut keeper, keeper_addr, h, mut forgetter, forgetter_addr) = if initiator_forgets {
                (b, ba, hb, UtpSocket::new(now, Config::default(), 16, 9), aa)
            } else {
                (a, aa, ha, UtpSocket::new(now, Config::default(), 16, 9), ba)
            };
            keeper.connection_mut(h).unwrap().write(b"anyone there?");
            shuttle(
                now,
                &mut keeper,
                keeper_addr,
                &mut forgetter,
                forgetter_addr,
            );
            shuttle(
                now,
                &mut forgetter,
                forgetter_addr,
                &mut keeper,
                keeper_addr,
            );
            let c = keeper.connection(h).unwrap();
            assert_eq!(c.error(), Some(&UtpError::Reset), "{initiator_forgets}");
        }
    }

    #[test]
    fn wrong_connection_id_is_reset_and_harmless() {
        let (now, mut a, mut b, aa, ba) = pair();
        let ha = a.connect(now, ba).unwrap();
        for _ in 0..3 {
            shuttle(now, &mut a, aa, &mut b, ba);
            shuttle(now, &mut b, ba, &mut a, aa);
        }
        let hb = b.accept().unwrap();
        let id = b.connection(hb).unwrap().recv_id();
        let mut buf = [0u8; 64];
        for wrong in [id.wrapping_add(7), id.wrapping_sub(3)] {
            let mut p = Packet::new(PacketType::Data, wrong);
            p.seq_nr = 1;
            let n = p.encode(&mut buf).unwrap();
            assert_eq!(b.handle_datagram(now, aa, &buf[..n]), Routed::Dropped);
        }
        // The right id from another address is a stranger too.
        let mut p = Packet::new(PacketType::Data, id);
        p.seq_nr = 1;
        let n = p.encode(&mut buf).unwrap();
        assert_eq!(
            b.handle_datagram(now, addr("10.9.9.9:1"), &buf[..n]),
            Routed::Dropped
        );
        let resets = shuttle(
            now,
            &mut b,
            ba,
            &mut UtpSocket::new(now, Config::default(), 1, 0),
            addr("0.0.0.0:1"),
        );
        assert_eq!(resets.len(), 3);
        a.connection_mut(ha).unwrap().write(b"fine");
        shuttle(now, &mut a, aa, &mut b, ba);
        let mut out = [0u8; 8];
        assert_eq!(b.connection_mut(hb).unwrap().read(&mut out), 4);
    }

    #[test]
    fn syn_flood_is_bounded() {
        let now = Instant::now();
        let max = 32;
        let mut b = UtpSocket::new(now, Config::default(), max, 3);
        let mut rng = fastrand::Rng::with_seed(5);
        let mut buf = [0u8; 64];
        let mut resets = 0;
        for i in 0..10_000u32 {
            let mut syn = Packet::new(PacketType::Syn, rng.u16(..));
            syn.seq_nr = 1;
            let n = syn.encode(&mut buf).unwrap();
            let from = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 4000));
            b.handle_datagram(now, from, &buf[..n]);
            assert!(b.len() <= MAX_PENDING_ACCEPTS.min(max));
            assert!(b.resets.len() <= MAX_PENDING_RESETS);
            if i % 100 == 0 {
                while b.poll_transmit(now, &mut buf).is_some() {
                    resets += 1;
                }
            }
        }
        assert_eq!(b.len(), max);
        assert!(resets > 0);
        // The application takes them and gives them up; the flooders never answer our FIN,
        // which times out, and the table empties.
        while let Some(h) = b.accept() {
            b.release(h);
        }
        let mut now = now;
        for _ in 0..100 {
            while b.poll_transmit(now, &mut [0u8; 1500]).is_some() {}
            match b.poll_timeout() {
                Some(t) => now = now.max(t),
                None => break,
            }
            b.handle_timeout(now);
        }
        assert!(b.is_empty(), "{} left", b.len());
    }

    /// Half-open connections nobody confirms expire on their own, accepted or not, so a
    /// flood's entries leave the table within seconds.
    #[test]
    fn unconfirmed_connections_expire() {
        let start = Instant::now();
        let mut b = UtpSocket::new(start, Config::default(), 16, 3);
        let mut buf = [0u8; 1500];
        for i in 0..16u16 {
            let mut syn = Packet::new(PacketType::Syn, i * 2);
            syn.seq_nr = 1;
            let n = syn.encode(&mut buf).unwrap();
            b.handle_datagram(start, addr("10.1.1.1:5"), &buf[..n]);
        }
        assert_eq!(b.len(), 16);
        let taken = b.accept().unwrap();
        let mut now = start;
        let mut states = 0;
        while let Some(t) = b.poll_timeout() {
            while b.poll_transmit(now, &mut buf).is_some() {
                states += 1;
            }
            now = t;
            b.handle_timeout(now);
            assert!(now - start < Duration::from_secs(30));
        }
        // Each STATE went out three times (at 0, 1 and 3 s) before giving up at 7 s.
        assert_eq!(states, 16 * 3);
        assert_eq!(
            b.len(),
            1,
            "the one the application holds stays until released"
        );
        let c = b.connection(taken).unwrap();
        assert_eq!(c.error(), Some(&UtpError::TimedOut));
        b.release(taken);
        b.handle_timeout(now);
        assert!(b.is_empty());
    }

    #[test]
    fn connect_refused_when_full() {
        let now = Instant::now();
        let mut a = UtpSocket::new(now, Config::default(), 2, 3);
        a.connect(now, addr("1.1.1.1:1")).unwrap();
        a.connect(now, addr("1.1.1.1:1")).unwrap();
        assert_eq!(a.connect(now, addr("1.1.1.1:1")), Err(UtpError::TableFull));
    }
}

/// Random and half-valid datagrams against a socket with live connections (a stand-in for the
/// fuzz target that runs with every `cargo test`).
#[cfg(test)]
mod hostile {
    use super::*;
    use std::time::Duration;

    #[test]
    fn random_datagrams_never_panic_and_stay_bounded() {
        let mut rng = fastrand::Rng::with_seed(42);
        let start = Instant::now();
        let mut now = start;
        let max = 8;
        let mut s = UtpSocket::new(start, Config::default(), max, 7);
        let peers: Vec<SocketAddr> = (1..4)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 1000 + u16::from(i))))
            .collect();
        let ours = s.connect(now, peers[0]).unwrap();
        let our_id = s.connection(ours).unwrap().recv_id();
        let mut buf = vec![0u8; 4096];
        for round in 0..50_000u32 {
            let len = rng.usize(0..200);
            let mut d: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if len >= 20 && rng.bool() {
                // Mostly valid: version 1, a real type, often our connection's id, small
                // sequence and ack numbers near the real ones, sometimes a SACK.
                d[0] = (rng.u8(0..5) << 4) | 1;
                d[1] = if rng.u8(0..4) == 0 { 1 } else { 0 };
                if rng.bool() {
                    d[2..4].copy_from_slice(&our_id.to_be_bytes());
                }
                d[16..18].copy_from_slice(&rng.u16(0..40).to_be_bytes());
                d[18..20].copy_from_slice(&rng.u16(0..40).to_be_bytes());
                if d[1] == 1 && len > 22 {
                    d[20] = 0;
                    d[21] = rng.u8(0..(len as u8 - 22));
                }
            }
            let from = peers[rng.usize(0..peers.len())];
            s.handle_datagram(now, from, &d);
            if let Some(c) = s.connection_mut(ours) {
                c.write(&d);
                let mut sink = [0u8; 300];
                while c.read(&mut sink) > 0 {}
                assert!(c.buffered_recv_bytes() <= c.config().recv_buffer);
                assert!(c.unacked_bytes() <= c.config().send_buffer);
            }
            while let Some((_, n)) = s.poll_transmit(now, &mut buf) {
                assert!(Packet::decode(&buf[..n]).is_ok());
            }
            now += Duration::from_millis(rng.u64(0..50));
            s.handle_timeout(now);
            assert!(s.len() <= max);
            assert!(s.resets.len() <= MAX_PENDING_RESETS);
            if round % 1000 == 0 {
                while let Some(h) = s.accept() {
                    s.release(h);
                }
            }
        }
    }
}
