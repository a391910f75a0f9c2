//! `netattach doctor`: kernel support and the state of each network's parent.

use anyhow::Result;
use clap::Args;

use super::{print_table, Context};
use crate::doctor;
use crate::netlink::Netlink;

#[derive(Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: DoctorArgs) -> Result<()> {
    let features = doctor::kernel_features()?;
    let listed = ctx.networks().list()?;
    let mut parents = doctor::parents(
        &mut Netlink::open()?,
        &ctx.store()?,
        &listed.networks,
        &features,
    )?;
    parents.extend(listed.broken.iter().map(doctor::broken_definition));
    if args.json {
        let report = serde_json::json!({ "kernel": features, "networks": parents });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let rows: Vec<Vec<String>> = features
            .iter()
            .map(|f| {
                vec![
                    f.name.to_string(),
                    if f.supported { "yes" } else { "no" }.into(),
                    f.how.clone(),
                ]
            })
            .collect();
        print_table(&["KERNEL", "SUPPORTED", "HOW"], &rows);
        println!();
        let rows: Vec<Vec<String>> = parents
            .iter()
            .map(|p| {
                let problems = if p.problems.is_empty() {
                    "ok".to_string()
                } else {
                    p.problems.join("; ")
                };
                vec![
                    p.network.clone(),
                    p.parent.clone(),
                    p.state.clone(),
                    problems,
                ]
            })
            .collect();
        print_table(&["NETWORK", "PARENT", "STATE", "PROBLEMS"], &rows);
    }
    let healthy = parents.iter().all(|p| p.problems.is_empty());
    if !healthy {
        anyhow::bail!("some networks have problems (see above)");
    }
    Ok(())
}
