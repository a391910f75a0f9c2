//! A model of the multi-host addressing protocol of docs/multi-host.md,
//! checked exhaustively with stateright: no interleaving of hosts claiming,
//! allocating, lending, borrowing, releasing, returning, heartbeating,
//! losing etcd or its answers, and being forgotten (while still running)
//! hands out one address twice.
//!
//! The model follows the document's transactions step by step (section
//! "Transactions"); each etcd transaction is one atomic step, a host's local
//! store change another. Revisions are modelled by the values they protect
//! (a block's owner and mode; whether a host's epoch is current), which is
//! what the compares check. Every etcd step is optional, so a host that
//! cannot reach etcd, or that crashed (its local store survives, its
//! containers' leases are released), is a host that takes no such step or
//! releases: no separate crash action is needed. Time appears only as the
//! document's timing assumption: a host's alive key (etcd lease) expires no
//! earlier than the host's own local fence (`Action::Expire`).
//!
//! States are explored up to renaming hosts, reordering blocks and
//! reordering addresses inside a block (`State::canonical`): the protocol
//! and every property treat them alike.
//!
//! Besides the protocol, each flawed variant (a compare left out, a step
//! skipped, `host forget` used against its preconditions) must make the
//! checker find a duplicate: the check is not vacuous.

use std::time::Instant;

use stateright::{Checker, Model, Property};

/// A deliberate flaw, to show the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Flaw {
    None,
    /// Claim a block without comparing that it is free.
    ClaimWithoutCompare,
    /// Borrow without comparing that the block is (still) shared.
    BorrowWithoutBlockCompare,
    /// Lend a block without publishing the owner's addresses in it.
    LendWithoutPublishing,
    /// A heartbeat that does not compare the host's epoch (no fence against
    /// a forgotten host coming back).
    HeartbeatWithoutEpoch,
    /// `host forget --force` while the host's alive key is fresh.
    ForgetWhileFresh,
    /// `host forget` of a host whose containers still hold addresses.
    ForgetWithContainers,
    /// Reclaim a shared block without checking for borrowed addresses.
    ReclaimIgnoringBorrows,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Block {
    /// No key: anyone may claim it.
    Free,
    /// Claimed by a host (at an epoch). `shared`: every address in use in it
    /// has an address key, and anyone allocates in it through those keys.
    Owned { host: u8, epoch: u8, shared: bool },
    /// A forgotten host's shared block that still has borrowed addresses:
    /// shared, with no owner until someone adopts it.
    Orphan,
}

