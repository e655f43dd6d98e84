//! One uTP connection as a sans-IO state machine in the style of quinn-proto: the network and
//! timers come in through `handle_*`, the application writes and reads bytes, and `poll_*` say
//! what to send and when to wake.
//!
//! # Handshake
//! [`Connection::connect`] queues a SYN; the connection is established when the peer's STATE
//! acknowledges it (that STATE carries the peer's next sequence number, so our `ack_nr` starts
//! one below it, as libtorrent does). [`Connection::accept`] answers a SYN with a STATE at once
//! but sends no data until the initiator's first packet arrives: data sent earlier could
//! overtake the STATE and be taken for the start of the stream. In BitTorrent the initiator
//! speaks first, so this costs nothing. Until then the STATE is sent again on the SYN schedule
//! (1 s, then doubling) and after [`Config::max_syn_timeouts`] the connection fails, so
//! half-open connections from a SYN flood expire in seconds. SYNs are retried the same way.
//!
//! # Sending
//! Bytes written wait in a bounded send buffer ([`Config::send_buffer`]) until acknowledged.
//! Packets are cut from it up to [`Config::packet_size`] while the bytes in flight stay under
//! both the congestion window and the window the peer advertises, and there are fewer than
//! [`MAX_IN_FLIGHT`] packets unacknowledged. An acknowledged prefix leaves the buffer; a
//! selectively acknowledged packet is no longer counted in flight.
//!
//! # Loss
//! A packet is lost when three packets after it are selectively acknowledged, or when the same
//! `ack_nr` comes back in three STATE packets (duplicate ACKs): it is sent again at once (fast
//! retransmit) and the congestion window is halved, once per window of data. A retransmission
//! timeout (RTO) sends everything unacknowledged again from a one-packet window, doubles the
//! timeout, and after [`Config::max_timeouts`] timeouts in a row with nothing heard from the
//! peer the connection fails with [`UtpError::TimedOut`] (a peer that answers a probe of its
//! shut window is alive, however long it keeps the window shut). The RTO follows BEP 29 (and RFC 6298): `rto = rtt + 4 * rtt_var`, at
//! least [`MIN_RTO`], [`INITIAL_RTO`] before the first sample, samples taken only from packets
//! sent once (Karn).
//!
//! # Path MTU discovery
//! Packets are as large as the path carries without fragmenting, found per connection the way
//! libtorrent does it (its `docs/utp.rst`): a floor (the largest datagram known to pass; every
//! packet is cut to it) and a ceiling (the largest that may pass). While they are more than
//! [`MTU_SEARCH_MARGIN`] apart, one DATA packet at a time is a probe of the size halfway
//! between, sent with don't-fragment ([`Connection::transmit_is_probe`]), and only once the
//! window holds three floor-sized packets, so that probes travel among ordinary packets and
//! the loss of a probe can be told from loss in general. An acknowledged probe raises the
//! floor; a probe found lost (fast retransmit, a timeout with nothing else outstanding, or
//! [`Connection::handle_probe_refused`] when the sender's kernel refused it as too big) lowers
//! the ceiling, is sent again without don't-fragment, and is not congestion: the window is not
//! cut. Once the search is done it starts again after [`Config::mtu_recheck`], first probing
//! the floor itself (a lost floor probe means the path may have shrunk: the ceiling drops below
//! the floor and the floor halfway down to [`MIN_MTU_FLOOR`], and that new floor is probed
//! next), then up to the ceiling, which is back at its start. Packets already cut for a floor
//! that no longer passes are sent again at their size without don't-fragment (fragmented on
//! the way, as libtorrent's are): a packet keeps its sequence number and its bytes.
//!
//! The ceiling starts at [`Config::max_packet_size`] (which the socket sets per peer address
//! from the route, see `socket`) and at most what the peer reads: a datagram larger than the
//! peer's receive buffer arrives cut short, and uTP has no length field to notice it, so a
//! probe that a 1500-byte reader acknowledges would corrupt the stream. libtorrent reads 1500
//! bytes; a peer that does not announce more ([`super::packet::EXT_MAX_DATAGRAM`], which shoal
//! sends in its SYN and in the STATE answering one) is assumed to read
//! [`UNANNOUNCED_PEER_DATAGRAM`].
//!
//! # LEDBAT
//! Every packet carries the one-way delay the peer measured for our packets
//! (`timestamp_difference_microseconds`). Its minimum over the last ten minutes is the base
//! delay (the path with empty queues); the excess is queueing delay that we cause. With
//! `off_target = (target - queueing) / target` (target [`TARGET_DELAY`]), each ACK of `n` bytes
//! grows the window by `MAX_CWND_INCREASE_PER_RTT * off_target * n / cwnd` while the delay is
//! under target: at most that much per round trip with empty queues. Over target, BEP 29's
//! linear rule would take a hundred round trips to give back a megabyte window, so we shrink it
//! the way LEDBAT++ does: by `-off_target` of the window per round trip (`n * off_target` per
//! ACK), at most half. That is how uTP yields to TCP, which fills queues. A new connection
//! starts in slow start (the window grows by the bytes acknowledged) until the delay passes the
//! target or a loss. The window never falls below one packet, nor grows while the sender does
//! not fill it.
//!
//! # Receiving
//! Packets arriving in order go to the receive buffer; packets ahead of a gap wait in a reorder
//! buffer of at most [`MAX_REORDER`] packets, and both together never hold more than
//! [`Config::recv_buffer`] bytes, which is also the window we advertise (minus what they hold).
//! Each packet received is answered with an ACK (a STATE packet, unless data going out carries
//! it), with a selective ACK of the reorder buffer when it is not empty.
//!
//! # Closing
//! [`Connection::close`] sends a FIN after the buffered bytes; the connection is closed once the
//! FIN is acknowledged and the peer's FIN has arrived (or [`FIN_LINGER`] after our FIN was
//! acknowledged). A closed connection still acknowledges a repeated FIN for [`TIME_WAIT`], so
//! the peer's close completes when our last ACK was lost. A RESET from the peer, or
//! [`Connection::reset`] here, ends it at once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::packet::{Packet, PacketType, SelectiveAck, HEADER_LEN, MAX_SACK_BYTES};
use super::{seq_less, UtpError};

