//! The local side of shared networks (docs/multi-host.md): this host's
//! membership of each shared network (`shared`) and the blocks etcd gave it
//! (`shared_blocks`).
//!
//! A pooled allocation on a shared network runs in the same transaction as
//! any other and walks the same index, only bounded to this host's private
//! blocks, and only while the host's fence holds. A block row is written
//! only after etcd said the block is this host's, so every address handed
//! out here lies in a block no other host may allocate in.

use std::net::IpAddr;

use ipnet::IpNet;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::{allocate as allocate_in, db, key_of, key_of_addr, now, Commit, SqliteStore};
use crate::ipam::pool::addr_to_u128;
use crate::ipam::shared::{boot_id, boottime_ns};
use crate::ipam::{IpamError, PoolRange};

const MEMBER: &str = "member";
const FORGOTTEN: &str = "forgotten";
const PRIVATE: &str = "private";
/// A block on its way back to etcd: nothing is allocated in it, and the
/// row stays until etcd has deleted the block key (the row is the queue).
pub const RETURNING: &str = "returning";
/// A private block being lent: no local allocation until etcd answered.
const LENDING: &str = "lending";
/// A block this host owns and has lent: allocation in it, by anyone, only
/// through address keys.
pub const SHARED: &str = "shared";
/// An address key this host holds in etcd; a lease may use its address.
const HELD: &str = "held";
/// An address key whose address left this host: to be deleted in etcd.
const DELETING: &str = "deleting";

/// This host's membership of one shared network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedState {
    pub network: String,
    /// The etcd endpoints it joined through, comma-separated.
    pub endpoints: String,
    pub host: String,
    /// `create_revision` of `P/hosts/HOST`: compared by every transaction.
    pub epoch: i64,
    /// The etcd lease of `P/alive/HOST`.
    pub lease: i64,
    pub hold_s: u64,
    /// CLOCK_BOOTTIME (ns) until which local allocation is allowed.
    pub fence_until: u64,
    /// The boot `fence_until` was read in: another boot has no fence.
    pub boot_id: String,
    /// Unix seconds of the last heartbeat etcd accepted (or of the join).
    pub heartbeat: u64,
    /// `host forget` removed this host: it allocates nothing more here.
    pub forgotten: bool,
}

/// One block of this host and how many of its addresses are leased here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockFill {
    pub block: IpNet,
    pub state: String,
    /// `mod_revision` of `P/blocks/BLOCK` as this host wrote it.
    pub revision: i64,
    pub used: u64,
}

fn read_state(conn: &Connection, network: &str) -> Result<Option<SharedState>, IpamError> {
    conn.prepare_cached(
        "SELECT endpoints, host, epoch, lease, hold_s, fence_until, boot_id, heartbeat, state
         FROM shared WHERE network = ?1",
    )
    .and_then(|mut s| {
        s.query_row([network], |r| {
            Ok(SharedState {
                network: network.to_string(),
                endpoints: r.get(0)?,
                host: r.get(1)?,
                epoch: r.get(2)?,
                lease: r.get(3)?,
                hold_s: r.get::<_, i64>(4)?.max(0) as u64,
                fence_until: r.get::<_, i64>(5)?.max(0) as u64,
                boot_id: r.get(6)?,
                heartbeat: r.get::<_, i64>(7)?.max(0) as u64,
                forgotten: r.get::<_, String>(8)? == FORGOTTEN,
            })
        })
        .optional()
    })
    .map_err(db)
}

/// Refuses local allocation on a shared network unless this host is a
/// member whose fence holds (a heartbeat accepted within `hold`, this boot).
pub(super) fn check_fence(tx: &Transaction<'_>, network: &str) -> Result<(), IpamError> {
    let Some(st) = read_state(tx, network)? else {
        return Err(IpamError::Shared(format!(
            "network {network} is shared but this host has not joined it (netattach network join)"
        )));
    };
    if st.forgotten {
        return Err(forgotten_error(network, &st.host));
    }
    if st.boot_id != boot_id() {
        return Err(IpamError::Fenced {
            network: network.to_string(),
            why: format!(
                "no heartbeat reached etcd since this host booted (hold {} s)",
                st.hold_s
            ),
        });
    }
    if boottime_ns() >= st.fence_until {
        return Err(IpamError::Fenced {
            network: network.to_string(),
            why: format!(
                "no heartbeat reached etcd for {} s (hold {} s)",
                now().saturating_sub(st.heartbeat),
                st.hold_s
            ),
        });
    }
    Ok(())
}

/// The error of a network this host was forgotten on.
pub fn forgotten_error(network: &str, host: &str) -> IpamError {
    IpamError::Shared(format!(
        "network {network}: this host ({host}) was removed by `netattach host forget`; \
         it allocates nothing there until it joins again (netattach network join)"
    ))
}

