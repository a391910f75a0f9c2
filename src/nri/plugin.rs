//! The Plugin service: what netattach does with each NRI request.
//!
//! - `Configure`: applies the plugin config file, subscribes to the pod events
//!   (`RUN|STOP|REMOVE_POD_SANDBOX`, mask 0x7).
//! - `RunPodSandbox` (a `StateChange` event, or the dedicated v0.12 RPC):
//!   attaches the networks of the pod's `netattach/networks` annotation in the
//!   pod's netns, owner = pod sandbox id. No annotation or no netns (host
//!   network): nothing. A bad request or a failed attach answers an error,
//!   so the runtime fails the pod with that message.
//! - `RemovePodSandbox`: releases the pod's leases by id (containerd 1.7 sends
//!   no netns path). `StopPodSandbox`: nothing (the links die with the netns).
//! - `Synchronize`: collects the pods (over several requests with `more`),
//!   releases what this runtime's pods held when the pod no longer exists, and
//!   re-checks the pods that do in the background (an idempotent attach
//!   repairs a missing interface), so the answer stays inside the deadline.
//! - Container events are not subscribed; if called anyway they answer empty
//!   (valid) responses; the v0.12 post-events and anything unknown answer
//!   UNIMPLEMENTED, the code after which a runtime falls back to `StateChange`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use protobuf::Message;

use super::owners::Owners;
use super::proto::nri::{
    ConfigureRequest, ConfigureResponse, Event, PodSandbox, PodSandboxRequest, StateChangeEvent,
    SynchronizeRequest, SynchronizeResponse,
};
use super::session::{Reply, Service};
use super::settings::parse_config;
use super::ttrpc::{code, RpcError};
use super::turns::{Turn, Turns};
use crate::config::NetworkDir;
use crate::deadline::Deadline;
use crate::ipam::store::Store;
use crate::ipam::LeaseStore;
use crate::{engine, nri_log, request};

/// Events netattach subscribes to: bit `1 << (e - 1)` per event.
pub const EVENT_MASK: i32 = (1 << (Event::RUN_POD_SANDBOX as i32 - 1))
    | (1 << (Event::STOP_POD_SANDBOX as i32 - 1))
    | (1 << (Event::REMOVE_POD_SANDBOX as i32 - 1));

/// The runtime's per-request budget when it does not say.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Where definitions and leases live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
}

/// How long a repair waits for the engine's turn (and bounds its waits).
const REPAIR_WAIT: Duration = Duration::from_secs(10);

/// How long a removal whose turn did not come within the runtime's budget
/// keeps waiting in the background before leaving the pod's leases to the
/// next `Synchronize` (or `gc`).
const DEFERRED_RELEASE_WAIT: Duration = Duration::from_secs(60);

/// Removals remembered so that a late attach never brings a removed pod back
/// (this only bounds memory: a late attach comes within one request budget).
const REMEMBERED_REMOVALS: usize = 4096;

/// The open lease store, and the (state, config) dirs it was opened for.
type OpenStore = ((PathBuf, PathBuf), Arc<Store>);

/// What outlives a connection: paths, the open lease store, and the turns
/// that keep engine operations (attach, release, re-check) one at a time.
pub struct Plugin {
    paths: Mutex<Paths>,
    store: Mutex<Option<OpenStore>>,
    engine: Turns,
    /// The etcd thread of shared networks, once started.
    upkeep: Mutex<Option<super::upkeep::Nudge>>,
}

impl Plugin {
    pub fn new(paths: Paths) -> Plugin {
        Plugin {
            paths: Mutex::new(paths),
            store: Mutex::new(None),
            engine: Turns::default(),
            upkeep: Mutex::new(None),
        }
    }

    /// Starts the etcd thread of shared networks (see [`super::upkeep`]).
    pub fn start_upkeep(self: &Arc<Self>) -> std::io::Result<()> {
        let plugin = Arc::downgrade(self);
        let nudge = super::upkeep::start(move || {
            let paths = plugin.upgrade()?.paths();
            Some((paths.state_dir, paths.config_dir))
        })?;
        *lock(&self.upkeep) = Some(nudge);
        Ok(())
    }

