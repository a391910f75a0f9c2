//! `netattach attach` and `detach`: the hook's work, by hand.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::{print_table, single_request, Context};
use crate::engine;

#[derive(Args)]
pub struct AttachArgs {
    /// The network namespace to attach: a path (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`) or, as `ip netns` takes it, a NAME under /run/netns.
    #[arg(long, value_parser = netns_path)]
    netns: PathBuf,
    /// Owner id of the leases (default: the netns path).
    #[arg(long)]
    id: Option<String>,
    /// Static address(es) to use instead of pooled ones.
    #[arg(long)]
    ip: Vec<String>,
    /// MAC address of the interface (macvlan).
    #[arg(long)]
    mac: Option<String>,
    /// The owner's stable identity, kept across re-creations (what
    /// mac_policy=stable derives the MAC from).
    #[arg(long)]
    identity: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// NETWORK or NETWORK@IFNAME.
    network: String,
}

#[derive(Args)]
pub struct DetachArgs {
    /// Owner id given to attach.
    #[arg(long, required_unless_present = "netns")]
    id: Option<String>,
    /// The netns given to attach, a path or a NAME under /run/netns (found
    /// by its recorded identity when not given).
    #[arg(long, value_parser = netns_path)]
    netns: Option<PathBuf>,
}

/// `--netns`: a path, or a bare name under /run/netns (as `ip netns` names them).
fn netns_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("empty".into());
    }
    if value.contains('/') {
        return Ok(PathBuf::from(value));
    }
    if value == "." || value == ".." {
        return Err(format!("{value:?} is not a namespace name"));
    }
    Ok(PathBuf::from("/run/netns").join(value))
}

pub fn run_attach(ctx: &Context, args: AttachArgs) -> Result<()> {
    // The same grammar and checks as the annotation: build its JSON form.
    let (name, interface) = match args.network.split_once('@') {
        Some((n, i)) => (n, Some(i)),
        None => (args.network.as_str(), None),
    };
    let requests = single_request(name, interface, &args.ip, args.mac.as_deref())?;
    let target = engine::Target::open(&args.netns)?;
    let owner = args.id.unwrap_or_else(|| args.netns.display().to_string());
    let store = ctx.store()?;
    store.on_start_path();
    crate::timing::mark("lease store open");
    if let Some(id) = &args.identity {
        crate::request::check_identity(id).map_err(anyhow::Error::msg)?;
    }
    let owner = engine::Owner {
        id: &owner,
        identity: args.identity.as_deref(),
    };
    let attached = engine::attach(&ctx.networks(), &store, owner, target, &requests)?;
    for w in &attached.warnings {
        eprintln!("netattach: warning: {w}");
    }
    let links = attached.links;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&links)?);
    } else {
        let rows: Vec<Vec<String>> = links
            .iter()
            .map(|l| {
                vec![
                    l.ifname.clone(),
                    l.network.clone(),
                    l.mac.clone(),
                    l.addresses.join(","),
                ]
            })
            .collect();
        print_table(&["INTERFACE", "NETWORK", "MAC", "ADDRESSES"], &rows);
    }
    Ok(())
}

pub fn run_detach(ctx: &Context, args: DetachArgs) -> Result<()> {
    let owner = match (&args.id, &args.netns) {
        (Some(id), _) => id.clone(),
        (None, Some(path)) => path.display().to_string(),
        (None, None) => bail!("give --id or --netns"),
    };
    // The owner's interfaces are removed first wherever its netns still lives;
    // --netns only saves looking for it.
    let freed = engine::release(
        &ctx.store()?,
        &ctx.networks(),
        &owner,
        args.netns.as_deref(),
    )?;
    for lease in freed {
        println!(
            "released {} {}/{}",
            lease.network, lease.address, lease.prefix_len
        );
    }
    Ok(())
}
