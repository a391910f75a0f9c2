//! The lease store every face uses: the embedded SQLite store, and for
//! shared networks the etcd steps around it (claim a block when this host's
//! blocks are full, a heartbeat when one is due).
//!
//! One allocator serves both kinds of network: `SqliteStore::reserve` walks
//! the same index in the same transaction, over the whole range for a
//! network of this host alone, over this host's private blocks for a shared
//! one. What only shared networks need happens here, outside that
//! transaction, and only when a claim is marked shared: a network that is
//! not shared makes no etcd call and starts nothing.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;

use super::sqlite::SqliteStore;
use super::{
    lending, shared, Attachment, Claim, IpamError, Lease, LeaseStore, Liveness, Reservation,
};
use crate::config::{Network, NetworkDir};
use crate::deadline::Deadline;

/// Rounds of "claim a block, reserve again" one reservation may take: one
/// block per pooled want is enough unless other hosts race us for each.
const MAX_CLAIM_ROUNDS: usize = 8;

/// An address key held this long with no lease using it (its reservation
/// failed after the borrow) is given up at the next upkeep.
const UNUSED_KEY_S: u64 = 60;

/// Side file in the state directory whose flock makes block claims one at a time.
const CLAIM_LOCK_FILE: &str = "shared.lock";

/// The lease store of one state directory, for the networks of one
/// definitions directory.
pub struct Store {
    local: SqliteStore,
    networks: NetworkDir,
}

impl Store {
    /// Opens `<state_dir>/leases.db` for the networks defined in `networks`.
    pub fn open(state_dir: &Path, networks: &NetworkDir) -> Result<Store, IpamError> {
        Ok(Store {
            local: SqliteStore::open_for(state_dir, networks)?,
            networks: NetworkDir::new(networks.path()),
        })
    }

    /// The embedded store (its own settings and the shared tables).
    pub fn local(&self) -> &SqliteStore {
        &self.local
    }

    /// See [`SqliteStore::on_start_path`].
    pub fn on_start_path(&self) {
        self.local.on_start_path()
    }

    /// See [`SqliteStore::set_deadline`]; bounds the etcd calls too.
    pub fn set_deadline(&self, deadline: Option<Deadline>) {
        self.local.set_deadline(deadline)
    }

    /// See [`SqliteStore::queue_path`].
    pub fn queue_path(&self) -> &Path {
        self.local.queue_path()
    }

    /// The turn to claim blocks for this state directory (an flock on
    /// `shared.lock`, released when the file is dropped), within the
    /// store's deadline.
    fn claim_turn(&self) -> Result<File, IpamError> {
        let path = self
            .local
            .path()
            .parent()
            .unwrap_or(Path::new("."))
            .join(CLAIM_LOCK_FILE);
        let file = crate::secure_fs::private_file(&path)
            .map_err(|e| IpamError::Store(format!("{}: {e}", path.display())))?;
        let started = std::time::Instant::now();
        match crate::deadline::flock_exclusive(file.as_fd(), self.local.deadline()) {
            Ok(true) => Ok(file),
            Ok(false) => Err(IpamError::Waited {
                what: format!("the block claim lock {}", path.display()),
                waited_ms: started.elapsed().as_millis(),
                held_by: crate::locks::held_by(&path),
            }),
            Err(e) => Err(IpamError::Store(format!("lock {}: {e}", path.display()))),
        }
    }

    fn definition(&self, network: &str) -> Result<Network, IpamError> {
        self.networks
            .load(network)
            .map_err(|e| IpamError::Store(format!("network {network}: {e}")))
    }