/// A requested address on a shared network must lie in one of this host's
/// private blocks: anywhere else another host may hand it out.
pub(super) fn check_own_block(
    tx: &Transaction<'_>,
    network: &str,
    address: IpAddr,
) -> Result<(), IpamError> {
    let key = key_of_addr(address);
    let found: Option<i64> = tx
        .prepare_cached(
            "SELECT 1 FROM shared_blocks
             WHERE network = ?1 AND state = 'private' AND lo <= ?2 AND hi >= ?2
             UNION ALL
             SELECT 1 FROM shared_keys WHERE network = ?1 AND key = ?2 AND state = 'held'",
        )
        .and_then(|mut s| s.query_row(params![network, key], |r| r.get(0)).optional())
        .map_err(db)?;
    match found {
        Some(_) => Ok(()),
        None => Err(IpamError::Shared(format!(
            "network {network} is shared: {address} is not in a private block of this host, and \
             only addresses of this host's private blocks may be requested (netattach host ls)"
        ))),
    }
}

/// A free address of `ranges` inside this host's private blocks, with the
/// prefix length of its subnet; [`IpamError::NeedsBlock`] when they are full.
pub(super) fn allocate(
    tx: &Transaction<'_>,
    segment: &str,
    network: &str,
    ranges: &[PoolRange],
) -> Result<(IpAddr, u8), IpamError> {
    let blocks: Vec<IpNet> = tx
        .prepare_cached(
            "SELECT block FROM shared_blocks WHERE network = ?1 AND state = 'private' ORDER BY lo",
        )
        .and_then(|mut s| {
            s.query_map([network], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .map_err(db)?
        .iter()
        .filter_map(|b| b.parse().ok())
        .collect();
    // Each block is a range of its own for the walk (and its own cursor):
    // the subnet and the excluded addresses stay those of its range.
    let within: Vec<PoolRange> = ranges
        .iter()
        .flat_map(|r| {
            blocks
                .iter()
                .filter(|b| r.range.contains(*b))
                .map(|b| PoolRange {
                    subnet: r.subnet,
                    range: *b,
                    excluded: r.excluded.clone(),
                })
        })
        .collect();
    if !within.is_empty() {
        match allocate_in(tx, segment, network, &within) {
            Ok((address, range)) => return Ok((address, range.subnet.prefix_len())),
            Err(IpamError::Exhausted { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    // An address key this host holds and no lease uses (a borrow made for
    // this reservation, or one whose lease was released meanwhile).
    let mut unused = tx
        .prepare_cached(
            "SELECT k.key FROM shared_keys k WHERE k.network = ?1 AND k.state = 'held'
               AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.segment = ?2 AND l.key = k.key)",
        )
        .map_err(db)?;
    let keys = unused
        .query_map(params![network, segment], |r| r.get::<_, Vec<u8>>(0))
        .map_err(db)?;
    for k in keys {
        let Some(address) = super::addr_of_key(&k.map_err(db)?) else {
            continue;
        };
        if let Some(r) = ranges.iter().find(|r| r.range.contains(&address)) {
            return Ok((address, r.subnet.prefix_len()));
        }
    }
    Err(IpamError::NeedsBlock {
        network: network.to_string(),
        ranges: ranges.to_vec(),
    })
}

fn bounds(block: IpNet) -> ([u8; 17], [u8; 17]) {
    let v6 = block.network().is_ipv6();
    (
        key_of(v6, addr_to_u128(block.network())),
        key_of(v6, addr_to_u128(block.broadcast())),
    )
}

impl SqliteStore {
    /// This host's membership of `network`, if it joined it.
    pub fn shared_state(&self, network: &str) -> Result<Option<SharedState>, IpamError> {
        read_state(&self.conn(), network)
    }

    /// One write transaction on the shared tables. These rows are what
    /// etcd granted this host: they must survive power loss.
    fn write_shared<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, IpamError> {
        let (mut conn, _queue) = self.writer(Commit::PowerLoss)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let value = f(&tx).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(value)
    }

    /// Records a join (a new epoch): any blocks of an earlier membership
    /// are gone with it (`host forget` freed them in etcd).
    pub fn record_join(&self, st: &SharedState) -> Result<(), IpamError> {
        self.write_shared(|tx| {
            tx.execute(
                "DELETE FROM shared_blocks WHERE network = ?1",
                [&st.network],
            )?;
            tx.execute("DELETE FROM shared_keys WHERE network = ?1", [&st.network])?;
            tx.execute(
                "INSERT OR REPLACE INTO shared
                   (network, endpoints, host, epoch, lease, hold_s, fence_until, boot_id,
                    heartbeat, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    st.network,
                    st.endpoints,
                    st.host,
                    st.epoch,
                    st.lease,
                    st.hold_s as i64,
                    st.fence_until as i64,
                    st.boot_id,
                    st.heartbeat as i64,
                    if st.forgotten { FORGOTTEN } else { MEMBER },
                ],
            )?;
            Ok(())
        })
    }

    /// Records a block etcd granted to this host under `epoch`, as private.
    /// Refused (false) if the membership changed meanwhile.
    pub fn record_block(
        &self,
        network: &str,
        epoch: i64,
        block: IpNet,
        revision: i64,
    ) -> Result<bool, IpamError> {
        let (lo, hi) = bounds(block);
        self.write_shared(|tx| {
            if !is_member(tx, network, epoch)? {
                return Ok(false);
            }
            tx.execute(
                "INSERT OR REPLACE INTO shared_blocks (network, block, lo, hi, state, revision)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![network, block.to_string(), lo, hi, PRIVATE, revision],
            )?;
            Ok(true)
        })
    }

    /// A heartbeat etcd accepted under `epoch`: the fence moves to
    /// `fence_until` (CLOCK_BOOTTIME ns) of this boot.
    pub fn record_heartbeat(
        &self,
        network: &str,
        epoch: i64,
        lease: i64,
        fence_until: u64,
    ) -> Result<(), IpamError> {
        let boot = boot_id();
        self.write_shared(|tx| {
            tx.execute(
                "UPDATE shared SET lease = ?3, fence_until = ?4, boot_id = ?5, heartbeat = ?6
                 WHERE network = ?1 AND epoch = ?2 AND state = 'member'",
                params![
                    network,
                    epoch,
                    lease,
                    fence_until as i64,
                    boot,
                    now() as i64
                ],
            )?;
            Ok(())
        })
    }

    /// etcd no longer knows this host under `epoch` (`host forget`): stop
    /// allocating and drop the blocks (they may be another host's now).
    pub fn mark_forgotten(&self, network: &str, epoch: i64) -> Result<(), IpamError> {
        self.write_shared(|tx| {
            let n = tx.execute(
                "UPDATE shared SET state = 'forgotten', fence_until = 0
                 WHERE network = ?1 AND epoch = ?2",
                params![network, epoch],
            )?;
            if n > 0 {
                tx.execute("DELETE FROM shared_blocks WHERE network = ?1", [network])?;
                tx.execute("DELETE FROM shared_keys WHERE network = ?1", [network])?;
            }
            Ok(())
        })
    }

    /// This host's blocks of `network` and their leases here, by address.
    pub fn block_fills(&self, network: &str) -> Result<Vec<BlockFill>, IpamError> {
        fills(&self.conn(), network)
    }

    /// Forgets a block etcd no longer gives this host, if it is on its way
    /// back (`returning`): nothing was allocated in it since it was marked.
    pub fn drop_returned_block(&self, network: &str, block: IpNet) -> Result<(), IpamError> {
        self.write_shared(|tx| {
            tx.execute(
                "DELETE FROM shared_blocks WHERE network = ?1 AND block = ?2 AND state = ?3",
                params![network, block.to_string(), RETURNING],
            )?;
            Ok(())
        })
    }

    /// The first step of leaving `network`: every block of it becomes
    /// `returning`, in a transaction that sees no lease in the network.
    /// Refused (the count) while leases remain.
    pub fn begin_leave(&self, network: &str) -> Result<Result<(), u64>, IpamError> {
        self.write_shared(|tx| {
            let leased: i64 = tx.query_row(
                "SELECT count(*) FROM leases WHERE network = ?1",
                [network],
                |r| r.get(0),
            )?;
            if leased > 0 {
                return Ok(Err(leased as u64));
            }
            tx.execute(
                "UPDATE shared_blocks SET state = ?2 WHERE network = ?1",
                params![network, RETURNING],
            )?;
            Ok(Ok(()))
        })
    }

    /// The last step of leaving `network` (or of giving it up without
    /// etcd): this host's membership and blocks of it are forgotten here.
    pub fn record_left(&self, network: &str) -> Result<(), IpamError> {
        self.write_shared(|tx| {
            tx.execute("DELETE FROM shared_blocks WHERE network = ?1", [network])?;
            tx.execute("DELETE FROM shared_keys WHERE network = ?1", [network])?;
            tx.execute("DELETE FROM shared WHERE network = ?1", [network])?;
            Ok(())
        })
    }

    /// Records an address key etcd gave this host under `epoch` (a borrow,
    /// or this host's own shared block): the next reservation may use its
    /// address. Refused (false) if the membership changed meanwhile.
    pub fn record_key(
        &self,
        network: &str,
        epoch: i64,
        address: IpAddr,
        block: IpNet,
        etcd_key: &str,
        revision: i64,
    ) -> Result<bool, IpamError> {
        self.write_shared(|tx| {
            if !is_member(tx, network, epoch)? {
                return Ok(false);
            }
            tx.execute(
                "INSERT OR REPLACE INTO shared_keys
                   (network, key, block, etcd_key, revision, state, since)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    network,
                    key_of_addr(address),
                    block.to_string(),
                    etcd_key,
                    revision,
                    HELD,
                    now() as i64
                ],
            )?;
            Ok(true)
        })
    }

    /// This host's address keys of `network`.
    pub fn address_keys(&self, network: &str) -> Result<Vec<AddressKey>, IpamError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT k.key, k.block, k.etcd_key, k.revision, k.state, k.since,
                        EXISTS (SELECT 1 FROM leases l WHERE l.network = k.network AND l.key = k.key)
                 FROM shared_keys k WHERE k.network = ?1 ORDER BY k.key",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([network], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    AddressKey {
                        address: IpAddr::from([0, 0, 0, 0]),
                        block: IpNet::default(),
                        etcd_key: r.get(2)?,
                        revision: r.get(3)?,
                        deleting: r.get::<_, String>(4)? == DELETING,
                        since: r.get::<_, i64>(5)?.max(0) as u64,
                        leased: r.get(6)?,
                    },
                ))
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (key, block, mut k) = row.map_err(db)?;
            let (Some(address), Ok(block)) = (super::addr_of_key(&key), block.parse()) else {
                return Err(IpamError::Store(format!(
                    "bad row {block:?} in shared_keys"
                )));
            };
            k.address = address;
            k.block = block;
            out.push(k);
        }
        Ok(out)
    }

    /// Address keys held for longer than `older_than_s` with no lease using
    /// them (a reservation that failed after its borrow) are given up.
    pub fn give_up_unused_keys(
        &self,
        network: &str,
        older_than_s: u64,
    ) -> Result<usize, IpamError> {
        self.write_shared(|tx| {
            tx.execute(
                "UPDATE shared_keys SET state = ?2 WHERE network = ?1 AND state = ?3 AND since < ?4
                   AND NOT EXISTS (SELECT 1 FROM leases l
                                   WHERE l.network = shared_keys.network AND l.key = shared_keys.key)",
                params![
                    network,
                    DELETING,
                    HELD,
                    now().saturating_sub(older_than_s) as i64
                ],
            )
        })
    }

    /// Forgets an address key etcd deleted (or no longer has as this host's).
    pub fn drop_deleted_key(&self, network: &str, address: IpAddr) -> Result<(), IpamError> {
        self.write_shared(|tx| {
            tx.execute(
                "DELETE FROM shared_keys WHERE network = ?1 AND key = ?2 AND state = ?3",
                params![network, key_of_addr(address), DELETING],
            )?;
            Ok(())
        })
    }

    /// The first step of lending `block`: private -> lending (nothing more is
    /// allocated in it here), with the addresses leased in it then. `None`
    /// if it is not private (any more).
    pub fn begin_lend(
        &self,
        network: &str,
        block: IpNet,
    ) -> Result<Option<Vec<IpAddr>>, IpamError> {
        self.write_shared(|tx| {
            let n = tx.execute(
                "UPDATE shared_blocks SET state = ?3 WHERE network = ?1 AND block = ?2 AND state = ?4",
                params![network, block.to_string(), LENDING, PRIVATE],
            )?;
            if n == 0 {
                return Ok(None);
            }
            Ok(Some(leased_in(tx, network, block)?))
        })
    }

    /// etcd took the lend at `revision`: the block is shared, and every
    /// address leased in it is held through a key (created at `revision`).
    pub fn finish_lend(&self, network: &str, block: IpNet, revision: i64) -> Result<(), IpamError> {
        let prefix_of_keys = |a: IpAddr| address_key_name(network, block, a);
        self.write_shared(|tx| {
            let n = tx.execute(
                "UPDATE shared_blocks SET state = ?3, revision = ?4
                 WHERE network = ?1 AND block = ?2 AND state = ?5",
                params![network, block.to_string(), SHARED, revision, LENDING],
            )?;
            if n == 0 {
                return Ok(());
            }
            for a in leased_in(tx, network, block)? {
                tx.execute(
                    "INSERT OR REPLACE INTO shared_keys
                       (network, key, block, etcd_key, revision, state, since)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        network,
                        key_of_addr(a),
                        block.to_string(),
                        prefix_of_keys(a),
                        revision,
                        HELD,
                        now() as i64
                    ],
                )?;
            }
            Ok(())
        })
    }

    /// etcd refused the lend (or never saw it): the block is private again.
    pub fn abort_lend(&self, network: &str, block: IpNet) -> Result<(), IpamError> {
        self.write_shared(|tx| {
            tx.execute(
                "UPDATE shared_blocks SET state = ?3 WHERE network = ?1 AND block = ?2 AND state = ?4",
                params![network, block.to_string(), PRIVATE, LENDING],
            )?;
            Ok(())
        })
    }

    /// etcd took the reclaim at `revision`: the block is private again and
    /// its address keys (all this host's) are gone; its leases stay.
    pub fn finish_reclaim(
        &self,
        network: &str,
        block: IpNet,
        revision: i64,
    ) -> Result<(), IpamError> {
        self.write_shared(|tx| {
            let n = tx.execute(
                "UPDATE shared_blocks SET state = ?3, revision = ?4
                 WHERE network = ?1 AND block = ?2 AND state = ?5",
                params![network, block.to_string(), PRIVATE, revision, SHARED],
            )?;
            if n > 0 {
                tx.execute(
                    "DELETE FROM shared_keys WHERE network = ?1 AND block = ?2",
                    params![network, block.to_string()],
                )?;
                // Emptied by the reclaim: back to etcd like any other.
                if leased_in(tx, network, block)?.is_empty() {
                    mark_empty_blocks(tx, &[network]).map_err(to_sql)?;
                }
            }
            Ok(())
        })
    }

    /// Networks in which a release just made blocks `returning` (see
    /// [`mark_empty_blocks`]); the caller returns them to etcd.
    pub fn take_returning(&self) -> Vec<String> {
        std::mem::take(&mut *self.returning.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn note_returning(&self, networks: Vec<String>) {
        if !networks.is_empty() {
            self.returning
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(networks);
        }
    }
}

fn fills(conn: &Connection, network: &str) -> Result<Vec<BlockFill>, IpamError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT b.block, b.state, b.revision,
                    (SELECT count(*) FROM leases l
                     WHERE l.network = b.network AND l.key >= b.lo AND l.key <= b.hi)
             FROM shared_blocks b WHERE b.network = ?1 ORDER BY b.lo",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map([network], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (block, state, revision, used) = row.map_err(db)?;
        let block = block
            .parse()
            .map_err(|_| IpamError::Store(format!("bad block {block:?} in shared_blocks")))?;
        out.push(BlockFill {
            block,
            state,
            revision,
            used: used.max(0) as u64,
        });
    }
    Ok(out)
}

