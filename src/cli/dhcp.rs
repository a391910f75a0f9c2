//! `netattach dhcp`: the resident DHCP client for hooks (src/dhcp/). Runs
//! until stopped (systemd unit `packaging/netattach-dhcp.service`), takes up
//! the persisted leases at start and answers hooks on `STATE_DIR/dhcp.sock`.

use anyhow::Result;
use clap::Args;

use super::Context;
use crate::dhcp::{remote, service::Service};

#[derive(Args)]
pub struct DhcpArgs {}

pub fn run(ctx: &Context, _args: DhcpArgs) -> Result<()> {
    let service = Service::start(&ctx.state_dir);
    crate::dhcp::run_in_process(service.clone());
    remote::serve(&ctx.state_dir, service)
}