/// The datagram size a connection starts at (the first MTU floor): fits a 1500-byte Ethernet
/// MTU under IPv6 and UDP headers (1452) with room to spare for tunnels and PPPoE. The search
/// raises it from there.
pub const DEFAULT_PACKET_SIZE: usize = 1400;
/// The largest datagram we send (the ceiling of the MTU search on loopback): one 16 KiB block
/// plus its message header in a single packet. Loopback carries 65,507-byte UDP payloads, but
/// past 16 KiB the per-packet cost (system calls, ACKs) that bounds uTP's throughput is already
/// spread thin, while a lost packet costs more to send again, a 208 KiB default socket receive
/// buffer holds only three 64 KiB datagrams, and a reorder slot holds a whole packet. Only for
/// peers that announce they read such datagrams (see the module documentation).
pub const LOOPBACK_PACKET_SIZE: usize = 16 * 1024 + 64;
/// The largest UDP payload on a 1500-byte Ethernet MTU under IPv4 (20) and UDP (8) headers:
/// what a peer that does not announce its receive size is assumed to read (libtorrent reads
/// 1500 bytes, libutp more).
pub const UNANNOUNCED_PEER_DATAGRAM: usize = 1500 - 28;
/// The lowest MTU floor: the 576-byte datagram every IPv4 host must take (RFC 791) under the
/// IPv4 and UDP headers, as libtorrent uses.
pub const MIN_MTU_FLOOR: usize = 576 - 28;
/// The MTU search stops when floor and ceiling are this close: a few more bytes per packet are
/// not worth more probes.
pub const MTU_SEARCH_MARGIN: usize = 16;
/// How long a finished MTU search rests before it checks the floor and searches again: rarely,
/// since a route seldom changes, and a lost probe costs a packet sent again.
pub const MTU_RECHECK_INTERVAL: Duration = Duration::from_secs(120);
/// The largest datagram we announce we read, when [`Config::max_recv_datagram`] is larger (the
/// extension holds 16 bits).
pub const MAX_ANNOUNCED_DATAGRAM: usize = u16::MAX as usize;
/// The smallest datagram size a [`Config`] may ask for: a header, the largest selective ACK and
/// some payload.
pub const MIN_PACKET_SIZE: usize = 150;
/// The default send and receive buffer: 1 MiB, a few round trips of a fast path, and the bound
/// on what one connection holds on either side.
pub const DEFAULT_BUFFER: usize = 1 << 20;
/// The most packets unacknowledged at once: what a selective ACK of [`MAX_SACK_BYTES`] covers.
pub const MAX_IN_FLIGHT: usize = MAX_SACK_BYTES * 8;
/// The most packets held ahead of a gap: what our selective ACK can describe.
pub const MAX_REORDER: usize = MAX_SACK_BYTES * 8;
/// The retransmission timeout before the first RTT sample (BEP 29: 1000 ms).
pub const INITIAL_RTO: Duration = Duration::from_millis(1000);
/// The smallest retransmission timeout (BEP 29: 500 ms).
pub const MIN_RTO: Duration = Duration::from_millis(500);
/// The largest retransmission timeout, where exponential backoff stops.
pub const MAX_RTO: Duration = Duration::from_secs(60);
/// Duplicate ACKs (or packets selectively acknowledged past a hole) that mean a packet is lost.
pub const DUP_ACK_LIMIT: u32 = 3;
/// LEDBAT's target queueing delay (BEP 29: 100 ms).
pub const TARGET_DELAY: Duration = Duration::from_millis(100);
/// LEDBAT's largest window increase per round trip, in bytes (BEP 29: 3000). Paths with larger
/// packets grow by at least one packet per round trip.
pub const MAX_CWND_INCREASE_PER_RTT: usize = 3000;
/// The window of a new connection, in packets, before slow start grows it.
pub const INITIAL_CWND_PACKETS: usize = 3;
/// Minutes of base-delay history: the base delay is the minimum over this many one-minute
/// minimums (RFC 6817 suggests 10), so it follows a route change within minutes.
pub const BASE_HISTORY_MINUTES: usize = 10;
/// Delay samples whose minimum is the current delay (RFC 6817's filter), against jitter.
pub const CURRENT_DELAY_SAMPLES: usize = 3;
/// How long a closed connection still answers a repeated FIN.
pub const TIME_WAIT: Duration = Duration::from_secs(3);
/// How long we wait for the peer's FIN once ours is acknowledged.
pub const FIN_LINGER: Duration = Duration::from_secs(10);

/// Settings of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The datagram size a connection starts at, header included (at least
    /// [`MIN_PACKET_SIZE`]): the first floor of the MTU search.
    pub packet_size: usize,
    /// The largest datagram we ever send, header included: where the MTU search's ceiling
    /// starts (lowered to what the peer reads). [`super::UtpSocket`] lowers it per peer address
    /// to what the route carries. Equal to `packet_size`, there is no search.
    pub max_packet_size: usize,
    /// The largest datagram we read whole, announced to the peer in the handshake.
    pub max_recv_datagram: usize,
    /// How long a finished MTU search rests before it starts again.
    pub mtu_recheck: Duration,
    /// The bytes written but not yet acknowledged that we hold.
    pub send_buffer: usize,
    /// The bytes received but not yet read (in order or ahead of a gap) that we hold; also the
    /// largest window we advertise.
    pub recv_buffer: usize,
    /// Retransmission timeouts in a row after which an established connection fails.
    pub max_timeouts: u32,
    /// Retransmission timeouts of the SYN after which connecting fails: with the default 2,
    /// SYNs go out at 0, 1 and 3 s and the attempt fails at 7 s.
    pub max_syn_timeouts: u32,
    /// LEDBAT's target queueing delay.
    pub target_delay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            packet_size: DEFAULT_PACKET_SIZE,
            max_packet_size: LOOPBACK_PACKET_SIZE,
            max_recv_datagram: MAX_ANNOUNCED_DATAGRAM,
            mtu_recheck: MTU_RECHECK_INTERVAL,
            send_buffer: DEFAULT_BUFFER,
            recv_buffer: DEFAULT_BUFFER,
            max_timeouts: 6,
            max_syn_timeouts: 2,
            target_delay: TARGET_DELAY,
        }
    }
}

impl Config {
    /// The settings for a shoal peer on the loopback interface: starting at
    /// [`LOOPBACK_PACKET_SIZE`] packets, with 4 MiB buffers. A peer that does not announce it
    /// reads such datagrams still gets at most [`UNANNOUNCED_PEER_DATAGRAM`].
    pub fn loopback() -> Self {
        Self {
            packet_size: LOOPBACK_PACKET_SIZE,
            send_buffer: 4 << 20,
            recv_buffer: 4 << 20,
            ..Self::default()
        }
    }
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Our SYN is out; no answer yet.
    SynSent,
    /// Established: data flows both ways (after [`Connection::close`], until the FIN exchange
    /// ends).
    Connected,
    /// Over: closed cleanly, reset, or timed out ([`Connection::error`] says which).
    Closed,
}

/// Counters of one connection, for logs and benches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams sent (every type).
    pub packets_sent: u64,
    /// SYN, DATA and FIN packets sent again.
    pub retransmits: u64,
    /// Packets found lost by duplicate or selective ACKs.
    pub fast_losses: u64,
    /// Retransmission timeouts.
    pub timeouts: u64,
    /// Packets handled (after the id checks).
    pub packets_received: u64,
    /// Packets ahead of a gap on arrival.
    pub out_of_order: u64,
    /// Payload bytes delivered in order.
    pub bytes_received: u64,
    /// MTU probes sent.
    pub mtu_probes: u64,
    /// MTU probes lost (or refused by the sender's kernel).
    pub mtu_probes_lost: u64,
}

/// A packet we sent and the peer has not acknowledged cumulatively.
#[derive(Clone, Debug)]
struct Sent {
    /// Its sequence number.
    seq: u16,
    /// SYN, DATA or FIN.
    kind: PacketType,
    /// The stream offset of its payload in the send buffer (DATA only).
    offset: u64,
    /// Its payload length.
    len: usize,
    /// When it was last sent.
    sent_at: Instant,
    /// How many times it was sent.
    transmissions: u32,
    /// Whether it must be sent (again); such packets are not counted in flight.
    need_resend: bool,
    /// Whether a selective ACK covered it; such packets are not counted in flight.
    sacked: bool,
}

