//! The etcd side of shared networks (docs/multi-host.md): the network's
//! definition (`P/config`), joining, claiming blocks, heartbeats, and what
//! `host ls` and `host forget` need.
//!
//! Only shared networks ever reach this module: a network of this host alone
//! makes no etcd call and starts no thread. Every call here is blocking and
//! bounded (`etcd::Timeouts`, within the caller's deadline). Every
//! transaction of a host compares its epoch (`created(P/hosts/HOST)`), so a
//! host that `host forget` removed can change nothing under its old epoch.
//!
//! Built: join and leave, private blocks (claim, return, reconcile; local
//! allocation in `sqlite/blocks.rs`), heartbeat and fence, forget, listing.
//! Not built yet: lending (shared blocks, address keys, borrowing, reclaim).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use ipnet::IpNet;
use serde_json::{json, Value};

use super::pool::{ranges_label, usable_bounds};
use super::sqlite::{SharedState, SqliteStore};
use super::{IpamError, PoolRange};
use crate::config::{Network, Shared};
use crate::deadline::Deadline;
use crate::etcd::{self, Client, Compare, KeyValue, Op, OpResult, Timeouts};

/// A heartbeat is sent on an attach, `gc` or `host ls` only when the last
/// accepted one is older than this: one round trip per 30 s at most.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);

/// The longest a heartbeat on an attach's path may take; running out is
/// not an error (the fence lasts `hold`, not 30 s).
pub const HEARTBEAT_WAIT: Duration = Duration::from_millis(250);

/// How long one connection attempt to an endpoint may take.
const CONNECT_WAIT: Duration = Duration::from_millis(500);

/// Free blocks tried before giving up on a claim (others may take each
/// one between our read and our transaction).
pub(super) const CLAIM_TRIES: usize = 3;

/// Operations per etcd transaction (etcd refuses more than 128).
pub(super) const TXN_CHUNK: usize = 50;

/// Where a network's keys live: `/netattach/v1/networks/NAME/`.
pub fn prefix(network: &str) -> String {
    format!("/netattach/v1/networks/{network}/")
}

pub(super) fn key(network: &str, rest: &str) -> Vec<u8> {
    format!("{}{rest}", prefix(network)).into_bytes()
}

/// A block's name in etcd keys: its first address and prefix length joined
/// by `-` (`192.168.32.16-28`), one path segment.
pub fn block_name(block: IpNet) -> String {
    format!("{}-{}", block.network(), block.prefix_len())
}

/// The block of a name written by [`block_name`].
pub fn parse_block_name(name: &str) -> Option<IpNet> {
    let (addr, len) = name.split_once('-')?;
    format!("{addr}/{len}").parse().ok()
}

pub(super) fn block_key(network: &str, block: IpNet) -> Vec<u8> {
    key(network, &format!("blocks/{}", block_name(block)))
}

/// The default block size of a range: 16 blocks (fewer when the range is
/// smaller than 16 addresses).
pub fn default_block_prefix(range: IpNet) -> u8 {
    (range.prefix_len() + 4).min(range.max_prefix_len())
}

/// The TTL of a host's alive key: `hold` plus a margin for clocks that run
/// at slightly different rates (docs/multi-host.md, "Time").
pub fn alive_ttl(hold: u64) -> i64 {
    (hold + (hold / 10).max(60)) as i64
}

/// The nanoseconds of CLOCK_BOOTTIME: counts suspended time, and nobody can
/// set it, so a fence measured with it cannot be stretched.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into ts.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec.max(0) as u64) * 1_000_000_000 + ts.tv_nsec.max(0) as u64
}

/// This boot's id: a fence taken in another boot is no fence.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether `id` may name a host: `[A-Za-z0-9_.-]{1,64}`.
pub fn valid_host_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// This host's id: the flag, else `NETATTACH_HOST_ID`, else /etc/machine-id.
pub fn host_id(flag: Option<&str>) -> anyhow::Result<String> {
    let id = match flag {
        Some(f) => f.to_string(),
        None => match std::env::var("NETATTACH_HOST_ID") {
            Ok(v) if !v.is_empty() => v,
            _ => std::fs::read_to_string("/etc/machine-id")
                .map(|s| s.trim().to_string())
                .context("no --host-id nor NETATTACH_HOST_ID, and /etc/machine-id")?,
        },
    };
    if !valid_host_id(&id) {
        bail!("host id {id:?} must match [A-Za-z0-9_.-]{{1,64}}");
    }
    Ok(id)
}

/// A client of `endpoints` whose calls end by `until` (each connection
/// attempt within [`CONNECT_WAIT`]).
pub fn client_until<S: AsRef<str>>(
    endpoints: &[S],
    until: Deadline,
) -> Result<Client, etcd::Error> {
    let total = until.remaining().max(Duration::from_millis(1));
    Client::new(
        endpoints,
        Timeouts {
            connect: CONNECT_WAIT.min(total),
            total,
        },
    )
}

pub(super) fn shared_of(net: &Network) -> Result<&Shared, IpamError> {
    net.shared
        .as_ref()
        .ok_or_else(|| IpamError::Store(format!("network {} is not shared", net.name)))
}

