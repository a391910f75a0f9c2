//! The resident DHCP client: acquires a lease for a link, keeps it renewed
//! from a thread of its own (one per lease, asleep until the machine's next
//! timer), releases it when the owner goes, and after a restart takes every
//! persisted lease up again where it was (renewed, not re-acquired).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::exchange::{self, Outcome};
use super::machine::{Action, Client, Message};
use super::message::{self, ClientIds};
use super::record::{self, Record};
use super::{Acquire, Agent, Granted};
use crate::liveness::{Found, Namespaces};
use crate::netns::Netns;

/// How long one renewal exchange listens before the thread sleeps again
/// until the machine's next retransmission.
const RENEW_LISTEN: Duration = Duration::from_secs(5);

/// How long a release waits for its lease's thread.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

pub struct Service {
    dir: PathBuf,
    keepers: Mutex<HashMap<(String, String), mpsc::Sender<Command>>>,
}

enum Command {
    Release(mpsc::Sender<Result<()>>),
}

impl Service {
    /// The service for `state_dir`, with every persisted lease taken up.
    pub fn start(state_dir: &Path) -> Arc<Service> {
        let service = Arc::new(Service {
            dir: super::lease_dir(state_dir),
            keepers: Mutex::default(),
        });
        let (records, problems) = record::load_all(&service.dir);
        for p in problems {
            log(&format!("skipped an unreadable lease: {p}"));
        }
        let mut namespaces = Namespaces::new();
        for r in records {
            let (mut client, actions) = Client::restore(exchange::now(), r.lease(), xid_seed());
            // An owner that went while nobody ran the client: the server is
            // told now, not when the lease would have been renewed.
            if namespaces.find(&r.request.netns) == Found::Gone {
                release_now(&service.dir, &r, &mut client);
                let _ = record::remove(&service.dir, &r.request.owner, &r.request.network);
                continue;
            }
            log(&format!(
                "network {}: took up the lease of {} on {} ({})",
                r.request.network,
                r.address,
                r.request.owner,
                if actions.is_empty() {
                    "bound"
                } else {
                    "renewing"
                }
            ));
            service.keep(r, client, actions);
        }
        service
    }

    fn keep(&self, record: Record, client: Client, first: Vec<Action>) {
        let (tx, rx) = mpsc::channel();
        let key = (record.request.owner.clone(), record.request.network.clone());
        let dir = self.dir.clone();
        lock(&self.keepers).insert(key, tx);
        std::thread::spawn(move || keep(&dir, record, client, first, rx));
    }

    fn acquire_lease(&self, request: &Acquire) -> Result<Granted> {
        let network = &request.network;
        let netns = Netns::open(&request.netns_path)
            .with_context(|| format!("open {}", request.netns_path.display()))?;
        let socket = exchange::open_socket(&netns, &request.ifname, Ipv4Addr::UNSPECIFIED)
            .with_context(|| format!("network {network}"))?;
        let wait = Duration::from_millis(request.wait_ms);
        let (mut client, actions) = Client::acquire(exchange::now(), xid_seed(), wait);
        // The machine fails at `wait` itself; the margin only covers its
        // last timer falling due a moment after.
        let until = Instant::now() + wait + Duration::from_millis(200);
        let ids = ids_of(request);
        match exchange::run(&mut client, actions, &socket, &ids, until)? {
            Outcome::Bound(lease) => {
                let record = Record::new(request, &lease);
                if let Err(e) = record::save(&self.dir, &record) {
                    release_now(&self.dir, &record, &mut client);
                    return Err(e);
                }
                let granted = record.granted();
                log(&format!(
                    "network {network}: {} bound {} from {} until {}",
                    request.owner, record.address, record.server, record.expiry
                ));
                self.keep(record, client, Vec::new());
                Ok(granted)
            }
            Outcome::Failed(why) => bail!("network {network}: {why}"),
            other => bail!(
                "network {network}: no DHCP lease after {} s ({other:?})",
                wait.as_secs_f64()
            ),
        }
    }

