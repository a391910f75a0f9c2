//! Applies a plan in a container's network namespace (SPEC §4): lease the
//! addresses, create each link directly inside the netns, configure it, add the
//! default route; on any failure undo everything this attach did.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use netlink_packet_route::link::{IpVlanFlags, IpVlanMode, MacVlanMode};
use serde::Serialize;

use crate::config::{Driver, IpvlanFlag, Mode, Network, NetworkDir};
use crate::identity::{self, Identity};
use crate::ipam::{Attachment, Lease, LeaseStore, Reservation};
use crate::liveness::{Found, Namespaces};
use crate::netlink::addr::add_address_request;
use crate::netlink::link::{rename_and_up_request, Link, LinkKind, NewLink};
use crate::netlink::{BatchError, Netlink, NetlinkError, Request};
use crate::netns::{self, Netns, NetnsThread, Pending};
use crate::plan::{self, LinkPlan};
use crate::request::{MacAddr, NetworkRequest};
use crate::vlan;

/// One interface as it ended up in the container.
#[derive(Debug, Clone, Serialize)]
pub struct AttachedLink {
    pub network: String,
    pub ifname: String,
    pub mac: String,
    pub addresses: Vec<String>,
    /// True when an earlier attach had already done this one.
    pub existing: bool,
}

/// What an attach did, and what it had to pass over on the way.
#[derive(Debug, Default)]
pub struct Attached {
    pub links: Vec<AttachedLink>,
    /// Definitions of other networks that did not load and were skipped,
    /// one line each, for the face to print or log.
    pub warnings: Vec<String>,
}

/// A container's network namespace, opened for an attach. A thread inside it
/// is already opening the attach's netlink socket there while the face opens
/// its lease store (on two cores the two overlap).
pub struct Target {
    netns: Netns,
    thread: NetnsThread,
    socket: Pending<crate::netlink::Result<Netlink>>,
}

impl Target {
    pub fn open(path: &Path) -> Result<Target> {
        let netns = Netns::open(path)
            .with_context(|| format!("open network namespace {}", path.display()))?;
        let thread = NetnsThread::spawn(&netns)
            .with_context(|| format!("enter network namespace {}", path.display()))?;
        let socket = thread.submit(Netlink::open);
        Ok(Target {
            netns,
            thread,
            socket,
        })
    }
}

/// Who an attach is for: the lease owner (container or pod id), and its
/// stable identity when it has one (the pod's namespace/name, the
/// `netattach/identity` annotation), which outlives the id.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub id: &'a str,
    pub identity: Option<&'a str>,
}

impl<'a> Owner<'a> {
    /// An owner with no identity beyond its id.
    pub fn id(id: &'a str) -> Owner<'a> {
        Owner { id, identity: None }
    }
}

/// Attaches `owner` in `target` to the requested networks.
pub fn attach(
    networks: &NetworkDir,
    store: &dyn LeaseStore,
    owner: Owner<'_>,
    target: Target,
    requests: &[NetworkRequest],
) -> Result<Attached> {
    let Target {
        netns: target,
        thread: inside_thread,
        socket: inside_socket,
    } = target;
    let target = &target;
    if target.is_current().context("inspect network namespaces")? {
        bail!(
            "{} is the network namespace netattach runs in, not a container's own; refusing to touch it",
            target.path().display()
        );
    }
    // Every definition: the networks sharing a requested one's segment reserve
    // their gateways and aux addresses there too. A broken file of another
    // network is skipped; one of a requested network fails the attach with
    // the reason the listing read (each file is read once: a second read
    // could see another version than the one its peers were judged by).
    let listed = networks.list()?;
    let warnings = listed.warnings();
    let (all, mut broken) = (listed.networks, listed.broken);
    let definitions = requests
        .iter()
        .map(|r| match all.iter().find(|n| n.name == r.name) {
            Some(n) => Ok(n.clone()),
            None => match broken.iter().position(|b| b.name == r.name) {
                Some(i) => Err(broken.swap_remove(i).error),
                None => networks.load(&r.name),
            },
        })
        .collect::<Result<Vec<Network>, _>>()?;
    let inside = Inside {
        thread: &inside_thread,
        netlink: inside_socket
            .wait()
            .context("enter the container's network namespace")??,
    };
    let links = attach_defined(target, inside, store, owner, requests, definitions, &all)?;
    Ok(Attached { links, warnings })
}

/// The container's side of an attach: a netlink socket in its namespace, and
/// a thread there for what netlink cannot do (per-interface sysctls).
struct Inside<'a> {
    thread: &'a NetnsThread,
    netlink: Netlink,
}

