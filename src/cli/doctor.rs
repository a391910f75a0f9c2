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
    let store = ctx.store()?;
    let host = vec![
        doctor::lease_store_lock(store.queue_path()),
        doctor::netns_identity(),
        doctor::links_to_repair(&store),
        doctor::dhcp_client(&ctx.state_dir, &listed.networks),
    ];
    let mut parents = doctor::parents(&mut Netlink::open()?, &store, &listed.networks, &features)?;
    parents.extend(listed.broken.iter().map(doctor::broken_definition));
    if args.json {
        let report = serde_json::json!({ "kernel": features, "host": host, "networks": parents });
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
        let rows: Vec<Vec<String>> = host
            .iter()
            .map(|c| {
                vec![
                    c.check.to_string(),
                    c.state.clone(),
                    problems_cell(&c.problems),
                ]
            })
            .collect();
        print_table(&["HOST", "STATE", "PROBLEMS"], &rows);
        println!();
        let rows: Vec<Vec<String>> = parents
            .iter()
            .map(|p| {
                vec![
                    p.network.clone(),
                    p.parent.clone(),
                    p.state.clone(),
                    problems_cell(&p.problems),
                ]
            })
            .collect();
        print_table(&["NETWORK", "PARENT", "STATE", "PROBLEMS"], &rows);
    }
    if host.iter().any(|c| !c.problems.is_empty()) {
        anyhow::bail!("the host has problems (see above)");
    }
    if parents.iter().any(|p| !p.problems.is_empty()) {
        anyhow::bail!("some networks have problems (see above)");
    }
    Ok(())
}

fn problems_cell(problems: &[String]) -> String {
    if problems.is_empty() {
        "ok".to_string()
    } else {
        problems.join("; ")
    }
}