    /// Starts the thread that repairs pods' links when a network's parent
    /// comes back (see [`super::links`]).
    pub fn start_repair_on_link_events(self: &Arc<Self>) -> std::io::Result<()> {
        let for_dirs = Arc::downgrade(self);
        let for_repair = Arc::downgrade(self);
        super::links::start(
            move || {
                for_dirs
                    .upgrade()
                    .map(|p| NetworkDir::new(p.paths().config_dir))
            },
            move || {
                if let Some(p) = for_repair.upgrade() {
                    p.repair_links();
                }
            },
        )
    }

    /// Repairs the links of live pods that lost them, with the engine's turn.
    fn repair_links(&self) {
        let store = match self.store() {
            Ok(s) => s,
            Err(e) => return nri_log!(warn, "repair: {e:#}"),
        };
        let _turn = match self.turn("repair".into(), Deadline::after(REPAIR_WAIT)) {
            Ok(t) => t,
            Err(e) => return nri_log!(warn, "repair: {e}"),
        };
        let broken = match crate::repair::find(&*store) {
            Ok(b) => b,
            Err(e) => return nri_log!(warn, "repair: {e:#}"),
        };
        let networks = NetworkDir::new(self.paths().config_dir);
        for (owner, result) in crate::repair::repair(&networks, &*store, &broken) {
            match result {
                Ok(links) => {
                    for l in links.iter().filter(|l| !l.existing) {
                        nri_log!(
                            info,
                            "repair: pod {owner}: {} on network {} made again ({})",
                            l.ifname,
                            l.network,
                            l.addresses.join(",")
                        );
                    }
                }
                Err(e) => nri_log!(error, "repair: pod {owner}: {e:#}"),
            }
        }
    }

    /// Asks the etcd thread for a round now (at `Synchronize`).
    fn nudge_upkeep(&self) {
        if let Some(n) = &*lock(&self.upkeep) {
            n.now();
        }
    }

