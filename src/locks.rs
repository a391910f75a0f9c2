//! Who holds a lock on a file: the processes `/proc/locks` names for its
//! inode, with their command and whether they are stopped. A wait that gives
//! up names them, and `doctor` reports a stopped one (a frozen container
//! start, a debugger) because it blocks every later start.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A process holding a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: u32,
    /// Its command line (or name), shortened.
    pub command: String,
    /// Stopped by a signal or a tracer: it will not let go until resumed.
    pub stopped: bool,
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if !self.command.is_empty() {
            write!(f, " ({})", self.command)?;
        }
        if self.stopped {
            write!(f, ", stopped")?;
        }
        Ok(())
    }
}

/// The processes holding (not waiting for) a lock on `path`; empty when none
/// or when `/proc/locks` cannot tell (an OFD lock has no pid).
pub fn holders(path: &Path) -> Vec<LockHolder> {
    holding(path, Hold::Any)
}

/// The other processes holding a write lock on `path`: for SQLite's files,
/// the ones that keep a writer out (readers hold read locks and do not).
pub fn writers_other_than_us(path: &Path) -> Vec<LockHolder> {
    let us = std::process::id();
    let mut found = holding(path, Hold::Write);
    found.retain(|h| h.pid != us);
    found
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    Any,
    Write,
}

fn holding(path: &Path, hold: Hold) -> Vec<LockHolder> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let Ok(table) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let dev = meta.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    let mut pids = pids_locking(&table, &id, hold);
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter().map(describe).collect()
}

/// Holder pids of the lock lines of `table` (the `/proc/locks` format:
/// `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`; waiters have `->`).
fn pids_locking(table: &str, id: &str, hold: Hold) -> Vec<u32> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Blocked waiters are listed as "N: -> FLOCK ..."
            if fields.get(1) == Some(&"->") || fields.get(5) != Some(&id) {
                return None;
            }
            if hold == Hold::Write && fields.get(3) != Some(&"WRITE") {
                return None;
            }
            fields.get(4)?.parse::<u32>().ok()
        })
        .collect()
}

fn describe(pid: u32) -> LockHolder {
    let proc = Path::new("/proc").join(pid.to_string());
    let command = std::fs::read(proc.join("cmdline"))
        .map(|raw| {
            let words: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            shorten(&words.join(" "))
        })
        .unwrap_or_default();
    let stopped = std::fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|stat| process_state(&stat))
        .is_some_and(|s| s == 'T' || s == 't');
    LockHolder {
        pid,
        command,
        stopped,
    }
}

/// The state letter of a `/proc/PID/stat` line (after the parenthesised
/// name, which may itself contain spaces and parentheses).
fn process_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// At most 80 characters, on one line (a `-c` script has newlines, and the
/// message this goes into is one line).
fn shorten(command: &str) -> String {
    const MAX: usize = 80;
    let command: String = command
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match command.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &command[..cut]),
        None => command.to_string(),
    }
}

/// `holders` as one phrase for a message: "held by pid 1 (x), pid 2 (y)".
pub fn held_by(path: &Path) -> String {
    phrase(&holders(path))
}

/// ", held by pid 1 (x), pid 2 (y)" for `found`; empty when nobody.
pub fn phrase(found: &[LockHolder]) -> String {
    if found.is_empty() {
        return String::new();
    }
    let names: Vec<String> = found.iter().map(ToString::to_string).collect();
    format!(", held by {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn lock_lines_give_holders_not_waiters() {
        let table = "1: FLOCK  ADVISORY  WRITE 4242 08:01:77 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 4343 08:01:77 0 EOF\n\
                     2: POSIX  ADVISORY  READ 99 08:01:78 0 EOF\n\
                     3: OFDLCK ADVISORY  WRITE -1 08:01:77 0 EOF\n";
        assert_eq!(pids_locking(table, "08:01:77", Hold::Any), vec![4242]);
        assert_eq!(pids_locking(table, "08:01:78", Hold::Any), vec![99]);
        assert!(pids_locking(table, "08:01:79", Hold::Any).is_empty());
        // A reader does not keep a writer out.
        assert_eq!(pids_locking(table, "08:01:77", Hold::Write), vec![4242]);
        assert!(pids_locking(table, "08:01:78", Hold::Write).is_empty());
    }

    #[test]
    fn a_command_is_shortened_to_one_line() {
        assert_eq!(shorten("sh -c 'a\nb'"), "sh -c 'a b'");
        let long = "x".repeat(100);
        assert_eq!(shorten(&long), format!("{}...", "x".repeat(80)));
    }

    #[test]
    fn state_letter_survives_odd_names() {
        assert_eq!(process_state("12 (a) b) T 1 2"), Some('T'));
        assert_eq!(process_state("12 (sleep) S 1 2"), Some('S'));
        assert_eq!(process_state("garbage"), None);
    }

    #[test]
    fn finds_this_process_holding_a_flock() {
        let path = std::env::temp_dir().join(format!("netattach-locks-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        // SAFETY: flock on our own descriptor.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
        let found = holders(&path);
        assert!(
            found
                .iter()
                .any(|h| h.pid == std::process::id() && !h.stopped),
            "{found:?}"
        );
        drop(file);
        assert!(holders(&path).is_empty());
        std::fs::remove_file(&path).unwrap();
    }
}
