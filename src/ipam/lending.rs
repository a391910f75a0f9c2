//! Lending and borrowing on shared networks (docs/multi-host.md, "lend a
//! block", "allocate in a shared block", "release an address held through a
//! key", "reclaim a shared block"), the etcd side; the local side is in
//! `sqlite/blocks.rs`.
//!
//! A host whose blocks are full and that finds no free block borrows one
//! address at a time from shared blocks: each is an address key created only
//! if absent, comparing the block's revision, so an owner's reclaim and a
//! borrow exclude each other. Finding nothing, it leaves a `wants` key;
//! hosts that see one lend their emptiest private blocks at their next
//! upkeep (the NRI plugin's etcd thread, or `gc`). An owner takes a shared
//! block back once every key in it is its own and nobody wants addresses.
//! None of this runs on an attach that fits in the host's private blocks.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::json;

use super::pool::{pools_of, ranges_label, u128_to_addr, usable_bounds};
use super::shared::{
    block_key, block_name, client_until, is_ours, json_of, key, member, parse_block_name,
    refused_on_epoch, shared_of, unix_now, usable_in, CLAIM_TRIES, TXN_CHUNK,
};
use super::sqlite::{address_key_name, BlockFill, SqliteStore, SHARED};
use super::{IpamError, PoolRange};
use crate::config::Network;
use crate::deadline::Deadline;
use crate::etcd::{self, Client, Compare, KeyValue, Op};

/// A shared block (anyone's) as etcd has it.
struct Lent {
    block: IpNet,
    range: PoolRange,
    revision: i64,
}

/// The block a key under `P/blocks/` names.
fn block_of(network: &str, kv: &KeyValue) -> Option<IpNet> {
    let strip = key(network, "blocks/").len();
    parse_block_name(std::str::from_utf8(kv.key.get(strip..)?).ok()?)
}

/// The first address of `lent` that may be handed out and has no key.
fn free_address(lent: &Lent, taken: &BTreeSet<Vec<u8>>, network: &str) -> Option<IpAddr> {
    let (lo, hi) = usable_bounds(lent.range.subnet, lent.block)?;
    let excluded = lent.range.excluded_u128();
    let v6 = lent.block.network().is_ipv6();
    // Every address up to the first free one is taken or excluded: the
    // walk is at most |taken| + |excluded| + 1 long.
    let mut a = lo;
    loop {
        if !excluded.contains(&a) {
            let addr = u128_to_addr(a, v6)?;
            if !taken.contains(address_key_name(network, lent.block, addr).as_bytes()) {
                return Some(addr);
            }
        }
        if a == hi {
            return None;
        }
        a += 1;
    }
}

