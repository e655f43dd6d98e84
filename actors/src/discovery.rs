//! Peer discovery beyond trackers, for a whole session: the UDP socket, the DHT node and LSD,
//! started together and told of each torrent the session adds and removes.
//!
//! Private torrents (BEP 27) are never given to the DHT or LSD: their peers come from their
//! trackers only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use shoal_engine::InfoHash;

use crate::dht::{DhtConfig, DhtNode, DhtStats};
use crate::lsd::Lsd;
use crate::runtime::Spawner;
use crate::torrent::Torrent;
use crate::udp::{Consumers, Udp, KRPC_QUEUE, OUTGOING_QUEUE};

/// The name of the routing table's file in the state folder.
pub const DHT_STATE_FILE: &str = "dht.dat";

/// What to start.
#[derive(Clone, Debug)]
pub struct DiscoverySettings {
    /// Run a DHT node.
    pub dht: bool,
    /// `HOST:PORT` nodes to join the DHT through.
    pub dht_bootstrap: Vec<String>,
    /// Run local service discovery.
    pub lsd: bool,
    /// Where the routing table is kept (`None`: nowhere).
    pub state_dir: Option<PathBuf>,
}

/// The running discovery services of a session.
#[derive(Debug, Default)]
pub struct Discovery {
    /// The UDP socket at the listen port (while the DHT runs; uTP will share it).
    udp: Mutex<Option<Udp>>,
    /// The DHT node.
    dht: Option<DhtNode>,
    /// LSD.
    lsd: Option<Lsd>,
    /// The task sending the DHT's datagrams from the uTP socket, when they share it.
    sender: Option<crate::runtime::Task<()>>,
}

impl Discovery {
    /// Starts what `settings` asks for, for a session whose TCP listener is at `listen`. A
    /// failure (the UDP port taken, say) is logged and leaves that service off: a session
    /// still works with trackers and direct peers.
    ///
    /// With `utp`, the DHT shares the uTP endpoint's socket (one UDP socket per listen port,
    /// demultiplexed in `utp::route_datagram`); without it, the DHT binds its own (`udp.rs`).
    pub fn start(
        settings: &DiscoverySettings,
        listen: SocketAddr,
        spawner: &Spawner,
        utp: Option<&crate::utp::UtpEndpoint>,
    ) -> Self {
        let mut out = Discovery::default();
        if settings.dht {
            let (krpc, packets) = async_channel::bounded(KRPC_QUEUE);
            let outgoing = match utp {
                Some(utp) => {
                    let (tx, rx) = async_channel::bounded(OUTGOING_QUEUE);
                    out.sender = Some(spawner.spawn(utp.share_with_dht(krpc, rx)));
                    Some(tx)
                }
                None => match Udp::bind(listen, Consumers { krpc: Some(krpc) }, spawner) {
                    Ok(udp) => {
                        let tx = udp.outgoing();
                        out.udp = Mutex::new(Some(udp));
                        Some(tx)
                    }
                    Err(e) => {
                        log::warn!("dht off: cannot bind udp {listen}: {e}");
                        None
                    }
                },
            };
            if let Some(outgoing) = outgoing {
                let config = DhtConfig {
                    listen,
                    port: listen.port(),
                    bootstrap: settings.dht_bootstrap.clone(),
                    state_file: settings.state_dir.as_ref().map(|d| d.join(DHT_STATE_FILE)),
                };
                out.dht = Some(DhtNode::start(config, packets, outgoing, spawner));
            }
        }
        if settings.lsd {
            match Lsd::start(listen, listen.port(), spawner) {
                Ok(lsd) => out.lsd = lsd,
                Err(e) => log::warn!("local service discovery off: {e}"),
            }
        }
        out
    }

    /// Tells the services of a new torrent (nothing for a private one).
    pub fn add_torrent(&self, torrent: &Torrent, private: bool) {
        if private {
            return;
        }
        if let Some(d) = &self.dht {
            d.add_torrent(torrent.clone());
        }
        if let Some(l) = &self.lsd {
            l.add_torrent(torrent.clone());
        }
    }

    /// Tells the services a torrent is gone.
    pub fn remove_torrent(&self, info_hash: InfoHash) {
        if let Some(d) = &self.dht {
            d.remove_torrent(info_hash);
        }
        if let Some(l) = &self.lsd {
            l.remove_torrent(info_hash);
        }
    }

    /// The DHT's counters (`None` when it is off or stopped).
    pub async fn dht_stats(&self) -> Option<DhtStats> {
        match &self.dht {
            Some(d) => d.stats().await,
            None => None,
        }
    }

    /// One DHT lookup (see [`DhtNode::lookup`]).
    pub async fn dht_lookup(&self, info_hash: InfoHash) -> Option<crate::dht::LookupResult> {
        match &self.dht {
            Some(d) => d.lookup(info_hash).await,
            None => None,
        }
    }

    /// The UDP socket's address, when it is open.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|u| u.local_addr())
    }

    /// Stops everything (the DHT saves its table first).
    pub async fn shutdown(&self) {
        if let Some(d) = &self.dht {
            d.shutdown().await;
        }
        if let Some(l) = &self.lsd {
            l.shutdown().await;
        }
        let udp = self.udp.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut u) = udp {
            u.shutdown().await;
        }
    }
}