/// The attach proper, once the definitions are known.
fn attach_defined(
    target: &Netns,
    mut inside: Inside<'_>,
    store: &dyn LeaseStore,
    owner: Owner<'_>,
    requests: &[NetworkRequest],
    definitions: Vec<Network>,
    all: &[Network],
) -> Result<Vec<AttachedLink>> {
    let Owner {
        id: owner,
        identity: stable_identity,
    } = owner;
    let mut host = Netlink::open()?;

    // Idempotency: networks this owner already has, with their link complete
    // (up, every leased address on it), are done. Anything less is what an
    // attach killed half-way left: remove it and start that network over.
    // The default routes are those of the whole request, also when their
    // network is done: an attach killed after its link came up and before
    // its routes were added left a complete link without them.
    let default_routes = plan::default_routes_of(requests, &definitions)?;
    let mut default_link_done = None;
    let mut done = Vec::new();
    let mut todo_requests = Vec::new();
    let mut todo_networks = Vec::new();
    let mut todo_indices = Vec::new();
    let mut repairs: Vec<Repair> = Vec::new();
    let previous = store.attachments_of(owner)?;
    crate::timing::mark("netlink sockets open, earlier attachments read");
    if previous
        .iter()
        .any(|a| requests.iter().any(|r| r.name == a.network))
    {
        remove_orphaned_temporary_links(&mut inside.netlink)?;
    }
    for (i, (req, net)) in requests.iter().zip(definitions).enumerate() {
        if let Some(a) = previous.iter().find(|a| a.network == net.name) {
            let leases: Vec<Lease> = store
                .leases_of(owner)?
                .into_iter()
                .filter(|l| l.network == net.name)
                .collect();
            match inside.netlink.link_by_name(&a.ifname)? {
                Some(link)
                    if is_ours(&link) && is_complete(&mut inside.netlink, &link, &leases)? =>
                {
                    if default_routes.as_ref().is_some_and(|(d, _)| *d == i) {
                        default_link_done = Some((link.index, net.name.clone()));
                    }
                    done.push(AttachedLink {
                        network: net.name.clone(),
                        ifname: a.ifname.clone(),
                        mac: link.mac.map(format_mac).unwrap_or_default(),
                        addresses: leases.iter().map(cidr).collect(),
                        existing: true,
                    });
                    continue;
                }
                Some(link) if is_ours(&link) => inside.netlink.delete_link(link.index)?,
                _ => {}
            }
            // The link is gone or incomplete (its parent went away, an
            // attach was killed half-way): made again with the addresses
            // and MAC the owner holds, unless the request now asks for
            // other addresses.
            if a.link.is_some() && !leases.is_empty() && asks_for_same(req, &leases) {
                repairs.push(Repair {
                    index: i,
                    request: req.clone(),
                    network: net,
                    ifname: a.ifname.clone(),
                    mac: a.mac,
                    leases,
                });
                continue;
            }
            store.release_networks(owner, std::slice::from_ref(&net.name))?;
        }
        todo_requests.push(req.clone());
        todo_networks.push(net);
        todo_indices.push(i);
    }
    if let (Some((index, network)), Some((_, routes))) = (&default_link_done, &default_routes) {
        add_missing_default_routes(&mut inside.netlink, *index, routes, network)?;
    }
    if todo_requests.is_empty() && repairs.is_empty() {
        return Ok(done);
    }

    let present: Vec<String> = inside
        .netlink
        .links()?
        .into_iter()
        .map(|l| l.name)
        .collect();
    // A link to make again keeps its name: no new link may take it.
    let mut names = present.clone();
    names.extend(repairs.iter().map(|r| r.ifname.clone()));
    let scope = plan::Scope {
        peers: all,
        existing_ifnames: &names,
        trusted: false,
        identity: stable_identity,
    };
    let mut plans = plan::build(&todo_requests, &todo_networks, scope)?;
    for (plan, i) in plans.iter_mut().zip(&todo_indices) {
        plan.default_routes = match &default_routes {
            Some((d, routes)) if d == i => routes.clone(),
            _ => Vec::new(),
        };
    }
    crate::timing::mark("planned");
    let fresh = plans.len();
    let mut netns_identity = String::new();
    let mut reservation = if plans.is_empty() {
        Reservation::default()
    } else {
        let claims: Vec<_> = plans.iter().map(LinkPlan::claim).collect();
        let identity =
            identity::for_attach(target, &mut inside.netlink, store.deadline())?.to_string();
        netns_identity.clone_from(&identity);
        // The parent-sharing rules, addresses and MACs are settled in one
        // transaction; an owner in the way is first checked for being alive.
        let mut namespaces = Namespaces::new();
        store.reserve(owner, &identity, &claims, &mut |a| namespaces.is_alive(a))?
    };
    crate::timing::mark("leases committed");
    // Links made again: planned as the request says, with the name, MAC
    // and addresses the owner already holds.
    for r in repairs {
        // What the store granted is made again as it was: the recorded MAC
        // as if requested, past the request policy (it was checked then).
        let request = NetworkRequest {
            mac: r.mac,
            ..r.request
        };
        let scope = plan::Scope {
            trusted: true,
            existing_ifnames: &present,
            ..scope
        };
        let mut plan = plan::build(
            std::slice::from_ref(&request),
            std::slice::from_ref(&r.network),
            scope,
        )?
        .remove(0);
        plan.ifname = r.ifname;
        plan.default_routes = match &default_routes {
            Some((d, routes)) if *d == r.index => routes.clone(),
            _ => Vec::new(),
        };
        plans.push(plan);
        reservation.leases.push(r.leases);
        reservation.macs.push(r.mac);
    }

    let mut created = Vec::new();
    let mut dhcp = DhcpAsk {
        owner,
        identity: stable_identity,
        netns: netns_identity,
        acquired: Vec::new(),
    };
    let result = apply(
        &mut host,
        &mut inside,
        store,
        target,
        &plans,
        &reservation,
        &mut created,
        &mut dhcp,
    );
    match result {
        Ok(mut attached) => {
            done.append(&mut attached);
            Ok(done)
        }
        Err(err) => {
            let mut problems = Vec::new();
            for network in &dhcp.acquired {
                if let Err(e) = dhcp_agent(store).release(owner, network) {
                    problems.push(format!("{e:#}"));
                }
            }
            for index in created {
                if let Err(e) = inside.netlink.delete_link(index) {
                    problems.push(e.to_string());
                }
            }
            // Only what this attach reserved is freed; links it was making
            // again keep their owner's leases (and may be made again later).
            let nets: Vec<String> = plans[..fresh]
                .iter()
                .map(|p| p.network.name.clone())
                .collect();
            if let Err(e) = store.release_networks(owner, &nets) {
                problems.push(e.to_string());
            }
            if problems.is_empty() {
                Err(err)
            } else {
                Err(err.context(format!("rollback also failed: {}", problems.join("; "))))
            }
        }
    }
}