    /// A heartbeat for each shared network that is due one (every one
    /// with `every_time`); after one that etcd accepted, the blocks queued
    /// for return go back. Failures are returned as lines for the caller to
    /// log (they stop nothing: the fence lasts `hold`).
    pub fn heartbeats(
        &self,
        networks: &[String],
        wait: std::time::Duration,
        every_time: bool,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for name in networks {
            let result = self.definition(name).and_then(|net| {
                let sent = if every_time {
                    shared::heartbeat(&self.local, &net, Deadline::after(wait)).map(|()| true)?
                } else {
                    shared::heartbeat_if_due(&self.local, &net, wait)?
                };
                if sent {
                    lending::delete_keys(&self.local, &net, Deadline::after(wait))?;
                    shared::return_blocks(&self.local, &net, Deadline::after(wait))?;
                }
                Ok(())
            });
            if let Err(e) = result {
                problems.push(e.to_string());
            }
        }
        problems
    }

    /// The upkeep of shared networks (`gc`, and the NRI plugin's etcd
    /// thread): a heartbeat (if due, or `every_time`), then the local blocks
    /// made to agree with etcd and the queued ones returned, within `wait`
    /// each. What was found or failed comes back as lines to log.
    pub fn upkeep(
        &self,
        networks: &[String],
        wait: std::time::Duration,
        every_time: bool,
    ) -> Vec<String> {
        let mut lines = self.heartbeats(networks, wait, every_time);
        for name in networks {
            if let Err(e) = self.upkeep_one(name, wait, &mut lines) {
                lines.push(e.to_string());
            }
        }
        lines
    }

    /// [`Store::upkeep`] of one network, in order: local blocks checked
    /// against etcd, address keys of released or unused addresses deleted,
    /// lending or reclaiming, then empty blocks returned.
    fn upkeep_one(
        &self,
        name: &str,
        wait: std::time::Duration,
        lines: &mut Vec<String>,
    ) -> Result<(), IpamError> {
        let net = self.definition(name)?;
        let until = || Deadline::after(wait);
        lines.extend(shared::reconcile(&self.local, &net, until())?);
        self.local.give_up_unused_keys(name, UNUSED_KEY_S)?;
        let n = lending::delete_keys(&self.local, &net, until())?;
        if n > 0 {
            lines.push(format!(
                "network {name}: {n} released address key(s) deleted in etcd"
            ));
        }
        let done = lending::share_out(&self.local, &net, until())?;
        for (what, blocks) in [
            ("lent to the other hosts", &done.lent),
            (
                "taken back (no other host's address in it)",
                &done.reclaimed,
            ),
            (
                "of a forgotten host freed (its last borrowed address is gone)",
                &done.orphans_freed,
            ),
        ] {
            if !blocks.is_empty() {
                let names: Vec<String> = blocks.iter().map(|b| b.to_string()).collect();
                lines.push(format!(
                    "network {name}: block(s) {} {what}",
                    names.join(", ")
                ));
            }
        }
        let n = shared::return_blocks(&self.local, &net, until())?;
        if n > 0 {
            lines.push(format!(
                "network {name}: {n} empty block(s) returned to etcd"
            ));
        }
        Ok(())
    }

    /// After a release: the address keys of the released addresses are
    /// deleted and the blocks it emptied go back to etcd within
    /// [`shared::HEARTBEAT_WAIT`]; what etcd does not take in time stays
    /// queued for the next heartbeat or `gc`. Nothing to do (the common
    /// case, and always for networks that are not shared) costs nothing.
    fn return_emptied(&self) {
        for name in self.local.take_returning() {
            let until = Deadline::after(shared::HEARTBEAT_WAIT).min(self.local.deadline());
            if let Ok(net) = self.definition(&name) {
                let _ = lending::delete_keys(&self.local, &net, until);
                let _ = shared::return_blocks(&self.local, &net, until);
            }
        }
    }
}