/// This host's membership of the network, refusing a forgotten one.
pub(super) fn member(store: &SqliteStore, network: &str) -> Result<SharedState, IpamError> {
    match store.shared_state(network)? {
        None => Err(IpamError::Shared(format!(
            "network {network} is shared but this host has not joined it (netattach network join)"
        ))),
        Some(st) if st.forgotten => Err(super::sqlite::forgotten_error(network, &st.host)),
        Some(st) => Ok(st),
    }
}

/// The blocks of one range at prefix `b` that hold at least one address
/// that may be handed out.
pub fn blocks_of(range: &PoolRange, b: u8) -> Vec<IpNet> {
    let Ok(blocks) = range.range.subnets(b) else {
        return Vec::new();
    };
    blocks.filter(|blk| usable_in(range, *blk) > 0).collect()
}

/// How many addresses of `block` (inside `range`) may be handed out.
pub fn usable_in(range: &PoolRange, block: IpNet) -> u128 {
    let Some((lo, hi)) = usable_bounds(range.subnet, block) else {
        return 0;
    };
    let excluded = range
        .excluded_u128()
        .into_iter()
        .filter(|e| (lo..=hi).contains(e))
        .count() as u128;
    (hi - lo).saturating_add(1).saturating_sub(excluded)
}

/// The block size of a range of a shared network.
pub(super) fn block_prefix_of(shared: &Shared, range: &PoolRange) -> Result<u8, IpamError> {
    shared
        .block_prefix
        .get(&range.range.to_string())
        .copied()
        .ok_or_else(|| IpamError::Store(format!("no block size for range {}", range.range)))
}

/// How many of the addresses of this host's private blocks in `ranges` are
/// free, of how many, in how many blocks (for messages).
fn local_room(store: &SqliteStore, network: &str, ranges: &[PoolRange]) -> (u128, u128, usize) {
    let Ok(fills) = store.block_fills(network) else {
        return (0, 0, 0);
    };
    let (mut free, mut total, mut n) = (0u128, 0u128, 0usize);
    for f in fills.iter().filter(|f| f.state == "private") {
        if let Some(r) = ranges.iter().find(|r| r.range.contains(&f.block)) {
            let usable = usable_in(r, f.block);
            total = total.saturating_add(usable);
            free = free.saturating_add(usable.saturating_sub(f.used as u128));
            n += 1;
        }
    }
    (free, total, n)
}

fn unreachable(
    store: &SqliteStore,
    network: &str,
    ranges: &[PoolRange],
    e: &etcd::Error,
) -> IpamError {
    let detail = match e {
        etcd::Error::Unreachable { detail, .. } => detail.clone(),
        other => other.to_string(),
    };
    let (free, total, n) = local_room(store, network, ranges);
    IpamError::Shared(format!(
        "network {network} needs a new block but etcd is unreachable ({detail}); \
         this host has {free} of {total} addresses free in its {n} blocks"
    ))
}

/// After a refused transaction whose first read was `get P/hosts/HOST`: if
/// this host's epoch is gone, it was forgotten; recorded, and said.
pub(super) fn refused_on_epoch(
    store: &SqliteStore,
    st: &SharedState,
    r: &etcd::TxnResult,
) -> Result<(), IpamError> {
    if epoch_holds(r.results.first(), st.epoch) {
        return Ok(());
    }
    store.mark_forgotten(&st.network, st.epoch)?;
    Err(super::sqlite::forgotten_error(&st.network, &st.host))
}

/// Whether `kv` (a block or address key) is this host's under its epoch.
pub(super) fn is_ours(kv: &KeyValue, st: &SharedState) -> bool {
    let v = json_of(kv);
    v["host"] == st.host.as_str() && v["epoch"] == st.epoch
}

/// Whether a `get P/hosts/HOST` result shows this host under `epoch`.
pub(super) fn epoch_holds(result: Option<&OpResult>, epoch: i64) -> bool {
    match result {
        Some(OpResult::Range(r)) => r.kvs.first().is_some_and(|kv| kv.create_revision == epoch),
        // No answer about it: do not conclude the host was forgotten.
        _ => true,
    }
}

pub(super) fn json_of(kv: &KeyValue) -> Value {
    serde_json::from_slice(&kv.value).unwrap_or(Value::Null)
}