/// A link of an earlier attach to make again with what its owner holds.
struct Repair {
    /// Its position in the request.
    index: usize,
    request: NetworkRequest,
    network: Network,
    ifname: String,
    mac: Option<MacAddr>,
    leases: Vec<Lease>,
}

/// Whether `req` asks for the addresses `leases` hold (or for none: pooled).
fn asks_for_same(req: &NetworkRequest, leases: &[Lease]) -> bool {
    req.ips
        .iter()
        .all(|ip| leases.iter().any(|l| l.address == ip.addr))
}

/// Frees the owner's leases (SPEC §4). When the owner's netns still lives (a
/// shared or bind-mounted netns, a pod's, a hand-made detach), its interfaces
/// are removed first (with any link a killed attach left there under its
/// temporary name): an address is never free in the store while an
/// interface holds it on the wire. If one cannot be removed, the leases of that
/// network are kept and the error says why. When the netns is gone or going
/// (the usual poststop) the links die with it and are not deleted one by one
/// (the kernel takes ~16 ms per link). `hint` is a path that may open the
/// owner's netns (checked by identity); without it `/proc` is searched.
pub fn release(
    store: &dyn LeaseStore,
    networks: &NetworkDir,
    owner: &str,
    hint: Option<&Path>,
) -> Result<Vec<Lease>> {
    let attachments = store.attachments_of(owner)?;
    release_dhcp_leases(store, &attachments);
    let mut namespaces = Namespaces::new().with_hint(hint);
    let mut kept = Vec::new();
    let mut freeable = Vec::new();
    for a in &attachments {
        match remove_live_interface(&mut namespaces, a) {
            Ok(()) => freeable.push(a.network.clone()),
            Err(e) => kept.push(format!("network {} ({}): {e:#}", a.network, a.ifname)),
        }
    }
    if kept.is_empty() {
        let freed = store.release_owner(owner)?;
        forget_host_routes(networks, &freed)?;
        return Ok(freed);
    }
    let freed = store.release_networks(owner, &freeable)?;
    forget_host_routes(networks, &freed)?;
    let freed: Vec<String> = freed
        .iter()
        .map(|l| format!("{} {}", l.network, l.address))
        .collect();
    bail!(
        "released {}; kept the leases of {owner} whose interface is still up in a live network \
         namespace: {}",
        if freed.is_empty() {
            "nothing".to_string()
        } else {
            freed.join(", ")
        },
        kept.join("; ")
    )
}

