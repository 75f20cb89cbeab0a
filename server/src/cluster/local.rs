//! What a cluster node holds for its own clients: which incarnation it is
//! now, and the table of its connections (by connection number), each a
//! [`Slot`] with its outbox and its cached pairing.
//!
//! The table belongs to one incarnation: fencing drains it (every client
//! closed with 1013), and a new incarnation starts empty. Its lock is the
//! map lock of the registry's lock order (map → `peer` → `out`); nothing
//! awaits under it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::budget::Budget;
use crate::metrics::Metrics;
use crate::registry::{Kick, Peer, Refusal, Slot, lock};

/// One incarnation's clients.
pub struct Live {
    pub inc: Arc<str>,
    pub era: u64,
    table: HashMap<u64, Arc<Slot>>,
}

impl Live {
    /// The client on connection `conn`, if it is `id`.
    pub fn get(&self, conn: u64, id: &str) -> Option<&Arc<Slot>> {
        self.table.get(&conn).filter(|s| *s.id == *id)
    }
}

pub enum Membership {
    /// Not in the cluster now: not joined yet, or fenced.
    Out,
    Live(Live),
    /// SIGTERM: no new clients; the connected ones are being released.
    Closing(Live),
    /// Left the cluster for good.
    Stopped,
}

pub struct Local {
    m: Mutex<Membership>,
    last_era: Mutex<u64>,
}

impl Local {
    pub fn new() -> Local {
        Local {
            m: Mutex::new(Membership::Out),
            last_era: Mutex::new(0),
        }
    }

    fn live(m: &Membership) -> Option<&Live> {
        match m {
            Membership::Live(l) | Membership::Closing(l) => Some(l),
            Membership::Out | Membership::Stopped => None,
        }
    }

    fn live_mut(m: &mut Membership) -> Option<&mut Live> {
        match m {
            Membership::Live(l) | Membership::Closing(l) => Some(l),
            Membership::Out | Membership::Stopped => None,
        }
    }

    /// A new incarnation starts (only from `Out`); its generation.
    pub fn begin(&self, inc: Arc<str>) -> Option<u64> {
        let mut m = lock(&self.m);
        if !matches!(*m, Membership::Out) {
            return None;
        }
        let mut g = lock(&self.last_era);
        *g += 1;
        *m = Membership::Live(Live {
            inc,
            era: *g,
            table: HashMap::new(),
        });
        Some(*g)
    }

    pub fn is_live(&self) -> bool {
        matches!(*lock(&self.m), Membership::Live(_))
    }

    pub fn is_stopped(&self) -> bool {
        matches!(*lock(&self.m), Membership::Stopped)
    }

    pub fn era_is(&self, era: u64) -> bool {
        Self::live(&lock(&self.m)).is_some_and(|l| l.era == era)
    }

    /// Whether the node is live (taking clients), and its incarnation.
    pub fn incarnation(&self) -> (bool, Option<Arc<str>>) {
        let m = lock(&self.m);
        (
            matches!(*m, Membership::Live(_)),
            Self::live(&m).map(|l| l.inc.clone()),
        )
    }

    /// The incarnation and generation while it has clients to serve.
    pub fn incarnation_era(&self) -> Option<(Arc<str>, u64)> {
        Self::live(&lock(&self.m)).map(|l| (l.inc.clone(), l.era))
    }

    pub fn clients(&self) -> usize {
        Self::live(&lock(&self.m)).map_or(0, |l| l.table.len())
    }

    /// Pairings with a side here; one between two local clients once.
    pub fn pairings(&self) -> usize {
        let m = lock(&self.m);
        let Some(l) = Self::live(&m) else { return 0 };
        let (mut remote, mut local) = (0, 0);
        for s in l.table.values() {
            match s.link().as_ref().map(|l| &l.peer) {
                Some(Peer::Remote(_)) => remote += 1,
                Some(Peer::Local(_)) => local += 1,
                None => {}
            }
        }
        remote + local / 2
    }

