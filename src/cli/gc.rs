//! `netattach gc`: free the leases of owners that are gone.

use anyhow::Result;
use clap::Args;

use super::Context;

#[derive(Args)]
pub struct GcArgs {
    /// Print what was freed as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: GcArgs) -> Result<()> {
    let freed = crate::gc::collect(&ctx.store()?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&freed)?);
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
    if freed.is_empty() {
        println!("nothing to free");
    }
    Ok(())
}