/// Tells the DHCP server it may have back the leases among `attachments`
/// (those with a persisted DHCP lease), while their links may still be up
/// to send from. A release that cannot be sent does not keep the address
/// in the store: the link is going, and the server's lease runs out.
pub fn release_dhcp_leases(store: &dyn LeaseStore, attachments: &[Attachment]) {
    let Some(dir) = store.state_dir() else {
        return;
    };
    let leases = crate::dhcp::lease_dir(&dir);
    for a in attachments {
        if !crate::dhcp::record::path_of(&leases, &a.owner, &a.network).exists() {
            continue;
        }
        if let Err(e) = crate::dhcp::agent(&dir).release(&a.owner, &a.network) {
            eprintln!("netattach: warning: {e:#}");
        }
    }
}

/// Frees one address. If its owner's interface is still up in a live netns,
/// that needs `force`, and then the interface is removed and every lease of
/// that attachment freed; returns the freed leases.
pub fn release_address(
    store: &dyn LeaseStore,
    networks: &NetworkDir,
    network: &str,
    address: IpAddr,
    force: bool,
) -> Result<Vec<Lease>> {
    let freed = release_address_only(store, network, address, force)?;
    forget_host_routes(networks, &freed)?;
    Ok(freed)
}

/// The routes through host links (src/hostlink.rs) of addresses just
/// freed go; failing that, the error says the leases are free anyway.
pub fn forget_host_routes(networks: &NetworkDir, freed: &[Lease]) -> Result<()> {
    crate::hostlink::after_release(networks, freed).with_context(|| {
        let what: Vec<String> = freed.iter().map(|l| l.address.to_string()).collect();
        format!(
            "released {}, but their routes through the host link could not be removed",
            what.join(", ")
        )
    })
}

fn release_address_only(
    store: &dyn LeaseStore,
    network: &str,
    address: IpAddr,
    force: bool,
) -> Result<Vec<Lease>> {
    let Some(lease) = store.lease_of(network, address)? else {
        bail!("no lease of {address} on network {network}");
    };
    let attachment = store
        .attachments_of(&lease.owner)?
        .into_iter()
        .find(|a| a.network == network);
    if let Some(a) = attachment.filter(|a| a.link.is_some()) {
        let mut namespaces = Namespaces::new();
        if !matches!(namespaces.find(&a.netns), Found::Gone) && Identity::parse(&a.netns).is_some()
        {
            if !force {
                bail!(
                    "{address} is on interface {} of {} (network {network}) in a live network namespace; \
                     --force removes that interface and frees all of its addresses",
                    a.ifname,
                    a.owner
                );
            }
            remove_live_interface(&mut namespaces, &a)?;
            return Ok(store.release_networks(&a.owner, std::slice::from_ref(&a.network))?);
        }
    }
    Ok(store
        .release_address(network, address)?
        .into_iter()
        .collect())
}

/// Removes the attachment's interface if its netns still exists. `Err` when
/// the netns lives but the interface could not be removed, or the netns
/// cannot be told apart from a live one.
fn remove_live_interface(namespaces: &mut Namespaces, a: &Attachment) -> Result<()> {
    if a.link.is_none() || Identity::parse(&a.netns).is_none() {
        return Ok(()); // a reservation, or nothing recorded to find
    }
    let path = match namespaces.find(&a.netns) {
        Found::Gone => return Ok(()),
        Found::Alive(path) => path,
        Found::Unknown => bail!("its network namespace exists but cannot be read"),
    };
    let ns = Netns::open(&path).with_context(|| format!("open {}", path.display()))?;
    let ifname = a.ifname.clone();
    let mac = a.mac;
    ns.run(move || -> Result<()> {
        let mut inside = Netlink::open()?;
        if let Some(link) = inside.link_by_name(&ifname)? {
            // Only the link this attachment made: same kind and, when
            // recorded, the same MAC.
            let same_mac = mac.is_none_or(|m| link.mac == Some(m.0));
            if is_ours(&link) && same_mac {
                inside.delete_link(link.index)?;
            }
        }
        // An attach killed between creating the link and renaming it left it
        // under its temporary name, where the lookup above does not see it.
        remove_orphaned_temporary_links(&mut inside)
    })?
}

fn format_mac(m: [u8; 6]) -> String {
    crate::request::MacAddr(m).to_string()
}

fn cidr(lease: &Lease) -> String {
    format!("{}/{}", lease.address, lease.prefix_len)
}