/// Claims one free block of `ranges` for this host (docs/multi-host.md,
/// "claim a block"): one transaction that holds only if the block is still
/// free and this host's epoch is current. The block is recorded locally only
/// once etcd said it is this host's.
pub fn claim_block(
    store: &SqliteStore,
    net: &Network,
    ranges: &[PoolRange],
    until: Deadline,
) -> Result<(), IpamError> {
    let name = &net.name;
    let shared = shared_of(net)?;
    let st = member(store, name)?;
    let mut candidates = Vec::new();
    for r in ranges {
        candidates.extend(blocks_of(r, block_prefix_of(shared, r)?));
    }
    // A client per call, each bounded by what is left of `until`: the
    // whole claim ends by then, however many calls it makes.
    let client = || client_until(&shared.etcd, until);
    client().map_err(|e| IpamError::Shared(format!("network {name}: {e}")))?;
    let host_key = key(name, &format!("hosts/{}", st.host));
    let claimed = json!({"host": st.host, "epoch": st.epoch, "mode": "private"}).to_string();
    for _ in 0..CLAIM_TRIES {
        let taken: HashSet<Vec<u8>> =
            match client().and_then(|c| c.get_prefix(&key(name, "blocks/"))) {
                Ok(r) => r.kvs.into_iter().map(|kv| kv.key).collect(),
                Err(e) => return Err(unreachable(store, name, ranges, &e)),
            };
        let free: Vec<IpNet> = candidates
            .iter()
            .copied()
            .filter(|b| !taken.contains(&block_key(name, *b)))
            .collect();
        if free.is_empty() {
            return Err(IpamError::Exhausted {
                network: name.clone(),
                range: ranges_label(ranges),
            });
        }
        // A random one: hosts claiming at once rarely pick the same block.
        let block = free[random_below(free.len())];
        let bkey = block_key(name, block);
        let answer = client().and_then(|c| {
            c.txn(
                &[
                    Compare::created_at(host_key.clone(), st.epoch),
                    Compare::absent(bkey.clone()),
                ],
                &[Op::put(bkey.clone(), claimed.clone())],
                &[Op::get(host_key.clone())],
            )
        });
        match answer {
            Ok(r) if r.succeeded => return record(store, &st, block, r.revision),
            Ok(r) => {
                refused_on_epoch(store, &st, &r)?;
                // Another host took it first: try another block.
            }
            Err(e) if e.not_applied() => return Err(unreachable(store, name, ranges, &e)),
            Err(e) => {
                // The answer was lost: the block is ours only if etcd says so.
                match client().and_then(|c| c.get(&bkey)) {
                    Ok(Some(kv)) if is_ours(&kv, &st) => {
                        return record(store, &st, block, kv.mod_revision);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return Err(IpamError::Shared(format!(
                            "network {name}: the claim of block {block} got no answer ({e}) \
                             and etcd could not be asked again; try again"
                        )))
                    }
                }
            }
        }
    }
    Err(IpamError::Shared(format!(
        "network {name}: other hosts took each free block this host tried ({CLAIM_TRIES} tries); try again"
    )))
}

fn record(
    store: &SqliteStore,
    st: &SharedState,
    block: IpNet,
    revision: i64,
) -> Result<(), IpamError> {
    if store.record_block(&st.network, st.epoch, block, revision)? {
        Ok(())
    } else {
        Err(IpamError::Shared(format!(
            "network {}: this host's membership changed while it claimed block {block}",
            st.network
        )))
    }
}

/// A uniform index below `n` (n > 0) from getrandom; 0 if it fails.
pub(super) fn random_below(n: usize) -> usize {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if got != b.len() as isize {
        return 0;
    }
    (u64::from_ne_bytes(b) % n as u64) as usize
}

/// The value of `P/hosts/HOST`: last heartbeat, version, and per block how
/// many of its addresses this host has leased.
fn host_value(store: &SqliteStore, network: &str) -> String {
    let fill: BTreeMap<String, u64> = store
        .block_fills(network)
        .unwrap_or_default()
        .into_iter()
        .map(|f| (block_name(f.block), f.used))
        .collect();
    json!({"heartbeat": unix_now(), "version": env!("CARGO_PKG_VERSION"), "fill": fill}).to_string()
}

/// One heartbeat (docs/multi-host.md, "heartbeat"): renews the alive key's
/// lease (a new one if it expired) and rewrites the host key, under this
/// host's epoch; accepted, it moves the fence to `hold` after the moment
/// read *before* sending. Refused on the epoch, the host was forgotten.
pub fn heartbeat(store: &SqliteStore, net: &Network, until: Deadline) -> Result<(), IpamError> {
    let name = &net.name;
    let shared = shared_of(net)?;
    let st = member(store, name)?;
    let fail = |e: etcd::Error| IpamError::Shared(format!("network {name}: heartbeat: {e}"));
    // A client per call, each bounded by what is left of `until`.
    let client = || client_until(&shared.etcd, until).map_err(fail);
    let t0 = boottime_ns();
    let lease = match client()?.lease_keepalive(st.lease).map_err(fail)? {
        Some(_) => st.lease,
        None => {
            client()?
                .lease_grant(alive_ttl(shared.hold))
                .map_err(fail)?
                .0
        }
    };
    let host_key = key(name, &format!("hosts/{}", st.host));
    let alive_key = key(name, &format!("alive/{}", st.host));
    let r = client()?
        .txn(
            &[Compare::created_at(host_key.clone(), st.epoch)],
            &[
                Op::put(host_key.clone(), host_value(store, name)),
                Op::put_leased(alive_key, Vec::new(), lease),
            ],
            &[Op::get(host_key)],
        )
        .map_err(fail)?;
    if !r.succeeded {
        store.mark_forgotten(name, st.epoch)?;
        return Err(super::sqlite::forgotten_error(name, &st.host));
    }
    let fence = t0.saturating_add(shared.hold.saturating_mul(1_000_000_000));
    store.record_heartbeat(name, st.epoch, lease, fence)
}