/// The history of one-way delay samples behind LEDBAT.
#[derive(Clone, Debug)]
struct DelayHistory {
    /// The minimum of each of the last minutes, oldest first.
    minutes: VecDeque<u32>,
    /// The minimum of the minute in progress.
    this_minute: u32,
    /// When the minute in progress started (`None` before the first sample).
    minute_start: Option<Instant>,
    /// The base delay: the minimum over `minutes` and `this_minute`.
    base: u32,
    /// The last few samples.
    recent: [u32; CURRENT_DELAY_SAMPLES],
    /// Where the next sample goes in `recent`.
    next: usize,
}

/// The smaller of two clock readings that may wrap (within half the range of each other).
fn wrapping_min(a: u32, b: u32) -> u32 {
    if (b.wrapping_sub(a) as i32) < 0 {
        b
    } else {
        a
    }
}

impl DelayHistory {
    fn new() -> Self {
        Self {
            minutes: VecDeque::with_capacity(BASE_HISTORY_MINUTES),
            this_minute: 0,
            minute_start: None,
            base: 0,
            recent: [0; CURRENT_DELAY_SAMPLES],
            next: 0,
        }
    }

    fn add(&mut self, sample: u32, now: Instant) {
        match self.minute_start {
            None => {
                self.minute_start = Some(now);
                self.this_minute = sample;
                self.base = sample;
                self.recent = [sample; CURRENT_DELAY_SAMPLES];
            }
            Some(start) if now.saturating_duration_since(start) >= Duration::from_secs(60) => {
                if self.minutes.len() == BASE_HISTORY_MINUTES - 1 {
                    self.minutes.pop_front();
                }
                self.minutes.push_back(self.this_minute);
                self.this_minute = sample;
                self.minute_start = Some(now);
                self.base = self.minutes.iter().fold(sample, |m, &s| wrapping_min(m, s));
            }
            Some(_) => {
                self.this_minute = wrapping_min(self.this_minute, sample);
                self.base = wrapping_min(self.base, sample);
            }
        }
        self.recent[self.next] = sample;
        self.next = (self.next + 1) % CURRENT_DELAY_SAMPLES;
    }

    /// The queueing delay: the smallest recent sample above the base, in microseconds.
    fn queueing(&self) -> Option<u32> {
        self.minute_start?;
        let current = self
            .recent
            .iter()
            .fold(self.recent[0], |m, &s| wrapping_min(m, s));
        let d = current.wrapping_sub(self.base);
        Some(if (d as i32) < 0 { 0 } else { d })
    }
}

/// One uTP connection. See the module documentation.
#[derive(Debug)]
pub struct Connection {
    /// Settings.
    config: Config,
    /// The instant our microsecond timestamps count from.
    epoch: Instant,
    /// Where the connection is.
    state: State,
    /// Why it closed, if not cleanly.
    error: Option<UtpError>,
    /// The id the peer puts on packets to us.
    recv_id: u16,
    /// The id we put on packets to the peer.
    send_id: u16,
    /// The sequence number our next SYN, DATA or FIN gets.
    seq_nr: u16,
    /// Written bytes not yet acknowledged (sent or not).
    send_buf: VecDeque<u8>,
    /// The stream offset of `send_buf[0]`.
    send_base: u64,
    /// The stream offset of the first byte not yet sent.
    unsent: u64,
    /// Packets sent and not cumulatively acknowledged, by sequence number.
    in_flight: VecDeque<Sent>,
    /// Payload bytes of `in_flight` neither selectively acknowledged nor waiting to be resent.
    bytes_in_flight: usize,
    /// Packets of `in_flight` with `need_resend`.
    resend_count: usize,
    /// The application asked to close: a FIN follows the buffered bytes.
    fin_queued: bool,
    /// The sequence number of our FIN, once sent.
    fin_seq: Option<u16>,
    /// When the peer acknowledged our FIN.
    fin_acked_at: Option<Instant>,
    /// A RESET to send (then the connection is over).
    reset_pending: bool,
    /// When the connection closed (for [`TIME_WAIT`]).
    closed_at: Option<Instant>,
    /// The congestion window in bytes.
    cwnd: f64,
    /// Slow start ends when `cwnd` reaches this.
    ssthresh: f64,
    /// Whether the window is in slow start.
    slow_start: bool,
    /// The window the peer last advertised.
    peer_wnd: usize,
    /// STATE packets in a row acknowledging nothing new.
    dup_acks: u32,
    /// Packets before this one have been fast-retransmitted already.
    fast_resend_seq: u16,
    /// A loss of a packet before this one does not cut the window again.
    loss_seq: u16,
    /// Smoothed RTT and its variance, once sampled.
    rtt: Option<(Duration, Duration)>,
    /// The retransmission timeout.
    rto: Duration,
    /// Timeouts in a row.
    timeouts: u32,
    /// When the retransmission (or zero-window probe) timer fires.
    rto_deadline: Option<Instant>,
    /// LEDBAT's delay samples.
    delay: DelayHistory,
    /// The last sequence number received in order.
    ack_nr: u16,
    /// Bytes received in order, not yet read.
    recv_buf: VecDeque<u8>,
    /// Packets ahead of a gap: slot `k` holds sequence number `ack_nr + 1 + k`.
    reorder: VecDeque<Option<Vec<u8>>>,
    /// Payload bytes held in `reorder`.
    reorder_bytes: usize,
    /// Packets held in `reorder`.
    reorder_count: usize,
    /// The sequence number of the peer's FIN, once seen.
    fin_recv: Option<u16>,
    /// Everything up to the peer's FIN is in `recv_buf`.
    eof: bool,
    /// An ACK is owed to the peer.
    ack_pending: bool,
    /// Our clock at the last packet received minus its timestamp (sent back to the peer).
    reply_micro: u32,
    /// The window we last advertised.
    last_adv_wnd: usize,
    /// For an accepted connection, the SYN's sequence number (a repeated SYN is acknowledged
    /// again).
    syn_seq: Option<u16>,
    /// The peer has sent something since its SYN, so it knows our first sequence number: an
    /// accepted connection sends no data before (its first packet might otherwise arrive
    /// before our STATE and be taken for the first one).
    confirmed: bool,
    /// Counters.
    stats: Stats,
    /// A packet arrived since the last retransmission timeout (with a shut window, that timeout
    /// does not count towards giving up).
    heard: bool,
    /// The largest datagram known to pass (header included): what packets are cut to.
    mtu_floor: usize,
    /// The largest datagram that may pass; the search probes between floor and ceiling.
    mtu_ceiling: usize,
    /// Where the ceiling starts a search: the configured maximum and what the peer reads.
    mtu_max: usize,
    /// The peer announced the largest datagram it reads.
    peer_announced: bool,
    /// The probe in flight: its sequence number and datagram size.
    mtu_probe: Option<(u16, usize)>,
    /// The next probe checks the floor itself (the first probe of a restarted search).
    mtu_verify: bool,
    /// When a finished search starts again.
    mtu_recheck_at: Option<Instant>,
    /// The datagram the last `poll_transmit` wrote is a probe (send it with don't-fragment).
    sent_probe: bool,
}

