//! Which lease owners the NRI face attached, per runtime: one empty file per
//! pod sandbox id in `<state_dir>/nri/<runtime>/`.
//!
//! The lease store is shared by every face (OCI hooks, hand `attach --id`),
//! and `Synchronize` lists only the runtime's own pods: reconciliation must
//! release only what this runtime's plugin attached, never a hook's container
//! or a hand attach. The mark is written before the attach and removed after
//! the release, so a crash leaves at worst a mark without leases, which the
//! next `Synchronize` drops.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The marks of one runtime's pods.
pub struct Owners {
    dir: PathBuf,
}

impl Owners {
    /// Marks of the runtime named `runtime` (from `Configure`) in `state_dir`.
    pub fn new(state_dir: &Path, runtime: &str) -> Owners {
        let runtime: String = runtime
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let runtime = match runtime.trim_start_matches('.') {
            "" => "runtime".to_string(),
            r => r.to_string(),
        };
        Owners {
            dir: state_dir.join("nri").join(runtime),
        }
    }

    pub fn record(&self, pod_id: &str) -> io::Result<()> {
        check(pod_id)?;
        crate::secure_fs::private_dir(&self.dir)?;
        crate::secure_fs::private_file(&self.dir.join(pod_id)).map(drop)
    }

    pub fn forget(&self, pod_id: &str) -> io::Result<()> {
        check(pod_id)?;
        match fs::remove_file(self.dir.join(pod_id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// The pod ids marked.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other?,
        };
        let mut ids = Vec::new();
        for entry in entries {
            if let Ok(name) = entry?.file_name().into_string() {
                if valid_pod_id(&name) {
                    ids.push(name);
                }
            }
        }
        Ok(ids)
    }
}

/// A pod sandbox id that can name a file: 1 to 128 of `[A-Za-z0-9_.-]`, not
/// starting with a dot. Runtimes use 64 hex digits.
pub fn valid_pod_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn check(id: &str) -> io::Result<()> {
    if valid_pod_id(id) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pod sandbox id {id:?} is not a valid id"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_list_forget() {
        let dir = std::env::temp_dir().join(format!("netattach-owners-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let o = Owners::new(&dir, "containerd");
        assert_eq!(o.list().unwrap(), Vec::<String>::new());
        o.record("abc123").unwrap();
        o.record("def").unwrap();
        let mut ids = o.list().unwrap();
        ids.sort();
        assert_eq!(ids, vec!["abc123", "def"]);
        o.forget("abc123").unwrap();
        o.forget("abc123").unwrap();
        assert_eq!(o.list().unwrap(), vec!["def"]);
        assert!(o.record("../x").is_err());
        assert!(o.record("..").is_err());
        // Another runtime's marks are apart.
        assert!(Owners::new(&dir, "cri-o").list().unwrap().is_empty());
        assert!(Owners::new(&dir, "../../etc")
            .dir
            .starts_with(dir.join("nri")));
        fs::remove_dir_all(&dir).unwrap();
    }
}