    /// Puts a new client in the table, before Redis knows it; the
    /// incarnation to claim it for, and whether it fits under `max`.
    pub fn insert(&self, slot: &Arc<Slot>, max: usize) -> Result<(Arc<str>, u64, bool), Refusal> {
        let mut m = lock(&self.m);
        match &mut *m {
            Membership::Live(l) => {
                let room = l.table.len() < max;
                l.table.insert(slot.conn, slot.clone());
                Ok((l.inc.clone(), l.era, room))
            }
            Membership::Closing(_) | Membership::Stopped => Err(Refusal::ShuttingDown),
            Membership::Out => Err(Refusal::Unavailable),
        }
    }

    /// Takes a client out of the table; the incarnation it belonged to,
    /// or `None` if it was not there (fenced away, or removed already).
    pub fn remove(&self, slot: &Arc<Slot>) -> Option<(Arc<str>, u64)> {
        let mut m = lock(&self.m);
        let l = Self::live_mut(&mut m)?;
        match l.table.get(&slot.conn) {
            Some(s) if Arc::ptr_eq(s, slot) => {
                l.table.remove(&slot.conn);
                Some((l.inc.clone(), l.era))
            }
            _ => None,
        }
    }

    /// The incarnation `slot` is a client of, if it still is.
    pub fn owner(&self, slot: &Arc<Slot>) -> Option<(Arc<str>, u64)> {
        let m = lock(&self.m);
        let l = Self::live(&m)?;
        l.table
            .get(&slot.conn)
            .filter(|s| Arc::ptr_eq(s, slot))
            .map(|_| (l.inc.clone(), l.era))
    }

    /// Runs `f` on incarnation `era`'s clients, if it is still current.
    pub fn apply<R>(&self, era: u64, f: impl FnOnce(&Live) -> R) -> Option<R> {
        let m = lock(&self.m);
        Self::live(&m).filter(|l| l.era == era).map(f)
    }

    /// Fences incarnation `era`: every client closed (1013), no notices,
    /// pairings forgotten. Whether it was current.
    pub fn fence(&self, era: u64) -> bool {
        let mut m = lock(&self.m);
        let closing = match &*m {
            Membership::Live(l) if l.era == era => false,
            Membership::Closing(l) if l.era == era => true,
            _ => return false,
        };
        let old = std::mem::replace(
            &mut *m,
            if closing {
                Membership::Stopped
            } else {
                Membership::Out
            },
        );
        drop(m);
        if let Membership::Live(l) | Membership::Closing(l) = old {
            for s in l.table.values() {
                s.end(Kick::Fenced);
                s.link().take();
            }
        }
        true
    }

    /// SIGTERM: no new clients; each connected one ends with 1001.
    pub fn shutdown(&self) {
        let mut m = lock(&self.m);
        match std::mem::replace(&mut *m, Membership::Stopped) {
            Membership::Live(l) | Membership::Closing(l) => {
                for s in l.table.values() {
                    s.end(Kick::Shutdown);
                }
                *m = Membership::Closing(l);
            }
            Membership::Out | Membership::Stopped => {}
        }
    }

    /// The end: the incarnation to leave, if any; what is left in the
    /// table is let go (its pairings forgotten, so no cycle remains).
    pub fn stop(&self) -> Option<(Arc<str>, u64)> {
        let mut m = lock(&self.m);
        match std::mem::replace(&mut *m, Membership::Stopped) {
            Membership::Live(l) | Membership::Closing(l) => {
                for s in l.table.values() {
                    s.end(Kick::Shutdown);
                    s.link().take();
                }
                Some((l.inc, l.era))
            }
            Membership::Out | Membership::Stopped => None,
        }
    }

    /// Brings the buffered bytes back under the budget, if they passed it,
    /// by ending the clients that hold the most (their connection tasks
    /// release them; peers are told `left`).
    pub fn make_room(&self, budget: &Budget, metrics: &Metrics) {
        if !budget.over() {
            return;
        }
        let m = lock(&self.m);
        let Some(l) = Self::live(&m) else { return };
        let mut holders: Vec<(usize, &Arc<Slot>)> = l
            .table
            .values()
            .filter(|s| s.ended().is_none())
            .filter_map(|s| {
                let held = s.held();
                (held > 0).then_some((held, s))
            })
            .collect();
        holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        let target = budget.target();
        for (_, slot) in holders {
            if budget.used() <= target {
                break;
            }
            metrics.evictions.fetch_add(1, Ordering::Relaxed);
            slot.end(Kick::Evicted);
        }
    }
}
