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
//! # Bounds
//! The table holds at most `max_connections` connections (connecting, established and closing);
//! at most [`MAX_PENDING_ACCEPTS`] of them may wait for [`UtpSocket::accept`]. A SYN beyond
//! either limit is answered with a RESET, so a SYN flood costs one table entry per accepted SYN
//! and no more. RESETs waiting to go out are capped at [`MAX_PENDING_RESETS`]; beyond that,
//! strays are dropped unanswered.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::conn::{Config, Connection};
use super::packet::{Packet, PacketType};
use super::{classify, DatagramKind, UtpError};

/// The default bound on the connection table: more uTP peers than a BitTorrent session keeps.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Accepted connections the application has not taken yet: a burst of honest peers fits; a
/// flood waits for the application, not for memory.
pub const MAX_PENDING_ACCEPTS: usize = 64;
/// RESETs queued for sending: one flood of strays cannot grow the queue.
pub const MAX_PENDING_RESETS: usize = 64;

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

    /// Opens a connection to `addr` with a fresh receive id.
    pub fn connect(
        &mut self,
        now: Instant,
        addr: SocketAddr,
    ) -> Result<ConnectionHandle, UtpError> {
        if self.len() >= self.max_connections {
            return Err(UtpError::TableFull);
        }
        // Our receive id r and the acceptor's r + 1 must both be free of collisions with us.
        let id = loop {
            let id: u16 = self.rng.u16(..);
            if !self.by_key.contains_key(&(addr, id)) {
                break id;
            }
        };
        let conn = Connection::connect(now, self.epoch, id, 1, self.config.clone());
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
                let conn = Connection::accept(now, self.epoch, &packet, seq, self.config.clone());
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
        if let Some((addr, r)) = self.resets.pop_front() {
            if let Some(n) = r.encode(buf) {
                return Some((addr, n));
            }
        }
        let n = self.slots.len();
        for step in 0..n {
            let index = (self.cursor + step) % n;
            let Some(e) = self.slots[index].entry.as_mut() else {
                continue;
            };
            if let Some(len) = e.conn.poll_transmit(now, buf) {
                // Next time start after this one, so no connection starves the others.
                self.cursor = (index + 1) % n;
                return Some((e.addr, len));
            }
        }
        None
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
