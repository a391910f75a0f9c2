//! `netattach host ls|forget`: the hosts of shared networks as etcd knows
//! them, and removing one that is gone for good (docs/multi-host.md).

use anyhow::{bail, Result};
use clap::Subcommand;

use super::{print_table, Context};
use crate::config::Network;
use crate::deadline::Deadline;
use crate::ipam::shared;

/// How long one network's etcd reads or writes may take in all.
const ETCD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Subcommand)]
pub enum HostCommand {
    /// List the hosts of shared networks: epoch, last heartbeat, whether
    /// their alive key exists, their blocks and how full they are.
    #[command(alias = "list")]
    Ls {
        /// Only this network (default: every shared network defined here).
        network: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a host from shared networks: its blocks become free for the
    /// others. Assert first that nothing of it is on the LAN any more.
    Forget {
        host: String,
        /// Only this network (default: every shared network defined here).
        #[arg(long)]
        network: Option<String>,
        /// Also while its alive key exists (it heartbeated within hold +
        /// margin): only for a host known to be down for good.
        #[arg(long)]
        force: bool,
    },
}

/// The shared networks the command is about.
fn shared_networks(ctx: &Context, only: Option<&str>) -> Result<Vec<Network>> {
    let dir = ctx.networks();
    let nets = match only {
        Some(name) => vec![dir.load(name)?],
        None => dir.list()?.networks,
    };
    let shared: Vec<Network> = nets.into_iter().filter(|n| n.shared.is_some()).collect();
    match (only, shared.is_empty()) {
        (Some(name), true) => bail!("network {name} is not shared (it has no etcd)"),
        (None, true) => bail!("no shared network is defined here"),
        _ => Ok(shared),
    }
}

fn client_of(net: &Network) -> Result<crate::etcd::Client> {
    let endpoints = net
        .shared
        .as_ref()
        .map(|s| s.etcd.clone())
        .unwrap_or_default();
    Ok(shared::client_until(
        &endpoints,
        Deadline::after(ETCD_WAIT),
    )?)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn run(ctx: &Context, cmd: HostCommand) -> Result<()> {
    match cmd {
        HostCommand::Ls { network, json } => {
            let mut listing = Vec::new();
            for net in shared_networks(ctx, network.as_deref())? {
                let hosts = shared::hosts(&client_of(&net)?, &net)?;
                listing.push((net.name.clone(), hosts));
            }
            if json {
                let v: Vec<serde_json::Value> = listing
                    .iter()
                    .map(|(n, h)| serde_json::json!({"network": n, "hosts": h}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let now = unix_now();
            let mut rows = Vec::new();
            for (network, hosts) in &listing {
                for h in hosts {
                    let used: u64 = h.blocks.iter().filter_map(|b| b.used).sum();
                    let size: u128 = h.blocks.iter().map(|b| b.size).sum();
                    let blocks: Vec<String> = h
                        .blocks
                        .iter()
                        .map(|b| {
                            let used = b.used.map(|u| u.to_string()).unwrap_or_else(|| "?".into());
                            let mode = if b.mode == "private" { "" } else { " (shared)" };
                            format!("{} {used}/{}{mode}", b.block, b.size)
                        })
                        .collect();
                    rows.push(vec![
                        network.clone(),
                        h.host.clone(),
                        if h.epoch == 0 {
                            "-".into()
                        } else {
                            h.epoch.to_string()
                        },
                        if h.heartbeat == 0 {
                            "-".into()
                        } else {
                            format!("{} s ago", now.saturating_sub(h.heartbeat))
                        },
                        if h.alive { "yes" } else { "no" }.into(),
                        format!("{used}/{size}"),
                        h.borrowed.to_string(),
                        blocks.join(", "),
                    ]);
                }
            }
            print_table(
                &[
                    "NETWORK",
                    "HOST",
                    "EPOCH",
                    "HEARTBEAT",
                    "ALIVE",
                    "USED",
                    "BORROWED",
                    "BLOCKS",
                ],
                &rows,
            );
        }
        HostCommand::Forget {
            host,
            network,
            force,
        } => {
            if !shared::valid_host_id(&host) {
                bail!("host id {host:?} must match [A-Za-z0-9_.-]{{1,64}}");
            }
            for net in shared_networks(ctx, network.as_deref())? {
                let hold = net.shared.as_ref().map(|s| s.hold).unwrap_or(0);
                let done = shared::forget(&client_of(&net)?, &net.name, &host, force, hold)?;
                println!(
                    "network {}: host {host} {}; {} block(s) freed{}{}{}",
                    net.name,
                    if done.host_key {
                        "forgotten"
                    } else {
                        "was not a member"
                    },
                    done.blocks.len(),
                    if done.blocks.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", done.blocks.join(", "))
                    },
                    if done.addresses > 0 {
                        format!(", {} address key(s) deleted", done.addresses)
                    } else {
                        String::new()
                    },
                    if done.orphaned.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; {} shared block(s) left without owner until the addresses other hosts \
                             borrowed there are released ({})",
                            done.orphaned.len(),
                            done.orphaned.join(", ")
                        )
                    }
                );
            }
        }
    }
    Ok(())
}
