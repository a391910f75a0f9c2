//! `netattach repair`: live containers whose links are gone get them back,
//! with their addresses and MACs (src/repair.rs).

use anyhow::{bail, Result};
use clap::Args;

use super::Context;

#[derive(Args)]
pub struct RepairArgs {
    /// Only list what needs repair.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(ctx: &Context, args: RepairArgs) -> Result<()> {
    let store = ctx.store()?;
    let broken = crate::repair::find(&store)?;
    if broken.is_empty() {
        println!("nothing to repair");
        return Ok(());
    }
    for b in &broken {
        println!(
            "{} of {} (network {}): {}",
            b.ifname, b.owner, b.network, b.state
        );
    }
    if args.dry_run {
        return Ok(());
    }
    let mut failed = 0;
    for (owner, result) in crate::repair::repair(&ctx.networks(), &store, &broken) {
        match result {
            Ok(links) => {
                for l in links.iter().filter(|l| !l.existing) {
                    println!(
                        "repaired {} of {owner} (network {}): {} {}",
                        l.ifname,
                        l.network,
                        l.mac,
                        l.addresses.join(",")
                    );
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("netattach: {owner}: {e:#}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} owner(s) could not be repaired");
    }
    Ok(())
}