/// Takes one address of a shared block of `ranges` through an address key,
/// for `owner`, and records the key locally: the next reservation uses it.
/// No shared block has room: a `wants` key asks the other hosts to lend,
/// and the answer is [`IpamError::Exhausted`].
pub fn borrow(
    store: &SqliteStore,
    net: &Network,
    ranges: &[PoolRange],
    owner: &str,
    until: Deadline,
) -> Result<(), IpamError> {
    let name = &net.name;
    let shared = shared_of(net)?;
    let st = member(store, name)?;
    let fail = |e: etcd::Error| {
        IpamError::Shared(format!(
            "network {name} has no free block, and etcd could not be asked for a shared address: {e}"
        ))
    };
    let client = || client_until(&shared.etcd, until).map_err(fail);
    let host_key = key(name, &format!("hosts/{}", st.host));
    let wants_key = key(name, &format!("wants/{}", st.host));
    let value = json!({"host": st.host, "epoch": st.epoch, "owner": owner}).to_string();
    for _ in 0..CLAIM_TRIES {
        let c = client()?;
        let lent: Vec<Lent> = c
            .get_prefix(&key(name, "blocks/"))
            .map_err(fail)?
            .kvs
            .iter()
            .filter(|kv| json_of(kv)["mode"] == SHARED)
            .filter_map(|kv| {
                let block = block_of(name, kv)?;
                let range = ranges.iter().find(|r| r.range.contains(&block))?.clone();
                Some(Lent {
                    block,
                    range,
                    revision: kv.mod_revision,
                })
            })
            .collect();
        let taken: BTreeSet<Vec<u8>> = if lent.is_empty() {
            BTreeSet::new()
        } else {
            c.get_prefix(&key(name, "addrs/"))
                .map_err(fail)?
                .kvs
                .into_iter()
                .map(|kv| kv.key)
                .collect()
        };
        // From a random block on: hosts borrowing at once rarely collide.
        let start = super::shared::random_below(lent.len().max(1));
        let found = (0..lent.len())
            .map(|i| &lent[(start + i) % lent.len()])
            .find_map(|l| free_address(l, &taken, name).map(|a| (l, a)));
        let Some((l, address)) = found else {
            // Ask the others to lend; it goes with this host's alive key.
            let _ = c.put(
                &wants_key,
                json!({"since": unix_now()}).to_string().as_bytes(),
                st.lease,
            );
            return Err(IpamError::Exhausted {
                network: name.clone(),
                range: ranges_label(ranges),
            });
        };
        let akey = address_key_name(name, l.block, address);
        let answer = client()?.txn(
            &[
                Compare::created_at(host_key.clone(), st.epoch),
                Compare::mod_is(block_key(name, l.block), l.revision),
                Compare::absent(akey.clone()),
            ],
            &[
                Op::put(akey.clone(), value.clone()),
                Op::delete(wants_key.clone()),
            ],
            &[Op::get(host_key.clone())],
        );
        let created = match answer {
            Ok(r) if r.succeeded => Some(r.revision),
            Ok(r) => {
                refused_on_epoch(store, &st, &r)?;
                None
            }
            Err(e) if e.not_applied() => return Err(fail(e)),
            // The answer was lost: the key is ours only if etcd says so.
            Err(_) => client()?
                .get(akey.as_bytes())
                .map_err(fail)?
                .filter(|kv| is_ours(kv, &st))
                .map(|kv| kv.create_revision),
        };
        if let Some(revision) = created {
            if store.record_key(name, st.epoch, address, l.block, &akey, revision)? {
                return Ok(());
            }
            return Err(IpamError::Shared(format!(
                "network {name}: this host's membership changed while it borrowed {address}"
            )));
        }
        // Another host took that address, or the block changed: read again.
    }
    Err(IpamError::Shared(format!(
        "network {name}: other hosts took each shared address this host tried ({CLAIM_TRIES} tries); try again"
    )))
}