/// A heartbeat if the last accepted one is older than [`HEARTBEAT_EVERY`]
/// (or the fence has ended), within `wait`; `Ok(false)` when none was due.
pub fn heartbeat_if_due(
    store: &SqliteStore,
    net: &Network,
    wait: Duration,
) -> Result<bool, IpamError> {
    let Some(st) = store.shared_state(&net.name)? else {
        return Ok(false);
    };
    let fenced = st.boot_id != boot_id() || boottime_ns() >= st.fence_until;
    if st.forgotten
        || (!fenced && unix_now().saturating_sub(st.heartbeat) < HEARTBEAT_EVERY.as_secs())
    {
        return Ok(false);
    }
    heartbeat(store, net, Deadline::after(wait)).map(|()| true)
}

/// Returns this host's `returning` blocks of `net` to etcd (docs/multi-host.md,
/// "return an empty block"): each block key is deleted only if it is still
/// this host's under its epoch, unchanged since this host wrote it; then the
/// local row goes. A block etcd no longer gives this host is dropped here
/// too. What etcd does not answer stays queued (the row) for the next
/// heartbeat or `gc`. Returns how many blocks went back.
pub fn return_blocks(
    store: &SqliteStore,
    net: &Network,
    until: Deadline,
) -> Result<usize, IpamError> {
    let name = &net.name;
    let shared = shared_of(net)?;
    let st = member(store, name)?;
    let queued: Vec<_> = store
        .block_fills(name)?
        .into_iter()
        .filter(|b| b.state == super::sqlite::RETURNING)
        .collect();
    if queued.is_empty() {
        return Ok(0);
    }
    let fail = |e: etcd::Error| {
        IpamError::Shared(format!(
            "network {name}: {} empty block(s) wait to go back to etcd: {e}",
            queued.len()
        ))
    };
    let client = || client_until(&shared.etcd, until).map_err(fail);
    let host_key = key(name, &format!("hosts/{}", st.host));
    let ours = |kv: &KeyValue| is_ours(kv, &st);
    let mut returned = 0;
    for b in &queued {
        let bkey = block_key(name, b.block);
        let answer = client()?.txn(
            &[
                Compare::created_at(host_key.clone(), st.epoch),
                Compare::mod_is(bkey.clone(), b.revision),
            ],
            &[Op::delete(bkey.clone())],
            &[Op::get(host_key.clone()), Op::get(bkey.clone())],
        );
        let gone = match answer {
            Ok(r) if r.succeeded => true,
            Ok(r) => {
                refused_on_epoch(store, &st, &r)?;
                // Changed since this host wrote it: gone or not ours is
                // done; still ours (written elsewhere?) is left to `gc`.
                match r.results.get(1) {
                    Some(OpResult::Range(got)) => got.kvs.first().is_none_or(|kv| !ours(kv)),
                    _ => false,
                }
            }
            Err(e) if e.not_applied() => return Err(fail(e)),
            // The answer was lost: done if etcd no longer has it as ours.
            Err(_) => client()?
                .get(&bkey)
                .map_err(fail)?
                .is_none_or(|kv| !ours(&kv)),
        };
        if gone {
            store.drop_returned_block(name, b.block)?;
            returned += 1;
        }
    }
    Ok(returned)
}

/// What [`reconcile`] found and did, one line each.
pub type Findings = Vec<String>;

/// Makes this host's local blocks agree with etcd's (docs/multi-host.md,
/// "reconcile"), at upkeep. A private block etcd gives this host under its
/// epoch that the local store does not know (a claim whose answer was
/// lost) is taken up: nothing was ever allocated in it. A block left
/// `lending` or `shared` by a lost answer is finished or undone as etcd
/// says. A `returning` block etcd no longer gives this host is dropped; a
/// private or shared one is reported (it cannot happen while the epoch
/// holds).
pub fn reconcile(
    store: &SqliteStore,
    net: &Network,
    until: Deadline,
) -> Result<Findings, IpamError> {
    let name = &net.name;
    let shared = shared_of(net)?;
    let st = member(store, name)?;
    let fail = |e: etcd::Error| IpamError::Shared(format!("network {name}: reconcile: {e}"));
    let client = client_until(&shared.etcd, until).map_err(fail)?;
    let strip = key(name, "blocks/").len();
    // This host's blocks in etcd: block -> (mode, mod_revision).
    let mut in_etcd: BTreeMap<IpNet, (String, i64)> = BTreeMap::new();
    for kv in client.get_prefix(&key(name, "blocks/")).map_err(fail)?.kvs {
        let v = json_of(&kv);
        if is_ours(&kv, &st) {
            let bname = String::from_utf8_lossy(&kv.key[strip..]).into_owned();
            if let Some(block) = parse_block_name(&bname) {
                let mode = v["mode"].as_str().unwrap_or("").to_string();
                in_etcd.insert(block, (mode, kv.mod_revision));
            }
        }
    }
    let local = store.block_fills(name)?;
    let mut found = Vec::new();
    for (&block, (mode, revision)) in &in_etcd {
        if mode == "private"
            && !local.iter().any(|b| b.block == block)
            && store.record_block(name, st.epoch, block, *revision)?
        {
            found.push(format!(
                "network {name}: block {block} is this host's in etcd but was not recorded here \
                 (a claim whose answer was lost): taken up"
            ));
        }
    }
    for b in &local {
        match (b.state.as_str(), in_etcd.get(&b.block)) {
            ("lending", Some((mode, rev))) if mode == super::sqlite::SHARED => {
                store.finish_lend(name, b.block, *rev)?
            }
            ("lending", Some((mode, rev))) if mode == "private" && *rev == b.revision => {
                store.abort_lend(name, b.block)?
            }
            (super::sqlite::SHARED, Some((mode, rev))) if mode == "private" => {
                store.finish_reclaim(name, b.block, *rev)?
            }
            (super::sqlite::RETURNING, None) => store.drop_returned_block(name, b.block)?,
            (state, None) => found.push(format!(
                "network {name}: block {} ({state}) is this host's here but not in etcd; \
                 {} lease(s) in it",
                b.block, b.used
            )),
            _ => {}
        }
    }
    Ok(found)
}

