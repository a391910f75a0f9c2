//! `netattach lease ls|release`.

use std::net::IpAddr;

use anyhow::{bail, Result};
use clap::Subcommand;

use super::{print_table, single_request, Context};
use crate::ipam::LeaseStore;
use crate::plan;

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
    /// Free the leases of an owner, or one address.
    Release {
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
            if json {
                println!("{}", serde_json::to_string_pretty(&leases)?);
            } else {
                let rows: Vec<Vec<String>> = leases
                    .iter()
                    .map(|l| {
                        vec![
                            l.network.clone(),
                            format!("{}/{}", l.address, l.prefix_len),
                            l.owner.clone(),
                            l.ifname.clone(),
                        ]
                    })
                    .collect();
                print_table(&["NETWORK", "ADDRESS", "OWNER", "INTERFACE"], &rows);
            }
        }
        LeaseCommand::Reserve { owner, ip, network } => {
            let requests = single_request(&network, None, &ip, None)?;
            let definition = ctx.networks().load(&network)?;
            let plans = plan::build(&requests, &[definition], &[])?;
            let mut claim = plans[0].claim();
            // Not an interface: the lease is the host's, not a container's.
            claim.ifname = "-".to_string();
            for lease in store.reserve(&owner, "", &[claim])?.concat() {
                println!("{}/{}", lease.address, lease.prefix_len);
            }
        }
        LeaseCommand::Release {
            owner: Some(owner), ..
        } => {
            for l in store.release_owner(&owner)? {
                println!("released {} {}", l.network, l.address);
            }
        }
        LeaseCommand::Release {
            address: Some(address),
            network,
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
                Some(n) => match store.release_address(n, address)? {
                    Some(l) => println!("released {} {}", l.network, l.address),
                    None => bail!("no lease of {address} on network {n}"),
                },
                None => bail!("no lease of {address}"),
            }
        }
        LeaseCommand::Release { .. } => bail!("give --owner ID or an ADDRESS"),
    }
    Ok(())
}
