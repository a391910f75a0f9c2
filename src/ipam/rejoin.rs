//! A host that `host forget` removed while it was in fact running joins
//! again (docs/multi-host.md, "A host forgotten while still running"):
//! `netattach network join` on a network already defined here checks the
//! membership in etcd and, if this host's epoch is gone, joins with a new
//! one and registers the addresses its containers still hold: a block that
//! is free again is re-claimed (created only if absent), an address in a
//! shared block gets an address key (created only if absent), and an address
//! in a block another host now holds is reported: that container must be
//! restarted, because the other host may hand its address out.

use std::collections::BTreeMap;

use anyhow::Context as _;
use ipnet::IpNet;
use serde_json::json;

use super::shared::{block_key, block_prefix_of, client_until, join, json_of, key, shared_of};
use super::sqlite::{address_key_name, SqliteStore, SHARED};
use super::{Lease, LeaseStore};
use crate::config::Network;
use crate::deadline::Deadline;
use crate::etcd::{Compare, Op};

/// Checks this host's membership of `net` in etcd and joins again if it was
/// forgotten; the lines say what happened to each live lease (empty: still
/// a member, nothing to do).
pub fn rejoin(
    store: &SqliteStore,
    net: &Network,
    host: &str,
    until: Deadline,
) -> anyhow::Result<Vec<String>> {
    let name = &net.name;
    let shared = shared_of(net)?;
    if let Some(st) = store.shared_state(name)? {
        if !st.forgotten && st.host == host {
            let client = client_until(&shared.etcd, until)?;
            let host_key = key(name, &format!("hosts/{host}"));
            if client
                .get(&host_key)?
                .is_some_and(|kv| kv.create_revision == st.epoch)
            {
                return Ok(Vec::new());
            }
            store.mark_forgotten(name, st.epoch)?;
        }
    }
    join(store, net, host, until)?;
    let mut lines = vec![format!(
        "network {name}: this host was forgotten; it joined again as {host}"
    )];
    lines.extend(reregister(store, net, until)?);
    Ok(lines)
}

/// Registers this host's live leases of `net` under its new epoch.
fn reregister(store: &SqliteStore, net: &Network, until: Deadline) -> anyhow::Result<Vec<String>> {
    let name = &net.name;
    let shared = shared_of(net)?;
    let st = store
        .shared_state(name)?
        .context("the membership just recorded is gone")?;
    let leases = store.leases(Some(name))?;
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let ranges: Vec<_> = super::pool::pools_of(net).into_iter().flatten().collect();
    let mut by_block: BTreeMap<IpNet, Vec<Lease>> = BTreeMap::new();
    let mut lines = Vec::new();
    for l in leases {
        let Some(r) = ranges.iter().find(|r| r.range.contains(&l.address)) else {
            lines.push(format!(
                "network {name}: {} of {} lies in no range of the network: left as it is",
                l.address, l.owner
            ));
            continue;
        };
        let block = IpNet::new(l.address, block_prefix_of(shared, r)?)?.trunc();
        by_block.entry(block).or_default().push(l);
    }
    let client = || client_until(&shared.etcd, until);
    let host_key = key(name, &format!("hosts/{}", st.host));
    for (block, held) in by_block {
        let bkey = block_key(name, block);
        let current = client()?.get(&bkey)?;
        let conflict = |who: &str, lines: &mut Vec<String>| {
            for l in &held {
                lines.push(format!(
                    "network {name}: {} of {} lies in block {block}, which {who}: restart that container",
                    l.address, l.owner
                ));
            }
        };
        match current {
            None => {
                let r = client()?.txn(
                    &[
                        Compare::created_at(host_key.clone(), st.epoch),
                        Compare::absent(bkey.clone()),
                    ],
                    &[Op::put(
                        bkey.clone(),
                        json!({"host": st.host, "epoch": st.epoch, "mode": "private"}).to_string(),
                    )],
                    &[],
                )?;
                if r.succeeded && store.record_block(name, st.epoch, block, r.revision)? {
                    lines.push(format!(
                        "network {name}: block {block} claimed again with its {} live lease(s)",
                        held.len()
                    ));
                } else {
                    conflict("another host claimed meanwhile", &mut lines);
                }
            }
            Some(kv) if json_of(&kv)["mode"] == SHARED => {
                for l in &held {
                    let akey = address_key_name(name, block, l.address);
                    let value = json!({"host": st.host, "epoch": st.epoch, "owner": l.owner});
                    let r = client()?.txn(
                        &[
                            Compare::created_at(host_key.clone(), st.epoch),
                            Compare::mod_is(bkey.clone(), kv.mod_revision),
                            Compare::absent(akey.clone()),
                        ],
                        &[Op::put(akey.clone(), value.to_string())],
                        &[],
                    )?;
                    if r.succeeded
                        && store.record_key(name, st.epoch, l.address, block, &akey, r.revision)?
                    {
                        lines.push(format!(
                            "network {name}: {} of {} registered in shared block {block}",
                            l.address, l.owner
                        ));
                    } else {
                        lines.push(format!(
                            "network {name}: {} of {} lies in shared block {block}, where another \
                             host holds it or the block changed: restart that container",
                            l.address, l.owner
                        ));
                    }
                }
            }
            Some(kv) => {
                let owner = json_of(&kv)["host"]
                    .as_str()
                    .unwrap_or("(none)")
                    .to_string();
                conflict(&format!("host {owner} now holds"), &mut lines);
            }
        }
    }
    Ok(lines)
}