/// Takes this host out of a shared network it has no lease in
/// (`network rm`): its blocks go back, then its host, alive and wants keys
/// are deleted under its epoch and its alive lease is revoked; last, the
/// local membership goes. Refused while leases remain. A host that was
/// forgotten only drops its local record.
pub fn leave(store: &SqliteStore, net: &Network, until: Deadline) -> anyhow::Result<()> {
    let name = &net.name;
    let Some(st) = store.shared_state(name)? else {
        return Ok(());
    };
    if st.forgotten {
        store.record_left(name)?;
        return Ok(());
    }
    if let Err(n) = store.begin_leave(name)? {
        bail!("network {name} still has {n} lease(s) on this host; release them first");
    }
    let shared = shared_of(net)?;
    return_blocks(store, net, until)?;
    let left = store.block_fills(name)?;
    if !left.is_empty() {
        bail!(
            "network {name}: {} block(s) of this host could not be returned to etcd; run it again",
            left.len()
        );
    }
    let client = || client_until(&shared.etcd, until);
    let host_key = key(name, &format!("hosts/{}", st.host));
    let r = client()?.txn(
        &[Compare::created_at(host_key.clone(), st.epoch)],
        &[
            Op::delete(host_key),
            Op::delete(key(name, &format!("alive/{}", st.host))),
            Op::delete(key(name, &format!("wants/{}", st.host))),
        ],
        &[],
    )?;
    if r.succeeded {
        // Its alive key is gone already; the lease would only expire later.
        let _ = client().map(|c| c.lease_revoke(st.lease));
    }
    // Not succeeded: the host was forgotten meanwhile; nothing is its own.
    store.record_left(name)?;
    Ok(())
}

/// The definition as it is written to `P/config`: no parent (each host has
/// its own) and no endpoints (each host reaches etcd its own way).
fn config_value(net: &Network) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(net)?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| anyhow!("network is not an object"))?;
    obj.remove("parent");
    if let Some(shared) = obj.get_mut("shared").and_then(Value::as_object_mut) {
        shared.remove("etcd");
    }
    Ok(v.to_string())
}

/// Writes the network's definition to `P/config`, once: a network of that
/// name already in etcd is refused.
pub fn publish_config(client: &Client, net: &Network) -> anyhow::Result<()> {
    let k = key(&net.name, "config");
    let r = client.txn(
        &[Compare::absent(k.clone())],
        &[Op::put(k.clone(), config_value(net)?)],
        &[],
    )?;
    if !r.succeeded {
        bail!(
            "network {} is already defined in etcd; `netattach network join --etcd URL -o parent=IF {}` adds this host to it",
            net.name,
            net.name
        );
    }
    Ok(())
}

/// The network's definition from `P/config`, completed with this host's
/// parent and endpoints.
pub fn fetch_config(
    client: &Client,
    name: &str,
    parent: &str,
    endpoints: &[String],
) -> anyhow::Result<Network> {
    let kv = client.get(&key(name, "config"))?.ok_or_else(|| {
        anyhow!(
            "network {name} is not defined in etcd ({})",
            endpoints.join(", ")
        )
    })?;
    let mut v: Value = serde_json::from_slice(&kv.value)
        .with_context(|| format!("network {name}: bad definition in etcd"))?;
    v["parent"] = parent.into();
    v["shared"]["etcd"] = endpoints.into();
    let net: Network = serde_json::from_value(v)
        .with_context(|| format!("network {name}: bad definition in etcd"))?;
    if net.name != name {
        bail!(
            "network {name}: the definition in etcd is named {:?}",
            net.name
        );
    }
    net.validate()?;
    Ok(net)
}

