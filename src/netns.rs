//! Network namespaces: open one by path, tell it apart from our own, and run
//! code inside it on a short-lived thread so the caller's namespace is never
//! changed, even on a panic.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace at `path` (`/proc/PID/ns/net`, `/run/netns/NAME`, ...).
    pub fn open(path: &Path) -> io::Result<Netns> {
        let file = File::open(path)?;
        Ok(Netns {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The (device, inode) pair that identifies a namespace.
    pub fn id(&self) -> io::Result<(u64, u64)> {
        let meta = self.file.metadata()?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Whether this is the namespace the calling thread is in.
    pub fn is_current(&self) -> io::Result<bool> {
        let own = std::fs::metadata("/proc/thread-self/ns/net")?;
        Ok(self.id()? == (own.dev(), own.ino()))
    }

    /// Runs `f` on a new thread that has entered this namespace. The calling
    /// thread stays where it is.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// Runs `f` on a new thread inside a new, empty network namespace that
/// disappears with the thread: a sandbox for probing the kernel.
pub fn in_scratch_netns<T: Send>(f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A new, empty network namespace that lives as long as the handle, for the
/// unit tests (needs root). Its path, `/proc/self/fd/N`, opens it again.
#[cfg(test)]
pub fn scratch() -> io::Result<Netns> {
    let file = in_scratch_netns(|| File::open("/proc/thread-self/ns/net"))??;
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    Ok(Netns { file, path })
}

/// Writes a per-interface sysctl of the calling thread's namespace, e.g.
/// `set_interface_sysctl("ipv4", "eth0", "arp_notify", "1")`. The interface
/// name has been validated before it reaches here.
pub fn set_interface_sysctl(family: &str, ifname: &str, key: &str, value: &str) -> io::Result<()> {
    let path = format!("/proc/sys/net/{family}/conf/{ifname}/{key}");
    std::fs::write(&path, value).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}
