//! Starting a torrent: its files are opened and checked (or the fast-resume record trusted) off
//! the executor, then its picker, tracker client and actor start.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures_lite::future;
use shoal_engine::bitfield::Bitfield;
use shoal_engine::lengths::Lengths;
use shoal_engine::picker::Priority;
use shoal_engine::rate::Rate;
use shoal_engine::storage::Layout;
use shoal_engine::InfoHash;

use super::actor::{run, State};
use super::choker::Choker;
use super::swarm::Swarm;
use super::{AddTorrent, SessionContext, Torrent, TorrentMsg, TORRENT_MAILBOX};
use crate::disk::{Mode, Storage, DISK_QUEUE};
use crate::hasher::HASH_QUEUE;
use crate::limit::Limits;
use crate::peer::PeerSettings;
use crate::picker::{self, PickerMsg, PickerSetup, PICKER_MAILBOX};
use crate::runtime::{mailbox, Mailbox, ReplyTo, Supervisor};
use crate::shared::{Shared, TorrentState};
use crate::tracker::{TrackerConfig, TransferStats};

/// Capacity of the channel of peer addresses from the tracker client.
const TRACKER_PEERS: usize = 16;

/// Starts a torrent: the handle comes back at once, in [`TorrentState::Checking`]; a task
/// checks the files (off the executor, on every core, or trusts the fast-resume record), then
/// starts the picker, the tracker client and the actor.
pub(crate) fn start(add: AddTorrent, ctx: SessionContext) -> Torrent {
    let meta = add.metainfo.clone();
    let lengths = meta.info.lengths;
    let layout = layout(&add);
    let place = Arc::new(std::sync::OnceLock::new());
    let _ = place.set(super::Place::of(&add));
    let shared = Arc::new(Shared::new(lengths.num_pieces(), 0, lengths.total_length()));
    let (addr, inbox) = mailbox(TORRENT_MAILBOX);
    let resume_path = add.resume.clone();
    let (down_limit, up_limit, limits) = super::limits(&add.settings, &ctx);
    ctx.spawner
        .spawn(launch(
            add,
            ctx.clone(),
            layout,
            shared.clone(),
            inbox,
            limits,
            Carry::default(),
        ))
        .detach();
    Torrent {
        addr,
        shared,
        info_hash: meta.info_hash,
        alias: super::actor::hybrid_v2_hash(&meta),
        place,
        resume: resume_path,
        down_limit,
        up_limit,
    }
}

/// Where each file of the torrent is.
pub(super) fn layout(add: &AddTorrent) -> Layout {
    super::layout_of(&add.metainfo, &add.folder, add.content.as_deref())
}

/// What the torrent was told while it checked its files.
#[derive(Default)]
struct Pending {
    /// Peers to dial once started.
    peers: Vec<SocketAddr>,
    /// Whether to start paused.
    paused: bool,
    /// A shutdown to answer: the torrent never starts.
    shutdown: Option<ReplyTo<()>>,
    /// A file selection to apply once started, and its caller.
    wanted: Option<(Vec<bool>, ReplyTo<crate::error::Result<()>>)>,
    /// Sequential mode, when set meanwhile.
    sequential: Option<bool>,
    /// Streaming pieces, when set meanwhile.
    deadline: Option<Option<std::ops::RangeInclusive<u32>>>,
    /// Super-seeding, when set meanwhile.
    super_seed: Option<bool>,
}

/// What a torrent started from a magnet link brings from its metadata phase.
#[derive(Default)]
pub(super) struct Carry {
    /// The addresses it knew and the bans it made.
    pub(super) swarm: Option<Swarm>,
    /// Its connections, to adopt as peers.
    pub(super) handover: Vec<super::magnet::Handover>,
    /// Paused or resumed during the fetch: replaces [`AddTorrent::paused`].
    pub(super) paused: Option<bool>,
}