/// Deletes the address keys whose addresses left this host, each only if
/// it is still the key this host created (its create revision). Returns
/// how many went; what etcd does not answer stays queued.
pub fn delete_keys(
    store: &SqliteStore,
    net: &Network,
    until: Deadline,
) -> Result<usize, IpamError> {
    let name = &net.name;
    let shared = shared_of(net)?;
    let queued: Vec<_> = store
        .address_keys(name)?
        .into_iter()
        .filter(|k| k.deleting)
        .collect();
    if queued.is_empty() {
        return Ok(0);
    }
    let fail = |e: etcd::Error| {
        IpamError::Shared(format!(
            "network {name}: {} released address key(s) wait to be deleted in etcd: {e}",
            queued.len()
        ))
    };
    let client = || client_until(&shared.etcd, until).map_err(fail);
    let mut deleted = 0;
    for k in &queued {
        let akey = k.etcd_key.as_bytes();
        let gone = match client()?.txn(
            &[Compare::created_at(akey.to_vec(), k.revision)],
            &[Op::delete(akey.to_vec())],
            &[],
        ) {
            // Not succeeded: gone already (a forget, a reclaim), or another
            // incarnation of it that is not ours to delete.
            Ok(_) => true,
            Err(e) if e.not_applied() => return Err(fail(e)),
            Err(_) => client()?
                .get(akey)
                .map_err(fail)?
                .is_none_or(|kv| kv.create_revision != k.revision),
        };
        if gone {
            store.drop_deleted_key(name, k.address)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Whether a host other than `host` wants addresses.
fn others_want(client: &Client, network: &str, host: &str) -> Result<bool, etcd::Error> {
    let own = key(network, &format!("wants/{host}"));
    Ok(client
        .get_prefix(&key(network, "wants/"))?
        .kvs
        .iter()
        .any(|kv| kv.key != own))
}

/// What [`share_out`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shared {
    pub lent: Vec<IpNet>,
    pub reclaimed: Vec<IpNet>,
    pub orphans_freed: Vec<IpNet>,
}

/// The lending policy, at upkeep: when another host wants addresses, this
/// host lends its private blocks that are less than half full, keeping the
/// fullest one with room for its own attaches; when nobody wants any, it
/// takes back its shared blocks whose keys are all its own. Orphans (shared
/// blocks of forgotten hosts) whose last key is gone are freed.
pub fn share_out(store: &SqliteStore, net: &Network, until: Deadline) -> Result<Shared, IpamError> {
    let name = &net.name;
    let shared = shared_of(net)?;
    let st = member(store, name)?;
    let fail = |e: etcd::Error| IpamError::Shared(format!("network {name}: lending: {e}"));
    let client = || client_until(&shared.etcd, until).map_err(fail);
    let mut done = Shared::default();
    let fills = store.block_fills(name)?;
    let wanted = others_want(&client()?, name, &st.host).map_err(fail)?;
    if wanted {
        for b in lendable(net, &fills) {
            if lend(store, net, &st, b, until)? {
                done.lent.push(b.block);
            }
        }
    } else {
        for b in fills.iter().filter(|b| b.state == SHARED) {
            if reclaim(store, net, &st, b, until)? {
                done.reclaimed.push(b.block);
            }
        }
    }
    done.orphans_freed = free_orphans(&client()?, name).map_err(fail)?;
    Ok(done)
}

/// The private blocks to lend: less than half full (and few enough leases
/// for one transaction), but not the fullest block with room.
fn lendable<'a>(net: &Network, fills: &'a [BlockFill]) -> Vec<&'a BlockFill> {
    let ranges: Vec<PoolRange> = pools_of(net).into_iter().flatten().collect();
    let usable = |b: &BlockFill| {
        ranges
            .iter()
            .find(|r| r.range.contains(&b.block))
            .map_or(0, |r| usable_in(r, b.block))
    };
    let mut with_room: Vec<&BlockFill> = fills
        .iter()
        .filter(|b| b.state == "private" && u128::from(b.used) < usable(b))
        .collect();
    // Fullest first: that one is kept.
    with_room.sort_by_key(|b| std::cmp::Reverse(b.used));
    with_room
        .into_iter()
        .skip(1)
        .filter(|b| u128::from(b.used) * 2 < usable(b) && (b.used as usize) < TXN_CHUNK)
        .collect()
}

/// Lends one private block: its leases are published as address keys and
/// the block flips to shared, in one transaction under this host's epoch
/// and the block's revision. Returns whether it was lent.
fn lend(
    store: &SqliteStore,
    net: &Network,
    st: &super::sqlite::SharedState,
    b: &BlockFill,
    until: Deadline,
) -> Result<bool, IpamError> {
    let name = &net.name;
    let shared = shared_of(net)?;
    let Some(leased) = store.begin_lend(name, b.block)? else {
        return Ok(false);
    };
    let host_key = key(name, &format!("hosts/{}", st.host));
    let bkey = block_key(name, b.block);
    let owned = json!({"host": st.host, "epoch": st.epoch});
    let mut ops: Vec<Op> = leased
        .iter()
        .map(|a| Op::put(address_key_name(name, b.block, *a), owned.to_string()))
        .collect();
    ops.push(Op::put(
        bkey.clone(),
        json!({"host": st.host, "epoch": st.epoch, "mode": SHARED}).to_string(),
    ));
    let answer = client_until(&shared.etcd, until).and_then(|c| {
        c.txn(
            &[
                Compare::created_at(host_key.clone(), st.epoch),
                Compare::mod_is(bkey.clone(), b.revision),
            ],
            &ops,
            &[Op::get(host_key)],
        )
    });
    match answer {
        Ok(r) if r.succeeded => {
            store.finish_lend(name, b.block, r.revision)?;
            Ok(true)
        }
        Ok(r) => {
            refused_on_epoch(store, st, &r)?;
            store.abort_lend(name, b.block)?;
            Ok(false)
        }
        Err(e) if e.not_applied() => {
            store.abort_lend(name, b.block)?;
            Err(IpamError::Shared(format!(
                "network {name}: lending {}: {e}",
                b.block
            )))
        }
        // The answer was lost: the block stays `lending` (nothing is
        // allocated in it) until `reconcile` reads it back.
        Err(e) => Err(IpamError::Shared(format!(
            "network {name}: lending {}: {e}; it is read back at the next upkeep",
            b.block
        ))),
    }
}

