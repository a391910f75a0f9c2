//! Network namespaces: open one by path, tell it apart from our own, and run
//! code inside it on a short-lived thread so the caller's namespace is never
//! changed, even on a panic.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

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

type Job = Box<dyn FnOnce() + Send>;

/// A thread that has entered a namespace and runs jobs there until dropped.
/// An attach does several things inside the container's namespace (open a
/// netlink socket, write per-interface sysctls): one thread and one `setns`
/// serve them all, and the first job can start while the caller does other
/// work (see [`NetnsThread::submit`]).
pub struct NetnsThread {
    jobs: mpsc::Sender<Job>,
}

/// The result of a job handed to a [`NetnsThread`], to collect later.
pub struct Pending<T>(mpsc::Receiver<std::thread::Result<T>>);

impl<T> Pending<T> {
    /// Waits for the job (the caller's own work bounds how long: a job is a
    /// few syscalls on a thread that does nothing else). A panic inside the
    /// job is resumed here.
    pub fn wait(self) -> io::Result<T> {
        match self.0.recv() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err(io::Error::other(
                "the thread inside the network namespace is gone",
            )),
        }
    }
}

impl NetnsThread {
    /// Starts a thread inside `ns`. Entering the namespace happens on that
    /// thread: its failure is reported by the first job's [`Pending::wait`].
    pub fn spawn(ns: &Netns) -> io::Result<NetnsThread> {
        let file = ns.file.try_clone()?;
        let (jobs, queue) = mpsc::channel::<Job>();
        // Not joined: dropping the sender ends the thread by itself once it
        // has finished its last job (every job was waited for), and a hook
        // should not wait for that before it exits.
        std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                if setns(file.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
                    return; // every Pending then reports the thread gone
                }
                drop(file);
                for job in queue {
                    job();
                }
            })?;
        Ok(NetnsThread { jobs })
    }

    /// Queues `f` on the thread and returns at once.
    pub fn submit<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Pending<T> {
        let (done, result) = mpsc::channel();
        let job: Job = Box::new(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = done.send(outcome);
        });
        // A send fails only when the thread is gone; `wait` says so then.
        let _ = self.jobs.send(job);
        Pending(result)
    }

    /// Runs `f` on the thread and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        self.submit(f).wait()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn own_netns_inode() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    }

    /// A new namespace; `None` (skipped) without the rights to make one,
    /// unless the suite runs strict (as root in CI), where that fails.
    fn scratch_or_skip() -> Option<Netns> {
        match scratch() {
            Ok(ns) => Some(ns),
            Err(e) if std::env::var("NETATTACH_TESTS_STRICT").as_deref() != Ok("1") => {
                eprintln!("SKIP: cannot make a network namespace: {e}");
                None
            }
            Err(e) => panic!("cannot make a network namespace: {e}"),
        }
    }

    #[test]
    fn a_netns_thread_runs_every_job_inside_its_namespace() {
        let Some(ns) = scratch_or_skip() else { return };
        let (_, inside) = ns.id().unwrap();
        let thread = NetnsThread::spawn(&ns).unwrap();
        let first = thread.submit(own_netns_inode);
        let second = thread.run(own_netns_inode).unwrap();
        assert_eq!(first.wait().unwrap(), inside);
        assert_eq!(second, inside);
        assert_ne!(own_netns_inode(), inside, "the caller stays where it was");
    }

    #[test]
    fn a_job_that_panics_panics_its_waiter() {
        let Some(ns) = scratch_or_skip() else { return };
        let thread = NetnsThread::spawn(&ns).unwrap();
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            thread.run(|| panic!("inside")).unwrap()
        }));
        assert!(waited.is_err());
        assert_eq!(thread.run(|| 7).unwrap(), 7, "the thread serves on");
    }
}
