//! A lease as persisted: one JSON file per owner and network in
//! `STATE_DIR/dhcp/`, replaced whole (written aside, synced, renamed) at
//! every bind and renewal, so a restart finds the last lease the server
//! granted and renews it instead of asking for a new one.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::machine::{Lease, Offer};
use super::Acquire;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub request: Acquire,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    /// Seconds since the epoch, as the machine's clock (exchange::now).
    pub bound_at: u64,
    pub lease_time: u64,
    pub t1: u64,
    pub t2: u64,
    pub expiry: u64,
}

impl Record {
    pub fn new(request: &Acquire, lease: &Lease) -> Record {
        let o = &lease.offer;
        Record {
            request: request.clone(),
            address: o.address,
            prefix_len: o.prefix_len,
            router: o.router,
            dns: o.dns.clone(),
            server: o.server,
            bound_at: lease.bound_at.as_secs(),
            lease_time: o.lease_time.as_secs(),
            t1: lease.t1.as_secs(),
            t2: lease.t2.as_secs(),
            expiry: lease.expiry.as_secs(),
        }
    }

    /// The machine's lease again, with the times it had.
    pub fn lease(&self) -> Lease {
        let secs = Duration::from_secs;
        Lease {
            offer: Offer {
                address: self.address,
                server: self.server,
                prefix_len: self.prefix_len,
                router: self.router,
                dns: self.dns.clone(),
                lease_time: secs(self.lease_time),
                renewal_time: None,
                rebinding_time: None,
            },
            bound_at: secs(self.bound_at),
            t1: secs(self.t1),
            t2: secs(self.t2),
            expiry: secs(self.expiry),
        }
    }

    pub fn granted(&self) -> super::Granted {
        super::Granted {
            address: self.address,
            prefix_len: self.prefix_len,
            router: self.router,
            dns: self.dns.clone(),
            server: self.server,
            expiry: self.expiry,
        }
    }
}

/// The file of an owner's lease on a network. Owner ids and network names
/// are checked names (no `/`), so the pair is a file name.
pub fn path_of(dir: &Path, owner: &str, network: &str) -> PathBuf {
    dir.join(format!("{network}@{owner}.json"))
}

pub fn save(dir: &Path, record: &Record) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = path_of(dir, &record.request.owner, &record.request.network);
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(record)?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("write {}", path.display()))
}

pub fn remove(dir: &Path, owner: &str, network: &str) -> Result<()> {
    let path = path_of(dir, owner, network);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Every persisted lease, and one line per file that could not be read.
pub fn load_all(dir: &Path) -> (Vec<Record>, Vec<String>) {
    let mut records = Vec::new();
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (records, problems);
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice::<Record>(&b)?))
        {
            Ok(r) => records.push(r),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    records.sort_by(|a, b| {
        (&a.request.network, &a.request.owner).cmp(&(&b.request.network, &b.request.owner))
    });
    (records, problems)
}
