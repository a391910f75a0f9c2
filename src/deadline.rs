//! Deadlines of the start path. A hook runs on every container start and the
//! NRI plugin on every pod start, so no wait there may last longer than the
//! runtime allows: each one is bounded by a [`Deadline`] taken from the
//! runtime's budget (the hook's `timeout`, the NRI request timeout) or, when the
//! runtime gives none, [`DEFAULT_WAIT`].

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SaFlags, SigAction, SigEvent, SigHandler, SigSet, SigevNotify};
use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
use nix::time::ClockId;

/// How long a wait may last when the runtime sets no budget (documented in
/// the README). Long enough for a burst of parallel container starts, short
/// enough that a stuck holder fails starts visibly instead of stalling them.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// The part of a runtime's budget kept back for rolling back and answering
/// after a wait gave up: waits end at `budget - budget / RESERVE_DIVISOR`.
const RESERVE_DIVISOR: u32 = 4;

/// An instant by which every wait must have ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// Waits may last `wait` from now.
    pub fn after(wait: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + wait,
        }
    }

    /// The deadline for waits of an operation the runtime gives `budget` for
    /// (counted from `started`): a quarter stays free for rollback.
    pub fn within(started: Instant, budget: Duration) -> Deadline {
        Deadline {
            at: started + budget.saturating_sub(budget / RESERVE_DIVISOR),
        }
    }

    /// [`DEFAULT_WAIT`] from now.
    pub fn default_wait() -> Deadline {
        Deadline::after(DEFAULT_WAIT)
    }

    pub fn instant(&self) -> Instant {
        self.at
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// Takes an exclusive flock on `fd`, waiting at most until `deadline`.
/// Returns `Ok(false)` when the deadline passed first.
///
/// The wait blocks in the kernel (which hands the lock over the moment it is
/// free, unlike polling) and a one-shot timer aimed at this thread interrupts
/// it at the deadline. The uncontended case is one non-blocking call.
pub fn flock_exclusive(fd: BorrowedFd<'_>, deadline: Deadline) -> io::Result<bool> {
    let raw = fd.as_raw_fd();
    // SAFETY: flock on a descriptor the caller keeps open.
    if unsafe { libc::flock(raw, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(err);
    }
    install_wakeup_handler()?;
    let mut timer = Timer::new(
        ClockId::CLOCK_MONOTONIC,
        SigEvent::new(SigevNotify::SigevThreadId {
            signal: WAKEUP,
            thread_id: nix::unistd::gettid().as_raw(),
            si_value: 0,
        }),
    )
    .map_err(io::Error::from)?;
    loop {
        let left = deadline.remaining();
        if left.is_zero() {
            return Ok(false);
        }
        timer
            .set(Expiration::OneShot(left.into()), TimerSetTimeFlags::empty())
            .map_err(io::Error::from)?;
        // SAFETY: as above; the timer's signal makes it return EINTR.
        let rc = unsafe { libc::flock(raw, libc::LOCK_EX) };
        let err = io::Error::last_os_error();
        // Dropping the timer deletes it, so no signal arrives after we return.
        if rc == 0 {
            return Ok(true);
        }
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The signal of the lock-wait timer. Nothing else in netattach uses it.
const WAKEUP: signal::Signal = signal::Signal::SIGALRM;

extern "C" fn wakeup(_: libc::c_int) {}

/// A handler that does nothing, installed without `SA_RESTART`, so that the
/// timer's signal interrupts a blocked flock instead of killing the process.
fn install_wakeup_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), nix::Error>> = OnceLock::new();
    let result = *INSTALLED.get_or_init(|| {
        let action = SigAction::new(
            SigHandler::Handler(wakeup),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler is async-signal-safe (it does nothing).
        unsafe { signal::sigaction(WAKEUP, &action) }.map(|_| ())
    });
    result.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn lock_file(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("netattach-deadline-{tag}-{}", std::process::id()))
    }

    #[test]
    fn within_keeps_a_quarter_for_rollback() {
        let start = Instant::now();
        let d = Deadline::within(start, Duration::from_secs(4));
        assert_eq!(d.instant(), start + Duration::from_secs(3));
        assert!(!d.expired());
        assert!(Deadline::within(start, Duration::ZERO).expired());
    }

    #[test]
    fn a_held_flock_is_given_up_at_the_deadline_and_taken_when_free() {
        let path = lock_file("held");
        let holder = std::fs::File::create(&path).unwrap();
        let waiter = std::fs::File::open(&path).unwrap();
        assert!(flock_exclusive(holder.as_fd(), Deadline::default_wait()).unwrap());
        // A second open file description conflicts even in one process.
        let got = flock_exclusive(waiter.as_fd(), Deadline::after(Duration::from_millis(50)));
        assert!(!got.unwrap(), "a held lock must not be reported taken");
        drop(holder);
        assert!(
            flock_exclusive(waiter.as_fd(), Deadline::after(Duration::from_millis(50))).unwrap()
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_lock_freed_during_the_wait_is_taken() {
        let path = lock_file("freed");
        let holder = std::fs::File::create(&path).unwrap();
        let waiter = std::fs::File::open(&path).unwrap();
        assert!(flock_exclusive(holder.as_fd(), Deadline::default_wait()).unwrap());
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            drop(holder);
        });
        assert!(flock_exclusive(waiter.as_fd(), Deadline::default_wait()).unwrap());
        release.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
