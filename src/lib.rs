//! netattach: containers on the physical LAN with their own MAC and IP, through
//! macvlan and ipvlan, for runc, crun, podman (OCI hooks) and containerd (NRI).
//!
//! Data flows one way: a request (annotations) and the administrator's network
//! definitions become a plan ([`plan`]), the lease store ([`ipam`]) fills in the
//! addresses, and the engine ([`engine`]) applies the plan in the container's
//! network namespace with rollback. The faces ([`hook`], CLI) only translate their
//! input into a request, a netns and an owner id.

pub mod announce;
pub mod cli;
pub mod config;
pub mod deadline;
pub mod dhcp;
pub mod doctor;
pub mod engine;
pub mod etcd;
pub mod gc;
pub mod hook;
pub mod hostlink;
pub mod identity;
pub mod ipam;
pub mod liveness;
pub mod locks;
pub mod netlink;
pub mod netns;
pub mod nri;
pub mod plan;
pub mod repair;
pub mod request;
pub mod secure_fs;
pub mod sharing;
pub mod timing;
pub mod vlan;
