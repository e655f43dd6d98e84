//! The `stop after one copy` seeding mode: every piece is uploaded exactly once, in all, to
//! the first peer that asks for it; requests for a piece another peer already took are
//! refused. Once every piece has gone out, the seeder can leave and the downloaders must
//! finish from each other. It exists to prove that rarest first keeps a swarm alive.

use std::collections::HashSet;
use std::sync::Mutex;

use event_listener::Event;
use shoal_engine::lengths::{BlockInfo, Lengths};
use shoal_engine::picker::PeerKey;

use crate::peer::ServeFilter;

/// Serves each piece once; see the module documentation.
#[derive(Debug)]
pub struct OneCopy {
    /// The torrent's lengths.
    lengths: Lengths,
    /// Who took which piece, and what went out.
    state: Mutex<State>,
    /// Notified when the last piece has gone out.
    all_served: Event,
}

#[derive(Debug)]
struct State {
    /// The peer each piece is reserved for.
    owner: Vec<Option<PeerKey>>,
    /// Blocks sent, by piece and offset.
    sent: HashSet<(u32, u32)>,
    /// Blocks sent per piece.
    sent_per_piece: Vec<u32>,
    /// Pieces sent whole.
    pieces_done: u32,
}

impl OneCopy {
    /// A filter for a torrent with these lengths.
    pub fn new(lengths: Lengths) -> Self {
        let n = lengths.num_pieces() as usize;
        Self {
            lengths,
            state: Mutex::new(State {
                owner: vec![None; n],
                sent: HashSet::new(),
                sent_per_piece: vec![0; n],
                pieces_done: 0,
            }),
            all_served: Event::new(),
        }
    }

    /// Whether every piece has gone out once.
    pub fn is_done(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.pieces_done == self.lengths.num_pieces()
    }

    /// Waits until every piece has gone out once.
    pub async fn wait_done(&self) {
        loop {
            let l = self.all_served.listen();
            if self.is_done() {
                return;
            }
            l.await;
        }
    }
}

impl ServeFilter for OneCopy {
    fn allow(&self, peer: PeerKey, block: &BlockInfo) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(owner) = st.owner.get_mut(block.piece as usize) else {
            return false;
        };
        match owner {
            Some(o) => *o == peer,
            None => {
                *owner = Some(peer);
                true
            }
        }
    }

    fn served(&self, _peer: PeerKey, block: &BlockInfo) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.sent.insert((block.piece, block.begin)) {
            return;
        }
        let piece = block.piece as usize;
        st.sent_per_piece[piece] += 1;
        if st.sent_per_piece[piece] == self.lengths.blocks_in_piece(block.piece) {
            st.pieces_done += 1;
            if st.pieces_done == self.lengths.num_pieces() {
                self.all_served.notify(usize::MAX);
            }
        }
    }
}