/// Makes this host a member of the network (docs/multi-host.md, "join"):
/// its host key, created only if absent (its `create_revision` is the
/// epoch), and its alive key on a new lease. A host key that exists means
/// an earlier incarnation of this host may hold addresses: refused until
/// `host forget`. Joining again with the local record intact is a no-op.
pub fn join(store: &SqliteStore, net: &Network, host: &str, until: Deadline) -> anyhow::Result<()> {
    let name = &net.name;
    let shared = shared_of(net)?;
    if let Some(st) = store.shared_state(name)? {
        if !st.forgotten {
            if st.host == host {
                return Ok(());
            }
            bail!(
                "this state directory joined network {name} as host {}, not {host}",
                st.host
            );
        }
    }
    // A client per call, each bounded by what is left of `until`.
    let client = || client_until(&shared.etcd, until);
    let t0 = boottime_ns();
    let (lease, _) = client()?.lease_grant(alive_ttl(shared.hold))?;
    let host_key = key(name, &format!("hosts/{host}"));
    let alive_key = key(name, &format!("alive/{host}"));
    let value = json!({"heartbeat": unix_now(), "version": env!("CARGO_PKG_VERSION"), "fill": {}})
        .to_string();
    let answer = client()?.txn(
        &[Compare::absent(host_key.clone())],
        &[
            Op::put(host_key.clone(), value),
            Op::put_leased(alive_key.clone(), Vec::new(), lease),
        ],
        &[Op::get(host_key.clone())],
    );
    let epoch = match answer {
        Ok(r) if r.succeeded => r.revision,
        Ok(_) => {
            let _ = client().map(|c| c.lease_revoke(lease));
            bail!(
                "host {host} is already a member of network {name} in etcd, and its blocks may hold \
                 live addresses; if nothing of that host runs any more: netattach host forget {host}"
            );
        }
        Err(e) if e.not_applied() => return Err(e.into()),
        Err(e) => {
            // The answer was lost: it was ours if the alive key is on our lease.
            let alive = client()?
                .get(&alive_key)
                .with_context(|| format!("after {e}"))?;
            let hosts = client()?
                .get(&host_key)
                .with_context(|| format!("after {e}"))?;
            match (alive, hosts) {
                (Some(a), Some(h)) if a.lease == lease => h.create_revision,
                _ => bail!("{e}; this host did not join (run the join again)"),
            }
        }
    };
    store.record_join(&SharedState {
        network: name.clone(),
        endpoints: shared.etcd.join(","),
        host: host.to_string(),
        epoch,
        lease,
        hold_s: shared.hold,
        fence_until: t0.saturating_add(shared.hold.saturating_mul(1_000_000_000)),
        boot_id: boot_id(),
        heartbeat: unix_now(),
        forgotten: false,
    })?;
    Ok(())
}

/// One host of a shared network as etcd knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostInfo {
    pub host: String,
    /// Its epoch; 0 when only blocks of it are left (a forget half done).
    pub epoch: i64,
    /// Unix seconds of its last heartbeat (0: unknown).
    pub heartbeat: u64,
    pub version: String,
    /// Its alive key exists (it heartbeated within `hold` + margin).
    pub alive: bool,
    /// Its blocks, with the number of addresses it last reported in use.
    pub blocks: Vec<BlockInfo>,
    /// Address keys it holds in other hosts' blocks.
    pub borrowed: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BlockInfo {
    pub block: String,
    pub mode: String,
    pub used: Option<u64>,
    pub size: u128,
}

/// Every host of the network, with its blocks, by host id.
pub fn hosts(client: &Client, net: &Network) -> anyhow::Result<Vec<HostInfo>> {
    let name = &net.name;
    let strip = |kv: &KeyValue, what: &str| -> String {
        String::from_utf8_lossy(&kv.key[key(name, what).len()..]).into_owned()
    };
    let mut out: BTreeMap<String, HostInfo> = BTreeMap::new();
    // Per host, the fill it last reported: block name -> addresses in use.
    let mut fills: BTreeMap<String, Value> = BTreeMap::new();
    let blank = |host: &str| HostInfo {
        host: host.to_string(),
        epoch: 0,
        heartbeat: 0,
        version: String::new(),
        alive: false,
        blocks: Vec::new(),
        borrowed: 0,
    };
    for kv in client.get_prefix(&key(name, "hosts/"))?.kvs {
        let host = strip(&kv, "hosts/");
        let v = json_of(&kv);
        let mut h = blank(&host);
        h.epoch = kv.create_revision;
        h.heartbeat = v["heartbeat"].as_u64().unwrap_or(0);
        h.version = v["version"].as_str().unwrap_or("").to_string();
        fills.insert(host.clone(), v["fill"].clone());
        out.insert(host, h);
    }
    for kv in client.get_prefix(&key(name, "alive/"))?.kvs {
        let host = strip(&kv, "alive/");
        out.entry(host.clone())
            .or_insert_with(|| blank(&host))
            .alive = true;
    }
    let pools = super::pool::pools_of(net);
    // Block name -> owning host ("(none)" for an orphan).
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for kv in client.get_prefix(&key(name, "blocks/"))?.kvs {
        let bname = strip(&kv, "blocks/");
        let v = json_of(&kv);
        let host = v["host"].as_str().unwrap_or("(none)").to_string();
        let size = parse_block_name(&bname)
            .and_then(|b| {
                pools
                    .iter()
                    .flatten()
                    .find(|r| r.range.contains(&b))
                    .map(|r| usable_in(r, b))
            })
            .unwrap_or(0);
        let used = fills.get(&host).and_then(|f| f[&bname].as_u64());
        let entry = out.entry(host.clone()).or_insert_with(|| blank(&host));
        entry.blocks.push(BlockInfo {
            block: bname.clone(),
            mode: v["mode"].as_str().unwrap_or("?").to_string(),
            used,
            size,
        });
        owners.insert(bname, host);
    }
    let strip = key(name, "addrs/").len();
    for kv in client.get_prefix(&key(name, "addrs/"))?.kvs {
        let rest = String::from_utf8_lossy(&kv.key[strip..]).into_owned();
        let block = rest.split('/').next().unwrap_or("");
        if let Some(holder) = json_of(&kv)["host"].as_str() {
            if owners.get(block).map(String::as_str) != Some(holder) {
                if let Some(h) = out.get_mut(holder) {
                    h.borrowed += 1;
                }
            }
        }
    }
    Ok(out.into_values().collect())
}