/// One address key of this host, as the local store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressKey {
    pub address: IpAddr,
    pub block: IpNet,
    pub etcd_key: String,
    /// Its `create_revision`: the delete compares it.
    pub revision: i64,
    /// Its address left this host; the key is to be deleted in etcd.
    pub deleting: bool,
    /// Unix seconds it was recorded.
    pub since: u64,
    /// A lease uses its address.
    pub leased: bool,
}

/// The etcd key of `address` in `block` of `network`
/// (`P/addrs/BLOCK/ADDRESS`).
pub fn address_key_name(network: &str, block: IpNet, address: IpAddr) -> String {
    format!(
        "{}addrs/{}/{address}",
        crate::ipam::shared::prefix(network),
        crate::ipam::shared::block_name(block)
    )
}

fn is_member(tx: &Transaction<'_>, network: &str, epoch: i64) -> rusqlite::Result<bool> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM shared WHERE network = ?1 AND epoch = ?2 AND state = 'member'",
            params![network, epoch],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .is_some())
}

/// The addresses leased in `block` of `network`.
fn leased_in(conn: &Connection, network: &str, block: IpNet) -> rusqlite::Result<Vec<IpAddr>> {
    let (lo, hi) = bounds(block);
    let mut stmt = conn.prepare_cached(
        "SELECT key FROM leases WHERE network = ?1 AND key >= ?2 AND key <= ?3 ORDER BY key",
    )?;
    let keys = stmt.query_map(params![network, lo, hi], |r| r.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for k in keys {
        out.extend(super::addr_of_key(&k?));
    }
    Ok(out)
}

fn to_sql(e: IpamError) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(e.to_string())))
}

