//! `netattach hook [attach|release]`: the OCI runtime hook.

use clap::{Args, ValueEnum};

use super::Context;
use crate::deadline::Deadline;
use crate::hook::{read_input, Verb};
use crate::{engine, request};

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

impl HookArgs {
    /// The arguments after the program name when they are exactly what the
    /// hooks.d files and runtimes' configs give (`hook`, `hook attach`, `hook
    /// release`, no options), else `None`: then the full parser runs, with
    /// its help and errors. Every container start runs this, and building
    /// the whole command line's parser costs more than the rest of start-up.
    pub fn from_exact_args(args: &[std::ffi::OsString]) -> Option<HookArgs> {
        let verb = match args {
            [hook] if hook == "hook" => None,
            [hook, verb] if hook == "hook" && verb == "attach" => Some(HookVerb::Attach),
            [hook, verb] if hook == "hook" && verb == "release" => Some(HookVerb::Release),
            _ => return None,
        };
        Some(HookArgs { verb })
    }
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
            let target = engine::Target::open(&path)?;
            let store = ctx.store()?;
            store.on_start_path();
            store.set_deadline(Some(deadline(ctx, input.timeout)));
            crate::timing::mark("lease store open");
            let owner = engine::Owner {
                id: &input.container_id,
                identity: input.identity.as_deref(),
            };
            let attached = engine::attach(&ctx.networks(), &store, owner, target, &requests)?;
            // The runtime keeps a hook's stderr in its log.
            for w in &attached.warnings {
                eprintln!("netattach: warning: {w}");
            }
        }
        Verb::Release => {
            let store = ctx.store()?;
            store.set_deadline(Some(deadline(ctx, input.timeout)));
            engine::release(
                &store,
                &ctx.networks(),
                &input.container_id,
                input.netns.as_deref(),
            )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    /// The `hook` verb as the full parser sees it.
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(clap::Subcommand)]
    enum Command {
        Hook(HookArgs),
    }

    fn parsed(args: &[&str]) -> Option<Option<Verb>> {
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        HookArgs::from_exact_args(&args).map(|a| a.verb.map(verb_of))
    }

    fn verb_of(v: HookVerb) -> Verb {
        match v {
            HookVerb::Attach => Verb::Attach,
            HookVerb::Release => Verb::Release,
        }
    }

    #[test]
    fn the_exact_hook_arguments_parse_as_the_full_parser_does() {
        for args in [&["hook"][..], &["hook", "attach"], &["hook", "release"]] {
            let full = Cli::from_arg_matches(
                &Cli::command()
                    .get_matches_from(std::iter::once("netattach").chain(args.iter().copied())),
            )
            .unwrap();
            let Command::Hook(full) = full.command;
            assert_eq!(parsed(args), Some(full.verb.map(verb_of)), "{args:?}");
        }
    }

    #[test]
    fn anything_else_goes_to_the_full_parser() {
        for args in [
            &[][..],
            &["hook", "--help"],
            &["hook", "attach", "extra"],
            &["hook", "Attach"],
            &["--state-dir", "/x", "hook", "attach"],
            &["attach", "hook"],
        ] {
            assert_eq!(parsed(args), None, "{args:?}");
        }
    }
}
