//! `netattach doctor`: what the running kernel supports, and whether each
//! defined network's parent is ready to carry links.

use anyhow::Result;
use netlink_packet_route::link::InfoKind;
use serde::Serialize;

use crate::config::{parse_vlan_parent, BrokenDefinition, Driver, Mode, Network};
use crate::ipam::LeaseStore;
use crate::netlink::Netlink;
use crate::netns;

/// One link kind and whether this kernel can make it.
#[derive(Debug, Clone, Serialize)]
pub struct KernelFeature {
    pub name: &'static str,
    pub supported: bool,
    /// "built in or loaded", "loaded on demand", or "missing".
    pub how: String,
}

/// The kernel's support for the three link kinds netattach makes. Probed in a
/// scratch netns, so nothing on the host is touched; a loadable module is
/// loaded by the probe exactly as an attach would load it.
pub fn kernel_features() -> Result<Vec<KernelFeature>> {
    let kinds = [
        ("macvlan", "macvlan", InfoKind::MacVlan),
        ("ipvlan", "ipvlan", InfoKind::IpVlan),
        ("802.1Q", "8021q", InfoKind::Vlan),
    ];
    kinds
        .into_iter()
        .map(|(name, module, kind)| {
            let loaded_before = module_loaded(module);
            let supported = netns::in_scratch_netns(|| -> Result<bool> {
                Ok(Netlink::open()?.supports_kind(kind)?)
            })??;
            // Loadable modules have /sys/module/NAME/initstate; built-in ones don't.
            let how = match (supported, loaded_before, module_loaded(module)) {
                (false, _, _) => "missing",
                (true, _, false) => "built in",
                (true, true, true) => "loaded module",
                (true, false, true) => "module, loaded on demand",
            };
            Ok(KernelFeature {
                name,
                supported,
                how: how.to_string(),
            })
        })
        .collect()
}

fn module_loaded(module: &str) -> bool {
    std::path::Path::new("/sys/module")
        .join(module)
        .join("initstate")
        .exists()
}

/// The state of one network's parent.
#[derive(Debug, Clone, Serialize)]
pub struct ParentState {
    pub network: String,
    pub parent: String,
    /// "up", "down", "missing", or "will be created on BASE".
    pub state: String,
    /// Problems an attach would run into, in words.
    pub problems: Vec<String>,
}

/// One check of the host's netattach setup (lease store, netns identity, ...).
#[derive(Debug, Clone, Serialize)]
pub struct HostCheck {
    pub check: &'static str,
    pub state: String,
    pub problems: Vec<String>,
}

/// Who holds the lease store's write lock. A holder that is stopped (SIGSTOP,
/// a frozen cgroup, a debugger) makes every container start wait out its
/// deadline and fail.
pub fn lease_store_lock(queue: &std::path::Path) -> HostCheck {
    let holders = crate::locks::holders(queue);
    let problems = holders
        .iter()
        .filter(|h| h.stopped)
        .map(|h| {
            format!(
                "pid {} is stopped while holding the lease store's write lock {}: container \
                 starts fail at their deadline until it is resumed (kill -CONT {}) or killed",
                h.pid,
                queue.display(),
                h.pid
            )
        })
        .collect();
    let state = match holders.as_slice() {
        [] => "free".to_string(),
        held => {
            let names: Vec<String> = held.iter().map(ToString::to_string).collect();
            format!("held by {}", names.join(", "))
        }
    };
    HostCheck {
        check: "lease store lock",
        state,
        problems,
    }
}

/// How attachments tell a live namespace from a later one with its inode
/// number: the kernel's cookie, or netattach's mark on older kernels.
pub fn netns_identity() -> HostCheck {
    HostCheck {
        check: "netns identity",
        state: crate::identity::Scheme::of_this_kernel()
            .describe()
            .to_string(),
        problems: Vec::new(),
    }
}

/// Live containers whose links are gone (`netattach repair` gives them back).
pub fn links_to_repair(store: &dyn LeaseStore) -> HostCheck {
    let (state, problems) = match crate::repair::find(store) {
        Ok(broken) if broken.is_empty() => ("none".to_string(), Vec::new()),
        Ok(broken) => (
            format!("{} (netattach repair)", broken.len()),
            broken
                .iter()
                .map(|b| {
                    format!(
                        "{} of {} (network {}): {}",
                        b.ifname, b.owner, b.network, b.state
                    )
                })
                .collect(),
        ),
        Err(e) => ("unknown".to_string(), vec![format!("{e:#}")]),
    };
    HostCheck {
        check: "links to repair",
        state,
        problems,
    }
}