/// In a release's transaction: the address keys of the released leases
/// are to be deleted in etcd. Returns the networks that have some.
pub(super) fn mark_keys_for_deletion(
    tx: &Transaction<'_>,
    freed: &[super::Lease],
) -> Result<Vec<String>, IpamError> {
    let mut marked = Vec::new();
    for l in freed {
        let n = tx
            .prepare_cached(
                "UPDATE shared_keys SET state = ?3 WHERE network = ?1 AND key = ?2 AND state = ?4",
            )
            .and_then(|mut s| s.execute(params![l.network, key_of_addr(l.address), DELETING, HELD]))
            .map_err(db)?;
        if n > 0 {
            marked.push(l.network.clone());
        }
    }
    Ok(marked)
}

/// How many addresses a block spans (its usable ones are a few fewer).
fn span(block: IpNet) -> u128 {
    let bits = u32::from(block.max_prefix_len() - block.prefix_len());
    1u128.checked_shl(bits).unwrap_or(u128::MAX)
}

/// After a release, in its transaction: the private blocks of the released
/// leases' networks that are now empty become `returning`, so other hosts
/// can claim them. One empty block stays when no other block has room, so
/// that the next attach needs no etcd round trip. Returns the networks with
/// blocks marked. A network with no blocks (not shared) costs one indexed
/// read.
pub(super) fn mark_empty_blocks(
    tx: &Transaction<'_>,
    networks: &[&str],
) -> Result<Vec<String>, IpamError> {
    let mut marked = Vec::new();
    for &network in networks {
        let blocks: Vec<BlockFill> = fills(tx, network)?
            .into_iter()
            .filter(|b| b.state == PRIVATE)
            .collect();
        let (empty, used): (Vec<&BlockFill>, Vec<&BlockFill>) =
            blocks.iter().partition(|b| b.used == 0);
        if empty.is_empty() {
            continue;
        }
        // Room elsewhere, counted on the span: a block a few short of full
        // by this count only costs the next attach one claim.
        let room_elsewhere = used.iter().any(|b| u128::from(b.used) < span(b.block));
        let keep = usize::from(!room_elsewhere);
        for b in &empty[keep..] {
            tx.prepare_cached(
                "UPDATE shared_blocks SET state = ?3 WHERE network = ?1 AND block = ?2",
            )
            .and_then(|mut s| s.execute(params![network, b.block.to_string(), RETURNING]))
            .map_err(db)?;
        }
        if empty.len() > keep {
            marked.push(network.to_string());
        }
    }
    Ok(marked)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::ipam::{Claim, LeaseStore, MacWant, Want};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "netattach-blocks-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// 192.168.32.0/24, gateway .254, pooled from the whole subnet.
    fn range() -> PoolRange {
        PoolRange {
            subnet: "192.168.32.0/24".parse().unwrap(),
            range: "192.168.32.0/24".parse().unwrap(),
            excluded: vec!["192.168.32.254".parse().unwrap()],
        }
    }

    fn claim(shared: bool, wants: Vec<Want>) -> Claim {
        Claim {
            network: "lan".into(),
            segment: "lan0".into(),
            ifname: "eth0".into(),
            link: None,
            mac: MacWant::None,
            wants,
            shared,
            sticky: None,
        }
    }

    fn pooled() -> Vec<Want> {
        vec![Want::Pool {
            ranges: vec![range()],
        }]
    }

    fn member(fence_until: u64, boot: String) -> SharedState {
        SharedState {
            network: "lan".into(),
            endpoints: "http://127.0.0.1:1".into(),
            host: "h1".into(),
            epoch: 7,
            lease: 1,
            hold_s: 3600,
            fence_until,
            boot_id: boot,
            heartbeat: now(),
            forgotten: false,
        }
    }

    fn reserve(s: &SqliteStore, owner: &str, c: Claim) -> Result<Vec<IpAddr>, IpamError> {
        let r = s.reserve(owner, "net:[1]#1", &[c], &mut |_| true)?;
        Ok(r.leases.concat().iter().map(|l| l.address).collect())
    }

    fn in_fence() -> SharedState {
        member(boottime_ns() + 3_600_000_000_000, boot_id())
    }

    #[test]
    fn allocates_only_inside_this_hosts_private_blocks() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.0).unwrap();
        s.record_join(&in_fence()).unwrap();
        // No block yet: the caller must claim one.
        assert!(matches!(
            reserve(&s, "c0", claim(true, pooled())),
            Err(IpamError::NeedsBlock { .. })
        ));
        let block: IpNet = "192.168.32.240/28".parse().unwrap();
        assert!(s.record_block("lan", 7, block, 42).unwrap());
        // .240-.253 and .255 minus broadcast: .254 is the gateway.
        let mut got = Vec::new();
        for i in 0..14 {
            got.extend(reserve(&s, &format!("c{i}"), claim(true, pooled())).unwrap());
        }
        assert!(got.iter().all(|a| block.contains(a)), "{got:?}");
        assert!(!got.contains(&"192.168.32.254".parse().unwrap()));
        assert!(!got.contains(&"192.168.32.255".parse().unwrap()));
        assert!(matches!(
            reserve(&s, "c99", claim(true, pooled())),
            Err(IpamError::NeedsBlock { .. })
        ));
        let fills = s.block_fills("lan").unwrap();
        assert_eq!(fills.len(), 1);
        assert_eq!(
            (fills[0].block, fills[0].used, fills[0].revision),
            (block, 14, 42)
        );
        // The same network unshared would walk the whole range from its start.
        let local = reserve(&s, "local", claim(false, pooled())).unwrap();
        assert_eq!(local, vec!["192.168.32.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn no_local_allocation_without_a_fence() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.0).unwrap();
        // Not joined.
        let e = reserve(&s, "c", claim(true, pooled())).unwrap_err();
        assert!(e.to_string().contains("has not joined"), "{e}");
        // Fence ended.
        s.record_join(&member(1, boot_id())).unwrap();
        s.record_block("lan", 7, "192.168.32.0/28".parse().unwrap(), 1)
            .unwrap();
        let e = reserve(&s, "c", claim(true, pooled())).unwrap_err();
        assert!(matches!(e, IpamError::Fenced { .. }), "{e}");
        assert!(
            e.to_string().contains("no heartbeat reached etcd for"),
            "{e}"
        );
        // A fence of another boot.
        s.record_join(&member(u64::MAX / 2, "another-boot".into()))
            .unwrap();
        s.record_block("lan", 7, "192.168.32.0/28".parse().unwrap(), 1)
            .unwrap();
        let e = reserve(&s, "c", claim(true, pooled())).unwrap_err();
        assert!(e.to_string().contains("since this host booted"), "{e}");
        // A heartbeat accepted under the epoch renews it.
        s.record_heartbeat("lan", 7, 1, boottime_ns() + 60_000_000_000)
            .unwrap();
        assert_eq!(reserve(&s, "c", claim(true, pooled())).unwrap().len(), 1);
        // Forgotten: the blocks go, nothing more is handed out.
        s.mark_forgotten("lan", 7).unwrap();
        assert!(s.block_fills("lan").unwrap().is_empty());
        let e = reserve(&s, "d", claim(true, pooled())).unwrap_err();
        assert!(e.to_string().contains("host forget"), "{e}");
        // Writes under another epoch change nothing.
        assert!(!s
            .record_block("lan", 7, "192.168.32.16/28".parse().unwrap(), 2)
            .unwrap());
    }

    #[test]
    fn requested_addresses_must_lie_in_this_hosts_blocks() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.0).unwrap();
        s.record_join(&in_fence()).unwrap();
        s.record_block("lan", 7, "192.168.32.16/28".parse().unwrap(), 1)
            .unwrap();
        let want = |a: &str| {
            vec![Want::Address {
                address: a.parse().unwrap(),
                subnet: "192.168.32.0/24".parse().unwrap(),
            }]
        };
        let e = reserve(&s, "a", claim(true, want("192.168.32.5"))).unwrap_err();
        assert!(
            e.to_string()
                .contains("not in a private block of this host"),
            "{e}"
        );
        assert_eq!(
            reserve(&s, "b", claim(true, want("192.168.32.20"))).unwrap(),
            vec!["192.168.32.20".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn releases_mark_emptied_blocks_for_return_but_keep_one_with_room() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.0).unwrap();
        s.record_join(&in_fence()).unwrap();
        let (a, b): (IpNet, IpNet) = (
            "192.168.32.8/29".parse().unwrap(),
            "192.168.32.16/29".parse().unwrap(),
        );
        s.record_block("lan", 7, a, 1).unwrap();
        s.record_block("lan", 7, b, 2).unwrap();
        // 192.168.32.8 .. .15 fill the first block, the ninth goes to the second.
        for i in 0..9 {
            reserve(&s, &format!("c{i}"), claim(true, pooled())).unwrap();
        }
        let states = |s: &SqliteStore| -> Vec<(IpNet, String, u64)> {
            s.block_fills("lan")
                .unwrap()
                .into_iter()
                .map(|f| (f.block, f.state, f.used))
                .collect()
        };
        // The second block empties while the first is full: it stays, as
        // the only room left.
        s.release_owner("c8").unwrap();
        assert!(s.take_returning().is_empty());
        assert_eq!(states(&s)[1], (b, PRIVATE.to_string(), 0));
        // One address of the first block frees: the empty one goes back.
        s.release_owner("c0").unwrap();
        assert_eq!(s.take_returning(), vec!["lan".to_string()]);
        assert_eq!(states(&s)[1], (b, RETURNING.to_string(), 0));
        // Nothing is handed out in a returning block.
        for i in 10..11 {
            let got = reserve(&s, &format!("c{i}"), claim(true, pooled())).unwrap();
            assert!(a.contains(&got[0]), "{got:?}");
        }
        assert!(matches!(
            reserve(&s, "c99", claim(true, pooled())),
            Err(IpamError::NeedsBlock { .. })
        ));
        // Once etcd took it, the row goes.
        s.drop_returned_block("lan", b).unwrap();
        assert_eq!(states(&s).len(), 1);
        // Not for private blocks.
        s.drop_returned_block("lan", a).unwrap();
        assert_eq!(states(&s).len(), 1);
        // Leaving is refused while leases remain, then marks everything.
        assert_eq!(s.begin_leave("lan").unwrap(), Err(8));
        for i in (1..8).chain(10..11) {
            s.release_owner(&format!("c{i}")).unwrap();
        }
        // The last block stays private while it is the only one.
        assert_eq!(states(&s), vec![(a, PRIVATE.to_string(), 0)]);
        assert_eq!(s.begin_leave("lan").unwrap(), Ok(()));
        assert_eq!(states(&s), vec![(a, RETURNING.to_string(), 0)]);
        s.record_left("lan").unwrap();
        assert!(states(&s).is_empty());
        assert_eq!(s.shared_state("lan").unwrap(), None);
    }

    #[test]
    fn a_network_that_is_not_shared_marks_nothing() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.0).unwrap();
        reserve(&s, "c", claim(false, pooled())).unwrap();
        s.release_owner("c").unwrap();
        assert!(s.take_returning().is_empty());
    }

    #[test]
    fn address_keys_are_used_once_and_given_back_on_release() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.0).unwrap();
        s.record_join(&in_fence()).unwrap();
        let other: IpNet = "192.168.32.32/28".parse().unwrap();
        let a: IpAddr = "192.168.32.37".parse().unwrap();
        let k = address_key_name("lan", other, a);
        assert!(
            k.ends_with("/lan/addrs/192.168.32.32-28/192.168.32.37"),
            "{k}"
        );
        // No block, no key: the caller must claim or borrow.
        assert!(matches!(
            reserve(&s, "c0", claim(true, pooled())),
            Err(IpamError::NeedsBlock { .. })
        ));
        // A borrowed key is used by the next reservation, once.
        assert!(s.record_key("lan", 7, a, other, &k, 40).unwrap());
        assert!(!s.record_key("lan", 8, a, other, &k, 40).unwrap());
        assert_eq!(reserve(&s, "c0", claim(true, pooled())).unwrap(), vec![a]);
        assert!(matches!(
            reserve(&s, "c1", claim(true, pooled())),
            Err(IpamError::NeedsBlock { .. })
        ));
        let keys = s.address_keys("lan").unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys[0].leased && !keys[0].deleting && keys[0].revision == 40);
        // Released: the key is to be deleted, and no longer usable.
        s.release_owner("c0").unwrap();
        assert_eq!(s.take_returning(), vec!["lan".to_string()]);
        let keys = s.address_keys("lan").unwrap();
        assert!(!keys[0].leased && keys[0].deleting);
        assert!(matches!(
            reserve(&s, "c1", claim(true, pooled())),
            Err(IpamError::NeedsBlock { .. })
        ));
        s.drop_deleted_key("lan", a).unwrap();
        assert!(s.address_keys("lan").unwrap().is_empty());
        // A key no reservation used is given up after a while.
        s.record_key("lan", 7, a, other, &k, 41).unwrap();
        assert_eq!(s.give_up_unused_keys("lan", 60).unwrap(), 0);
        assert_eq!(s.give_up_unused_keys("lan", 0).unwrap(), 0);
        s.write_shared(|tx| tx.execute("UPDATE shared_keys SET since = since - 120", []))
            .unwrap();
        assert_eq!(s.give_up_unused_keys("lan", 60).unwrap(), 1);
        assert!(s.address_keys("lan").unwrap()[0].deleting);
    }

    #[test]
    fn lending_publishes_the_leases_and_reclaiming_takes_the_block_back() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.0).unwrap();
        s.record_join(&in_fence()).unwrap();
        let b: IpNet = "192.168.32.16/29".parse().unwrap();
        s.record_block("lan", 7, b, 3).unwrap();
        let first = reserve(&s, "c0", claim(true, pooled())).unwrap();
        let leased = s.begin_lend("lan", b).unwrap().unwrap();
        assert_eq!(leased, first);
        // Lending: nothing more is handed out in it, and it cannot be lent twice.
        assert!(matches!(
            reserve(&s, "c1", claim(true, pooled())),
            Err(IpamError::NeedsBlock { .. })
        ));
        assert_eq!(s.begin_lend("lan", b).unwrap(), None);
        // Refused: private again.
        s.abort_lend("lan", b).unwrap();
        assert_eq!(s.block_fills("lan").unwrap()[0].state, PRIVATE);
        // Lent: shared, the lease held through a key of the lend's revision.
        s.begin_lend("lan", b).unwrap().unwrap();
        s.finish_lend("lan", b, 50).unwrap();
        let fill = &s.block_fills("lan").unwrap()[0];
        assert_eq!((fill.state.as_str(), fill.revision), (SHARED, 50));
        let keys = s.address_keys("lan").unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!((keys[0].address, keys[0].revision), (first[0], 50));
        assert_eq!(keys[0].etcd_key, address_key_name("lan", b, first[0]));
        // Taken back: private, keys gone, the lease stays.
        s.finish_reclaim("lan", b, 60).unwrap();
        let fill = &s.block_fills("lan").unwrap()[0];
        assert_eq!(
            (fill.state.as_str(), fill.revision, fill.used),
            (PRIVATE, 60, 1)
        );
        assert!(s.address_keys("lan").unwrap().is_empty());
        assert_eq!(reserve(&s, "c1", claim(true, pooled())).unwrap().len(), 1);
    }
}