impl Connection {
    fn new(epoch: Instant, config: Config, recv_id: u16, send_id: u16) -> Self {
        let mut config = config;
        config.max_packet_size = config.max_packet_size.max(MIN_PACKET_SIZE);
        config.packet_size = config
            .packet_size
            .clamp(MIN_PACKET_SIZE, config.max_packet_size);
        let mtu_max = config.max_packet_size.min(UNANNOUNCED_PEER_DATAGRAM);
        let mtu_floor = config.packet_size.min(mtu_max);
        let mss = (mtu_floor - HEADER_LEN) as f64;
        Self {
            epoch,
            state: State::SynSent,
            error: None,
            recv_id,
            send_id,
            seq_nr: 0,
            send_buf: VecDeque::new(),
            send_base: 0,
            unsent: 0,
            in_flight: VecDeque::new(),
            bytes_in_flight: 0,
            resend_count: 0,
            fin_queued: false,
            fin_seq: None,
            fin_acked_at: None,
            reset_pending: false,
            closed_at: None,
            cwnd: mss * INITIAL_CWND_PACKETS as f64,
            ssthresh: config.send_buffer as f64,
            slow_start: true,
            peer_wnd: mtu_floor,
            dup_acks: 0,
            fast_resend_seq: 0,
            loss_seq: 0,
            rtt: None,
            rto: INITIAL_RTO,
            timeouts: 0,
            rto_deadline: None,
            delay: DelayHistory::new(),
            ack_nr: 0,
            recv_buf: VecDeque::new(),
            reorder: VecDeque::new(),
            reorder_bytes: 0,
            reorder_count: 0,
            fin_recv: None,
            eof: false,
            ack_pending: false,
            reply_micro: 0,
            last_adv_wnd: config.recv_buffer,
            syn_seq: None,
            confirmed: true,
            stats: Stats::default(),
            heard: false,
            mtu_floor,
            mtu_ceiling: mtu_max,
            mtu_max,
            peer_announced: false,
            mtu_probe: None,
            mtu_verify: false,
            mtu_recheck_at: None,
            sent_probe: false,
            config,
        }
    }

    /// Opens a connection: receives on `conn_id`, sends on `conn_id + 1`, and queues a SYN with
    /// sequence number `seq_nr` (BEP 29 uses 1; any value works). `epoch` is the instant the
    /// socket's timestamps count from.
    pub fn connect(
        now: Instant,
        epoch: Instant,
        conn_id: u16,
        seq_nr: u16,
        config: Config,
    ) -> Self {
        let mut c = Self::new(epoch, config, conn_id, conn_id.wrapping_add(1));
        c.seq_nr = seq_nr.wrapping_add(1);
        c.fast_resend_seq = c.seq_nr;
        c.loss_seq = c.seq_nr;
        c.in_flight.push_back(Sent {
            seq: seq_nr,
            kind: PacketType::Syn,
            offset: 0,
            len: 0,
            sent_at: now,
            transmissions: 0,
            need_resend: true,
            sacked: false,
        });
        c.resend_count = 1;
        c
    }

    /// Accepts the connection a SYN opens: receives on its id + 1, sends on its id, and owes
    /// it a STATE. Our first sequence number is `seq_nr` (random, so a blind third party cannot
    /// guess it).
    pub fn accept(now: Instant, epoch: Instant, syn: &Packet, seq_nr: u16, config: Config) -> Self {
        let mut c = Self::new(
            epoch,
            config,
            syn.connection_id.wrapping_add(1),
            syn.connection_id,
        );
        c.state = State::Connected;
        c.seq_nr = seq_nr;
        c.fast_resend_seq = seq_nr;
        c.loss_seq = seq_nr;
        c.ack_nr = syn.seq_nr;
        c.syn_seq = Some(syn.seq_nr);
        c.confirmed = false;
        c.reply_micro = c.micros(now).wrapping_sub(syn.timestamp_us);
        if let Some(m) = syn.max_datagram {
            c.peer_reads(usize::from(m));
        }
        // libtorrent's SYN advertises a zero window; assume room for a packet until told.
        c.peer_wnd = (syn.wnd_size as usize).max(c.mtu_floor);
        c.ack_pending = true;
        // Until the peer confirms, our STATE is sent again on this timer like a SYN.
        c.rto_deadline = Some(now + c.rto);
        c
    }

    // ---- getters ----

    /// Where the connection is.
    pub fn state(&self) -> State {
        self.state
    }

    /// Why the connection closed, if it did not close cleanly.
    pub fn error(&self) -> Option<&UtpError> {
        self.error.as_ref()
    }

    /// Whether the connection is over (cleanly or not).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the handshake is done and the connection not over.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// The id the peer puts on packets to us.
    pub fn recv_id(&self) -> u16 {
        self.recv_id
    }

    /// The id we put on packets to the peer.
    pub fn send_id(&self) -> u16 {
        self.send_id
    }

    /// Counters since the connection began.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether [`Connection::read`] has something to say: bytes, the end of the stream, or the
    /// end of the connection.
    pub fn is_readable(&self) -> bool {
        !self.recv_buf.is_empty() || self.eof || self.state == State::Closed
    }

    /// Whether [`Connection::write`] would take bytes now, or the connection is over (so a
    /// writer waiting on it wakes and sees the error).
    pub fn is_writable(&self) -> bool {
        self.state == State::Closed || self.send_room() > 0
    }

    /// Whether the peer's FIN has arrived and every byte before it has been read.
    pub fn is_eof(&self) -> bool {
        self.eof && self.recv_buf.is_empty()
    }

