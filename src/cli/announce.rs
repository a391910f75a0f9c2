//! `netattach announce` (hidden): the announcement rounds after a link's
//! first (src/announce.rs), in a process of their own so that the
//! container's start does not wait for them. Started by attach only.

use anyhow::{Context as _, Result};
use clap::Args;
use std::net::IpAddr;

use crate::request::MacAddr;

#[derive(Args)]
pub struct AnnounceArgs {
    /// The container's network namespace.
    #[arg(long)]
    netns: std::path::PathBuf,
    /// Its inode when the announcements began: another namespace at that
    /// path later is not the container's.
    #[arg(long)]
    inode: u64,
    #[arg(long)]
    ifname: String,
    #[arg(long)]
    mac: MacAddr,
    /// Rounds still to send.
    #[arg(long)]
    count: u32,
    addresses: Vec<IpAddr>,
}

pub fn run(args: AnnounceArgs) -> Result<()> {
    crate::announce::repeat(
        &args.netns,
        args.inode,
        &args.ifname,
        args.mac.0,
        &args.addresses,
        args.count,
    )
    .context("announce")
}