/// Whether hooks find a DHCP client for `ipam dhcp` networks: the
/// `netattach dhcp` service answering on the state directory's socket (the
/// NRI plugin is its own client and needs none).
pub fn dhcp_client(state_dir: &std::path::Path, networks: &[crate::config::Network]) -> HostCheck {
    let dhcp: Vec<&str> = networks
        .iter()
        .filter(|n| n.ipam == crate::config::IpamMode::Dhcp)
        .map(|n| n.name.as_str())
        .collect();
    let socket = crate::dhcp::socket_path(state_dir);
    let running = std::os::unix::net::UnixStream::connect(&socket).is_ok();
    let leases = crate::dhcp::record::load_all(&crate::dhcp::lease_dir(state_dir))
        .0
        .len();
    let state = match (dhcp.is_empty(), running) {
        (true, _) => "no network uses DHCP".to_string(),
        (false, true) => format!(
            "netattach dhcp answers on {}; {leases} lease(s)",
            socket.display()
        ),
        (false, false) => format!("not running; {leases} lease(s) kept"),
    };
    let problems = if !dhcp.is_empty() && !running {
        vec![format!(
            "network(s) {} use DHCP: hooks fail until the netattach dhcp service runs              (systemctl enable --now netattach-dhcp); the NRI plugin needs none",
            dhcp.join(", ")
        )]
    } else {
        Vec::new()
    };
    HostCheck {
        check: "DHCP client",
        state,
        problems,
    }
}

/// The report line of a definition file that does not load.
pub fn broken_definition(b: &BrokenDefinition) -> ParentState {
    ParentState {
        network: b.name.clone(),
        parent: "?".into(),
        state: "broken definition".into(),
        problems: vec![format!(
            "{}; attaches to other networks skip it (`netattach network rm {}` removes it)",
            b.error, b.name
        )],
    }
}

/// Checks every network's parent in the current (host) netns.
pub fn parents(
    host: &mut Netlink,
    store: &dyn LeaseStore,
    networks: &[Network],
    kernel: &[KernelFeature],
) -> Result<Vec<ParentState>> {
    let ours = store.vlans()?;
    let missing = |name: &str| kernel.iter().any(|f| f.name == name && !f.supported);
    let mut report = Vec::new();
    for net in networks {
        let mut problems = Vec::new();
        let driver = net.driver.to_string();
        if missing(&driver) {
            problems.push(format!("this kernel has no {driver}"));
        }
        if matches!(parse_vlan_parent(&net.parent), Ok(Some(_))) && missing("802.1Q") {
            problems.push("this kernel has no 802.1Q VLAN support for the dotted parent".into());
        }
        let state = match host.link_by_name(&net.parent)? {
            Some(link) => {
                if let (Some(mtu), Some(parent_mtu)) = (net.mtu, link.mtu) {
                    if mtu > parent_mtu {
                        problems.push(format!("mtu {mtu} exceeds the parent's {parent_mtu}"));
                    }
                }
                let mut state = if link.up { "up" } else { "down" }.to_string();
                if ours.contains(&net.parent) {
                    state.push_str(" (VLAN created by netattach)");
                }
                if !link.up {
                    problems.push("parent is down: containers will have no carrier".into());
                }
                state
            }
            None => match parse_vlan_parent(&net.parent) {
                Ok(Some(vlan)) => match host.link_by_name(&vlan.base)? {
                    Some(_) => format!("will be created on {}", vlan.base),
                    None => {
                        problems.push(format!("base interface {} does not exist", vlan.base));
                        "missing".into()
                    }
                },
                _ => {
                    problems.push("parent does not exist".into());
                    "missing".into()
                }
            },
        };
        problems.extend(crate::hostlink::check(host, net)?);
        for other in networks
            .iter()
            .filter(|o| o.name != net.name && o.parent == net.parent)
        {
            if net.driver != other.driver {
                problems.push(format!(
                    "shares the parent with {} network {}: only one of them can be in use at a time",
                    other.driver, other.name
                ));
            } else if net.driver == Driver::Ipvlan && net.mode() != other.mode() {
                problems.push(format!(
                    "ipvlan mode {} differs from network {} ({}) on the same parent",
                    net.mode(),
                    other.name,
                    other.mode()
                ));
            } else if net.mode() == Mode::Passthru || other.mode() == Mode::Passthru {
                problems.push(format!(
                    "shares the parent with network {}, but passthru needs it alone",
                    other.name
                ));
            }
        }
        report.push(ParentState {
            network: net.name.clone(),
            parent: net.parent.clone(),
            state,
            problems,
        });
    }
    Ok(report)
}