/// A host's own record of a block, in its local store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Local {
    None,
    /// Mine alone: local allocation, no etcd call.
    Private,
    /// About to be lent: no local allocation (the lend transaction follows).
    Lending,
    /// Lent: allocation in it only through address keys.
    Shared,
    /// Empty, to be returned: no allocation.
    Returning,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Host {
    /// etcd answers it (always, unless the model has outages).
    reach: bool,
    /// The epoch it believes its host key has (`None`: not joined).
    epoch: Option<u8>,
    /// Local allocation allowed (a heartbeat went through recently enough).
    fence: bool,
    local: Vec<Local>,
    /// Addresses held by its containers, allocated locally in private blocks.
    held_local: u32,
    /// Addresses held by its containers through address keys.
    held_key: u32,
    /// Addresses released whose address key is still to be deleted.
    pending: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct State {
    // etcd
    host_key: Vec<Option<u8>>,
    alive: Vec<bool>,
    blocks: Vec<Block>,
    addr_key: Vec<Option<u8>>,
    // the hosts
    hosts: Vec<Host>,
    /// Some host was forgotten (history, for a reachability property).
    forgot: bool,
}

impl State {
    /// The same state with host `i` renamed `perm[i]`.
    fn renamed(&self, perm: &[u8]) -> State {
        let mut s = self.clone();
        for (i, &j) in perm.iter().enumerate() {
            let j = j as usize;
            s.host_key[j] = self.host_key[i];
            s.alive[j] = self.alive[i];
            s.hosts[j] = self.hosts[i].clone();
        }
        for b in s.blocks.iter_mut() {
            if let Block::Owned { host, .. } = b {
                *host = perm[*host as usize];
            }
        }
        for k in s.addr_key.iter_mut().flatten() {
            *k = perm[*k as usize];
        }
        s
    }
}

/// One block as seen from everywhere: etcd's record, each host's local
/// record, and per address (etcd key holder, what each host has of it).
type BlockView = (Block, Vec<Local>, Vec<(Option<u8>, Vec<u8>)>);

impl State {
    /// The block `b` with its addresses sorted (addresses of a block are
    /// interchangeable).
    fn block_view(&self, b: usize, per_block: usize) -> BlockView {
        let locals = self.hosts.iter().map(|h| h.local[b]).collect();
        let mut addrs: Vec<(Option<u8>, Vec<u8>)> = (0..per_block)
            .map(|i| {
                let a = b * per_block + i;
                let what = self
                    .hosts
                    .iter()
                    .map(|h| {
                        let m = 1u32 << a;
                        u8::from(h.held_local & m != 0)
                            | u8::from(h.held_key & m != 0) << 1
                            | u8::from(h.pending & m != 0) << 2
                    })
                    .collect();
                (self.addr_key[a], what)
            })
            .collect();
        addrs.sort();
        (self.blocks[b], locals, addrs)
    }

    /// The state rebuilt from block views, in their order.
    fn with_views(&self, views: &[BlockView], per_block: usize) -> State {
        let mut s = self.clone();
        for h in s.hosts.iter_mut() {
            h.held_local = 0;
            h.held_key = 0;
            h.pending = 0;
        }
        for (b, (block, locals, addrs)) in views.iter().enumerate() {
            s.blocks[b] = *block;
            for (h, l) in locals.iter().enumerate() {
                s.hosts[h].local[b] = *l;
            }
            for (i, (key, what)) in addrs.iter().enumerate() {
                let a = b * per_block + i;
                s.addr_key[a] = *key;
                for (h, w) in what.iter().enumerate() {
                    let m = 1u32 << a;
                    let hs = &mut s.hosts[h];
                    if w & 1 != 0 {
                        hs.held_local |= m;
                    }
                    if w & 2 != 0 {
                        hs.held_key |= m;
                    }
                    if w & 4 != 0 {
                        hs.pending |= m;
                    }
                }
            }
        }
        s
    }

    /// The representative of the state's class under renaming hosts,
    /// reordering blocks and reordering addresses inside a block: the model
    /// treats all of them alike, and so does every property.
    fn canonical(&self, per_block: usize) -> State {
        let perms: &[&[u8]] = match self.hosts.len() {
            2 => &[&[0, 1], &[1, 0]],
            3 => &[
                &[0, 1, 2],
                &[0, 2, 1],
                &[1, 0, 2],
                &[1, 2, 0],
                &[2, 0, 1],
                &[2, 1, 0],
            ],
            _ => &[&[0]],
        };
        perms
            .iter()
            .map(|p| {
                let r = self.renamed(p);
                let mut views: Vec<BlockView> = (0..r.blocks.len())
                    .map(|b| r.block_view(b, per_block))
                    .collect();
                views.sort();
                r.with_views(&views, per_block)
            })
            .min()
            .expect("at least one host")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Action {
    Join(u8),
    /// Claim; `recorded` false: the answer was lost, nothing recorded locally.
    Claim(u8, u8, bool),
    AllocLocal(u8, u8),
    ReleaseLocal(u8, u8),
    MarkLending(u8, u8),
    Lend(u8, u8),
    RevertLending(u8, u8),
    /// Allocate through an address key (own shared block, or borrow).
    AllocKey(u8, u8),
    ReleaseKey(u8, u8),
    Flush(u8, u8),
    Reclaim(u8, u8),
    MarkReturning(u8, u8),
    Return(u8, u8),
    Reconcile(u8),
    Adopt(u8, u8),
    /// An orphan block whose last borrowed key is gone becomes free again.
    FreeOrphan(u8, u8),
    Heartbeat(u8),
    Expire(u8),
    Forget(u8),
    Partition(u8),
    Heal(u8),
}

#[derive(Debug, Clone)]
struct Protocol {
    hosts: u8,
    blocks: u8,
    per_block: u8,
    /// Whether etcd can become unreachable for a host: every etcd step is
    /// already optional (a host may just not take it), so this adds no
    /// behaviour; it is there to show it.
    outages: bool,
    /// Explore one state per class of renamings (see `State::canonical`).
    symmetry: bool,
    flaw: Flaw,
}

impl Protocol {
    fn addrs(&self) -> u8 {
        self.blocks * self.per_block
    }

    fn block_of(&self, a: u8) -> usize {
        (a / self.per_block) as usize
    }

    fn block_mask(&self, b: u8) -> u32 {
        let ones = (1u32 << self.per_block) - 1;
        ones << (b * self.per_block)
    }

    /// The host's epoch if etcd still has it (what every transaction compares).
    fn current(&self, s: &State, h: usize) -> Option<u8> {
        let e = s.hosts[h].epoch?;
        (s.host_key[h] == Some(e)).then_some(e)
    }
}

/// Every join's epoch. Epochs differ in etcd (create revisions), but the
/// model needs only one value: a host's belief and its key can disagree only
/// after a forget deleted the key, and the key is re-created only by the
/// host's next join, which needs the host to have learned it was forgotten
/// (dropped its belief) first. So "the host's epoch is current" is exactly
/// "the host has an epoch and its key exists", whatever the numbers.
const EPOCH: u8 = 1;

fn bit(a: u8) -> u32 {
    1 << a
}

impl Model for Protocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let host = Host {
            reach: true,
            epoch: None,
            fence: false,
            local: vec![Local::None; self.blocks as usize],
            held_local: 0,
            held_key: 0,
            pending: 0,
        };
        vec![State {
            host_key: vec![None; self.hosts as usize],
            alive: vec![false; self.hosts as usize],
            blocks: vec![Block::Free; self.blocks as usize],
            addr_key: vec![None; self.addrs() as usize],
            hosts: vec![host; self.hosts as usize],
            forgot: false,
        }]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        for h in 0..self.hosts {
            let hs = &s.hosts[h as usize];
            out.push(Action::Forget(h));
            out.push(Action::Expire(h));
            if self.outages {
                out.push(if hs.reach {
                    Action::Partition(h)
                } else {
                    Action::Heal(h)
                });
            }
            out.push(Action::Join(h));
            out.push(Action::Heartbeat(h));
            out.push(Action::Reconcile(h));
            for b in 0..self.blocks {
                out.push(Action::Claim(h, b, true));
                out.push(Action::Claim(h, b, false));
                out.push(Action::MarkLending(h, b));
                out.push(Action::Lend(h, b));
                out.push(Action::RevertLending(h, b));
                out.push(Action::Reclaim(h, b));
                out.push(Action::MarkReturning(h, b));
                out.push(Action::Return(h, b));
                out.push(Action::Adopt(h, b));
                out.push(Action::FreeOrphan(h, b));
            }
            for a in 0..self.addrs() {
                out.push(Action::AllocLocal(h, a));
                out.push(Action::ReleaseLocal(h, a));
                out.push(Action::AllocKey(h, a));
                out.push(Action::ReleaseKey(h, a));
                out.push(Action::Flush(h, a));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        let flaw = self.flaw;
        match action {
            Action::Join(h) => {
                let h = h as usize;
                let hs = &s.hosts[h];
                // txn: compare host key absent; put host key (its create
                // revision is the epoch), put alive key on a fresh lease.
                if !hs.reach || hs.epoch.is_some() || s.host_key[h].is_some() {
                    return None;
                }
                let hs = &mut s.hosts[h];
                hs.epoch = Some(EPOCH);
                hs.fence = true;
                hs.local.iter_mut().for_each(|l| *l = Local::None);
                s.host_key[h] = Some(EPOCH);
                s.alive[h] = true;
            }
            Action::Claim(h, b, recorded) => {
                let (h, b) = (h as usize, b as usize);
                let e = self.current(&s, h)?;
                if !s.hosts[h].reach || s.hosts[h].local[b] != Local::None {
                    return None;
                }
                // txn: compare block key absent, host key created at epoch.
                let free = match flaw {
                    Flaw::ClaimWithoutCompare => {
                        !matches!(s.blocks[b], Block::Owned { host, .. } if host as usize == h)
                    }
                    _ => s.blocks[b] == Block::Free,
                };
                if !free {
                    return None;
                }
                s.blocks[b] = Block::Owned {
                    host: h as u8,
                    epoch: e,
                    shared: false,
                };
                if recorded {
                    s.hosts[h].local[b] = Local::Private;
                }
            }
            Action::AllocLocal(h, a) => {
                let hs = &mut s.hosts[h as usize];
                let held = hs.held_local | hs.held_key | hs.pending;
                // No etcd: the local store's own transaction only.
                if !hs.fence
                    || hs.epoch.is_none()
                    || hs.local[self.block_of(a)] != Local::Private
                    || held & bit(a) != 0
                {
                    return None;
                }
                hs.held_local |= bit(a);
            }
            Action::ReleaseLocal(h, a) => {
                let hs = &mut s.hosts[h as usize];
                if hs.held_local & bit(a) == 0 {
                    return None;
                }
                hs.held_local &= !bit(a);
            }
            Action::MarkLending(h, b) => {
                let l = &mut s.hosts[h as usize].local[b as usize];
                if *l != Local::Private {
                    return None;
                }
                *l = Local::Lending;
            }
            Action::Lend(h, b) => {
                let (h, b) = (h as usize, b as usize);
                let e = self.current(&s, h)?;
                if !s.hosts[h].reach || s.hosts[h].local[b] != Local::Lending {
                    return None;
                }
                // txn: compare block mod revision (mine, private), host epoch;
                // put block shared + one address key per local lease in it.
                let mine = Block::Owned {
                    host: h as u8,
                    epoch: e,
                    shared: false,
                };
                if s.blocks[b] != mine {
                    return None;
                }
                s.blocks[b] = Block::Owned {
                    host: h as u8,
                    epoch: e,
                    shared: true,
                };
                let inside = s.hosts[h].held_local & self.block_mask(b as u8);
                if flaw != Flaw::LendWithoutPublishing {
                    for a in 0..self.addrs() {
                        if inside & bit(a) != 0 {
                            s.addr_key[a as usize] = Some(h as u8);
                        }
                    }
                    s.hosts[h].held_local &= !inside;
                    s.hosts[h].held_key |= inside;
                }
                s.hosts[h].local[b] = Local::Shared;
            }
            Action::RevertLending(h, b) => {
                let (h, b) = (h as usize, b as usize);
                let e = self.current(&s, h)?;
                // Read back: the lend did not happen, the block is still
                // mine and private: local allocation may resume.
                let mine = Block::Owned {
                    host: h as u8,
                    epoch: e,
                    shared: false,
                };
                if !s.hosts[h].reach || s.hosts[h].local[b] != Local::Lending || s.blocks[b] != mine
                {
                    return None;
                }
                s.hosts[h].local[b] = Local::Private;
            }
            Action::AllocKey(h, a) => {
                let h = h as usize;
                self.current(&s, h)?;
                let hs = &s.hosts[h];
                let held = hs.held_local | hs.held_key | hs.pending;
                if !hs.reach || held & bit(a) != 0 {
                    return None;
                }
                // txn: compare block mod revision as read (shared), address
                // key absent, host epoch; put address key.
                let block_ok = matches!(
                    (flaw, s.blocks[self.block_of(a)]),
                    (_, Block::Owned { shared: true, .. } | Block::Orphan)
                        | (Flaw::BorrowWithoutBlockCompare, Block::Owned { .. })
                );
                if !block_ok || s.addr_key[a as usize].is_some() {
                    return None;
                }
                s.addr_key[a as usize] = Some(h as u8);
                s.hosts[h].held_key |= bit(a);
            }
            Action::ReleaseKey(h, a) => {
                // Local release; the key is deleted by Flush (now or later).
                let hs = &mut s.hosts[h as usize];
                if hs.held_key & bit(a) == 0 {
                    return None;
                }
                hs.held_key &= !bit(a);
                hs.pending |= bit(a);
            }
            Action::Flush(h, a) => {
                let hu = h as usize;
                let hs = &s.hosts[hu];
                if !hs.reach || hs.pending & bit(a) == 0 {
                    return None;
                }
                // txn: compare the key's create revision (the one I made);
                // delete it. Gone already (forget): nothing to do.
                if s.addr_key[a as usize] == Some(h) {
                    s.addr_key[a as usize] = None;
                }
                s.hosts[hu].pending &= !bit(a);
            }
            Action::Reclaim(h, b) => {
                let (hu, bu) = (h as usize, b as usize);
                let e = self.current(&s, hu)?;
                let mine = Block::Owned {
                    host: h,
                    epoch: e,
                    shared: true,
                };
                if !s.hosts[hu].reach
                    || s.hosts[hu].local[bu] != Local::Shared
                    || s.blocks[bu] != mine
                {
                    return None;
                }
                // Read the block's address keys at revision R; all mine. txn:
                // compare block mod revision, no address key of the block
                // changed since R; delete them, put block private.
                let mask = self.block_mask(b);
                let foreign = (0..self.addrs())
                    .filter(|a| mask & bit(*a) != 0)
                    .any(|a| matches!(s.addr_key[a as usize], Some(o) if o != h));
                if foreign && flaw != Flaw::ReclaimIgnoringBorrows {
                    return None;
                }
                for a in 0..self.addrs() {
                    if mask & bit(a) != 0 && s.addr_key[a as usize] == Some(h) {
                        s.addr_key[a as usize] = None;
                    }
                }
                s.blocks[bu] = Block::Owned {
                    host: h,
                    epoch: e,
                    shared: false,
                };
                let hs = &mut s.hosts[hu];
                let mine_held = hs.held_key & mask;
                hs.held_key &= !mine_held;
                hs.held_local |= mine_held;
                hs.pending &= !mask;
                hs.local[bu] = Local::Private;
            }
            Action::MarkReturning(h, b) => {
                let hs = &mut s.hosts[h as usize];
                if hs.local[b as usize] != Local::Private || hs.held_local & self.block_mask(b) != 0
                {
                    return None;
                }
                hs.local[b as usize] = Local::Returning;
            }
            Action::Return(h, b) => {
                let (hu, bu) = (h as usize, b as usize);
                let e = self.current(&s, hu)?;
                if !s.hosts[hu].reach || s.hosts[hu].local[bu] != Local::Returning {
                    return None;
                }
                // txn: compare block mod revision (mine, private), host epoch; delete.
                let mine = Block::Owned {
                    host: h,
                    epoch: e,
                    shared: false,
                };
                if s.blocks[bu] != mine {
                    return None;
                }
                s.blocks[bu] = Block::Free;
                s.hosts[hu].local[bu] = Local::None;
            }
            Action::Reconcile(h) => {
                let hu = h as usize;
                let e = self.current(&s, hu)?;
                if !s.hosts[hu].reach {
                    return None;
                }
                // Read my blocks; adopt a claim whose answer was lost (never
                // used locally, so empty); forget a return that went through.
                let mut changed = false;
                for b in 0..self.blocks as usize {
                    let mine_private = Block::Owned {
                        host: h,
                        epoch: e,
                        shared: false,
                    };
                    let local = s.hosts[hu].local[b];
                    if local == Local::None && s.blocks[b] == mine_private {
                        s.hosts[hu].local[b] = Local::Private;
                        changed = true;
                    } else if local == Local::Returning && s.blocks[b] != mine_private {
                        s.hosts[hu].local[b] = Local::None;
                        changed = true;
                    }
                }
                if !changed {
                    return None;
                }
            }
            Action::FreeOrphan(h, b) => {
                let bu = b as usize;
                if !s.hosts[h as usize].reach {
                    return None;
                }
                // txn: compare block mod revision (orphan) and
                // prefix_empty(P/addrs/B/); delete the block key.
                let keys = (0..self.per_block)
                    .any(|i| s.addr_key[(b * self.per_block + i) as usize].is_some());
                if s.blocks[bu] != Block::Orphan || keys {
                    return None;
                }
                s.blocks[bu] = Block::Free;
            }
            Action::Adopt(h, b) => {
                let (hu, bu) = (h as usize, b as usize);
                let e = self.current(&s, hu)?;
                if !s.hosts[hu].reach || s.hosts[hu].local[bu] != Local::None {
                    return None;
                }
                // txn: compare block mod revision (orphan), host epoch; put
                // block owned by me, still shared.
                if s.blocks[bu] != Block::Orphan {
                    return None;
                }
                s.blocks[bu] = Block::Owned {
                    host: h,
                    epoch: e,
                    shared: true,
                };
                s.hosts[hu].local[bu] = Local::Shared;
            }
            Action::Heartbeat(h) => {
                let hu = h as usize;
                let hs = &s.hosts[hu];
                let e = hs.epoch?;
                if !hs.reach {
                    return None;
                }
                // txn: compare host key created at epoch; put heartbeat,
                // alive key (lease). On failure the host learns it was
                // forgotten: its blocks are no longer its own.
                if s.host_key[hu] == Some(e) || flaw == Flaw::HeartbeatWithoutEpoch {
                    if s.hosts[hu].fence && s.alive[hu] {
                        return None; // no change
                    }
                    s.hosts[hu].fence = true;
                    s.alive[hu] = true;
                } else {
                    let hs = &mut s.hosts[hu];
                    hs.epoch = None;
                    hs.fence = false;
                    hs.local.iter_mut().for_each(|l| *l = Local::None);
                }
            }
            Action::Expire(h) => {
                let hu = h as usize;
                // Time passes with no accepted heartbeat: the host's fence
                // ends, then its alive key (etcd's clock) expires. Both in
                // one step: the state in between only forbids local
                // allocation, so merging it allows more behaviours, not fewer.
                if !s.hosts[hu].fence && !s.alive[hu] {
                    return None;
                }
                s.hosts[hu].fence = false;
                s.alive[hu] = false;
            }
            Action::Forget(h) => {
                let hu = h as usize;
                s.host_key[hu]?;
                // Refused while the alive key exists (unless --force); and the
                // operator's word that the host's containers hold nothing.
                if s.alive[hu] && flaw != Flaw::ForgetWhileFresh {
                    return None;
                }
                let hs = &s.hosts[hu];
                if hs.held_local | hs.held_key != 0 && flaw != Flaw::ForgetWithContainers {
                    return None;
                }
                // txn: compare host key mod revision and each block's as read;
                // delete host key, alive key, its address keys; its private
                // blocks; its shared blocks, or orphan those with borrows.
                s.host_key[hu] = None;
                s.alive[hu] = false;
                s.forgot = true;
                for k in s.addr_key.iter_mut() {
                    if *k == Some(h) {
                        *k = None;
                    }
                }
                for b in 0..self.blocks {
                    if let Block::Owned { host, shared, .. } = s.blocks[b as usize] {
                        if host != h {
                            continue;
                        }
                        let mask = self.block_mask(b);
                        let borrowed = (0..self.addrs())
                            .any(|a| mask & bit(a) != 0 && s.addr_key[a as usize].is_some());
                        s.blocks[b as usize] = if shared && borrowed {
                            Block::Orphan
                        } else {
                            Block::Free
                        };
                    }
                }
            }
            Action::Partition(h) => s.hosts[h as usize].reach = false,
            Action::Heal(h) => s.hosts[h as usize].reach = true,
        }
        if self.symmetry {
            return Some(s.canonical(self.per_block as usize));
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no address has two holders", |_, s: &State| {
                let mut seen = 0u32;
                for h in &s.hosts {
                    let held = h.held_local | h.held_key;
                    if seen & held != 0 {
                        return false;
                    }
                    seen |= held;
                }
                true
            }),
            Property::sometimes("every address is held", |m: &Protocol, s: &State| {
                let all = (1u32 << m.addrs()) - 1;
                s.hosts
                    .iter()
                    .fold(0, |acc, h| acc | h.held_local | h.held_key)
                    == all
            }),
            Property::sometimes(
                "an address borrowed from another host's block",
                |m: &Protocol, s: &State| {
                    s.hosts.iter().enumerate().any(|(h, hs)| {
                        (0..m.addrs()).any(|a| {
                            hs.held_key & bit(a) != 0
                                && matches!(s.blocks[m.block_of(a)],
                                    Block::Owned { host, .. } if host as usize != h)
                        })
                    })
                },
            ),
            Property::sometimes(
                "after a forget, every address is held again",
                |m: &Protocol, s: &State| {
                    let all = (1u32 << m.addrs()) - 1;
                    s.forgot
                        && s.hosts
                            .iter()
                            .fold(0, |acc, h| acc | h.held_local | h.held_key)
                            == all
                },
            ),
            Property::sometimes("a borrowed address outlived its lender", |_, s: &State| {
                s.blocks.contains(&Block::Orphan)
            }),
        ]
    }
}

fn protocol(hosts: u8, blocks: u8, per_block: u8, flaw: Flaw) -> Protocol {
    Protocol {
        hosts,
        blocks,
        per_block,
        outages: false,
        symmetry: false,
        flaw,
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs the checker over every state (up to `depth` steps when given, else
/// all reachable ones); asserts every property.
fn check_sound(mut p: Protocol, outages: bool, depth: Option<usize>) {
    p.outages = outages;
    p.symmetry = true;
    let start = Instant::now();
    let label = format!(
        "{} hosts, {} blocks of {}{}",
        p.hosts,
        p.blocks,
        p.per_block,
        if outages { ", etcd outages" } else { "" }
    );
    let mut builder = p.checker().threads(threads());
    if let Some(d) = depth {
        builder = builder.target_max_depth(d);
    }
    let checker = builder.spawn_bfs().join();
    eprintln!(
        "{label}: {} states ({} unique up to symmetry), depth {}, {:?}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        start.elapsed()
    );
    checker.assert_properties();
}

/// Runs the checker on a flawed protocol (2 hosts, 2 blocks of 2, no
/// symmetry reduction so the path reads as it happened); asserts it finds a
/// duplicate.
fn check_finds_duplicate(flaw: Flaw) {
    let p = protocol(2, 2, 2, flaw);
    let start = Instant::now();
    let checker = p.checker().threads(threads()).spawn_bfs().join();
    let path = checker.assert_any_discovery("no address has two holders");
    let actions = path.into_actions();
    eprintln!(
        "{flaw:?}: duplicate after {} steps ({:?}): {actions:?}",
        actions.len(),
        start.elapsed()
    );
}

/// Every reachable state of two hosts sharing two blocks of two addresses.
#[test]
fn two_hosts_two_blocks_of_two_never_share_an_address() {
    check_sound(protocol(2, 2, 2, Flaw::None), false, None);
}

/// The same with explicit etcd outages per host, on blocks of one address.
#[test]
fn two_hosts_with_etcd_outages_never_share_an_address() {
    check_sound(protocol(2, 2, 1, Flaw::None), true, None);
}

/// Three hosts on two blocks of one address, every interleaving of up to
/// 16 steps (the whole space takes minutes).
#[test]
fn three_hosts_never_share_an_address_within_16_steps() {
    check_sound(protocol(3, 2, 1, Flaw::None), false, Some(16));
}

#[test]
fn the_checker_catches_a_claim_without_compare() {
    check_finds_duplicate(Flaw::ClaimWithoutCompare);
}

#[test]
fn the_checker_catches_a_borrow_without_block_compare() {
    check_finds_duplicate(Flaw::BorrowWithoutBlockCompare);
}

#[test]
fn the_checker_catches_a_lend_that_does_not_publish() {
    check_finds_duplicate(Flaw::LendWithoutPublishing);
}

#[test]
fn the_checker_catches_a_reclaim_ignoring_borrows() {
    check_finds_duplicate(Flaw::ReclaimIgnoringBorrows);
}

#[test]
fn the_checker_catches_a_heartbeat_without_epoch_fence() {
    check_finds_duplicate(Flaw::HeartbeatWithoutEpoch);
}

/// Why `host forget` refuses while the heartbeat is fresh.
#[test]
fn forget_while_fresh_can_duplicate() {
    check_finds_duplicate(Flaw::ForgetWhileFresh);
}

/// Why `host forget` is the operator's word that the host's containers are
/// gone: no protocol protects addresses still on the wire.
#[test]
fn forget_of_a_host_with_containers_can_duplicate() {
    check_finds_duplicate(Flaw::ForgetWithContainers);
}