fn is_ours(link: &Link) -> bool {
    matches!(link.kind.as_deref(), Some("macvlan" | "ipvlan"))
}

/// A link an attach finished: up, with every address leased for it.
fn is_complete(inside: &mut Netlink, link: &Link, leases: &[Lease]) -> Result<bool> {
    if !link.up {
        return Ok(false);
    }
    let present = inside.addresses()?;
    Ok(leases.iter().all(|l| {
        present
            .iter()
            .any(|a| a.index == link.index && a.address == l.address)
    }))
}

/// Deletes links left under a temporary name by an attach process that died
/// between creating and renaming them.
fn remove_orphaned_temporary_links(inside: &mut Netlink) -> Result<()> {
    for link in inside.links()? {
        let Some(pid) = temporary_name_pid(&link.name) else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if is_ours(&link) && !alive {
            inside.delete_link(link.index)?;
        }
    }
    Ok(())
}

/// The pid in a name made by `temporary_name`, if it is one.
fn temporary_name_pid(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix("na")?.split_once('t')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    u32::from_str_radix(pid, 16).ok()
}

/// Who a DHCP lease is for, and the networks whose lease this attach
/// acquired (released again if the attach rolls back).
struct DhcpAsk<'a> {
    owner: &'a str,
    identity: Option<&'a str>,
    netns: String,
    acquired: Vec<String>,
}

fn dhcp_agent(store: &dyn LeaseStore) -> Box<dyn crate::dhcp::Agent> {
    let dir = store
        .state_dir()
        .unwrap_or_else(|| crate::cli::DEFAULT_STATE_DIR.into());
    crate::dhcp::agent(&dir)
}

/// What an attach keeps of its budget for rolling back after the DHCP
/// server did not answer in time.
const DHCP_ROLLBACK_RESERVE: Duration = Duration::from_secs(1);

/// How long to wait for the DHCP server: the network's `dhcp_timeout`,
/// within the runtime's budget for the whole attach (the hook's timeout,
/// the NRI request timeout; 5 s without one), less time to roll back.
/// Whole tenths of a second, for the message that names it.
fn dhcp_wait(net: &Network, store: &dyn LeaseStore) -> Result<Duration> {
    let budget = store
        .deadline()
        .remaining()
        .saturating_sub(DHCP_ROLLBACK_RESERVE);
    let wait = net.dhcp_timeout().min(budget);
    let wait = Duration::from_millis(wait.as_millis() as u64 / 100 * 100);
    if wait.is_zero() {
        bail!(
            "network {}: the runtime's time for this start is spent before the DHCP server could be asked",
            net.name
        );
    }
    Ok(wait)
}

/// Asks the DHCP agent for a lease through the link just made (up, no
/// address yet), records the address in the store like any other (unique
/// on the segment) and puts it on the link. Returns the lease and the
/// server's router.
fn acquire_dhcp(
    inside: &mut Netlink,
    store: &dyn LeaseStore,
    target: &Netns,
    plan: &LinkPlan,
    link: &Link,
    ask: &mut DhcpAsk<'_>,
) -> Result<(Lease, Option<std::net::Ipv4Addr>)> {
    let net = &plan.network;
    let mac = link
        .mac
        .ok_or_else(|| anyhow!("network {}: the new link has no MAC", net.name))?;
    let identity = ask.identity.unwrap_or(ask.owner);
    let request = crate::dhcp::Acquire {
        owner: ask.owner.to_string(),
        network: net.name.clone(),
        parent: net.parent.clone(),
        netns_path: target.path().to_path_buf(),
        netns: ask.netns.clone(),
        ifname: plan.ifname.clone(),
        mac,
        identity: identity.to_string(),
        // A pod's name (namespace/name), else nothing: a container id is no
        // name anyone would look for in a server's lease list.
        hostname: ask
            .identity
            .map(|i| i.rsplit('/').next().unwrap_or(i).to_string()),
        wait_ms: dhcp_wait(net, store)?.as_millis() as u64,
    };
    let granted = dhcp_agent(store).acquire(&request)?;
    ask.acquired.push(net.name.clone());
    let address = IpAddr::V4(granted.address);
    if !net.subnets.is_empty() && net.subnet_of(address).is_none() {
        bail!(
            "network {}: the DHCP server {} offered {address}, outside the network's subnets",
            net.name,
            granted.server
        );
    }
    let mut namespaces = Namespaces::new();
    let lease = store
        .record_lease(
            ask.owner,
            &net.name,
            address,
            granted.prefix_len,
            &mut |a| namespaces.is_alive(a),
        )
        .with_context(|| {
            format!(
                "network {}: the DHCP server {} offered {address}",
                net.name, granted.server
            )
        })?;
    inside
        .add_address(link.index, address, granted.prefix_len)
        .with_context(|| format!("network {}", net.name))?;
    Ok((lease, granted.router))
}