    fn release_lease(&self, owner: &str, network: &str) -> Result<()> {
        let keeper = lock(&self.keepers).remove(&(owner.to_string(), network.to_string()));
        if let Some(tx) = keeper {
            let (reply, answer) = mpsc::channel();
            if tx.send(Command::Release(reply)).is_ok() {
                return answer
                    .recv_timeout(RELEASE_WAIT)
                    .map_err(|_| anyhow!("network {network}: the release of {owner}'s DHCP lease did not finish within {} s", RELEASE_WAIT.as_secs()))?;
            }
        }
        // No thread: a lease persisted and not (or no longer) kept.
        let (records, _) = record::load_all(&self.dir);
        if let Some(r) = records
            .into_iter()
            .find(|r| r.request.owner == owner && r.request.network == network)
        {
            let (mut client, _) = Client::restore(exchange::now(), r.lease(), xid_seed());
            release_now(&self.dir, &r, &mut client);
        }
        record::remove(&self.dir, owner, network)
    }
}

impl Agent for Arc<Service> {
    fn acquire(&self, request: &Acquire) -> Result<Granted> {
        self.acquire_lease(request)
    }

    fn release(&self, owner: &str, network: &str) -> Result<()> {
        self.release_lease(owner, network)
    }
}

/// One lease's thread: renews at the machine's timers until the lease is
/// released, lost, or its owner gone.
fn keep(
    dir: &Path,
    mut record: Record,
    mut client: Client,
    first: Vec<Action>,
    commands: mpsc::Receiver<Command>,
) {
    let network = record.request.network.clone();
    let mut actions = first;
    loop {
        if !actions.is_empty() {
            match renew(&record, &mut client, std::mem::take(&mut actions)) {
                Ok(Outcome::Renewed(lease)) => {
                    record = Record::new(&record.request, &lease);
                    if let Err(e) = record::save(dir, &record) {
                        log(&format!("network {network}: {e:#}"));
                    }
                    log(&format!(
                        "network {network}: {} renewed {} until {}",
                        record.request.owner, record.address, record.expiry
                    ));
                }
                Ok(Outcome::Lost(_)) => {
                    lost(dir, &record);
                    return;
                }
                Ok(_) => {}
                Err(Gone(why)) => {
                    log(&format!(
                        "network {network}: dropped the lease of {} on {}: {why}",
                        record.address, record.request.owner
                    ));
                    let _ = record::remove(dir, &record.request.owner, &network);
                    return;
                }
            }
        }
        let Some(at) = client.next_timer() else {
            let _ = record::remove(dir, &record.request.owner, &network);
            return;
        };
        let wait = at.saturating_sub(exchange::now());
        match commands.recv_timeout(wait) {
            Ok(Command::Release(reply)) => {
                release_now(dir, &record, &mut client);
                let _ = reply.send(record::remove(dir, &record.request.owner, &network));
                return;
            }
            Err(RecvTimeoutError::Timeout) => actions = client.on_timer(exchange::now()),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Why a lease's owner cannot be reached any more.
struct Gone(String);

/// One renewal exchange from inside the owner's netns, from its address.
fn renew(record: &Record, client: &mut Client, actions: Vec<Action>) -> Result<Outcome, Gone> {
    let path = match Namespaces::new().find(&record.request.netns) {
        Found::Alive(path) => path,
        Found::Gone => return Err(Gone("its network namespace is gone".into())),
        // Cannot be told now: try at the next timer.
        Found::Unknown => return Ok(Outcome::Waiting),
    };
    let netns = Netns::open(&path).map_err(|e| Gone(format!("open {}: {e}", path.display())))?;
    // Bound to no address: a server may answer a renewal by broadcast (a
    // NAK always is), which a socket bound to the lease's address misses.
    let socket = exchange::open_socket(&netns, &record.request.ifname, Ipv4Addr::UNSPECIFIED)
        .map_err(|e| Gone(format!("its link is gone: {e:#}")))?;
    let ids = ids_of(&record.request);
    exchange::run(
        client,
        actions,
        &socket,
        &ids,
        Instant::now() + RENEW_LISTEN,
    )
    .map_err(|e| Gone(format!("{e:#}")))
}

/// The server took the lease back (NAK, or it expired unrenewed): the
/// address leaves the link at once, so that nobody has it twice on the LAN.
fn lost(dir: &Path, record: &Record) {
    let r = &record.request;
    let removed = Namespaces::new().find(&r.netns);
    let outcome = match removed {
        Found::Alive(path) => remove_address(&path, &r.ifname, record.address, record.prefix_len),
        _ => Ok(()),
    };
    log(&format!(
        "network {}: lost the lease of {} on {}{}",
        r.network,
        record.address,
        r.owner,
        match outcome {
            Ok(()) => String::from("; the address was removed from its link"),
            Err(e) => format!("; removing the address failed: {e:#}"),
        }
    ));
    let _ = record::remove(dir, &r.owner, &r.network);
}

fn remove_address(path: &Path, ifname: &str, address: Ipv4Addr, prefix_len: u8) -> Result<()> {
    let netns = Netns::open(path)?;
    let ifname = ifname.to_string();
    netns.run(move || -> Result<()> {
        let mut nl = crate::netlink::Netlink::open()?;
        if let Some(link) = nl.link_by_name(&ifname)? {
            nl.delete_address(link.index, address.into(), prefix_len)?;
        }
        Ok(())
    })?
}

/// Sends DHCPRELEASE: from the owner's address inside its netns while that
/// lives, else from the parent on the host (the container's link died with
/// its netns, and the server still holds the lease until told).
///
/// Not when another owner's lease has the same address from the same server:
/// a re-created container with the same identity (the same client id) was
/// given its predecessor's lease, and the release would take it from it.
fn release_now(dir: &Path, record: &Record, client: &mut Client) {
    let r = &record.request;
    let successor = record::load_all(dir).0.into_iter().find(|o| {
        (&o.request.owner, &o.request.network) != (&r.owner, &r.network)
            && o.address == record.address
            && o.server == record.server
    });
    if let Some(o) = successor {
        client.release();
        log(&format!(
            "network {}: not releasing {} of {}: {} holds it now (the same client identity)",
            r.network, record.address, r.owner, o.request.owner
        ));
        return;
    }
    let bytes: Vec<Vec<u8>> = client
        .release()
        .into_iter()
        .filter_map(|a| match a {
            Action::Send(m @ Message::Release { .. }, _) => Some(message::encode(&m, &ids_of(r))),
            _ => None,
        })
        .collect();
    let sent = match Namespaces::new().find(&r.netns) {
        Found::Alive(path) => Netns::open(&path)
            .map_err(anyhow::Error::from)
            .and_then(|ns| exchange::open_socket(&ns, &r.ifname, record.address))
            .and_then(|s| send_all(&s, &bytes, record.server)),
        _ => Err(anyhow!("the container's netns is gone")),
    };
    let sent = sent.or_else(|_| from_parent(&r.parent, &bytes));
    match sent {
        Ok(()) => log(&format!(
            "network {}: released {} of {}",
            r.network, record.address, r.owner
        )),
        Err(e) => log(&format!(
            "network {}: could not send the release of {}: {e:#}",
            r.network, record.address
        )),
    }
}

fn send_all(socket: &std::net::UdpSocket, messages: &[Vec<u8>], to: Ipv4Addr) -> Result<()> {
    for m in messages {
        socket.send_to(m, (to, exchange::SERVER_PORT))?;
    }
    Ok(())
}

/// A broadcast from the parent, in the host's netns, from a port of its own
/// (port 68 may be the host's own DHCP client's): the server finds the lease
/// by the message's client id and address, not by where it came from.
fn from_parent(parent: &str, messages: &[Vec<u8>]) -> Result<()> {
    let fd = exchange::broadcast_socket(parent)?;
    let socket = std::net::UdpSocket::from(fd);
    send_all(&socket, messages, Ipv4Addr::BROADCAST)
        .with_context(|| format!("broadcast from parent {parent}"))
}

fn ids_of(r: &Acquire) -> ClientIds {
    ClientIds {
        mac: r.mac,
        client_id: message::client_id(&r.identity),
        hostname: r.hostname.clone(),
    }
}

fn xid_seed() -> u32 {
    let nanos = exchange::now().subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One line to stderr: the journal under systemd, the plugin's log under NRI.
pub fn log(line: &str) {
    eprintln!("netattach dhcp: {line}");
}