impl LeaseStore for Store {
    fn reserve(
        &self,
        owner: &str,
        netns: &str,
        claims: &[Claim],
        alive: Liveness<'_>,
    ) -> Result<Reservation, IpamError> {
        let mut rounds = 0;
        let mut heartbeat_tried = false;
        let mut claim_turn = None;
        loop {
            match self.local.reserve(owner, netns, claims, &mut *alive) {
                // Blocks are claimed one process at a time, and only by one
                // that still finds no room once it has the turn: parallel
                // attaches must not each claim a block for one address.
                Err(IpamError::NeedsBlock { .. }) if claim_turn.is_none() => {
                    claim_turn = Some(self.claim_turn()?);
                }
                // A block first; with none free, one address of a block
                // another host (or this one) lent.
                Err(IpamError::NeedsBlock { network, ranges }) if rounds < MAX_CLAIM_ROUNDS => {
                    rounds += 1;
                    let net = self.definition(&network)?;
                    let until = self.local.deadline();
                    match shared::claim_block(&self.local, &net, &ranges, until) {
                        Err(IpamError::Exhausted { .. }) => {
                            lending::borrow(&self.local, &net, &ranges, owner, until)?
                        }
                        other => other?,
                    }
                }
                Err(IpamError::NeedsBlock { network, .. }) => {
                    return Err(IpamError::Shared(format!(
                        "network {network}: still no room after claiming {rounds} blocks; try again"
                    )))
                }
                // The fence ended (long without etcd, or a reboot): one
                // heartbeat that etcd accepts renews it, else say why not.
                Err(IpamError::Fenced { network, why }) if !heartbeat_tried => {
                    heartbeat_tried = true;
                    let net = self.definition(&network)?;
                    if let Err(e) = shared::heartbeat(&self.local, &net, self.local.deadline()) {
                        return Err(IpamError::Shared(format!(
                            "{}; {e}",
                            IpamError::Fenced { network, why }
                        )));
                    }
                }
                Ok(r) => {
                    let shared: Vec<String> = claims
                        .iter()
                        .filter(|c| c.shared)
                        .map(|c| c.network.clone())
                        .collect();
                    if !shared.is_empty() {
                        // At most one attach per 30 s pays this round trip;
                        // a failure stops nothing (the fence lasts `hold`).
                        let _ = self.heartbeats(&shared, shared::HEARTBEAT_WAIT, false);
                    }
                    return Ok(r);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn attachments_of(&self, owner: &str) -> Result<Vec<Attachment>, IpamError> {
        self.local.attachments_of(owner)
    }

    fn attachments(&self) -> Result<Vec<Attachment>, IpamError> {
        self.local.attachments()
    }

    fn release_networks(&self, owner: &str, networks: &[String]) -> Result<Vec<Lease>, IpamError> {
        let freed = self.local.release_networks(owner, networks)?;
        self.return_emptied();
        Ok(freed)
    }

    fn release_owner(&self, owner: &str) -> Result<Vec<Lease>, IpamError> {
        let freed = self.local.release_owner(owner)?;
        self.return_emptied();
        Ok(freed)
    }

    fn state_dir(&self) -> Option<std::path::PathBuf> {
        self.local.state_dir()
    }

    fn record_lease(
        &self,
        owner: &str,
        network: &str,
        address: IpAddr,
        prefix_len: u8,
        alive: Liveness<'_>,
    ) -> Result<Lease, IpamError> {
        self.local
            .record_lease(owner, network, address, prefix_len, alive)
    }

    fn release_address(&self, network: &str, address: IpAddr) -> Result<Option<Lease>, IpamError> {
        let freed = self.local.release_address(network, address)?;
        self.return_emptied();
        Ok(freed)
    }

    fn lease_of(&self, network: &str, address: IpAddr) -> Result<Option<Lease>, IpamError> {
        self.local.lease_of(network, address)
    }

    fn leases_of(&self, owner: &str) -> Result<Vec<Lease>, IpamError> {
        self.local.leases_of(owner)
    }

    fn record_vlan(&self, name: &str) -> Result<(), IpamError> {
        self.local.record_vlan(name)
    }

    fn forget_vlan(&self, name: &str) -> Result<(), IpamError> {
        self.local.forget_vlan(name)
    }

    fn vlans(&self) -> Result<Vec<String>, IpamError> {
        self.local.vlans()
    }

    fn deadline(&self) -> Deadline {
        self.local.deadline()
    }

    fn leases(&self, network: Option<&str>) -> Result<Vec<Lease>, IpamError> {
        self.local.leases(network)
    }
}