/// What `host forget` did.
#[derive(Debug, Default)]
pub struct Forgotten {
    /// The host key existed and was deleted (the fence of that epoch).
    pub host_key: bool,
    pub blocks: Vec<String>,
    /// Its shared blocks that other hosts still borrow from: left shared,
    /// with no owner.
    pub orphaned: Vec<String>,
    pub addresses: usize,
}

/// Removes a host from a network (docs/multi-host.md, "host forget"):
/// refused while its alive key exists unless `force`; first its host key
/// (from then on every transaction of that epoch fails), then its blocks
/// and address keys, each delete comparing the revision it was read at.
pub fn forget(
    client: &Client,
    network: &str,
    host: &str,
    force: bool,
    hold: u64,
) -> anyhow::Result<Forgotten> {
    let host_key = key(network, &format!("hosts/{host}"));
    let alive_key = key(network, &format!("alive/{host}"));
    let wants_key = key(network, &format!("wants/{host}"));
    let h = client.get(&host_key)?;
    let alive = client.get(&alive_key)?;
    if alive.is_some() && !force {
        let beat = h
            .as_ref()
            .and_then(|kv| json_of(kv)["heartbeat"].as_u64())
            .unwrap_or(0);
        let age = unix_now().saturating_sub(beat);
        bail!(
            "host {host} is alive on network {network} (last heartbeat {age} s ago; its hold on blocks \
             ends in {} s): stop it first, or --force if it is down for good",
            hold.saturating_sub(age)
        );
    }
    let mut done = Forgotten::default();
    if let Some(h) = &h {
        let mut compares = vec![Compare::mod_is(host_key.clone(), h.mod_revision)];
        if !force {
            compares.push(Compare::absent(alive_key.clone()));
        }
        let r = client.txn(
            &compares,
            &[
                Op::delete(host_key.clone()),
                Op::delete(alive_key.clone()),
                Op::delete(wants_key.clone()),
            ],
            &[],
        )?;
        if !r.succeeded {
            bail!("host {host} of network {network} changed while it was being forgotten; run it again");
        }
        done.host_key = true;
    } else if alive.is_some() {
        client.delete(&alive_key, None)?;
    }
    let owned = |kv: &KeyValue| json_of(kv)["host"] == host;
    let blocks: Vec<KeyValue> = client
        .get_prefix(&key(network, "blocks/"))?
        .kvs
        .into_iter()
        .filter(owned)
        .collect();
    let (addrs, others): (Vec<KeyValue>, Vec<KeyValue>) = client
        .get_prefix(&key(network, "addrs/"))?
        .kvs
        .into_iter()
        .partition(owned);
    // Address keys first: a block is never free while keys of it remain.
    done.addresses = delete_compared(client, &addrs)?;
    // A shared block with other hosts' keys stays shared, with no owner
    // (an orphan): those addresses are in use, and freeing it would let a
    // claim hand them out again. Its last key gone, anyone frees it.
    let strip = key(network, "blocks/").len();
    let addrs_prefix = key(network, "addrs/");
    let name_of = |kv: &KeyValue| String::from_utf8_lossy(&kv.key[strip..]).into_owned();
    let borrowed_in = |block: &str| {
        let p = [addrs_prefix.as_slice(), block.as_bytes(), b"/"].concat();
        others.iter().any(|kv| kv.key.starts_with(&p))
    };
    let (orphans, free): (Vec<KeyValue>, Vec<KeyValue>) =
        blocks.into_iter().partition(|kv| borrowed_in(&name_of(kv)));
    delete_compared(client, &free)?;
    let orphan = json!({"host": null, "mode": "shared"}).to_string();
    for kv in &orphans {
        client.txn(
            &[Compare::mod_is(kv.key.clone(), kv.mod_revision)],
            &[Op::put(kv.key.clone(), orphan.clone())],
            &[],
        )?;
    }
    done.blocks = free.iter().map(name_of).collect();
    done.orphaned = orphans.iter().map(name_of).collect();
    Ok(done)
}

