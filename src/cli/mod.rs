//! The command-line verbs, one module each. They translate arguments into calls
//! of the core and print the outcome; no logic of their own beyond that.

pub mod attach;
pub mod dhcp;
pub mod doctor;
pub mod gc;
pub mod hook;
pub mod host;
pub mod hostlinks;
pub mod import;
pub mod lease;
pub mod network;
pub mod nri;
pub mod repair;

use std::path::PathBuf;

use crate::config::NetworkDir;
use crate::ipam::store::Store;

/// Default directory of leases and other state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netattach";

/// Where definitions and state live, from flags or environment.
pub struct Context {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    /// When the process started: a runtime's timeout counts from there.
    pub started: std::time::Instant,
}

impl Context {
    pub fn networks(&self) -> NetworkDir {
        NetworkDir::new(&self.config_dir)
    }

    /// The lease store (see [`Store`]): the one place faces get it from.
    pub fn store(&self) -> anyhow::Result<Store> {
        Ok(Store::open(&self.state_dir, &self.networks())?)
    }
}

/// A request for one network from command-line values, through the same
/// grammar and checks as the annotation (its JSON form).
pub fn single_request(
    network: &str,
    interface: Option<&str>,
    ips: &[String],
    mac: Option<&str>,
) -> anyhow::Result<Vec<crate::request::NetworkRequest>> {
    let mut entry = serde_json::json!({ "name": network });
    if let Some(i) = interface {
        entry["interface"] = i.into();
    }
    if !ips.is_empty() {
        entry["ips"] = ips.into();
    }
    if let Some(mac) = mac {
        entry["mac"] = mac.into();
    }
    Ok(crate::request::parse(
        &serde_json::json!([entry]).to_string(),
    )?)
}

/// Prints rows as aligned columns under a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
