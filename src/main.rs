//! The `netattach` command: the OCI hook face, the admin CLI and hand attach.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use netattach::cli;
use netattach::config::DEFAULT_CONFIG_DIR;

/// Containers on the physical LAN with their own MAC and IP (macvlan / ipvlan).
#[derive(Parser)]
#[command(name = "netattach", version)]
struct Cli {
    /// Directory of network definitions.
    #[arg(long, global = true, env = "NETATTACH_CONFIG_DIR", default_value = DEFAULT_CONFIG_DIR)]
    config_dir: PathBuf,
    /// Directory of leases and other state.
    #[arg(long, global = true, env = "NETATTACH_STATE_DIR", default_value = cli::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Define, list, inspect and remove networks.
    #[command(subcommand)]
    Network(cli::network::NetworkCommand),
    /// OCI runtime hook: the container state on stdin.
    Hook(cli::hook::HookArgs),
    /// Attach a network namespace by hand.
    Attach(cli::attach::AttachArgs),
    /// Release what `attach` did.
    Detach(cli::attach::DetachArgs),
    /// The hosts of shared networks: list them, forget one that is gone.
    #[command(subcommand)]
    Host(cli::host::HostCommand),
    /// List and release leases.
    #[command(subcommand)]
    Lease(cli::lease::LeaseCommand),
    /// Free the leases of containers whose network namespace is gone.
    Gc(cli::gc::GcArgs),
    /// Make every network's host link (--host-address) as it should be.
    HostLinks(cli::hostlinks::HostLinksArgs),
    /// Give live containers whose links are gone (a parent went away) their
    /// links back, with their addresses and MACs.
    Repair(cli::repair::RepairArgs),
    /// Kernel support for macvlan, ipvlan and 802.1Q; each network's parent.
    Doctor(cli::doctor::DoctorArgs),
    /// NRI plugin for containerd and CRI-O: attach pods' networks.
    Nri(cli::nri::NriArgs),
    /// The resident DHCP client that hooks ask for `ipam dhcp` leases.
    Dhcp(cli::dhcp::DhcpArgs),
}

/// `netattach hook [attach|release]` without options, as every container
/// start runs it, read without building the full parser; the directories
/// come from the environment or the defaults, as the parser would take them.
fn hook_as_runtimes_run_it() -> Option<Cli> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let hook = cli::hook::HookArgs::from_exact_args(&args)?;
    // An empty variable is the parser's error to report.
    let dir = |var: &str, default: &str| match std::env::var_os(var) {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => Some(PathBuf::from(default)),
    };
    Some(Cli {
        config_dir: dir("NETATTACH_CONFIG_DIR", DEFAULT_CONFIG_DIR)?,
        state_dir: dir("NETATTACH_STATE_DIR", cli::DEFAULT_STATE_DIR)?,
        command: Command::Hook(hook),
    })
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    netattach::timing::mark("main");
    let cli = hook_as_runtimes_run_it().unwrap_or_else(Cli::parse);
    netattach::timing::mark("arguments parsed");
    let ctx = cli::Context {
        config_dir: cli.config_dir,
        state_dir: cli.state_dir,
        started,
    };
    let result = match cli.command {
        Command::Network(cmd) => cli::network::run(&ctx, cmd),
        Command::Hook(args) => cli::hook::run(&ctx, args),
        Command::Attach(args) => cli::attach::run_attach(&ctx, args),
        Command::Detach(args) => cli::attach::run_detach(&ctx, args),
        Command::Host(cmd) => cli::host::run(&ctx, cmd),
        Command::Lease(cmd) => cli::lease::run(&ctx, cmd),
        Command::Gc(args) => cli::gc::run(&ctx, args),
        Command::HostLinks(args) => cli::hostlinks::run(&ctx, args),
        Command::Repair(args) => cli::repair::run(&ctx, args),
        Command::Doctor(args) => cli::doctor::run(&ctx, args),
        Command::Nri(args) => cli::nri::run(&ctx, args),
        Command::Dhcp(args) => cli::dhcp::run(&ctx, args),
    };
    netattach::timing::mark("done");
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: runc shows the hook's stderr to the user as is.
            eprintln!("netattach: {e:#}");
            ExitCode::FAILURE
        }
    }
}