/// Deletes keys, each only if unchanged since it was read, in chunks; a
/// chunk whose compares fail is retried key by key (those changed stay).
fn delete_compared(client: &Client, kvs: &[KeyValue]) -> anyhow::Result<usize> {
    let mut deleted = 0;
    for chunk in kvs.chunks(TXN_CHUNK) {
        let compares: Vec<Compare> = chunk
            .iter()
            .map(|kv| Compare::mod_is(kv.key.clone(), kv.mod_revision))
            .collect();
        let ops: Vec<Op> = chunk.iter().map(|kv| Op::delete(kv.key.clone())).collect();
        if client.txn(&compares, &ops, &[])?.succeeded {
            deleted += chunk.len();
            continue;
        }
        for kv in chunk {
            let r = client.txn(
                &[Compare::mod_is(kv.key.clone(), kv.mod_revision)],
                &[Op::delete(kv.key.clone())],
                &[],
            )?;
            deleted += r.succeeded as usize;
        }
    }
    Ok(deleted)
}

/// The block sizes of a new shared network: `block_prefix` for every range
/// when given (it must fit each), else each range's default.
pub fn block_prefixes(net: &Network, block_prefix: Option<u8>) -> BTreeMap<String, u8> {
    net.subnets
        .iter()
        .map(|s| {
            let range = s.ip_range.unwrap_or(s.subnet);
            (
                range.to_string(),
                block_prefix.unwrap_or_else(|| default_block_prefix(range)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(subnet: &str, range: &str, excluded: &[&str]) -> PoolRange {
        PoolRange {
            subnet: subnet.parse().unwrap(),
            range: range.parse().unwrap(),
            excluded: excluded.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn block_names_are_one_path_segment_and_read_back() {
        for b in ["192.168.32.16/28", "2001:db8::/68", "10.0.0.0/8"] {
            let net: IpNet = b.parse().unwrap();
            let name = block_name(net);
            assert!(!name.contains('/'), "{name}");
            assert_eq!(parse_block_name(&name), Some(net));
        }
        assert_eq!(
            block_name("192.168.32.16/28".parse().unwrap()),
            "192.168.32.16-28"
        );
        assert_eq!(parse_block_name("192.168.32.16"), None);
    }

    #[test]
    fn a_range_is_cut_into_sixteen_blocks_by_default() {
        assert_eq!(default_block_prefix("192.168.32.0/24".parse().unwrap()), 28);
        assert_eq!(default_block_prefix("2001:db8::/64".parse().unwrap()), 68);
        assert_eq!(default_block_prefix("192.168.32.4/30".parse().unwrap()), 32);
        let r = range("192.168.32.0/24", "192.168.32.0/24", &["192.168.32.254"]);
        let blocks = blocks_of(&r, 28);
        assert_eq!(blocks.len(), 16);
        // Network address, gateway and broadcast are never handed out.
        assert_eq!(usable_in(&r, blocks[0]), 15);
        assert_eq!(usable_in(&r, blocks[1]), 16);
        assert_eq!(usable_in(&r, blocks[15]), 14);
    }

    #[test]
    fn blocks_without_a_usable_address_are_never_claimed() {
        // /31 blocks of a /30 subnet: .0 is the network address, .3 the
        // broadcast, .1 the gateway: only the block of .2 is left.
        let r = range("192.168.32.0/30", "192.168.32.0/30", &["192.168.32.1"]);
        assert_eq!(
            blocks_of(&r, 31),
            vec!["192.168.32.2/31".parse::<IpNet>().unwrap()]
        );
        // The range of an ip_range smaller than its subnet hands out its own
        // network address.
        let r = range("192.168.32.0/24", "192.168.33.0/27", &[]);
        assert!(blocks_of(&r, 29).is_empty()); // outside the subnet: nothing
        let r = range("192.168.32.0/22", "192.168.33.0/27", &[]);
        let b = blocks_of(&r, 29);
        assert_eq!(b.len(), 4);
        assert_eq!(usable_in(&r, b[0]), 8);
    }

    #[test]
    fn the_definition_in_etcd_has_no_parent_and_no_endpoints() {
        let net: Network = serde_json::from_str(
            r#"{"name":"lan","driver":"macvlan","parent":"eth0",
                "subnets":[{"subnet":"192.168.32.0/24"}],
                "shared":{"etcd":["http://10.0.0.5:2379"],"hold":3600,
                          "block_prefix":{"192.168.32.0/24":28}}}"#,
        )
        .unwrap();
        net.validate().unwrap();
        let v: Value = serde_json::from_str(&config_value(&net).unwrap()).unwrap();
        assert!(v.get("parent").is_none(), "{v}");
        assert!(v["shared"].get("etcd").is_none(), "{v}");
        assert_eq!(v["shared"]["block_prefix"]["192.168.32.0/24"], 28);
        assert_eq!(v["shared"]["hold"], 3600);
    }

    #[test]
    fn host_ids() {
        assert!(valid_host_id("node-1.example_2"));
        assert!(!valid_host_id(""));
        assert!(!valid_host_id("a/b"));
        assert!(!valid_host_id(&"x".repeat(65)));
        assert_eq!(host_id(Some("h1")).unwrap(), "h1");
        assert!(host_id(Some("h 1")).is_err());
    }

    #[test]
    fn the_alive_key_outlives_the_fence_by_a_margin() {
        assert_eq!(alive_ttl(3600), 3960);
        assert_eq!(alive_ttl(60), 120);
    }
}