    /// The engine's turn, waited for until `deadline`, with the lease store's
    /// waits bounded by the same deadline while it is held.
    fn turn(&self, what: String, deadline: Deadline) -> Result<Turn<'_>, String> {
        let started = Instant::now();
        let turn = self.engine.take(what, deadline).map_err(|busy| {
            format!(
                "gave up after {} ms waiting for the plugin's engine, busy with {busy}",
                started.elapsed().as_millis()
            )
        })?;
        // (An error opening the store is reported by the operation itself.)
        if let Ok(store) = self.store() {
            store.set_deadline(Some(deadline));
        }
        Ok(turn)
    }

    fn paths(&self) -> Paths {
        lock(&self.paths).clone()
    }

    /// The lease store of the current state and config dirs, opened once.
    fn store(&self) -> anyhow::Result<Arc<Store>> {
        let paths = self.paths();
        let dirs = (paths.state_dir, paths.config_dir);
        let mut slot = lock(&self.store);
        if let Some((opened_for, store)) = &*slot {
            if *opened_for == dirs {
                return Ok(store.clone());
            }
        }
        crate::secure_fs::private_dir(&dirs.0)
            .with_context(|| format!("state directory {}", dirs.0.display()))?;
        let store = Arc::new(Store::open(&dirs.0, &NetworkDir::new(&dirs.1))?);
        *slot = Some((dirs, store.clone()));
        Ok(store)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pod facts netattach uses.
#[derive(Debug, Clone)]
struct Pod {
    id: String,
    /// `namespace/name`, for messages.
    label: String,
    annotation: Option<String>,
    /// Empty: host network.
    netns: String,
}

impl Pod {
    fn from_proto(p: &PodSandbox) -> Pod {
        let netns = p
            .linux
            .as_ref()
            .and_then(|l| l.namespaces.iter().find(|ns| ns.type_ == "network"))
            .map(|ns| ns.path.clone())
            .unwrap_or_default();
        Pod {
            id: p.id.clone(),
            label: format!("{}/{}", p.namespace, p.name),
            annotation: p.annotations.get(request::ANNOTATION).cloned(),
            netns,
        }
    }
}

/// One connection's view: who the runtime is, the pods of a `Synchronize` in
/// progress, and whether registration has completed.
pub struct Connection {
    plugin: Arc<Plugin>,
    runtime: Mutex<String>,
    registration_timeout: Mutex<Option<Duration>>,
    sync_pods: Mutex<Vec<Pod>>,
    /// Pods removed: neither a late RunPodSandbox nor the background re-check
    /// may attach them again.
    removed: Arc<Mutex<Removed>>,
    configured: AtomicBool,
    synchronized: (Mutex<bool>, Condvar),
}

impl Connection {
    pub fn new(plugin: Arc<Plugin>) -> Connection {
        Connection {
            plugin,
            runtime: Mutex::new(String::new()),
            registration_timeout: Mutex::new(None),
            sync_pods: Mutex::new(Vec::new()),
            removed: Arc::default(),
            configured: AtomicBool::new(false),
            synchronized: (Mutex::new(false), Condvar::new()),
        }
    }

    /// Waits up to `timeout` for the first complete `Synchronize`.
    pub fn wait_synchronized(&self, timeout: Duration) -> bool {
        let (flag, cv) = &self.synchronized;
        let guard = lock(flag);
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |done| !*done)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    /// Whether the runtime has sent `Configure`.
    pub fn configured(&self) -> bool {
        self.configured.load(Ordering::Acquire)
    }

    /// The registration timeout the runtime announced in `Configure`.
    pub fn registration_timeout(&self) -> Option<Duration> {
        *lock(&self.registration_timeout)
    }

    fn owners(&self) -> Owners {
        Owners::new(&self.plugin.paths().state_dir, &lock(&self.runtime))
    }

    fn configure(&self, payload: &[u8]) -> Result<Vec<u8>, RpcError> {
        let req = ConfigureRequest::parse_from_bytes(payload).map_err(malformed)?;
        if !req.config.trim().is_empty() {
            let file = parse_config(&req.config)
                .map_err(|e| RpcError::new(code::INVALID_ARGUMENT, format!("netattach: {e}")))?;
            if let Some(path) = &file.log_file {
                if let Err(e) = super::log::to_file(path) {
                    nri_log!(warn, "cannot log to {}: {e}", path.display());
                }
            }
            let mut paths = lock(&self.plugin.paths);
            if let Some(dir) = file.config_dir {
                paths.config_dir = dir;
            }
            if let Some(dir) = file.state_dir {
                paths.state_dir = dir;
            }
        }
        *lock(&self.runtime) = req.runtime_name.clone();
        if req.registration_timeout > 0 {
            *lock(&self.registration_timeout) =
                Some(Duration::from_millis(req.registration_timeout as u64));
        }
        let paths = self.plugin.paths();
        nri_log!(
            info,
            "configured by {} {} (request timeout {} ms); networks in {}, leases in {}",
            if req.runtime_name.is_empty() {
                "the runtime"
            } else {
                &req.runtime_name
            },
            req.runtime_version,
            req.request_timeout,
            paths.config_dir.display(),
            paths.state_dir.display()
        );
        self.configured.store(true, Ordering::Release);
        let mut resp = ConfigureResponse::new();
        resp.events = EVENT_MASK;
        Ok(resp.write_to_bytes().unwrap_or_default())
    }

    fn synchronize(&self, payload: &[u8], deadline: Deadline) -> Result<Vec<u8>, RpcError> {
        let req = SynchronizeRequest::parse_from_bytes(payload).map_err(malformed)?;
        let mut resp = SynchronizeResponse::new();
        let pods = {
            let mut acc = lock(&self.sync_pods);
            acc.extend(req.pods.iter().map(Pod::from_proto));
            if req.more {
                resp.more = true;
                return Ok(resp.write_to_bytes().unwrap_or_default());
            }
            std::mem::take(&mut *acc)
        };
        self.reconcile(&pods, deadline).map_err(|e| {
            nri_log!(error, "synchronize: {e:#}");
            RpcError::new(code::INTERNAL, format!("netattach: synchronize: {e:#}"))
        })?;
        self.plugin.nudge_upkeep();
        let (flag, cv) = &self.synchronized;
        *lock(flag) = true;
        cv.notify_all();
        Ok(resp.write_to_bytes().unwrap_or_default())
    }

    /// Releases this runtime's owners that are not among `pods`, then starts
    /// the re-check of the pods that are.
    fn reconcile(&self, pods: &[Pod], deadline: Deadline) -> anyhow::Result<()> {
        let store = self.plugin.store()?;
        let owners = self.owners();
        let alive: HashSet<&str> = pods.iter().map(|p| p.id.as_str()).collect();
        let marked: HashSet<String> = owners.list()?.into_iter().collect();
        let holders: HashSet<String> = store.attachments()?.into_iter().map(|a| a.owner).collect();
        let _turn = self
            .plugin
            .turn("synchronize".into(), deadline)
            .map_err(anyhow::Error::msg)?;
        let mut released = 0;
        for id in marked.iter().filter(|id| !alive.contains(id.as_str())) {
            if holders.contains(id) {
                let networks = NetworkDir::new(self.plugin.paths().config_dir);
                let leases = engine::release(&*store, &networks, id, None)?;
                nri_log!(
                    info,
                    "synchronize: pod {id} is gone: released {}",
                    describe_leases(&leases)
                );
                released += 1;
            }
            owners.forget(id)?;
        }
        let recheck: Vec<Pod> = pods
            .iter()
            .filter(|p| p.annotation.is_some() && !p.netns.is_empty())
            .cloned()
            .collect();
        nri_log!(
            info,
            "synchronized: {} pods, {} with netattach networks; {released} gone pods released",
            pods.len(),
            recheck.len()
        );
        if !recheck.is_empty() {
            let plugin = self.plugin.clone();
            let removed = self.removed.clone();
            let runtime = lock(&self.runtime).clone();
            let listed = Instant::now();
            std::thread::Builder::new()
                .name("nri-recheck".into())
                .spawn(move || recheck_pods(&plugin, &runtime, &removed, listed, &recheck))
                .context("start the re-check thread")?;
        }
        Ok(())
    }

    fn run_pod(&self, pod: &Pod, started: Instant, budget: Duration) -> Result<(), RpcError> {
        let Some(value) = &pod.annotation else {
            return Ok(());
        };
        if pod.netns.is_empty() {
            nri_log!(
                info,
                "pod {} ({}): host network, {} ignored",
                pod.label,
                pod.id,
                request::ANNOTATION
            );
            return Ok(());
        }
        let fail = |code, e: String| {
            nri_log!(error, "pod {} ({}): {e}", pod.label, pod.id);
            RpcError::new(code, format!("netattach: pod {}: {e}", pod.label))
        };
        let requests =
            request::parse(value).map_err(|e| fail(code::INVALID_ARGUMENT, e.to_string()))?;
        if requests.is_empty() {
            return Ok(());
        }
        let _turn = self
            .plugin
            .turn(
                format!("the attach of pod {}", pod.label),
                Deadline::within(started, budget),
            )
            .map_err(|e| fail(code::DEADLINE_EXCEEDED, e))?;
        if lock(&self.removed).since(&pod.id, started) {
            return Err(fail(
                code::FAILED_PRECONDITION,
                "the pod was removed before its networks could be attached".into(),
            ));
        }
        let attached = attach(&self.plugin, &self.owners(), pod, &requests)
            .map_err(|e| fail(code::FAILED_PRECONDITION, format!("{e:#}")))?;
        let took = started.elapsed();
        nri_log!(
            info,
            "pod {} ({}): attached {} in {} ms",
            pod.label,
            pod.id,
            describe_links(&attached),
            took.as_millis()
        );
        if took > budget / 2 {
            nri_log!(
                warn,
                "pod {}: attach took {} ms of the runtime's {} ms budget",
                pod.label,
                took.as_millis(),
                budget.as_millis()
            );
        }
        Ok(())
    }

    /// Marks the pod removed at once (a late attach of it then refuses), and
    /// releases it in turn; when the turn does not come within the budget the
    /// release goes on in the background and the runtime is answered.
    fn remove_pod(&self, pod: &Pod, started: Instant, budget: Duration) -> Result<(), RpcError> {
        lock(&self.removed).insert(&pod.id, started);
        let what = format!("the release of pod {}", pod.label);
        match self
            .plugin
            .turn(what.clone(), Deadline::within(started, budget))
        {
            Ok(_turn) => release_pod(&self.plugin, &self.owners(), pod),
            Err(e) => {
                nri_log!(
                    warn,
                    "pod {} ({}): {e}; releasing in the background",
                    pod.label,
                    pod.id
                );
                let (plugin, owners, pod) = (self.plugin.clone(), self.owners(), pod.clone());
                std::thread::Builder::new()
                    .name("nri-release".into())
                    .spawn(move || {
                        match plugin.turn(what, Deadline::after(DEFERRED_RELEASE_WAIT)) {
                            Ok(_turn) => {
                                let _ = release_pod(&plugin, &owners, &pod);
                            }
                            Err(e) => nri_log!(
                                error,
                                "pod {} ({}): {e}; its leases wait for the next synchronize or gc",
                                pod.label,
                                pod.id
                            ),
                        }
                    })
                    .map_err(|e| {
                        RpcError::new(code::INTERNAL, format!("cannot start a thread: {e}"))
                    })?;
                Ok(())
            }
        }
    }

    fn pod_event(
        &self,
        event: Event,
        pod: &Pod,
        started: Instant,
        budget: Duration,
    ) -> Result<(), RpcError> {
        match event {
            Event::RUN_POD_SANDBOX => self.run_pod(pod, started, budget),
            Event::REMOVE_POD_SANDBOX => self.remove_pod(pod, started, budget),
            _ => Ok(()),
        }
    }
}

/// Releases a removed pod's leases and forgets its owner mark (the caller
/// holds the engine's turn).
fn release_pod(plugin: &Plugin, owners: &Owners, pod: &Pod) -> Result<(), RpcError> {
    let released = plugin
        .store()
        .and_then(|store| {
            let hint = (!pod.netns.is_empty()).then(|| Path::new(&pod.netns));
            let networks = NetworkDir::new(plugin.paths().config_dir);
            engine::release(&*store, &networks, &pod.id, hint)
        })
        .map_err(|e| {
            nri_log!(error, "pod {} ({}): release: {e:#}", pod.label, pod.id);
            RpcError::new(
                code::INTERNAL,
                format!("netattach: pod {}: release: {e:#}", pod.label),
            )
        })?;
    if super::owners::valid_pod_id(&pod.id) {
        if let Err(e) = owners.forget(&pod.id) {
            nri_log!(warn, "pod {}: {e}", pod.id);
        }
    }
    if !released.is_empty() {
        nri_log!(
            info,
            "pod {} ({}): removed, released {}",
            pod.label,
            pod.id,
            describe_leases(&released)
        );
    }
    Ok(())
}

/// When each pod was last removed (the removal's arrival), the oldest
/// forgotten past [`REMEMBERED_REMOVALS`]. A request that arrived before the
/// removal is late and must not attach; one that arrived after it (a runtime
/// reusing the id) is a new pod.
#[derive(Default)]
struct Removed {
    at: HashMap<String, Instant>,
    order: VecDeque<String>,
}

impl Removed {
    fn insert(&mut self, id: &str, arrived: Instant) {
        if self.at.insert(id.to_string(), arrived).is_none() {
            self.order.push_back(id.to_string());
            if self.order.len() > REMEMBERED_REMOVALS {
                if let Some(old) = self.order.pop_front() {
                    self.at.remove(&old);
                }
            }
        }
    }

    /// Whether `id` was removed by a request that arrived at or after `arrived`.
    fn since(&self, id: &str, arrived: Instant) -> bool {
        self.at.get(id).is_some_and(|removal| *removal >= arrived)
    }
}

/// Attaches `pod` (marked as this runtime's first, see [`Owners`]).
fn attach(
    plugin: &Plugin,
    owners: &Owners,
    pod: &Pod,
    requests: &[request::NetworkRequest],
) -> anyhow::Result<Vec<engine::AttachedLink>> {
    let store = plugin.store()?;
    owners.record(&pod.id)?;
    let target = engine::Target::open(Path::new(&pod.netns))?;
    let networks = NetworkDir::new(plugin.paths().config_dir);
    // A pod's stable identity is its namespace/name: a re-created pod keeps it.
    let owner = engine::Owner {
        id: &pod.id,
        identity: Some(&pod.label),
    };
    let attached = engine::attach(&networks, &*store, owner, target, requests)?;
    for w in &attached.warnings {
        nri_log!(warn, "pod {} ({}): {w}", pod.label, pod.id);
    }
    Ok(attached.links)
}

/// Re-attaches (idempotently) the pods a `Synchronize` listed, skipping those
/// removed meanwhile and those whose netns is gone (stopped pods).
fn recheck_pods(
    plugin: &Plugin,
    runtime: &str,
    removed: &Mutex<Removed>,
    listed: Instant,
    pods: &[Pod],
) {
    let owners = Owners::new(&plugin.paths().state_dir, runtime);
    let started = Instant::now();
    let (mut repaired_pods, mut failed, mut skipped) = (0, 0, 0);
    for pod in pods {
        let what = format!("the re-check of pod {}", pod.label);
        let _turn = match plugin.turn(what, Deadline::default_wait()) {
            Ok(turn) => turn,
            Err(e) => {
                nri_log!(warn, "re-check: pod {} ({}): {e}", pod.label, pod.id);
                failed += 1;
                continue;
            }
        };
        if lock(removed).since(&pod.id, listed) || !Path::new(&pod.netns).exists() {
            skipped += 1;
            continue;
        }
        let Some(value) = &pod.annotation else {
            skipped += 1;
            continue;
        };
        let result = request::parse(value)
            .map_err(anyhow::Error::from)
            .and_then(|requests| attach(plugin, &owners, pod, &requests));
        match result {
            Ok(links) => {
                let repaired: Vec<_> = links.into_iter().filter(|l| !l.existing).collect();
                if !repaired.is_empty() {
                    repaired_pods += 1;
                    nri_log!(
                        info,
                        "re-check: pod {} ({}): attached {}",
                        pod.label,
                        pod.id,
                        describe_links(&repaired)
                    );
                }
            }
            Err(e) => {
                failed += 1;
                nri_log!(warn, "re-check: pod {} ({}): {e:#}", pod.label, pod.id)
            }
        }
    }
    nri_log!(
        info,
        "re-check of {} pods done in {} ms: {repaired_pods} repaired, {failed} failed, \
         {skipped} skipped (removed, stopped or without networks)",
        pods.len(),
        started.elapsed().as_millis()
    );
}

fn describe_links(links: &[engine::AttachedLink]) -> String {
    let parts: Vec<String> = links
        .iter()
        .map(|l| format!("{} {} {}", l.network, l.ifname, l.addresses.join(",")))
        .collect();
    parts.join("; ")
}

fn describe_leases(leases: &[crate::ipam::Lease]) -> String {
    if leases.is_empty() {
        return "no lease".to_string();
    }
    let parts: Vec<String> = leases
        .iter()
        .map(|l| format!("{} {}", l.network, l.address))
        .collect();
    parts.join(", ")
}

fn malformed(e: protobuf::Error) -> RpcError {
    RpcError::new(code::INVALID_ARGUMENT, format!("malformed request: {e}"))
}

fn empty() -> Reply {
    Reply::ok(Vec::new())
}

impl Service for Connection {
    fn call(&self, method: &str, payload: &[u8], timeout: Option<Duration>) -> Reply {
        let started = Instant::now();
        let budget = timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        let result = match method {
            "Configure" => self.configure(payload),
            "Synchronize" => self.synchronize(payload, Deadline::within(started, budget)),
            "Shutdown" => {
                nri_log!(info, "the runtime asked the plugin to shut down");
                return Reply {
                    result: Ok(Vec::new()),
                    close: true,
                };
            }
            "StateChange" => StateChangeEvent::parse_from_bytes(payload)
                .map_err(malformed)
                .and_then(|ev| {
                    let event = ev.event.enum_value().unwrap_or(Event::UNKNOWN);
                    match ev.pod.as_ref() {
                        Some(pod) => self.pod_event(event, &Pod::from_proto(pod), started, budget),
                        None => Ok(()),
                    }
                })
                .map(|()| Vec::new()),
            "RunPodSandbox" | "StopPodSandbox" | "RemovePodSandbox" => {
                let event = match method {
                    "RunPodSandbox" => Event::RUN_POD_SANDBOX,
                    "StopPodSandbox" => Event::STOP_POD_SANDBOX,
                    _ => Event::REMOVE_POD_SANDBOX,
                };
                PodSandboxRequest::parse_from_bytes(payload)
                    .map_err(malformed)
                    .and_then(|req| match req.pod.as_ref() {
                        Some(pod) => self.pod_event(event, &Pod::from_proto(pod), started, budget),
                        None => Ok(()),
                    })
                    .map(|()| Vec::new())
            }
            // Not subscribed; empty responses are valid ones (no adjustment,
            // no update, no rejection).
            "CreateContainer"
            | "UpdateContainer"
            | "StopContainer"
            | "UpdatePodSandbox"
            | "ValidateContainerAdjustment" => return empty(),
            _ => Err(RpcError::new(
                code::UNIMPLEMENTED,
                format!("method {method} not implemented"),
            )),
        };
        result.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_the_three_pod_events() {
        assert_eq!(EVENT_MASK, 0x7);
    }

    #[test]
    fn netns_path_comes_from_the_network_namespace_entry() {
        let mut p = PodSandbox::new();
        p.id = "abc".into();
        p.namespace = "default".into();
        p.name = "web".into();
        p.annotations
            .insert(request::ANNOTATION.into(), "lan@eth1".into());
        let mut linux = super::super::proto::nri::LinuxPodSandbox::new();
        for (t, path) in [
            ("ipc", "/proc/1/ns/ipc"),
            ("network", "/var/run/netns/cni-1"),
        ] {
            let mut ns = super::super::proto::nri::LinuxNamespace::new();
            ns.type_ = t.into();
            ns.path = path.into();
            linux.namespaces.push(ns);
        }
        p.linux = protobuf::MessageField::some(linux);
        let pod = Pod::from_proto(&p);
        assert_eq!(pod.netns, "/var/run/netns/cni-1");
        assert_eq!(pod.label, "default/web");
        assert_eq!(pod.annotation.as_deref(), Some("lan@eth1"));
        p.linux = protobuf::MessageField::none();
        assert_eq!(Pod::from_proto(&p).netns, "");
    }

    #[test]
    fn unknown_and_post_events_answer_unimplemented() {
        let dir = std::env::temp_dir().join(format!("netattach-nri-unit-{}", std::process::id()));
        let conn = Connection::new(Arc::new(Plugin::new(Paths {
            config_dir: dir.join("c"),
            state_dir: dir.join("s"),
        })));
        for m in ["PostCreateContainer", "PostStartContainer", "Frobnicate"] {
            let r = conn.call(m, &[], None);
            assert_eq!(r.result.unwrap_err().code, code::UNIMPLEMENTED, "{m}");
        }
        assert_eq!(conn.call("CreateContainer", &[], None).result, Ok(vec![]));
        // A pod without the annotation is not ours: nothing touched.
        let mut req = PodSandboxRequest::new();
        let mut pod = PodSandbox::new();
        pod.id = "p1".into();
        req.pod = protobuf::MessageField::some(pod);
        let r = conn.call("RunPodSandbox", &req.write_to_bytes().unwrap(), None);
        assert_eq!(r.result, Ok(vec![]));
        assert!(!dir.exists());
        let r = conn.call("StateChange", &[0xff, 0xff], None);
        assert_eq!(r.result.unwrap_err().code, code::INVALID_ARGUMENT);
    }

    #[test]
    fn a_removal_refuses_earlier_requests_but_not_a_reused_id() {
        let mut removed = Removed::default();
        let before = Instant::now();
        removed.insert("p", Instant::now());
        let after = Instant::now() + Duration::from_millis(1);
        assert!(removed.since("p", before), "a late run of the removed pod");
        assert!(!removed.since("p", after), "a new pod with the same id");
        assert!(!removed.since("q", before));
        for i in 0..=REMEMBERED_REMOVALS {
            removed.insert(&format!("x{i}"), Instant::now());
        }
        assert!(!removed.since("p", before), "the oldest is forgotten");
        assert_eq!(removed.at.len(), REMEMBERED_REMOVALS);
    }
}