/// The torrent's task: the check, answering the mailbox meanwhile, then the run loop.
pub(super) async fn launch(
    add: AddTorrent,
    ctx: SessionContext,
    layout: Layout,
    shared: Arc<Shared>,
    mut inbox: Mailbox<TorrentMsg>,
    limits: Limits,
    carry: Carry,
) {
    let meta = add.metainfo.clone();
    let lengths = meta.info.lengths;
    // Paths in the layout are complete: the folder is already joined in.
    let folder = PathBuf::new();
    let mode = add.mode;
    // SHA-1 for v1 and hybrid torrents, merkle subtree roots for v2-only ones (whose piece
    // layers the session checked were there before starting us; without, nothing verifies).
    let hashes = Arc::new(meta.piece_hashes().unwrap_or_default());
    let threads = add.settings.hasher_threads;
    let check_hashes = hashes.clone();
    let files: Vec<PathBuf> = layout
        .files()
        .iter()
        .filter(|f| !f.pad)
        .map(|f| f.path.clone())
        .collect();
    let resume = add
        .resume
        .clone()
        .filter(|_| mode == Mode::ReadWrite)
        .map(|r| (r, files));
    let record = resume.clone();
    let info_hash = meta.info_hash;
    let progress = shared.clone();
    let wanted = add
        .wanted
        .clone()
        .filter(|w| w.len() == meta.info.files.len())
        .unwrap_or_else(|| vec![true; meta.info.files.len()]);
    let priorities = piece_priorities(&layout, lengths, &wanted);
    let part = (mode == Mode::ReadWrite).then(|| part_path(&add, &meta.info_hash));
    let storage_wanted = wanted.clone();
    let mut check = smol::unblock(move || -> std::io::Result<(Storage, Bitfield, bool)> {
        let wanted = storage_wanted;
        let storage = Storage::open_selected(&folder, layout, lengths, mode, &wanted, part)?;
        let resumed = record.and_then(|(r, files)| {
            crate::resume::load(&r, &info_hash, lengths.num_pieces(), &files)
        });
        Ok(match resumed {
            Some(have) => (storage, have, true),
            None => {
                let have =
                    storage.recheck_pieces(&check_hashes, threads, &|n| progress.set_checked(n));
                (storage, have, false)
            }
        })
    });
    let mut pending = Pending {
        peers: add.peers.clone(),
        paused: carry.paused.unwrap_or(add.paused),
        shutdown: None,
        wanted: None,
        sequential: None,
        deadline: None,
        super_seed: None,
    };
    let checked = loop {
        let ev = future::or(async { Ok((&mut check).await) }, async {
            Err(inbox.recv().await)
        })
        .await;
        match ev {
            Ok(result) => break Some(result),
            Err(None) => break None,
            Err(Some(msg)) => match msg {
                TorrentMsg::Shutdown(reply) => {
                    pending.shutdown = Some(reply);
                    break None;
                }
                TorrentMsg::AddPeers(peers) => pending.peers.extend(peers),
                TorrentMsg::Pause(reply) => {
                    pending.paused = true;
                    reply.send(());
                }
                TorrentMsg::Resume(reply) => {
                    pending.paused = false;
                    reply.send(());
                }
                TorrentMsg::Peers(reply) => reply.send(Vec::new()),
                TorrentMsg::SoleCopies(reply) => reply.send(0),
                TorrentMsg::Trackers(reply) => reply.send(Vec::new()),
                TorrentMsg::SetWanted(w, reply) => {
                    // A later selection replaces an earlier one, whose caller is done.
                    if let Some((_, earlier)) = pending.wanted.replace((w, reply)) {
                        earlier.send(Ok(()));
                    }
                }
                TorrentMsg::SetSequential(on) => pending.sequential = Some(on),
                TorrentMsg::SetDeadline(d) => pending.deadline = Some(d),
                TorrentMsg::SetSuperSeed(on) => pending.super_seed = Some(on),
                // Not started yet: an incoming peer is turned away (it will retry).
                TorrentMsg::Incoming(_) => {}
            },
        }
    };
    let (storage, have, resumed) = match checked {
        Some(Ok(checked)) => checked,
        Some(Err(e)) => {
            let what = format!("opening the files of {}: {e}", meta.info.name);
            log::debug!("{what}");
            shared.set_error(what);
            shared.set_state(TorrentState::Error);
            shared.set_stopped();
            // Answer whatever comes until every handle is gone.
            while let Some(msg) = inbox.recv().await {
                match msg {
                    TorrentMsg::Shutdown(r) | TorrentMsg::Pause(r) | TorrentMsg::Resume(r) => {
                        r.send(())
                    }
                    TorrentMsg::Peers(r) => r.send(Vec::new()),
                    TorrentMsg::SoleCopies(r) => r.send(0),
                    TorrentMsg::Trackers(r) => r.send(Vec::new()),
                    TorrentMsg::SetWanted(_, r) => r.send(Err(crate::error::Error::Stopped)),
                    TorrentMsg::AddPeers(_)
                    | TorrentMsg::Incoming(_)
                    | TorrentMsg::SetSequential(_)
                    | TorrentMsg::SetDeadline(_)
                    | TorrentMsg::SetSuperSeed(_) => {}
                }
            }
            return;
        }
        None => {
            // Shut down (or every handle dropped) while checking: the check thread finishes
            // on its own and closes the files.
            shared.set_stopped();
            if let Some((_, reply)) = pending.wanted {
                reply.send(Err(crate::error::Error::Stopped));
            }
            if let Some(reply) = pending.shutdown {
                reply.send(());
            }
            return;
        }
    };
    let left: u64 = (0..lengths.num_pieces())
        .filter(|&p| !have.get(p))
        .map(|p| u64::from(lengths.piece_len(p)))
        .sum();
    shared.set_initial_have(&have);
    shared.checked(have.count_ones(), left);
    log::debug!(
        "{}: {} of {} pieces good ({})",
        meta.info.name,
        have.count_ones(),
        lengths.num_pieces(),
        if resumed {
            "fast-resume record"
        } else {
            "checked"
        }
    );
    shared.set_from_record(resumed);
    if mode == Mode::ReadOnly && !have.all() {
        // Said to the user by the caller, which knows what it will do about it.
        log::debug!(
            "{}: {} of {} pieces are missing or wrong in the data given",
            meta.info.name,
            lengths.num_pieces() - have.count_ones(),
            lengths.num_pieces()
        );
    }

    let storage = Arc::new(storage);
    let disk = ctx.disk.clone();
    let downloads = disk.blocks().clone();
    let hasher = ctx.hasher.clone();
    // Every piece in flight reports once: in the hasher's queue or threads, or in the disk's.
    // The pools are shared, so this bounds one torrent's pieces in flight too.
    let done_capacity = HASH_QUEUE + hasher.threads() + DISK_QUEUE + disk.threads().max(1) + 1;
    let (done_tx, done_rx) = async_channel::bounded(done_capacity);
    let (picker_addr, picker_inbox) = mailbox(PICKER_MAILBOX);
    // Before any peer can start: each reads it to choose what to tell its peer first.
    let super_seed = pending.super_seed.unwrap_or(add.settings.super_seed) && have.all();
    shared.set_super_seeding(super_seed);
    let picker_task = ctx.spawner.spawn(picker::run(
        PickerSetup {
            lengths,
            have: have.clone(),
            hashes,
            disk_budget: add.settings.disk_budget,
            hasher,
            storage: storage.clone(),
            done_tx,
            done_rx,
            shared: shared.clone(),
            download: mode == Mode::ReadWrite,
            super_seed,
        },
        picker_inbox,
    ));

    if priorities.iter().any(|p| !p.is_wanted()) {
        // First in the picker's mailbox: before any peer asks for a piece.
        let _ = picker_addr
            .send(PickerMsg::SetPriorities { priorities })
            .await;
    }
    if add.sequential {
        let _ = picker_addr
            .send(PickerMsg::SetSequential { on: true })
            .await;
    }
    let (tracker_peers_tx, tracker_peers_rx) = async_channel::bounded(TRACKER_PEERS);
    let transfer = Arc::new(TransferStats::default());
    transfer.left.store(left, Ordering::Relaxed);
    let tiers = if add.settings.use_trackers {
        meta.tiers()
    } else {
        Vec::new()
    };
    let tracker_config = (!tiers.is_empty()).then(|| TrackerConfig {
        tiers,
        info_hash: meta.info_hash,
        peer_id: ctx.peer_id,
        port: ctx.listen_port,
        numwant: 50,
        timing: crate::tracker::Timing {
            announce_interval: add.settings.announce_interval,
            ..Default::default()
        },
        local_only: ctx.local_only,
    });

    let mut state = State {
        meta: meta.clone(),
        hash_trees: meta
            .info
            .version
            .has_v2()
            .then(|| {
                shoal_engine::hash_picker::PieceTrees::new(
                    u64::from(meta.info.piece_length),
                    &meta.piece_layers,
                )
            })
            .filter(|t| !t.is_empty())
            .map(Arc::new),
        ctx: ctx.clone(),
        settings: add.settings.clone(),
        peer_settings: Arc::new(PeerSettings {
            queue_depth: add.settings.queue_depth,
            ..PeerSettings::default()
        }),
        shared: shared.clone(),
        initial_have: Arc::new(have),
        picker: picker_addr,
        picker_task: Some(picker_task),
        disk,
        storage,
        downloads,
        tracker: None,
        tracker_config,
        tracker_peers: tracker_peers_tx,
        transfer,
        serve_filter: add.serve_filter.clone(),
        peers: Supervisor::new(ctx.spawner.clone()),
        entries: HashMap::new(),
        by_addr: HashMap::new(),
        next_key: 0,
        by_task: HashMap::new(),
        evicting: HashSet::new(),
        swarm: carry.swarm.unwrap_or_else(|| Swarm::new(ctx.listen_port)),
        choker: Choker::new(add.settings.upload_slots, Instant::now()),
        down_rate: Rate::default(),
        up_rate: Rate::default(),
        announced_complete: shared.is_complete(),
        wanted,
        limits,
        paused: true,
        resume,
        saved_pieces: u32::MAX,
        last_save: Instant::now(),
        web_seeds: crate::webseed::WebSeeds::new(&meta, ctx.local_only),
    };
    state.swarm.add(pending.peers, Instant::now());
    if let Some((w, reply)) = pending.wanted {
        reply.send(state.set_wanted(w).await);
    }
    if pending.paused {
        shared.set_state(TorrentState::Paused);
    } else {
        // The connections of the metadata phase first, so the dialling skips their addresses.
        for h in carry.handover {
            state.adopt(h);
        }
        state.resume_work();
    }
    run(state, inbox, tracker_peers_rx).await;
}

