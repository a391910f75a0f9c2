//! `netattach host-links`: every network's host link made as it should be
//! (src/hostlink.rs), at boot before containers start (the systemd unit
//! `packaging/netattach-host-links.service` runs it), or by hand.

use anyhow::{bail, Result};
use clap::Args;

use super::Context;
use crate::netlink::Netlink;

#[derive(Args)]
pub struct HostLinksArgs {}

pub fn run(ctx: &Context, _args: HostLinksArgs) -> Result<()> {
    let listed = ctx.networks().list()?;
    for b in &listed.broken {
        eprintln!("netattach: {b}");
    }
    let store = ctx.store()?;
    let mut failed = 0;
    let lines = crate::hostlink::ensure_all(&mut Netlink::open()?, &store, &listed.networks);
    for line in &lines {
        println!("{line}");
        failed += usize::from(!line.contains(": host link "));
    }
    if lines.is_empty() {
        println!("no network has host addresses");
    }
    if failed > 0 {
        bail!("{failed} host link(s) could not be set up");
    }
    Ok(())
}
