//! `netattach nri`: the NRI plugin for containerd and CRI-O.
//!
//! External mode (a systemd service): connects to the runtime's NRI socket and
//! reconnects whenever the runtime restarts; logs to stderr. Launched mode
//! (`/opt/nri/plugins/NN-netattach`, started by the runtime with the socket as
//! fd 3 in `NRI_PLUGIN_SOCKET`): name and index from the environment, logs to
//! a file, exits when the runtime closes the connection.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::Context;
use crate::nri::log::{self, DEFAULT_LOG_FILE};
use crate::nri::plugin::Paths;
use crate::nri::run::{self, Options};
use crate::nri::settings::{DEFAULT_IDX, DEFAULT_NAME, DEFAULT_SOCKET};

#[derive(Args)]
pub struct NriArgs {
    /// The runtime's NRI socket (ignored when launched with NRI_PLUGIN_SOCKET).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Plugin name to register with.
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
    /// Plugin index, two digits: the order among NRI plugins.
    #[arg(long, default_value = DEFAULT_IDX)]
    idx: String,
    /// Append the log to this file [default: stderr; launched by the runtime:
    /// /var/log/netattach-nri.log].
    #[arg(long)]
    log_file: Option<PathBuf>,
}

pub fn run(ctx: &Context, args: NriArgs) -> Result<()> {
    let (transport, identity, launched) =
        run::transport_and_identity(args.socket, &args.name, &args.idx)?;
    let log_file = args
        .log_file
        .or_else(|| launched.then(|| PathBuf::from(DEFAULT_LOG_FILE)));
    match &log_file {
        Some(path) => {
            if let Err(e) = log::to_file(path) {
                log::to_stderr();
                crate::nri_log!(warn, "cannot log to {}: {e}", path.display());
            }
        }
        None => log::to_stderr(),
    }
    // The plugin owns its pods' DHCP leases itself (src/dhcp/).
    crate::dhcp::run_in_process(crate::dhcp::service::Service::start(&ctx.state_dir));
    run::run(Options {
        transport,
        identity,
        paths: Paths {
            config_dir: ctx.config_dir.clone(),
            state_dir: ctx.state_dir.clone(),
        },
    })
}
