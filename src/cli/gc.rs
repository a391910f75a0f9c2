//! `netattach gc`: free the leases of owners that are gone.

use anyhow::Result;
use clap::Args;

use super::Context;
use crate::netlink::Netlink;

/// The longest each of gc's etcd steps may take for one shared network.
const ETCD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Args)]
pub struct GcArgs {
    /// Print what was freed as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: GcArgs) -> Result<()> {
    let store = ctx.store()?;
    let freed = crate::gc::collect(&store)?;
    for f in &freed {
        if let Err(e) = crate::engine::forget_host_routes(&ctx.networks(), &f.leases) {
            eprintln!("netattach: {e:#}");
        }
    }
    let vlans = crate::vlan::prune(&mut Netlink::open()?, &store, &ctx.networks())?;
    // Shared networks: a due heartbeat, the local blocks checked against
    // etcd's, and empty blocks whose return etcd missed sent back.
    let shared: Vec<String> = ctx
        .networks()
        .list()?
        .networks
        .into_iter()
        .filter(|n| n.shared.is_some())
        .map(|n| n.name)
        .collect();
    for line in store.upkeep(&shared, ETCD_WAIT, false) {
        eprintln!("netattach: {line}");
    }
    if args.json {
        let report = serde_json::json!({ "freed": freed, "removed_vlans": vlans });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for f in &freed {
        let addresses: Vec<String> = f
            .leases
            .iter()
            .map(|l| format!("{}/{}", l.address, l.prefix_len))
            .collect();
        println!(
            "freed {} {} of {} (its netns {} is gone)",
            f.network,
            if addresses.is_empty() {
                "-".to_string()
            } else {
                addresses.join(",")
            },
            f.owner,
            f.netns
        );
    }
    for vlan in &vlans {
        println!("removed VLAN link {vlan} (created by netattach, now unused)");
    }
    if freed.is_empty() && vlans.is_empty() {
        println!("nothing to free");
    }
    Ok(())
}