/// Creates and configures every planned link; `created` collects the ifindexes
/// (inside the netns) of links made so far, for rollback.
#[allow(clippy::too_many_arguments)]
fn apply(
    host: &mut Netlink,
    inside: &mut Inside<'_>,
    store: &dyn LeaseStore,
    target: &Netns,
    plans: &[LinkPlan],
    reservation: &Reservation,
    created: &mut Vec<u32>,
    dhcp: &mut DhcpAsk<'_>,
) -> Result<Vec<AttachedLink>> {
    let mut attached = Vec::with_capacity(plans.len());
    // Each link's MAC as the kernel reports it, for the announcements.
    let mut wire_macs = Vec::with_capacity(plans.len());
    // The reservation's leases, with the DHCP servers' added as they come.
    let mut all_leases = reservation.leases.clone();
    let mut default_routes: Vec<Vec<plan::DefaultRoute>> =
        plans.iter().map(|p| p.default_routes.clone()).collect();
    let per_plan = all_leases.iter_mut().zip(&reservation.macs);
    for (i, (plan, (leases, mac))) in plans.iter().zip(per_plan).enumerate() {
        let link = create_link(host, &mut inside.netlink, store, target, plan, *mac)?;
        crate::timing::mark("link created");
        created.push(link.index);
        configure_link(inside, plan, &link, leases)?;
        crate::timing::mark("link sysctls, addresses, name, up");
        if plan.network.ipam == crate::config::IpamMode::Dhcp && leases.is_empty() {
            let (lease, router) =
                acquire_dhcp(&mut inside.netlink, store, target, plan, &link, dhcp)?;
            leases.push(lease);
            // The placeholder route of a DHCP network goes through the
            // server's router, or nowhere without one.
            default_routes[i] = match router {
                Some(r) if !default_routes[i].is_empty() => vec![plan::DefaultRoute {
                    family: crate::netlink::route::Family::V4,
                    gateway: Some(IpAddr::V4(r)),
                }],
                _ => Vec::new(),
            };
            crate::timing::mark("DHCP lease");
        }
        let mac = link.mac;
        wire_macs.push(mac);
        attached.push(AttachedLink {
            network: plan.network.name.clone(),
            ifname: plan.ifname.clone(),
            mac: mac.map(format_mac).unwrap_or_default(),
            addresses: leases.iter().map(cidr).collect(),
            existing: false,
        });
    }
    crate::timing::mark("links done");
    // Routes after every link is up: a gateway is only reachable through an up link.
    for ((plan, &index), routes) in plans.iter().zip(created.iter()).zip(&default_routes) {
        add_missing_default_routes(&mut inside.netlink, index, routes, &plan.network.name)?;
    }
    crate::timing::mark("default routes");
    // The host's routes to the new addresses through the networks' host
    // links (only networks with host addresses), all or none.
    let mut routed: Vec<(&Network, Vec<IpAddr>)> = Vec::new();
    for (plan, leases) in plans.iter().zip(&all_leases) {
        if plan.network.host_addresses.is_empty() {
            continue;
        }
        let addresses: Vec<IpAddr> = leases.iter().map(|l| l.address).collect();
        if let Err(e) = crate::hostlink::add_routes(host, store, &plan.network, &addresses) {
            for (net, addresses) in &routed {
                let _ = crate::hostlink::remove_routes(host, net, addresses);
            }
            return Err(e);
        }
        routed.push((&plan.network, addresses));
    }
    // Last, once nothing can roll the attach back: the LAN learns the new
    // addresses at once, from a process of its own (see src/announce.rs);
    // the container's start does not wait for it.
    let inode = crate::announce::netns_inode(target.raw_fd())?;
    for ((plan, leases), mac) in plans.iter().zip(&all_leases).zip(&wire_macs) {
        let Some(mac) = mac else {
            continue;
        };
        let addresses: Vec<IpAddr> = leases.iter().map(|l| l.address).collect();
        let count = plan.network.announce();
        if let Err(e) =
            crate::announce::spawn(target.path(), inode, &plan.ifname, *mac, &addresses, count)
        {
            for (net, addresses) in &routed {
                let _ = crate::hostlink::remove_routes(host, net, addresses);
            }
            return Err(e).with_context(|| {
                format!("network {}: start the announcements", plan.network.name)
            });
        }
    }
    crate::timing::mark("announced");
    Ok(attached)
}