/// Where the bytes of skipped files wait: `<folder>/.shoal/<info hash>.parts`, beside the
/// lock and resume files (hidden from the user's view of the folder).
fn part_path(add: &AddTorrent, info_hash: &InfoHash) -> PathBuf {
    let folder = match &add.content {
        Some(content) => content.parent().map(PathBuf::from).unwrap_or_default(),
        None => add.folder.clone(),
    };
    folder.join(".shoal").join(format!("{info_hash}.parts"))
}

/// One priority per piece from one flag per file: a piece is wanted when any byte of it lies
/// in a wanted file, skipped when it lies only in skipped files.
pub(super) fn piece_priorities(
    layout: &Layout,
    lengths: Lengths,
    wanted: &[bool],
) -> Vec<Priority> {
    let mut out = vec![Priority::Skip; lengths.num_pieces() as usize];
    let plen = u64::from(lengths.piece_length()).max(1);
    for (f, _) in layout
        .files()
        .iter()
        .zip(wanted)
        .filter(|(f, &w)| w && f.length > 0 && !f.pad)
    {
        let first = (f.offset / plen) as usize;
        let last = ((f.offset + f.length - 1) / plen) as usize;
        for p in out.iter_mut().take(last + 1).skip(first) {
            *p = Priority::Normal;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_is_skipped_only_when_it_lies_in_skipped_files_alone() {
        // Pieces of 100 bytes; files of 150, 0, 100 and 250 bytes.
        let layout = Layout::new(
            [("a", 150u64), ("empty", 0), ("b", 100), ("c", 250)]
                .map(|(n, l)| (PathBuf::from(n), l)),
        );
        let lengths = Lengths::new(500, 100).unwrap();
        let p = |w: [bool; 4]| -> Vec<bool> {
            piece_priorities(&layout, lengths, &w)
                .iter()
                .map(|p| p.is_wanted())
                .collect()
        };
        assert_eq!(p([true; 4]), [true; 5]);
        assert_eq!(p([false; 4]), [false; 5]);
        // b (150..250) shares pieces 1 and 2 with a and c.
        assert_eq!(
            p([false, false, true, false]),
            [false, true, true, false, false]
        );
        // The empty file wants nothing.
        assert_eq!(p([false, true, false, false]), [false; 5]);
        assert_eq!(
            p([true, false, false, false]),
            [true, true, false, false, false]
        );
        assert_eq!(
            p([false, false, false, true]),
            [false, false, true, true, true]
        );
    }
}
