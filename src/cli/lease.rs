//! `netattach lease ls|release`.

use std::net::IpAddr;

use anyhow::{bail, Result};
use clap::Subcommand;

use super::{print_table, single_request, Context};
use crate::ipam::{LeaseStore, MacWant};
use crate::{engine, plan};

#[derive(Subcommand)]
pub enum LeaseCommand {
    /// List leases, of one network or all.
    #[command(alias = "list")]
    Ls {
        network: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Lease addresses of a network to an owner that is not a container (a
    /// host or appliance on the LAN), so no container ever gets them.
    Reserve {
        /// Who holds the addresses.
        #[arg(long)]
        owner: String,
        /// Specific address(es); without, one per family from the pool.
        #[arg(long)]
        ip: Vec<String>,
        network: String,
    },
    /// Free the leases of an owner, or one address. An interface still up
    /// in a live network namespace is removed first.
    Release {
        /// Free an address whose interface is still up: remove that
        /// interface (and so free every address of it).
        #[arg(long)]
        force: bool,
        /// Container or pod id.
        #[arg(long, conflicts_with = "address")]
        owner: Option<String>,
        /// Network of the address (needed when several networks hold it).
        #[arg(long)]
        network: Option<String>,
        address: Option<IpAddr>,
    },
}

pub fn run(ctx: &Context, cmd: LeaseCommand) -> Result<()> {
    let store = ctx.store()?;
    match cmd {
        LeaseCommand::Ls { network, json } => {
            let leases = store.leases(network.as_deref())?;
            // DHCP leases carry their server and expiry (src/dhcp/record.rs).
            let (records, _) =
                crate::dhcp::record::load_all(&crate::dhcp::lease_dir(&ctx.state_dir));
            let dhcp_of = |l: &crate::ipam::Lease| {
                records.iter().find(|r| {
                    r.request.owner == l.owner
                        && r.request.network == l.network
                        && IpAddr::V4(r.address) == l.address
                })
            };
            if json {
                let mut out = serde_json::to_value(&leases)?;
                for (v, l) in out.as_array_mut().into_iter().flatten().zip(&leases) {
                    if let Some(r) = dhcp_of(l) {
                        v["dhcp"] = serde_json::json!({ "server": r.server, "expiry": r.expiry });
                    }
                }
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let with_dhcp = leases.iter().any(|l| dhcp_of(l).is_some());
                let rows: Vec<Vec<String>> = leases
                    .iter()
                    .map(|l| {
                        let mut row = vec![
                            l.network.clone(),
                            format!("{}/{}", l.address, l.prefix_len),
                            l.owner.clone(),
                            l.ifname.clone(),
                            l.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                        ];
                        if with_dhcp {
                            row.push(match dhcp_of(l) {
                                Some(r) => format!("{}, {}", r.server, expiry_text(r.expiry)),
                                None => "-".into(),
                            });
                        }
                        row
                    })
                    .collect();
                let mut header = vec!["NETWORK", "ADDRESS", "OWNER", "INTERFACE", "MAC"];
                if with_dhcp {
                    header.push("DHCP");
                }
                print_table(&header, &rows);
            }
        }
        LeaseCommand::Reserve { owner, ip, network } => {
            let requests = single_request(&network, None, &ip, None)?;
            let definition = ctx.networks().load(&network)?;
            let peers = ctx.networks().list()?;
            let scope = plan::Scope {
                peers: &peers.networks,
                existing_ifnames: &[],
                trusted: true,
                identity: None,
            };
            let plans = plan::build(&requests, &[definition], scope)?;
            let mut claim = plans[0].claim();
            // Not an interface: the lease is the host's, not a container's.
            claim.ifname = "-".to_string();
            claim.link = None;
            claim.mac = MacWant::None;
            // No netns: a reservation is never found dead.
            let reservation = store.reserve(&owner, "", &[claim], &mut |_| true)?;
            for lease in reservation.leases.concat() {
                println!("{}/{}", lease.address, lease.prefix_len);
            }
        }
        LeaseCommand::Release {
            owner: Some(owner), ..
        } => {
            for l in engine::release(&store, &ctx.networks(), &owner, None)? {
                println!("released {} {}", l.network, l.address);
            }
        }
        LeaseCommand::Release {
            address: Some(address),
            network,
            force,
            ..
        } => {
            let networks: Vec<String> = match network {
                Some(n) => vec![n],
                None => {
                    let holders: Vec<String> = store
                        .leases(None)?
                        .into_iter()
                        .filter(|l| l.address == address)
                        .map(|l| l.network)
                        .collect();
                    if holders.len() > 1 {
                        bail!(
                            "{address} is leased on several networks ({}); give --network",
                            holders.join(", ")
                        );
                    }
                    holders
                }
            };
            match networks.first() {
                Some(n) => {
                    for l in engine::release_address(&store, &ctx.networks(), n, address, force)? {
                        println!("released {} {}", l.network, l.address);
                    }
                }
                None => bail!("no lease of {address}"),
            }
        }
        LeaseCommand::Release { .. } => bail!("give --owner ID or an ADDRESS"),
    }
    Ok(())
}

/// A lease's expiry as the time left: `1m52s left`, or `expired`.
fn expiry_text(expiry: u64) -> String {
    let now = crate::dhcp::exchange::now().as_secs();
    match expiry.checked_sub(now) {
        Some(left) if left > 0 => {
            let (h, m, s) = (left / 3600, left / 60 % 60, left % 60);
            if h > 0 {
                format!("{h}h{m:02}m left")
            } else {
                format!("{m}m{s:02}s left")
            }
        }
        _ => "expired".into(),
    }
}
