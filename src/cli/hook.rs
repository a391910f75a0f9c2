//! `netattach hook [attach|release]`: the OCI runtime hook.

use clap::{Args, ValueEnum};

use super::Context;
use crate::deadline::Deadline;
use crate::hook::{read_input, Verb};
use crate::{engine, netns::Netns, request};

#[derive(Clone, Copy, ValueEnum)]
pub enum HookVerb {
    /// createRuntime / prestart: attach the container's networks.
    Attach,
    /// poststop: free the container's leases.
    Release,
}

#[derive(Args)]
pub struct HookArgs {
    /// What to do; without it, a state with status "stopped" means release.
    verb: Option<HookVerb>,
}

pub fn run(ctx: &Context, args: HookArgs) -> anyhow::Result<()> {
    let verb = args.verb.map(|v| match v {
        HookVerb::Attach => Verb::Attach,
        HookVerb::Release => Verb::Release,
    });
    let input = read_input(verb, std::io::stdin().lock())?;
    crate::timing::mark("container state read");
    let Some(value) = input.request else {
        return Ok(()); // no annotation: not ours
    };
    match input.verb {
        Verb::Attach => {
            let requests = request::parse(&value)?;
            let path = input.netns.expect("attach has a netns");
            let netns = Netns::open(&path)
                .map_err(|e| anyhow::anyhow!("open network namespace {}: {e}", path.display()))?;
            let store = ctx.store()?;
            store.set_deadline(Some(deadline(ctx, input.timeout)));
            crate::timing::mark("lease store open");
            let attached = engine::attach(
                &ctx.networks(),
                &store,
                &input.container_id,
                &netns,
                &requests,
            )?;
            // The runtime keeps a hook's stderr in its log.
            for w in &attached.warnings {
                eprintln!("netattach: warning: {w}");
            }
        }
        Verb::Release => {
            let store = ctx.store()?;
            store.set_deadline(Some(deadline(ctx, input.timeout)));
            engine::release(&store, &input.container_id, input.netns.as_deref())?;
        }
    }
    Ok(())
}

/// Waits end before the runtime's `timeout` for this hook (counted from the
/// process start), or after the default wait when the bundle sets none.
fn deadline(ctx: &Context, timeout: Option<std::time::Duration>) -> Deadline {
    match timeout {
        Some(t) => Deadline::within(ctx.started, t),
        None => Deadline::default_wait(),
    }
}
