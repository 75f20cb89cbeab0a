//! What a cluster node holds for its own clients: which incarnation it is
//! now, and the table of its connections (by connection number), each a
//! [`Slot`] with its outbox and its cached pairing.
//!
//! The table belongs to one incarnation: fencing drains it (every client
//! closed with 1013), and a new incarnation starts empty. Its lock is the
//! table lock of the slots' lock order (table → `link` → `out`, see
//! `directory::slot`); nothing awaits under it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::directory::policy::Clients;
use crate::directory::slot::{Kick, Slot, lock};
use crate::directory::{Peer, Refusal};

/// One incarnation's clients.
pub struct Live {
    inc: Arc<str>,
    inc_no: u64,
    table: HashMap<u64, Arc<Slot>>,
}

impl Live {
    /// The client on connection `conn`, if it is `id`.
    pub fn get(&self, conn: u64, id: &str) -> Option<&Arc<Slot>> {
        self.table.get(&conn).filter(|s| **s.id() == *id)
    }

    /// The incarnation's name.
    pub fn inc(&self) -> &str {
        &self.inc
    }

    /// The shared policies' view of these clients.
    pub fn view(&self) -> View<'_> {
        View(self)
    }
}

/// How a cluster node drops a client for the shared policies: it is ended,
/// and its connection task releases it in Redis at once, which tells its
/// peer wherever that is. The pairing cached here changes only in Redis's
/// order, so it is not touched now.
fn drop_client(slot: &Slot, why: Kick) {
    slot.end(why);
}

/// One incarnation's clients, while its table is locked by the caller.
pub struct View<'a>(&'a Live);

impl Clients for View<'_> {
    fn each(&self, f: &mut dyn FnMut(&Arc<Slot>)) {
        self.0.table.values().for_each(f);
    }

    fn drop_client(&mut self, slot: &Arc<Slot>, why: Kick) {
        drop_client(slot, why);
    }
}

/// The table, locked.
pub struct Table<'a>(MutexGuard<'a, Membership>);

impl Clients for Table<'_> {
    fn each(&self, f: &mut dyn FnMut(&Arc<Slot>)) {
        if let Some(l) = Local::live(&self.0) {
            l.table.values().for_each(f);
        }
    }

    fn drop_client(&mut self, slot: &Arc<Slot>, why: Kick) {
        drop_client(slot, why);
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
    last_inc_no: Mutex<u64>,
}

impl Local {
    pub fn new() -> Local {
        Local {
            m: Mutex::new(Membership::Out),
            last_inc_no: Mutex::new(0),
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

    /// A new incarnation starts (only from `Out`); its number.
    pub fn begin(&self, inc: Arc<str>) -> Option<u64> {
        let mut m = lock(&self.m);
        if !matches!(*m, Membership::Out) {
            return None;
        }
        let mut last = lock(&self.last_inc_no);
        *last += 1;
        *m = Membership::Live(Live {
            inc,
            inc_no: *last,
            table: HashMap::new(),
        });
        Some(*last)
    }

    pub fn is_live(&self) -> bool {
        matches!(*lock(&self.m), Membership::Live(_))
    }

    pub fn is_stopped(&self) -> bool {
        matches!(*lock(&self.m), Membership::Stopped)
    }

    pub fn is_current(&self, inc_no: u64) -> bool {
        Self::live(&lock(&self.m)).is_some_and(|l| l.inc_no == inc_no)
    }

    /// Whether the node is live (taking clients), and its incarnation.
    pub fn incarnation(&self) -> (bool, Option<Arc<str>>) {
        let m = lock(&self.m);
        (
            matches!(*m, Membership::Live(_)),
            Self::live(&m).map(|l| l.inc.clone()),
        )
    }

    /// The incarnation's name and number while it has clients to serve.
    pub fn current(&self) -> Option<(Arc<str>, u64)> {
        Self::live(&lock(&self.m)).map(|l| (l.inc.clone(), l.inc_no))
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
                Some(Peer::Elsewhere(_)) => remote += 1,
                Some(Peer::Here(_)) => local += 1,
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
                l.table.insert(slot.conn(), slot.clone());
                Ok((l.inc.clone(), l.inc_no, room))
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
        match l.table.get(&slot.conn()) {
            Some(s) if Arc::ptr_eq(s, slot) => {
                l.table.remove(&slot.conn());
                Some((l.inc.clone(), l.inc_no))
            }
            _ => None,
        }
    }

    /// The incarnation `slot` is a client of, if it still is.
    pub fn owner(&self, slot: &Arc<Slot>) -> Option<(Arc<str>, u64)> {
        let m = lock(&self.m);
        let l = Self::live(&m)?;
        l.table
            .get(&slot.conn())
            .filter(|s| Arc::ptr_eq(s, slot))
            .map(|_| (l.inc.clone(), l.inc_no))
    }

    /// Runs `f` on incarnation `inc_no`'s clients, if it is still current.
    pub fn apply<R>(&self, inc_no: u64, f: impl FnOnce(&Live) -> R) -> Option<R> {
        let m = lock(&self.m);
        Self::live(&m).filter(|l| l.inc_no == inc_no).map(f)
    }

    /// Fences incarnation `inc_no`: every client closed (1013), no notices,
    /// pairings forgotten. Whether it was current.
    pub fn fence(&self, inc_no: u64) -> bool {
        let mut m = lock(&self.m);
        let closing = match &*m {
            Membership::Live(l) if l.inc_no == inc_no => false,
            Membership::Closing(l) if l.inc_no == inc_no => true,
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
                s.end(Kick::Unavailable);
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
                Some((l.inc, l.inc_no))
            }
            Membership::Out | Membership::Stopped => None,
        }
    }

    /// The table, locked, for the shared policies (see [`Table`]).
    pub fn table(&self) -> Table<'_> {
        Table(lock(&self.m))
    }
}
