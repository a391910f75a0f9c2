//! The OCI hook face (SPEC §6): runc, crun, podman and CRI-O run
//! `netattach hook attach` at createRuntime and `netattach hook release` at
//! poststop, with the container's state on stdin.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{ContainerState, Hook, Hooks, LinuxNamespaceType, Spec, State};

use crate::request;

/// What the hook was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Attach,
    Release,
}

/// The parts of the runtime's state the hook acts on.
#[derive(Debug)]
pub struct HookInput {
    pub verb: Verb,
    pub container_id: String,
    /// The `netattach/networks` annotation; `None` when absent (nothing to do).
    pub request: Option<String>,
    /// The `netattach/identity` annotation, from the same place.
    pub identity: Option<String>,
    /// The container's network namespace: for attach, where to attach; for
    /// release, the configured path of a netns that may outlive the container
    /// (a pod's, a bind mount), if the bundle names one.
    pub netns: Option<PathBuf>,
    /// The `timeout` the bundle gives this hook (the runtime kills it then),
    /// when there is work to do and the bundle says.
    pub timeout: Option<Duration>,
}

/// Upper bound of the state document read from stdin: annotations are bounded
/// by the runtime, this only keeps a runaway writer from exhausting memory.
const MAX_STATE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads the state from `input` and resolves everything the verb needs.
/// `verb` is `None` when the runtime called `netattach hook` without one: then a
/// stopped container means release.
pub fn read_input(verb: Option<Verb>, input: impl Read) -> Result<HookInput> {
    let mut raw = Vec::new();
    input
        .take(MAX_STATE_BYTES)
        .read_to_end(&mut raw)
        .context("read the container state from stdin")?;
    let state: State =
        serde_json::from_slice(&raw).context("parse the container state on stdin")?;
    let verb = verb.unwrap_or(if *state.status() == ContainerState::Stopped {
        Verb::Release
    } else {
        Verb::Attach
    });
    if state.id().is_empty() {
        bail!("the container state on stdin has no id");
    }
    let mut spec = None;
    let (request, identity) = match annotation(state.annotations().as_ref(), request::ANNOTATION) {
        Some(v) => (
            Some(v),
            annotation(state.annotations().as_ref(), request::IDENTITY_ANNOTATION),
        ),
        None => {
            // Older runtimes leave annotations out of the state: read the bundle.
            let loaded = load_spec(state.bundle())?;
            let annotations = loaded.as_ref().and_then(|s| s.annotations().as_ref());
            let value = annotation(annotations, request::ANNOTATION);
            let identity = annotation(annotations, request::IDENTITY_ANNOTATION);
            spec = loaded;
            (value, identity)
        }
    };
    if let Some(id) = &identity {
        request::check_identity(id).map_err(anyhow::Error::msg)?;
    }
    let netns = match (verb, &request) {
        (Verb::Attach, Some(_)) => Some(netns_path(&state, &mut spec)?),
        (Verb::Release, Some(_)) => {
            if spec.is_none() {
                // The bundle may be gone by poststop: then there is no hint.
                spec = load_spec(state.bundle()).ok().flatten();
            }
            configured_netns_path(spec.as_ref())
        }
        _ => None,
    };
    let timeout = match &request {
        Some(_) => timeout_of_this_hook(verb, state.bundle(), spec.as_ref()),
        None => None,
    };
    Ok(HookInput {
        verb,
        container_id: state.id().to_string(),
        request,
        identity,
        netns,
        timeout,
    })
}

/// The `timeout` of the bundle's hook entries that run netattach for `verb`
/// (the shortest, if several do). Podman copies `hooks.d`'s timeout there;
/// runc and crun kill a hook that outlives it.
fn timeout_of_this_hook(verb: Verb, bundle: &Path, spec: Option<&Spec>) -> Option<Duration> {
    let hooks = match spec {
        Some(spec) => spec.hooks().clone()?,
        None => load_hooks(bundle)?,
    };
    let phases: [&Option<Vec<Hook>>; 2] = match verb {
        Verb::Attach => [hooks.create_runtime(), hooks.prestart()],
        Verb::Release => [hooks.poststop(), &None],
    };
    let me = std::env::current_exe().ok();
    phases
        .into_iter()
        .flatten()
        .flatten()
        .filter(|h| runs_netattach(h, me.as_deref()))
        .filter_map(|h| h.timeout().filter(|t| *t > 0))
        .min()
        .map(|secs| Duration::from_secs(secs as u64))
}

fn runs_netattach(hook: &Hook, me: Option<&Path>) -> bool {
    let is_me = |p: &Path| me.is_some_and(|me| std::fs::canonicalize(p).is_ok_and(|p| p == me));
    is_me(hook.path())
        || hook
            .args()
            .iter()
            .flatten()
            .any(|a| a.rsplit('/').next() == Some("netattach"))
}

/// Only the hooks of the bundle's config (the rest is skipped unparsed).
fn load_hooks(bundle: &Path) -> Option<Hooks> {
    #[derive(serde::Deserialize)]
    struct HooksOnly {
        hooks: Option<Hooks>,
    }
    if bundle.as_os_str().is_empty() {
        return None;
    }
    let raw = std::fs::read(bundle.join("config.json")).ok()?;
    serde_json::from_slice::<HooksOnly>(&raw).ok()?.hooks
}

/// The bundle's network namespace entry, if it has one.
fn network_namespace(spec: Option<&Spec>) -> Option<&oci_spec::runtime::LinuxNamespace> {
    spec.and_then(|s| s.linux().as_ref())
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network))
}

