//! The NRI plugin's etcd thread: the upkeep of shared networks
//! (docs/multi-host.md, "heartbeat") off every pod's path.
//!
//! Every [`UPKEEP_EVERY`], and at once when `Synchronize` asks, it sends a
//! heartbeat for each shared network and runs the rest of the upkeep
//! (`Store::upkeep`: reconcile, queued block returns). Heartbeating more
//! often than the attach path's "due" age keeps a pod's attach from ever
//! paying that round trip while etcd answers. With no shared network
//! defined it only lists the definitions directory and sleeps: it opens no
//! store and makes no etcd call.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use crate::config::NetworkDir;
use crate::ipam::store::Store;
use crate::nri_log;

/// How often the thread heartbeats: under `shared::HEARTBEAT_EVERY`.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(20);

/// The longest each etcd step of one round may take.
const ETCD_WAIT: Duration = Duration::from_secs(2);

/// Asks the thread for a round now; dropping it ends the thread.
pub struct Nudge(Sender<()>);

impl Nudge {
    pub fn now(&self) {
        let _ = self.0.send(());
    }
}

/// The current (state, config) dirs; `None` ends the thread.
type Dirs = dyn Fn() -> Option<(PathBuf, PathBuf)> + Send;

/// Starts the thread; `dirs` gives the current (state, config) dirs each round.
pub fn start(
    dirs: impl Fn() -> Option<(PathBuf, PathBuf)> + Send + 'static,
) -> std::io::Result<Nudge> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("nri-etcd".into())
        .spawn(move || run(&rx, &dirs))?;
    Ok(Nudge(tx))
}

fn run(nudges: &Receiver<()>, dirs: &Dirs) {
    loop {
        match nudges.recv_timeout(UPKEEP_EVERY) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while nudges.try_recv().is_ok() {}
        let Some((state_dir, config_dir)) = dirs() else {
            return;
        };
        for line in round(&state_dir, &NetworkDir::new(&config_dir)) {
            nri_log!(warn, "{line}");
        }
    }
}

/// One round over the shared networks defined now.
fn round(state_dir: &std::path::Path, networks: &NetworkDir) -> Vec<String> {
    let shared: Vec<String> = match networks.list() {
        Ok(defs) => defs
            .networks
            .into_iter()
            .filter(|n| n.shared.is_some())
            .map(|n| n.name)
            .collect(),
        Err(e) => return vec![format!("shared networks: {e}")],
    };
    if shared.is_empty() {
        return Vec::new();
    }
    match Store::open(state_dir, networks) {
        Ok(store) => store.upkeep(&shared, ETCD_WAIT, true),
        Err(e) => vec![format!("shared networks: {e}")],
    }
}