/// Adds each of `routes` through link `index` unless the netns already has a
/// default route of that family.
fn add_missing_default_routes(
    inside: &mut Netlink,
    index: u32,
    routes: &[plan::DefaultRoute],
    network: &str,
) -> Result<()> {
    for route in routes {
        if !inside.has_default_route(route.family)? {
            inside
                .add_default_route(route.family, index, route.gateway)
                .with_context(|| format!("network {network}"))?;
        }
    }
    Ok(())
}

static TEMP_NAMES: AtomicU32 = AtomicU32::new(0);

/// A name for the link between its creation and its rename, unique on this host.
fn temporary_name() -> String {
    let n = TEMP_NAMES.fetch_add(1, Ordering::Relaxed);
    format!("na{:x}t{}", std::process::id(), n % 10000)
}

/// Creates the link directly in the netns (IFLA_NET_NS_FD) on the parent's
/// ifindex, under a temporary name, and returns it as seen inside the netns.
fn create_link(
    host: &mut Netlink,
    inside: &mut Netlink,
    store: &dyn LeaseStore,
    target: &Netns,
    plan: &LinkPlan,
    mac: Option<MacAddr>,
) -> Result<Link> {
    let net = &plan.network;
    // Resolved here, per link, so a parent that vanished since an earlier link
    // of the same attach is reported as such.
    let parent = vlan::ensure_parent(host, store, &net.parent)
        .with_context(|| format!("network {}", net.name))?
        .ok_or_else(|| {
            anyhow!(
                "network {}: parent interface {} does not exist",
                net.name,
                net.parent
            )
        })?;
    if let (Some(mtu), Some(parent_mtu)) = (net.mtu, parent.mtu) {
        if mtu > parent_mtu {
            bail!(
                "network {}: mtu {mtu} exceeds the MTU {parent_mtu} of parent {}",
                net.name,
                net.parent
            );
        }
    }
    let tmp = temporary_name();
    let sources: Vec<[u8; 6]> = net.macvlan_sources.iter().map(|m| m.0).collect();
    let new = NewLink {
        name: &tmp,
        lower: parent.index,
        kind: link_kind(net),
        mac: mac.map(|m| m.0),
        mtu: net.mtu,
        netns_fd: Some(target.raw_fd()),
        sources: &sources,
    };
    create_with_teardown_retry(host, &new).map_err(|e| explain_create_error(net, e))?;
    match inside.link_by_name(&tmp) {
        Ok(Some(link)) => Ok(link),
        // The link exists but is not in `created` yet, so rollback would miss
        // it: look once more and delete it before failing.
        lookup => {
            let why = match lookup {
                Err(e) => format!("{e}"),
                _ => "not found".to_string(),
            };
            let cleanup = match inside.link_by_name(&tmp) {
                Ok(Some(link)) => inside
                    .delete_link(link.index)
                    .map(|()| "deleted".to_string())
                    .unwrap_or_else(|e| format!("left behind: {e}")),
                Ok(None) => "gone".to_string(),
                Err(e) => format!("left for the next attach to remove: {e}"),
            };
            bail!(
                "network {}: the new link {tmp} could not be looked up in the netns ({why}); {cleanup}",
                net.name
            )
        }
    }
}

/// How long a sharing refusal of the kernel is retried. The kernel tears a
/// deleted netns's links down asynchronously (tens of ms), so right after a
/// container died (its leases freed at poststop, or its record dropped as
/// dead) the parent may still carry its links for a moment. Kept well inside
/// the NRI request deadline (2 s).
const KERNEL_TEARDOWN_WAIT: Duration = Duration::from_millis(500);

/// `create_link`, retried with a growing pause while the kernel refuses the
/// parent sharing (EBUSY: another link kind or ipvlan mode; EINVAL: passthru
/// against other macvlans), until [`KERNEL_TEARDOWN_WAIT`] has passed.
fn create_with_teardown_retry(host: &mut Netlink, new: &NewLink<'_>) -> Result<(), NetlinkError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match host.create_link(new) {
            Err(e)
                if matches!(e.errno(), Some(libc::EBUSY | libc::EINVAL))
                    && start.elapsed() + pause <= KERNEL_TEARDOWN_WAIT =>
            {
                std::thread::sleep(pause);
                pause *= 2;
            }
            other => return other,
        }
    }
}