/// The path the bundle gives its network namespace (one that exists apart
/// from the container), if any.
fn configured_netns_path(spec: Option<&Spec>) -> Option<PathBuf> {
    network_namespace(spec).and_then(|ns| ns.path().clone())
}

fn annotation(annotations: Option<&HashMap<String, String>>, key: &str) -> Option<String> {
    annotations.and_then(|a| a.get(key)).cloned()
}

fn load_spec(bundle: &Path) -> Result<Option<Spec>> {
    if bundle.as_os_str().is_empty() {
        return Ok(None);
    }
    let path = bundle.join("config.json");
    match Spec::load(&path) {
        Ok(spec) => Ok(Some(spec)),
        Err(oci_spec::OciSpecError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// The container's netns: `/proc/<pid>/ns/net` when the runtime gave a pid,
/// else the path of the network namespace in the bundle's config.
fn netns_path(state: &State, spec: &mut Option<Spec>) -> Result<PathBuf> {
    if let Some(pid) = state.pid().filter(|p| *p > 0) {
        return Ok(PathBuf::from(format!("/proc/{pid}/ns/net")));
    }
    if spec.is_none() {
        *spec = load_spec(state.bundle())?;
    }
    match network_namespace(spec.as_ref()) {
        Some(ns) => match ns.path() {
            Some(path) => Ok(path.clone()),
            None => bail!(
                "container {} has no pid in its state and no path for its network namespace",
                state.id()
            ),
        },
        None => bail!(
            "container {} has no network namespace of its own; netattach will not touch the host's",
            state.id()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_create_runtime_state_attaches_in_the_pid_netns() {
        let state = r#"{"ociVersion":"1.0.2-dev","id":"c1","status":"creating","pid":4242,
            "bundle":"/nonexistent","annotations":{"netattach/networks":"lan"}}"#;
        let input = read_input(Some(Verb::Attach), state.as_bytes()).unwrap();
        assert_eq!(input.container_id, "c1");
        assert_eq!(input.request.as_deref(), Some("lan"));
        assert_eq!(input.netns, Some(PathBuf::from("/proc/4242/ns/net")));
    }

    #[test]
    fn stopped_state_without_verb_means_release() {
        let state = r#"{"ociVersion":"1.0","id":"c1","status":"stopped","bundle":"/nonexistent",
            "root":"/run/crun","annotations":{"netattach/networks":"lan"}}"#;
        let input = read_input(None, state.as_bytes()).unwrap();
        assert_eq!(input.verb, Verb::Release);
        assert_eq!(input.netns, None);
    }

    #[test]
    fn absent_annotation_is_nothing_to_do() {
        let state = r#"{"ociVersion":"1.0","id":"c1","status":"created","pid":7,"bundle":""}"#;
        let input = read_input(Some(Verb::Attach), state.as_bytes()).unwrap();
        assert_eq!(input.request, None);
        assert_eq!(input.netns, None);
    }

    #[test]
    fn bundle_config_supplies_annotations_and_netns_path() {
        let dir = std::env::temp_dir().join(format!("netattach-hook-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"netattach/networks":"lan@eth3"},
               "linux":{"namespaces":[{"type":"network","path":"/run/netns/x"}]}}"#,
        )
        .unwrap();
        let state = format!(
            r#"{{"ociVersion":"1.0","id":"c2","status":"created","pid":0,"bundle":"{}"}}"#,
            dir.display()
        );
        let input = read_input(Some(Verb::Attach), state.as_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
        let input = input.unwrap();
        assert_eq!(input.request.as_deref(), Some("lan@eth3"));
        assert_eq!(input.netns, Some(PathBuf::from("/run/netns/x")));
        assert_eq!(input.timeout, None);
    }

    #[test]
    fn the_timeout_is_that_of_the_hook_entries_running_netattach() {
        let dir = std::env::temp_dir().join(format!("netattach-hook-test3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"ociVersion":"1.0.2","hooks":{
                "createRuntime":[{"path":"/bin/other","timeout":1},
                                 {"path":"/usr/bin/netattach","args":["netattach","hook","attach"],"timeout":7},
                                 {"path":"/usr/local/bin/netattach","args":["netattach"],"timeout":3}],
                "poststop":[{"path":"/usr/bin/netattach","args":["netattach","hook","release"],"timeout":9}]}}"#,
        )
        .unwrap();
        let state = |status: &str| {
            format!(
                r#"{{"ociVersion":"1.0","id":"c4","status":"{status}","pid":5,"bundle":"{}",
                    "annotations":{{"netattach/networks":"lan"}}}}"#,
                dir.display()
            )
        };
        let attach = read_input(Some(Verb::Attach), state("created").as_bytes());
        let release = read_input(None, state("stopped").as_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(attach.unwrap().timeout, Some(Duration::from_secs(3)));
        assert_eq!(release.unwrap().timeout, Some(Duration::from_secs(9)));
    }

    #[test]
    fn container_without_its_own_netns_is_refused() {
        let dir = std::env::temp_dir().join(format!("netattach-hook-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"netattach/networks":"lan"},
               "linux":{"namespaces":[{"type":"mount"}]}}"#,
        )
        .unwrap();
        let state = format!(
            r#"{{"ociVersion":"1.0","id":"c3","status":"created","bundle":"{}"}}"#,
            dir.display()
        );
        let err = read_input(Some(Verb::Attach), state.as_bytes()).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.to_string().contains("no network namespace of its own"),
            "{err}"
        );
    }
}