    /// Bytes written and not yet acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        self.send_buf.len()
    }

    /// The congestion window in bytes.
    pub fn cwnd(&self) -> usize {
        self.cwnd as usize
    }

    /// The window the peer last advertised.
    pub fn peer_window(&self) -> usize {
        self.peer_wnd
    }

    /// The smoothed round-trip time, once measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt.map(|(r, _)| r)
    }

    /// The retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rto
    }

    /// The queueing delay LEDBAT last saw, once measured.
    pub fn queueing_delay(&self) -> Option<Duration> {
        self.delay
            .queueing()
            .map(|us| Duration::from_micros(u64::from(us)))
    }

    /// The datagram size packets are cut to now (the MTU search's floor), header included.
    pub fn packet_size(&self) -> usize {
        self.mtu_floor
    }

    /// The MTU search's ceiling: the largest datagram that may pass.
    pub fn mtu_ceiling(&self) -> usize {
        self.mtu_ceiling
    }

    /// Whether the datagram the last [`Connection::poll_transmit`] wrote is an MTU probe: send
    /// it with don't-fragment, and report a refusal (`EMSGSIZE`) with
    /// [`Connection::handle_probe_refused`].
    pub fn transmit_is_probe(&self) -> bool {
        self.sent_probe
    }

    /// Bytes held for reading (in order and ahead of a gap).
    pub fn buffered_recv_bytes(&self) -> usize {
        self.recv_buf.len() + self.reorder_bytes
    }

    /// Packets waiting ahead of a gap.
    pub fn reordered_packets(&self) -> usize {
        self.reorder_count
    }

    /// When the socket may forget the connection: once closed, at once after an error, else
    /// [`TIME_WAIT`] after the clean close.
    pub fn drained_at(&self) -> Option<Instant> {
        match (self.state, self.closed_at) {
            (State::Closed, Some(at)) if self.error.is_some() => Some(at),
            (State::Closed, Some(at)) => Some(at + TIME_WAIT),
            _ => None,
        }
    }

    /// Whether the socket may forget the connection (see [`Connection::drained_at`]).
    pub fn is_drained(&self, now: Instant) -> bool {
        self.drained_at().is_some_and(|at| now >= at)
    }

    // ---- application side ----

    fn send_room(&self) -> usize {
        if self.fin_queued || self.state == State::Closed {
            return 0;
        }
        self.config.send_buffer.saturating_sub(self.send_buf.len())
    }

    /// Queues bytes to send (also before the handshake is done) and returns how many fit in the
    /// send buffer: 0 when it is full, closing or closed.
    pub fn write(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.send_room());
        self.send_buf.extend(&data[..n]);
        n
    }

    /// Copies bytes received in order into `buf` and returns how many: 0 at the end of the
    /// stream, when closed, or when nothing has arrived yet (tell them apart with
    /// [`Connection::is_eof`], [`Connection::is_closed`] and [`Connection::is_readable`]).
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.recv_buf.len());
        let (a, b) = self.recv_buf.as_slices();
        let from_a = n.min(a.len());
        buf[..from_a].copy_from_slice(&a[..from_a]);
        buf[from_a..n].copy_from_slice(&b[..n - from_a]);
        self.recv_buf.drain(..n);
        // A window we shrank below two packets has opened: tell the peer, or it waits for a
        // probe.
        let two = 2 * self.max_payload();
        if n > 0 && self.last_adv_wnd < two && self.recv_window() >= two {
            self.ack_pending = true;
        }
        n
    }

    /// Closes the connection gracefully: no more writes, a FIN after the buffered bytes.
    /// Before the handshake is done (on either side), it sends a RESET instead.
    pub fn close(&mut self) {
        match self.state {
            State::Connected if !self.confirmed => self.reset(),
            State::SynSent => {
                self.reset_pending = true;
                self.state = State::Closed;
            }
            State::Connected => self.fin_queued = true,
            State::Closed => {}
        }
    }

    /// Ends the connection at once with a RESET to the peer.
    pub fn reset(&mut self) {
        if self.state != State::Closed {
            self.reset_pending = true;
            self.state = State::Closed;
        }
    }

    // ---- helpers ----

    fn micros(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_micros() as u32
    }

    fn max_payload(&self) -> usize {
        self.mtu_floor - HEADER_LEN
    }

    // ---- path MTU discovery ----

    /// The peer announced it reads datagrams of up to `n` bytes: the search may go that high.
    fn peer_reads(&mut self, n: usize) {
        if self.peer_announced {
            return;
        }
        self.peer_announced = true;
        self.mtu_max = self.config.max_packet_size.min(n.max(MIN_PACKET_SIZE));
        self.mtu_ceiling = self.mtu_max;
        self.mtu_floor = self.config.packet_size.min(self.mtu_max);
        self.cwnd = self
            .cwnd
            .max(self.max_payload() as f64 * INITIAL_CWND_PACKETS as f64);
        self.mtu_recheck_at = None;
    }

    /// The size of the next probe, if one is due now.
    fn probe_size(&mut self, now: Instant) -> Option<usize> {
        if self.mtu_probe.is_some() {
            return None;
        }
        let searching = self.mtu_ceiling > self.mtu_floor + MTU_SEARCH_MARGIN;
        if !searching && !self.mtu_verify {
            match self.mtu_recheck_at {
                None => {
                    self.mtu_recheck_at = Some(now + self.config.mtu_recheck);
                    return None;
                }
                Some(at) if now < at => return None,
                Some(_) => {
                    // Start again: check the floor, then search up to the top.
                    self.mtu_recheck_at = None;
                    self.mtu_ceiling = self.mtu_max;
                    self.mtu_verify = self.mtu_floor > MIN_MTU_FLOOR.min(self.mtu_max);
                    if !self.mtu_verify && self.mtu_ceiling <= self.mtu_floor + MTU_SEARCH_MARGIN {
                        return None;
                    }
                }
            }
        }
        // Only with three floor-sized packets' worth of window, so the probe is not alone.
        if self.cwnd < (3 * self.mtu_floor) as f64 {
            return None;
        }
        Some(if self.mtu_verify {
            self.mtu_floor
        } else {
            (self.mtu_floor + self.mtu_ceiling).div_ceil(2)
        })
    }

    /// The probe arrived: its size passes.
    fn probe_acked(&mut self, size: usize) {
        self.mtu_probe = None;
        self.mtu_verify = false;
        self.mtu_floor = self.mtu_floor.max(size);
        self.mtu_ceiling = self.mtu_ceiling.max(self.mtu_floor);
        self.cwnd = self.cwnd.max(self.max_payload() as f64);
    }

    /// The probe is lost (or refused): its size does not pass. Not congestion.
    fn probe_lost(&mut self) {
        let Some((_, size)) = self.mtu_probe.take() else {
            return;
        };
        self.stats.mtu_probes_lost += 1;
        self.mtu_verify = false;
        if size <= self.mtu_floor {
            // The floor itself failed: the path may have shrunk (or the probe was unlucky; the
            // next search finds out). Search again from halfway down to the minimum, checking
            // that new floor first.
            let low = MIN_MTU_FLOOR.min(self.mtu_floor);
            let old = self.mtu_floor;
            self.mtu_ceiling = old.saturating_sub(1).max(low);
            self.mtu_floor = (low + old) / 2;
            self.mtu_verify = self.mtu_floor < old;
        } else {
            self.mtu_ceiling = size - 1;
        }
    }

    /// Whether packet `seq` is the MTU probe in flight.
    fn is_probe(&self, seq: u16) -> bool {
        self.mtu_probe.is_some_and(|(p, _)| p == seq)
    }

    fn recv_window(&self) -> usize {
        self.config
            .recv_buffer
            .saturating_sub(self.recv_buf.len() + self.reorder_bytes)
    }

    fn window(&self) -> usize {
        (self.cwnd as usize).min(self.peer_wnd)
    }

    fn fail(&mut self, now: Instant, error: UtpError) {
        self.error = Some(error);
        self.state = State::Closed;
        self.closed_at = Some(now);
        self.rto_deadline = None;
    }

    /// The selective ACK of the reorder buffer, if it holds anything.
    fn sack(&self) -> Option<SelectiveAck> {
        if self.reorder_count == 0 {
            return None;
        }
        let mut s = SelectiveAck::new();
        for (k, slot) in self.reorder.iter().enumerate().skip(1) {
            if slot.is_some() && !s.set(k - 1) {
                break;
            }
        }
        Some(s)
    }

    fn header(&mut self, now: Instant, ty: PacketType, seq_nr: u16) -> Packet {
        let wnd = self.recv_window();
        self.last_adv_wnd = wnd;
        Packet {
            ty,
            connection_id: if ty == PacketType::Syn {
                self.recv_id
            } else {
                self.send_id
            },
            timestamp_us: self.micros(now),
            timestamp_diff_us: self.reply_micro,
            wnd_size: u32::try_from(wnd).unwrap_or(u32::MAX),
            seq_nr,
            ack_nr: if ty == PacketType::Syn {
                0
            } else {
                self.ack_nr
            },
            sack: None,
            // Announced in the SYN and in the STATE answering one (see the module docs).
            max_datagram: (ty == PacketType::Syn || (ty == PacketType::State && !self.confirmed))
                .then(|| self.config.max_recv_datagram.min(MAX_ANNOUNCED_DATAGRAM) as u16),
        }
    }

    /// The sender's kernel refused the probe the last [`Connection::poll_transmit`] wrote as
    /// larger than the path carries (`EMSGSIZE` under don't-fragment): it counts as lost, and
    /// the packet goes out again at once without don't-fragment. Never an error.
    pub fn handle_probe_refused(&mut self, _now: Instant) {
        let Some((seq, _)) = self.mtu_probe else {
            return;
        };
        self.probe_lost();
        let Some(s) = self.in_flight.iter_mut().find(|s| s.seq == seq) else {
            return;
        };
        if !s.sacked && !s.need_resend {
            s.need_resend = true;
            self.resend_count += 1;
            self.bytes_in_flight -= s.len;
            // Not a transmission the peer could have seen: no retransmission, and an RTT
            // sample from its next one is still good.
            s.transmissions = s.transmissions.saturating_sub(1);
        }
    }

    // ---- network side ----

    /// Handles a packet the socket routed to this connection; `payload` is what followed its
    /// header. Packets that do not fit (wrong id, acknowledging what we never sent, outside our
    /// window) are ignored.
    pub fn handle_packet(&mut self, now: Instant, packet: &Packet, payload: &[u8]) {
        match packet.ty {
            PacketType::Reset => {
                let ours =
                    packet.connection_id == self.recv_id || packet.connection_id == self.send_id;
                if ours && self.state != State::Closed && !seq_less(self.seq_nr, packet.ack_nr) {
                    self.fail(now, UtpError::Reset);
                }
                return;
            }
            PacketType::Syn => {
                // A repeated SYN: our STATE was lost.
                if Some(packet.seq_nr) == self.syn_seq && packet.connection_id == self.send_id {
                    self.ack_pending = true;
                }
                return;
            }
            _ => {}
        }
        if packet.connection_id != self.recv_id {
            return;
        }
        if self.state == State::Closed {
            // Only acknowledge a repeated FIN, so the peer's close completes.
            if packet.ty == PacketType::Fin && self.error.is_none() && self.fin_recv.is_some() {
                self.ack_pending = true;
            }
            return;
        }
        // An ACK of something we never sent, or of something long acknowledged: forged or
        // broken; ignore the whole packet.
        let last_sent = self.seq_nr.wrapping_sub(1);
        let acked = self
            .in_flight
            .front()
            .map_or(last_sent, |s| s.seq.wrapping_sub(1));
        let oldest = acked.wrapping_sub(2 * MAX_IN_FLIGHT as u16);
        if seq_less(last_sent, packet.ack_nr) || seq_less(packet.ack_nr, oldest) {
            return;
        }
        if !self.confirmed {
            self.confirmed = true;
            self.timeouts = 0;
            if self.in_flight.is_empty() {
                self.rto_deadline = None;
            }
        }
        if self.state == State::SynSent {
            let syn = self.seq_nr.wrapping_sub(1);
            if packet.ack_nr != syn || !matches!(packet.ty, PacketType::State | PacketType::Data) {
                return;
            }
            if let Some(m) = packet.max_datagram {
                self.peer_reads(usize::from(m));
            }
            self.state = State::Connected;
            // A STATE carries the next sequence number the peer will use.
            self.ack_nr = packet.seq_nr.wrapping_sub(1);
        }

        self.stats.packets_received += 1;
        self.heard = true;
        self.reply_micro = self.micros(now).wrapping_sub(packet.timestamp_us);
        // uTorrent once sent i32::MAX for "unknown"; zero means no sample yet.
        let sample = packet.timestamp_diff_us;
        if sample != 0 && sample != i32::MAX as u32 {
            self.delay.add(sample, now);
        }
        self.peer_wnd = packet.wnd_size as usize;

        let acked_bytes = self.process_acks(now, packet, payload.is_empty());

        if acked_bytes > 0 {
            self.on_acked(acked_bytes);
        }

        if matches!(packet.ty, PacketType::Data | PacketType::Fin) {
            self.receive(packet.seq_nr, packet.ty == PacketType::Fin, payload);
        }
        self.check_closed(now);
    }

    /// Cumulative and selective ACKs; returns the payload bytes newly acknowledged.
    fn process_acks(&mut self, now: Instant, packet: &Packet, no_payload: bool) -> usize {
        let acked = match self.in_flight.front() {
            Some(s) => s.seq.wrapping_sub(1),
            None => self.seq_nr.wrapping_sub(1),
        };
        let mut acked_bytes = 0;
        let mut progress = false;
        if seq_less(acked, packet.ack_nr) {
            let n = usize::from(packet.ack_nr.wrapping_sub(acked)).min(self.in_flight.len());
            let mut data_end = None;
            for _ in 0..n {
                let Some(s) = self.in_flight.pop_front() else {
                    break;
                };
                if s.need_resend {
                    self.resend_count -= 1;
                } else if !s.sacked {
                    self.bytes_in_flight -= s.len;
                }
                if !s.sacked {
                    acked_bytes += s.len;
                    if s.transmissions == 1 {
                        self.update_rtt(now.saturating_duration_since(s.sent_at));
                    }
                }
                if let Some((seq, size)) = self.mtu_probe {
                    if seq == s.seq {
                        self.probe_acked(size);
                    }
                }
                match s.kind {
                    PacketType::Data => data_end = Some(s.offset + s.len as u64),
                    PacketType::Fin => self.fin_acked_at = Some(now),
                    _ => {}
                }
            }
            if let Some(end) = data_end {
                let n = (end - self.send_base) as usize;
                self.send_buf.drain(..n);
                self.send_base = end;
            }
            progress = true;
            self.dup_acks = 0;
        } else if packet.ack_nr == acked
            && packet.ty == PacketType::State
            && no_payload
            && !self.in_flight.is_empty()
        {
            self.dup_acks += 1;
            if self.dup_acks >= DUP_ACK_LIMIT {
                self.dup_acks = 0;
                let front = &self.in_flight[0];
                if !front.sacked && !front.need_resend && !seq_less(front.seq, self.fast_resend_seq)
                {
                    self.mark_lost(0);
                }
            }
        }

        if let (Some(sack), Some(front)) = (packet.sack, self.in_flight.front()) {
            let front_seq = front.seq;
            for i in sack.iter() {
                let seq = packet.ack_nr.wrapping_add(2).wrapping_add(i as u16);
                if seq_less(seq, front_seq) {
                    continue;
                }
                let idx = usize::from(seq.wrapping_sub(front_seq));
                let Some(s) = self.in_flight.get_mut(idx) else {
                    break;
                };
                if s.sacked {
                    continue;
                }
                s.sacked = true;
                let (len, once, sent_at) = (s.len, s.transmissions == 1, s.sent_at);
                if s.need_resend {
                    s.need_resend = false;
                    self.resend_count -= 1;
                } else {
                    self.bytes_in_flight -= len;
                }
                acked_bytes += len;
                progress = true;
                if let Some((p, size)) = self.mtu_probe {
                    if p == seq {
                        self.probe_acked(size);
                    }
                }
                if once {
                    self.update_rtt(now.saturating_duration_since(sent_at));
                }
            }
            // A packet with DUP_ACK_LIMIT packets after it acknowledged is lost.
            let mut count = 0;
            let mut threshold = None;
            for idx in (0..self.in_flight.len()).rev() {
                if self.in_flight[idx].sacked {
                    count += 1;
                    if count == DUP_ACK_LIMIT {
                        threshold = Some(idx);
                        break;
                    }
                }
            }
            if let Some(t) = threshold {
                for idx in 0..t {
                    let s = &self.in_flight[idx];
                    if !s.sacked && !s.need_resend && !seq_less(s.seq, self.fast_resend_seq) {
                        self.mark_lost(idx);
                    }
                }
            }
        }

        if progress {
            self.timeouts = 0;
            self.rto_deadline = if self.in_flight.is_empty() {
                None
            } else {
                Some(now + self.rto)
            };
        }
        acked_bytes
    }

    /// Marks packet `idx` of the send queue lost: sent again at once, the window halved (once
    /// per window of data), unless it is the MTU probe.
    fn mark_lost(&mut self, idx: usize) {
        let s = &mut self.in_flight[idx];
        s.need_resend = true;
        let (seq, len) = (s.seq, s.len);
        self.resend_count += 1;
        self.bytes_in_flight -= len;
        self.fast_resend_seq = seq.wrapping_add(1);
        self.stats.fast_losses += 1;
        if self.is_probe(seq) {
            // Too big for the path, most likely: the ceiling comes down, the window stays.
            self.probe_lost();
            return;
        }
        if !seq_less(seq, self.loss_seq) {
            let min = self.max_payload() as f64;
            self.cwnd = (self.cwnd / 2.0).max(min);
            self.ssthresh = self.cwnd;
            self.slow_start = false;
            self.loss_seq = self.seq_nr;
        }
    }

    fn update_rtt(&mut self, sample: Duration) {
        let (rtt, var) = match self.rtt {
            None => (sample, sample / 2),
            Some((rtt, var)) => {
                let delta = rtt.abs_diff(sample);
                let var = if delta > var {
                    var + (delta - var) / 4
                } else {
                    var - (var - delta) / 4
                };
                let rtt = if sample > rtt {
                    rtt + (sample - rtt) / 8
                } else {
                    rtt - (rtt - sample) / 8
                };
                (rtt, var)
            }
        };
        self.rtt = Some((rtt, var));
        self.rto = (rtt + 4 * var).clamp(MIN_RTO, MAX_RTO);
    }

    /// LEDBAT's window update for `acked` bytes newly acknowledged.
    fn on_acked(&mut self, acked: usize) {
        let mss = self.max_payload() as f64;
        let max_cwnd = (self.config.send_buffer as f64).max(mss);
        // A window the sender did not fill says nothing about the path: do not grow it.
        let limited = (self.bytes_in_flight + acked) as f64 + mss >= self.cwnd;
        let target = self.config.target_delay.as_micros().max(1) as f64;
        let queueing = self.delay.queueing().unwrap_or(0) as f64;
        let off_target = ((target - queueing) / target).clamp(-1.0, 1.0);
        if self.slow_start {
            if off_target < 0.0 {
                self.slow_start = false;
                self.ssthresh = self.cwnd;
            } else if limited {
                self.cwnd += acked as f64;
                if self.cwnd >= self.ssthresh {
                    self.slow_start = false;
                }
            }
        }
        if !self.slow_start {
            let change = if off_target >= 0.0 {
                let gain_per_rtt = (MAX_CWND_INCREASE_PER_RTT as f64).max(mss);
                if limited {
                    gain_per_rtt * off_target * acked as f64 / self.cwnd
                } else {
                    0.0
                }
            } else {
                // Over target: shrink by the same fraction of the window per round trip as
                // the delay is over target, at most half (LEDBAT++'s multiplicative decrease).
                off_target.max(-0.5) * acked as f64
            };
            self.cwnd += change;
        }
        self.cwnd = self.cwnd.clamp(mss, max_cwnd);
    }

    /// Takes in the payload (or FIN) of packet `seq`.
    fn receive(&mut self, seq: u16, fin: bool, payload: &[u8]) {
        if let Some(f) = self.fin_recv {
            if seq_less(f, seq) {
                return; // nothing comes after a FIN
            }
        }
        let d = seq.wrapping_sub(self.ack_nr);
        if d == 0 || d >= 0x8000 {
            self.ack_pending = true; // a repeat: our ACK was lost
            return;
        }
        let k = usize::from(d) - 1;
        if k >= MAX_REORDER {
            return;
        }
        if self.reorder.get(k).is_some_and(|s| s.is_some()) {
            self.ack_pending = true;
            return;
        }
        if self.recv_buf.len() + self.reorder_bytes + payload.len() > self.config.recv_buffer {
            // No room: drop it; the ACK tells the peer our window.
            self.ack_pending = true;
            return;
        }
        if fin {
            self.fin_recv = Some(seq);
        }
        self.ack_pending = true;
        if k > 0 {
            self.stats.out_of_order += 1;
            if self.reorder.len() <= k {
                self.reorder.resize(k + 1, None);
            }
            self.reorder[k] = Some(payload.to_vec());
            self.reorder_bytes += payload.len();
            self.reorder_count += 1;
            return;
        }
        self.recv_buf.extend(payload);
        self.stats.bytes_received += payload.len() as u64;
        self.ack_nr = seq;
        self.reorder.pop_front();
        while let Some(Some(_)) = self.reorder.front() {
            let Some(Some(data)) = self.reorder.pop_front() else {
                break;
            };
            self.reorder_bytes -= data.len();
            self.reorder_count -= 1;
            self.stats.bytes_received += data.len() as u64;
            self.recv_buf.extend(&data);
            self.ack_nr = self.ack_nr.wrapping_add(1);
        }
        if self.fin_recv == Some(self.ack_nr) {
            self.eof = true;
        }
    }

    fn check_closed(&mut self, now: Instant) {
        if self.state != State::Connected || self.ack_pending {
            return;
        }
        if let Some(at) = self.fin_acked_at {
            if self.eof || now.saturating_duration_since(at) >= FIN_LINGER {
                self.state = State::Closed;
                self.closed_at = Some(now);
                self.rto_deadline = None;
            }
        }
    }

    /// Handles the timer [`Connection::poll_timeout`] asked for (calling it early is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if let Some(at) = self.fin_acked_at {
            if now.saturating_duration_since(at) >= FIN_LINGER {
                self.ack_pending = false;
                self.check_closed(now);
                return;
            }
        }
        let Some(deadline) = self.rto_deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        if !self.confirmed {
            // Our STATE answering the SYN may be lost: send it again, or give up.
            self.timeouts += 1;
            if self.timeouts > self.config.max_syn_timeouts {
                self.fail(now, UtpError::TimedOut);
                return;
            }
            self.rto = (self.rto * 2).min(MAX_RTO);
            self.ack_pending = true;
            self.rto_deadline = Some(now + self.rto);
            return;
        }
        if self.in_flight.is_empty() {
            // Zero-window probe: let one packet out.
            self.rto_deadline = None;
            self.peer_wnd = self.peer_wnd.max(self.max_payload());
            return;
        }
        // A peer that answers while its window is too small for what we sent is alive and
        // busy, not gone: that timeout does not count towards giving up.
        // Only the MTU probe is outstanding: it was too big, not a sign of congestion.
        if let Some((seq, _)) = self.mtu_probe {
            let mut outstanding = self
                .in_flight
                .iter()
                .filter(|s| !s.sacked && !s.need_resend);
            if outstanding.next().is_some_and(|s| s.seq == seq) && outstanding.next().is_none() {
                self.probe_lost();
                if let Some(s) = self.in_flight.iter_mut().find(|s| s.seq == seq) {
                    s.need_resend = true;
                    self.resend_count += 1;
                    self.bytes_in_flight -= s.len;
                }
                self.rto_deadline = Some(now + self.rto);
                return;
            }
        }
        // Everything is lost, the probe with it: that says nothing about its size.
        self.mtu_probe = None;
        let heard = std::mem::take(&mut self.heard);
        let shut = self.peer_wnd < self.in_flight.front().map_or(1, |s| s.len.max(1));
        if !(heard && shut) {
            self.timeouts += 1;
        }
        let limit = if self.state == State::SynSent {
            self.config.max_syn_timeouts
        } else {
            self.config.max_timeouts
        };
        if self.timeouts > limit {
            self.fail(now, UtpError::TimedOut);
            return;
        }
        self.stats.timeouts += 1;
        self.rto = (self.rto * 2).min(MAX_RTO);
        let mss = self.max_payload() as f64;
        self.ssthresh = (self.cwnd / 2.0).max(mss);
        self.cwnd = mss;
        self.slow_start = true;
        for s in self.in_flight.iter_mut() {
            if !s.sacked && !s.need_resend {
                s.need_resend = true;
                self.resend_count += 1;
                self.bytes_in_flight -= s.len;
            }
        }
        self.fast_resend_seq = self.seq_nr;
        self.loss_seq = self.seq_nr;
        self.dup_acks = 0;
        self.rto_deadline = Some(now + self.rto);
    }

    /// When [`Connection::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let linger = self.fin_acked_at.map(|at| at + FIN_LINGER);
        match (self.rto_deadline, linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Writes the next datagram to send into `buf` and returns its length, or `None` when there
    /// is nothing to send now. `buf` should hold [`Config::max_packet_size`] bytes; datagrams
    /// never exceed it. Call until it returns `None`; after each datagram,
    /// [`Connection::transmit_is_probe`] says whether to send it with don't-fragment.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.sent_probe = false;
        let limit = buf.len().min(self.mtu_max);
        if limit < HEADER_LEN {
            return None;
        }
        if self.reset_pending {
            self.reset_pending = false;
            self.closed_at.get_or_insert(now);
            let mut h = self.header(now, PacketType::Reset, self.seq_nr);
            h.wnd_size = 0;
            self.stats.packets_sent += 1;
            return h.encode(buf);
        }
        if self.state == State::Closed {
            if self.ack_pending && self.error.is_none() {
                self.ack_pending = false;
                return self.send_state(now, buf, limit);
            }
            return None;
        }
        if self.resend_count > 0 {
            if let Some(idx) = self.in_flight.iter().position(|s| s.need_resend) {
                let len = self.in_flight[idx].len;
                // The oldest packet goes out whatever the window: it holds everything up.
                if idx == 0
                    || self.bytes_in_flight == 0
                    || self.bytes_in_flight + len <= self.window()
                {
                    // Never larger than it was (a selective ACK that does not fit is left off),
                    // nor than the floor when it was smaller.
                    let lim = limit.min(self.mtu_floor.max(HEADER_LEN + len));
                    return self.transmit(now, idx, buf, lim);
                }
            }
        } else if self.state == State::Connected {
            if let Some(n) = self.send_new(now, buf, limit) {
                return Some(n);
            }
        }
        if self.ack_pending && self.state == State::Connected {
            self.ack_pending = false;
            let n = self.send_state(now, buf, limit);
            self.check_closed(now);
            return n;
        }
        None
    }

    fn send_state(&mut self, now: Instant, buf: &mut [u8], limit: usize) -> Option<usize> {
        let mut h = self.header(now, PacketType::State, self.seq_nr);
        h.sack = self.sack();
        self.stats.packets_sent += 1;
        h.encode(&mut buf[..limit.min(self.mtu_floor)])
    }

    /// Cuts a new DATA packet (or the FIN) if the windows allow.
    fn send_new(&mut self, now: Instant, buf: &mut [u8], limit: usize) -> Option<usize> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        if !self.confirmed {
            return None;
        }
        let pending = (self.send_base + self.send_buf.len() as u64 - self.unsent) as usize;
        let kind = if pending > 0 {
            PacketType::Data
        } else if self.fin_queued && self.fin_seq.is_none() {
            PacketType::Fin
        } else {
            return None;
        };
        let mut len = 0;
        let mut lim = limit.min(self.mtu_floor);
        let mut probe = false;
        if kind == PacketType::Data {
            let window = self.window();
            let room = window.saturating_sub(self.bytes_in_flight);
            if let Some(size) = self.probe_size(now) {
                // A probe is a full packet of its size, or none. When the window has room for
                // it but not yet, wait for that room rather than fill it with small packets
                // (as libtorrent does), or a busy window would never let a probe out.
                let payload = size.saturating_sub(HEADER_LEN);
                if size <= limit && pending >= payload && payload <= window {
                    if payload <= room {
                        lim = size;
                        probe = true;
                    } else if self.bytes_in_flight > 0 {
                        return None;
                    }
                }
            }
            let chunk = pending.min(lim - HEADER_LEN);
            len = if chunk <= room {
                chunk
            } else if self.bytes_in_flight == 0 && room > 0 {
                room
            } else {
                if self.bytes_in_flight == 0 && self.in_flight.is_empty() {
                    // The peer's window is shut: probe it after a timeout.
                    self.rto_deadline.get_or_insert(now + self.rto);
                }
                return None;
            };
        } else {
            self.fin_seq = Some(self.seq_nr);
        }
        self.in_flight.push_back(Sent {
            seq: self.seq_nr,
            kind,
            offset: self.unsent,
            len,
            sent_at: now,
            transmissions: 0,
            need_resend: true,
            sacked: false,
        });
        self.resend_count += 1;
        self.unsent += len as u64;
        let seq = self.seq_nr;
        self.seq_nr = self.seq_nr.wrapping_add(1);
        let idx = self.in_flight.len() - 1;
        let n = self.transmit(now, idx, buf, lim)?;
        if probe {
            self.mtu_probe = Some((seq, n));
            self.sent_probe = true;
            self.stats.mtu_probes += 1;
        }
        Some(n)
    }

    /// Sends packet `idx` of the send queue (first time or again).
    fn transmit(
        &mut self,
        now: Instant,
        idx: usize,
        buf: &mut [u8],
        limit: usize,
    ) -> Option<usize> {
        let (kind, seq, offset, len) = {
            let s = &self.in_flight[idx];
            (s.kind, s.seq, s.offset, s.len)
        };
        let mut h = self.header(now, kind, seq);
        if kind != PacketType::Syn {
            h.sack = self.sack();
            if h.encoded_len() + len > limit {
                h.sack = None; // does not fit: a STATE will carry it
            }
        }
        let at = h.encode(&mut buf[..limit])?;
        if at + len > limit {
            return None;
        }
        if kind == PacketType::Data {
            let start = (offset - self.send_base) as usize;
            let (a, b) = self.send_buf.as_slices();
            let out = &mut buf[at..at + len];
            if start + len <= a.len() {
                out.copy_from_slice(&a[start..start + len]);
            } else if start >= a.len() {
                out.copy_from_slice(&b[start - a.len()..start - a.len() + len]);
            } else {
                let first = a.len() - start;
                out[..first].copy_from_slice(&a[start..]);
                out[first..].copy_from_slice(&b[..len - first]);
            }
        }
        if h.sack.is_some() || self.reorder_count == 0 {
            self.ack_pending = false;
        }
        self.stats.packets_sent += 1;
        let s = &mut self.in_flight[idx];
        if s.transmissions > 0 {
            self.stats.retransmits += 1;
        }
        s.transmissions += 1;
        s.sent_at = now;
        s.need_resend = false;
        self.resend_count -= 1;
        self.bytes_in_flight += len;
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rto);
        }
        Some(at + len)
    }
}