/// Sysctls, addresses, name, up: the link is still down under its temporary
/// name until the last step, so nothing is announced before it is complete
/// (`arp_notify` announces the addresses present when it comes up).
fn configure_link(
    inside: &mut Inside<'_>,
    plan: &LinkPlan,
    link: &Link,
    leases: &[Lease],
) -> Result<()> {
    let net = &plan.network.name;
    let tmp = link.name.clone();
    let has_v6 = leases.iter().any(|l| l.address.is_ipv6());
    inside.thread.run(move || -> std::io::Result<()> {
        // Announce the address on link-up (gratuitous ARP / unsolicited NA), so
        // the LAN's caches learn the new MAC at once.
        netns::set_interface_sysctl("ipv4", &tmp, "arp_notify", "1")?;
        // Linux answers ARP for any of its addresses on every interface. A
        // container with two links on one LAN (two networks on one parent)
        // would answer for each address with both MACs: only the interface
        // that carries an address answers for it, and asks with its own.
        netns::set_interface_sysctl("ipv4", &tmp, "arp_ignore", "1")?;
        netns::set_interface_sysctl("ipv4", &tmp, "arp_announce", "2")?;
        if has_v6 || std::path::Path::new("/proc/sys/net/ipv6").exists() {
            netns::set_interface_sysctl("ipv6", &tmp, "ndisc_notify", "1")?;
            // The LAN's router advertisements must not add addresses or
            // default routes that the store does not know of.
            netns::set_interface_sysctl("ipv6", &tmp, "accept_ra", "0")?;
            netns::set_interface_sysctl("ipv6", &tmp, "autoconf", "0")?;
        }
        Ok(())
    })??;
    // One round trip: the addresses, then the name and up.
    let mut requests: Vec<Request> = leases
        .iter()
        .map(|l| add_address_request(link.index, l.address, l.prefix_len))
        .collect();
    requests.push(rename_and_up_request(link.index, &plan.ifname));
    let last = requests.len() - 1;
    inside
        .netlink
        .batch(requests)
        .map_err(|BatchError { index, error }| {
            if index == last && error.errno() == Some(libc::EEXIST) {
                anyhow!(
                "network {net}: interface {} already exists in the container's network namespace",
                plan.ifname
            )
            } else {
                anyhow!(error).context(format!("network {net}"))
            }
        })
}

pub(crate) fn link_kind(net: &Network) -> LinkKind {
    match net.driver {
        Driver::Macvlan => LinkKind::Macvlan(match net.mode() {
            Mode::Vepa => MacVlanMode::Vepa,
            Mode::Private => MacVlanMode::Private,
            Mode::Passthru => MacVlanMode::Passthrough,
            Mode::Source => MacVlanMode::Source,
            _ => MacVlanMode::Bridge,
        }),
        Driver::Ipvlan => LinkKind::Ipvlan(
            match net.mode() {
                Mode::L3 => IpVlanMode::L3,
                Mode::L3s => IpVlanMode::L3S,
                _ => IpVlanMode::L2,
            },
            match net.flag() {
                IpvlanFlag::Bridge => IpVlanFlags::empty(),
                IpvlanFlag::Private => IpVlanFlags::Private,
                IpvlanFlag::Vepa => IpVlanFlags::Vepa,
            },
        ),
    }
}

/// Turns the kernel's terse refusals into what the operator needs to know.
fn explain_create_error(net: &Network, e: NetlinkError) -> anyhow::Error {
    let why = match (e.errno(), net.driver, net.mode()) {
        (Some(libc::ENODEV), _, _) => format!("parent interface {} went away", net.parent),
        (Some(libc::EINVAL), Driver::Macvlan, Mode::Passthru) => format!(
            "parent {} already carries other macvlan interfaces; passthru needs the parent to itself",
            net.parent
        ),
        (Some(libc::EINVAL), Driver::Macvlan, _) => format!(
            "the kernel refused a macvlan on {} ({}); the parent may be in passthru use by another container",
            net.parent, e
        ),
        (Some(libc::EBUSY), _, _) => format!(
            "parent {} already carries {} links; one parent carries either macvlan or ipvlan (and one ipvlan mode)",
            net.parent,
            if net.driver == Driver::Macvlan { "ipvlan" } else { "macvlan or other-mode ipvlan" }
        ),
        _ => e.to_string(),
    };
    anyhow!(
        "network {}: cannot create the {} link: {why}",
        net.name,
        net.driver
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_carry_the_pid_and_fit_an_interface_name() {
        let name = temporary_name();
        assert!(crate::config::valid_ifname(&name), "{name}");
        assert_eq!(temporary_name_pid(&name), Some(std::process::id()));
        assert_eq!(temporary_name_pid("eth0"), None);
        assert_eq!(temporary_name_pid("nat"), None);
        assert_eq!(temporary_name_pid("na1ft"), None);
    }
}