/// Takes one of this host's shared blocks back when every address key in
/// it is this host's: the keys go and the block is private again, in one
/// transaction that fails if any key came or went since they were read.
fn reclaim(
    store: &SqliteStore,
    net: &Network,
    st: &super::sqlite::SharedState,
    b: &BlockFill,
    until: Deadline,
) -> Result<bool, IpamError> {
    let name = &net.name;
    let shared = shared_of(net)?;
    let fail =
        |e: etcd::Error| IpamError::Shared(format!("network {name}: reclaim {}: {e}", b.block));
    let client = || client_until(&shared.etcd, until).map_err(fail);
    let prefix = key(name, &format!("addrs/{}/", block_name(b.block)));
    let keys = client()?.get_prefix(&prefix).map_err(fail)?;
    let all_ours = keys.kvs.iter().all(|kv| is_ours(kv, st));
    if !all_ours {
        return Ok(false);
    }
    let host_key = key(name, &format!("hosts/{}", st.host));
    let bkey = block_key(name, b.block);
    let answer = client()?.txn(
        &[
            Compare::created_at(host_key.clone(), st.epoch),
            Compare::mod_is(bkey.clone(), b.revision),
            Compare::prefix_unchanged_since(prefix.clone(), keys.revision),
        ],
        &[
            Op::delete_prefix(prefix),
            Op::put(
                bkey.clone(),
                json!({"host": st.host, "epoch": st.epoch, "mode": "private"}).to_string(),
            ),
        ],
        &[Op::get(host_key)],
    );
    let revision = match answer {
        Ok(r) if r.succeeded => Some(r.revision),
        Ok(r) => {
            refused_on_epoch(store, st, &r)?;
            None
        }
        Err(e) if e.not_applied() => return Err(fail(e)),
        // The answer was lost: done if etcd has the block private and ours.
        Err(_) => client()?
            .get(&bkey)
            .map_err(fail)?
            .filter(|kv| is_ours(kv, st) && json_of(kv)["mode"] == "private")
            .map(|kv| kv.mod_revision),
    };
    match revision {
        Some(rev) => {
            store.finish_reclaim(name, b.block, rev)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Frees orphan blocks (no owner, shared) that have no address key left:
/// each delete compares the block's revision and that its keys are gone.
fn free_orphans(client: &Client, network: &str) -> Result<Vec<IpNet>, etcd::Error> {
    let mut freed = Vec::new();
    for kv in client.get_prefix(&key(network, "blocks/"))?.kvs {
        if !json_of(&kv)["host"].is_null() {
            continue;
        }
        let Some(block) = block_of(network, &kv) else {
            continue;
        };
        let prefix = key(network, &format!("addrs/{}/", block_name(block)));
        let r = client.txn(
            &[
                Compare::mod_is(kv.key.clone(), kv.mod_revision),
                Compare::prefix_empty(prefix),
            ],
            &[Op::delete(kv.key.clone())],
            &[],
        )?;
        if r.succeeded {
            freed.push(block);
        }
    }
    Ok(freed)
}
