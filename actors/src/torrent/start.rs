//! Starting a torrent: its files are opened and checked (or the fast-resume record trusted) off
//! the executor, then its picker, tracker client and actor start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use shoal_engine::bitfield::Bitfield;
use shoal_engine::storage::Layout;

use super::actor::{run, State};
use super::choker::Choker;
use super::swarm::Swarm;
use super::{content_path, AddTorrent, SessionContext, Torrent, TORRENT_MAILBOX};
use crate::disk::{Mode, Storage, DISK_QUEUE};
use crate::hasher::HASH_QUEUE;
use crate::peer::PeerSettings;
use crate::picker::{self, PickerSetup, PICKER_MAILBOX};
use crate::runtime::{mailbox, Supervisor};
use crate::shared::Shared;
use crate::tracker::{TrackerClient, TrackerConfig, TransferStats};

/// Capacity of the channel of peer addresses from the tracker client.
const TRACKER_PEERS: usize = 16;

/// Opens the files, checks them, and starts the torrent's actors. The check runs off the
/// executor, on every core.
pub(crate) async fn start(add: AddTorrent, ctx: SessionContext) -> Result<Torrent, String> {
    let meta = add.metainfo.clone();
    let lengths = meta.info.lengths;
    let layout = match &add.content {
        // The metainfo's paths start with the torrent name; the content replaces it.
        Some(content) => Layout::new(
            meta.info
                .files
                .iter()
                .map(|f| (content_path(content, &f.path), f.length)),
        ),
        None => Layout::new(
            meta.info
                .files
                .iter()
                .map(|f| (add.folder.join(f.relative_path()), f.length)),
        ),
    };
    // Paths in the layout are complete: the folder is already joined in.
    let folder = PathBuf::new();
    let mode = add.mode;
    let hashes = Arc::new(meta.info.pieces.clone());
    let threads = add.settings.hasher_threads;
    let check_hashes = hashes.clone();
    let files: Vec<PathBuf> = layout.files().iter().map(|f| f.path.clone()).collect();
    let resume = add
        .resume
        .clone()
        .filter(|_| mode == Mode::ReadWrite)
        .map(|r| (r, files));
    let record = resume.clone();
    let info_hash = meta.info_hash;
    let (storage, have) = smol::unblock(move || -> std::io::Result<(Storage, Bitfield)> {
        let storage = Storage::open(&folder, layout, lengths, mode)?;
        let resumed = record.and_then(|(r, files)| {
            crate::resume::load(&r, &info_hash, lengths.num_pieces(), &files)
        });
        let have = match resumed {
            Some(have) => have,
            None => storage.recheck(&check_hashes, threads, &|_| {}),
        };
        Ok((storage, have))
    })
    .await
    .map_err(|e| e.to_string())?;
    let left: u64 = (0..lengths.num_pieces())
        .filter(|&p| !have.get(p))
        .map(|p| u64::from(lengths.piece_len(p)))
        .sum();
    let shared = Arc::new(Shared::new(lengths.num_pieces(), have.count_ones(), left));
    if mode == Mode::ReadOnly && !have.all() {
        log::warn!(
            "{}: {} of {} pieces are missing or wrong in the data given; seeding the rest",
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
        },
        picker_inbox,
    ));

    let (tracker_peers_tx, tracker_peers_rx) = async_channel::bounded(TRACKER_PEERS);
    let transfer = Arc::new(TransferStats::default());
    transfer.left.store(left, Ordering::Relaxed);
    let tiers = if add.settings.use_trackers {
        meta.tiers()
    } else {
        Vec::new()
    };
    let tracker = (!tiers.is_empty()).then(|| {
        TrackerClient::spawn(
            TrackerConfig {
                tiers,
                info_hash: meta.info_hash,
                peer_id: ctx.peer_id,
                port: ctx.listen_port,
                numwant: 50,
                timing: Default::default(),
            },
            transfer.clone(),
            tracker_peers_tx,
        )
    });

    let (addr, inbox) = mailbox(TORRENT_MAILBOX);
    let state = State {
        meta: meta.clone(),
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
        tracker,
        transfer,
        serve_filter: add.serve_filter.clone(),
        peers: Supervisor::new(ctx.spawner.clone()),
        entries: HashMap::new(),
        by_addr: HashMap::new(),
        next_key: 0,
        by_task: HashMap::new(),
        swarm: Swarm::new(ctx.listen_port),
        choker: Choker::new(add.settings.upload_slots, Instant::now()),
        announced_complete: shared.is_complete(),
        resume,
        saved_pieces: u32::MAX,
        last_save: Instant::now(),
    };
    let task = ctx.spawner.spawn(run(state, inbox, tracker_peers_rx));
    task.detach();
    let torrent = Torrent {
        addr,
        shared,
        info_hash: meta.info_hash,
    };
    if !add.peers.is_empty() {
        torrent.add_peers(add.peers).await;
    }
    Ok(torrent)
}
