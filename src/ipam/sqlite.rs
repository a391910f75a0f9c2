//! The embedded lease store: SQLite in the state directory.
//!
//! One file, `<state_dir>/leases.db`, shared by every netattach process on the host
//! (many OCI hooks run at once). SQLite's file locking makes it multi-process safe:
//! every write runs in a `BEGIN IMMEDIATE` transaction, which takes the database's
//! write lock before reading anything, so two processes can never both see an
//! address as free and both take it. Under WAL journaling a committed lease
//! survives the crash of any process; one with no container behind it also
//! survives power loss (see [`Commit`]).
//!
//! Each hook is a short-lived process, usually the only connection. By default
//! SQLite would checkpoint the WAL into the database and delete it whenever the
//! last connection closes: a database fsync, an unlink and a re-created WAL on
//! every container start. Instead the WAL is kept across processes and only
//! folded back (`wal_checkpoint(TRUNCATE)`) once it passes `WAL_FOLD_BYTES`. It
//! must stay short because the first connection of every process re-reads the
//! whole WAL to rebuild its index. A fold syncs the WAL and the database, so a
//! process on a container's start path leaves it to the others (releases, gc,
//! the CLI) unless the WAL has grown past `START_PATH_FOLD_BYTES` (see
//! [`SqliteStore::on_start_path`]). A rollback journal was measured too: a bit
//! faster for a lone process, but 16 concurrent writers then waited up to 4 s
//! for the lock.
//!
//! Schema (version 6, in `PRAGMA user_version`; the `shared` tables are those
//! of docs/multi-host.md, see `blocks.rs`):
//!
//! ```sql
//! leases(segment TEXT, key BLOB, network TEXT, address TEXT, prefix_len INTEGER,
//!        owner TEXT, ifname TEXT, netns TEXT, mac TEXT, created INTEGER,
//!        PRIMARY KEY(segment, key)) WITHOUT ROWID
//! INDEX leases_owner ON leases(owner, network)
//! INDEX leases_network ON leases(network, key)
//! attachments(owner TEXT, network TEXT, ifname TEXT, netns TEXT, created INTEGER,
//!             segment TEXT, driver TEXT, mode TEXT, mac TEXT,
//!             PRIMARY KEY(owner, network)) WITHOUT ROWID
//! INDEX attachments_network ON attachments(network)
//! INDEX attachments_link ON attachments(segment, driver, mode)
//! UNIQUE INDEX attachments_mac ON attachments(segment, mac) WHERE mac IS NOT NULL
//! cursors(network TEXT, range TEXT, last BLOB, PRIMARY KEY(network, range)) WITHOUT ROWID
//! vlans(name TEXT PRIMARY KEY, created INTEGER) WITHOUT ROWID
//! shared(network TEXT PRIMARY KEY, endpoints TEXT, host TEXT, epoch INTEGER,
//!        lease INTEGER, hold_s INTEGER, fence_until INTEGER, boot_id TEXT,
//!        heartbeat INTEGER, state TEXT) WITHOUT ROWID
//! shared_blocks(network TEXT, block TEXT, lo BLOB, hi BLOB, state TEXT,
//!        revision INTEGER, PRIMARY KEY (network, block)) WITHOUT ROWID
//! shared_keys(network TEXT, key BLOB, block TEXT, etcd_key TEXT, revision INTEGER,
//!        state TEXT, since INTEGER, PRIMARY KEY (network, key)) WITHOUT ROWID
//! sticky(network TEXT, identity TEXT, key BLOB, updated INTEGER,
//!        PRIMARY KEY (network, identity, key)) WITHOUT ROWID   -- updated: unix ns
//! ```
//!
//! `sticky` remembers, on networks with `sticky_ips`, the pooled addresses
//! an owner identity was given, so that it gets them back while they are
//! free. A row is written with each such pooled lease and kept after the
//! release (that is its point); the next pooled pick of another owner may
//! take the address like any free one.
//!
//! The wire knows a layer-2 segment and an address, not a network: so leases
//! are keyed by (segment, address) and MACs are unique per segment, whatever
//! networks share the parent. `key` is 17 bytes: the family (4 or 6) then the
//! address as a 16-byte big-endian integer, so keys sort by family then address
//! and IPv4 can never collide with an IPv6 address (not even `::ffff:a.b.c.d`).
//! `address` is the text form, for people reading the database. An attachment
//! records the kind of link it put on its segment (`driver`, `mode`; NULL for a
//! reservation), so the parent-sharing rules are checked against what is on the
//! wire, in the same transaction that records the new attachment.
//! `cursors.last` is the key of the last address handed out from a range
//! (`range` as written: the ip_range, else the subnet); the next pooled
//! allocation starts just after it.
//!
//! Nothing scans all leases: a pooled allocation walks the primary-key index from
//! the range's cursor and stops at the first gap, owner operations use the owner
//! index.

use std::fs;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{
    config::DbConfig, params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row,
    Transaction, TransactionBehavior,
};

use super::pool::{addr_to_u128, ranges_label, u128_to_addr, usable_bounds};
use super::{
    Attachment, Claim, Holder, IpamError, Lease, LeaseStore, Liveness, MacWant, PoolRange,
    Reservation, Want,
};
use crate::deadline::{self, Deadline};
use crate::locks;
use crate::request::MacAddr;
use crate::sharing::LinkSpec;

mod blocks;
pub use blocks::{
    address_key_name, forgotten_error, AddressKey, BlockFill, SharedState, RETURNING, SHARED,
};

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "leases.db";

/// Side file whose flock queues writers (see `SqliteStore::writer`).
const LOCK_FILE: &str = "leases.lock";

/// WAL size past which a closing store folds it back into the database:
/// 16 pages of 4 KiB, about two attaches and a release. Every process's first
/// read rebuilds the WAL's index from all of it.
const WAL_FOLD_BYTES: u64 = 16 * 4120;

/// WAL size past which even a process on a container's start path folds it:
/// only when nothing else has for a long while (attaches with no release).
const START_PATH_FOLD_BYTES: u64 = 4 * WAL_FOLD_BYTES;

/// Schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 6;

/// The longest a closing store waits to fold the WAL back.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(50);

/// How often a waiting process retries the lock.
const BUSY_POLL: Duration = Duration::from_micros(500);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS leases (
    segment    TEXT    NOT NULL,
    key        BLOB    NOT NULL,
    network    TEXT    NOT NULL,
    address    TEXT    NOT NULL,
    prefix_len INTEGER NOT NULL,
    owner      TEXT    NOT NULL,
    ifname     TEXT    NOT NULL,
    netns      TEXT    NOT NULL,
    mac        TEXT,
    created    INTEGER NOT NULL,
    PRIMARY KEY (segment, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leases_owner ON leases (owner, network);
CREATE INDEX IF NOT EXISTS leases_network ON leases (network, key);
CREATE TABLE IF NOT EXISTS attachments (
    owner   TEXT    NOT NULL,
    network TEXT    NOT NULL,
    ifname  TEXT    NOT NULL,
    netns   TEXT    NOT NULL,
    created INTEGER NOT NULL,
    segment TEXT    NOT NULL,
    driver  TEXT,
    mode    TEXT,
    mac     TEXT,
    PRIMARY KEY (owner, network)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attachments_network ON attachments (network);
CREATE INDEX IF NOT EXISTS attachments_link ON attachments (segment, driver, mode);
CREATE UNIQUE INDEX IF NOT EXISTS attachments_mac ON attachments (segment, mac)
    WHERE mac IS NOT NULL;
CREATE TABLE IF NOT EXISTS cursors (
    network TEXT NOT NULL,
    range   TEXT NOT NULL,
    last    BLOB NOT NULL,
    PRIMARY KEY (network, range)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vlans (
    name    TEXT    NOT NULL PRIMARY KEY,
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shared (
    network     TEXT    NOT NULL PRIMARY KEY,
    endpoints   TEXT    NOT NULL,
    host        TEXT    NOT NULL,
    epoch       INTEGER NOT NULL,
    lease       INTEGER NOT NULL,
    hold_s      INTEGER NOT NULL,
    fence_until INTEGER NOT NULL,
    boot_id     TEXT    NOT NULL,
    heartbeat   INTEGER NOT NULL,
    state       TEXT    NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shared_blocks (
    network  TEXT    NOT NULL,
    block    TEXT    NOT NULL,
    lo       BLOB    NOT NULL,
    hi       BLOB    NOT NULL,
    state    TEXT    NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (network, block)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shared_keys (
    network  TEXT    NOT NULL,
    key      BLOB    NOT NULL,
    block    TEXT    NOT NULL,
    etcd_key TEXT    NOT NULL,
    revision INTEGER NOT NULL,
    state    TEXT    NOT NULL,
    since    INTEGER NOT NULL,
    PRIMARY KEY (network, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sticky (
    network  TEXT    NOT NULL,
    identity TEXT    NOT NULL,
    key      BLOB    NOT NULL,
    updated  INTEGER NOT NULL,
    PRIMARY KEY (network, identity, key)
) WITHOUT ROWID;
PRAGMA user_version = 6;
";

/// From version 2, whose leases were keyed by (network, address) and whose
/// attachments did not record their segment and link. The tables are renamed,
/// the new ones created, and the rows copied with the segment and link of
/// their network (`segmap`, filled from the definitions). A network without a
/// definition keeps a segment of its own (`network:NAME`), as before; two old
/// leases that turn out to share one address on one segment are both kept
/// (the second under `duplicate:NAME`) rather than one silently dropped.
const MIGRATE_FROM_2: &str = "
ALTER TABLE leases RENAME TO leases_v2;
ALTER TABLE attachments RENAME TO attachments_v2;
DROP INDEX IF EXISTS leases_owner;
DROP INDEX IF EXISTS attachments_network;
";

const COPY_FROM_2: &str = "
INSERT INTO attachments (owner, network, ifname, netns, created, segment, driver, mode, mac)
    SELECT a.owner, a.network, a.ifname, a.netns, a.created,
           COALESCE(m.segment, 'network:' || a.network),
           CASE WHEN a.netns = '' THEN NULL ELSE m.driver END,
           CASE WHEN a.netns = '' THEN NULL ELSE m.mode END,
           NULL
    FROM attachments_v2 a LEFT JOIN segmap m ON m.network = a.network;
INSERT OR IGNORE INTO leases
    SELECT COALESCE(m.segment, 'network:' || l.network), l.key, l.network, l.address,
           l.prefix_len, l.owner, l.ifname, l.netns, NULL, l.created
    FROM leases_v2 l LEFT JOIN segmap m ON m.network = l.network;
INSERT INTO leases
    SELECT 'duplicate:' || l.network, l.key, l.network, l.address, l.prefix_len,
           l.owner, l.ifname, l.netns, NULL, l.created
    FROM leases_v2 l
    WHERE NOT EXISTS (SELECT 1 FROM leases n WHERE n.network = l.network AND n.key = l.key);
DROP TABLE leases_v2;
DROP TABLE attachments_v2;
DROP TABLE segmap;
";

const LEASE_COLUMNS: &str = "network, segment, key, prefix_len, owner, ifname, netns, mac, created";
const ATTACHMENT_COLUMNS: &str =
    "owner, network, ifname, netns, created, segment, driver, mode, mac";

/// The segment and link kind of a network, from its definition; what the
/// migration from version 2 needs to know of networks it finds in old rows.
pub type SegmentOf<'a> = &'a dyn Fn(&str) -> Option<(String, LinkSpec)>;

/// How far a write transaction's commit gets before it returns: what the
/// lease must survive (SPEC section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// A crash of any process (kill -9 at any point), not a power loss or
    /// kernel crash: under WAL, `synchronous=NORMAL` writes the WAL but leaves
    /// the fsync to the next checkpoint. For what dies with the host anyway:
    /// a container's leases (its container dies too, so a lease lost that way
    /// can never become a duplicate, and gc frees the rest at boot), releases
    /// (one lost comes back as a lease of a dead owner, for gc).
    ProcessCrash,
    /// Power loss too: `synchronous=FULL` fsyncs the WAL on every commit. For
    /// leases no container holds (`lease reserve` for a printer or a router),
    /// which nothing else would bring back.
    PowerLoss,
}

impl Commit {
    fn synchronous(self) -> &'static str {
        match self {
            Commit::ProcessCrash => "NORMAL",
            Commit::PowerLoss => "FULL",
        }
    }
}

/// The embedded lease store. Cheap to open (a hook opens it on every container
/// start); one connection, safe to share between threads.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// `leases.lock`, flock()ed around every write transaction.
    queue: fs::File,
    queue_path: PathBuf,
    /// When waits for the queue or the database give up (see `set_deadline`);
    /// shared with the connection's busy handler.
    deadline: Arc<Mutex<Option<Deadline>>>,
    /// WAL size past which closing the store folds the WAL.
    fold_at: AtomicU64,
    /// Shared networks in which a release made blocks `returning`, for the
    /// caller to return to etcd (`take_returning`).
    returning: Mutex<Vec<String>>,
}

/// Holds the write queue's flock; released on drop.
struct WriteTurn<'a>(&'a fs::File);

impl Drop for WriteTurn<'_> {
    fn drop(&mut self) {
        // SAFETY: flock on an fd we own; unlocking cannot corrupt anything.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

type Key = [u8; 17];

fn key_of(ipv6: bool, value: u128) -> Key {
    let mut k = [0u8; 17];
    k[0] = if ipv6 { 6 } else { 4 };
    k[1..].copy_from_slice(&value.to_be_bytes());
    k
}

fn key_of_addr(addr: IpAddr) -> Key {
    key_of(addr.is_ipv6(), addr_to_u128(addr))
}

/// (is IPv6, value) of a key; `None` if it is not one this store wrote.
fn decode_key(k: &[u8]) -> Option<(bool, u128)> {
    let (&family, value) = k.split_first()?;
    let value = u128::from_be_bytes(value.try_into().ok()?);
    match family {
        4 if value <= u32::MAX as u128 => Some((false, value)),
        6 => Some((true, value)),
        _ => None,
    }
}

fn addr_of_key(k: &[u8]) -> Option<IpAddr> {
    let (v6, value) = decode_key(k)?;
    u128_to_addr(value, v6)
}

fn db(e: rusqlite::Error) -> IpamError {
    if is_busy(&e) {
        // Every netattach writer takes the queue's flock first, so this is a
        // process outside the queue (a sqlite3 shell, a backup) or a peer's
        // checkpoint that outlasted the deadline.
        if let Some(gave_up) = GAVE_UP.take() {
            return IpamError::Waited {
                what: format!("the lease database {}", gave_up.database.display()),
                waited_ms: gave_up.waited_ms,
                held_by: gave_up.held_by,
            };
        }
        return IpamError::Store(format!(
            "{e}: another process kept the database locked past the deadline"
        ));
    }
    IpamError::Store(e.to_string())
}

/// What the busy handler saw when it gave up, for the error that follows.
/// SQLite calls the handler on the thread running the statement, and the
/// statement's error reaches `db` on that thread, so a thread-local carries it
/// there without threading the store through every `map_err`.
struct GaveUp {
    database: PathBuf,
    waited_ms: u128,
    /// ", held by pid N (command)": who holds a write lock on the database
    /// or its WAL index, taken when the wait ended (it may let go after).
    held_by: String,
}

thread_local! {
    static GAVE_UP: std::cell::Cell<Option<GaveUp>> = const { std::cell::Cell::new(None) };
}

fn database_writers(database: &Path) -> String {
    let shm = database.with_extension("db-shm");
    let mut found = locks::writers_other_than_us(&shm);
    found.extend(locks::writers_other_than_us(database));
    found.sort_by_key(|h| h.pid);
    found.dedup_by_key(|h| h.pid);
    locks::phrase(&found)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::DatabaseBusy || f.code == ErrorCode::DatabaseLocked)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bad_key(k: &[u8]) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        1,
        rusqlite::types::Type::Blob,
        format!("not an address key: {k:02x?}").into(),
    )
}

fn mac_of_text(text: Option<String>) -> Option<MacAddr> {
    text.and_then(|t| t.parse().ok())
}

fn link_of_text(driver: Option<String>, mode: Option<String>) -> Option<LinkSpec> {
    let (driver, mode) = (driver?, mode?);
    LinkSpec::all()
        .into_iter()
        .find(|l| l.driver.to_string() == driver && l.mode.to_string() == mode)
}

fn lease_of_row(row: &Row<'_>) -> rusqlite::Result<Lease> {
    let key = row.get_ref(2)?.as_blob()?;
    let address = addr_of_key(key).ok_or_else(|| bad_key(key))?;
    Ok(Lease {
        network: row.get(0)?,
        segment: row.get(1)?,
        address,
        prefix_len: row.get(3)?,
        owner: row.get(4)?,
        ifname: row.get(5)?,
        netns: row.get(6)?,
        mac: mac_of_text(row.get(7)?),
        created: row.get::<_, i64>(8)?.max(0) as u64,
    })
}

fn attachment_of_row(row: &Row<'_>) -> rusqlite::Result<Attachment> {
    Ok(Attachment {
        owner: row.get(0)?,
        network: row.get(1)?,
        ifname: row.get(2)?,
        netns: row.get(3)?,
        created: row.get::<_, i64>(4)?.max(0) as u64,
        segment: row.get(5)?,
        link: link_of_text(row.get(6)?, row.get(7)?),
        mac: mac_of_text(row.get(8)?),
    })
}

fn sync_dir(dir: &Path) -> Result<(), IpamError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| IpamError::Store(format!("{}: {e}", dir.display())))
}

impl SqliteStore {
    /// Opens (creating it and the directory if needed) `<state_dir>/leases.db`.
    /// An older database is migrated knowing no network definitions (see
    /// [`SqliteStore::open_with`]).
    pub fn open(state_dir: &Path) -> Result<SqliteStore, IpamError> {
        SqliteStore::open_with(state_dir, &|_| None)
    }

    /// Opens the store next to the network definitions it serves (an older
    /// database learns its networks' segments from them).
    pub fn open_for(
        state_dir: &Path,
        networks: &crate::config::NetworkDir,
    ) -> Result<SqliteStore, IpamError> {
        SqliteStore::open_with(state_dir, &|name| {
            let net = networks.load(name).ok()?;
            Some((net.segment(), LinkSpec::of(&net)))
        })
    }

    /// Opens the store; `segment_of` tells the migration of an older database
    /// the segment and link kind of each network it finds.
    pub fn open_with(
        state_dir: &Path,
        segment_of: SegmentOf<'_>,
    ) -> Result<SqliteStore, IpamError> {
        let new_dir = !state_dir.is_dir();
        crate::secure_fs::private_dir(state_dir)
            .map_err(|e| IpamError::Store(format!("{}: {e}", state_dir.display())))?;
        let path = state_dir.join(DB_FILE);
        let new_file = !path.exists();
        if new_file {
            // SQLite would create it 0644; its -wal and -shm files take its mode.
            crate::secure_fs::private_file(&path)
                .map_err(|e| IpamError::Store(format!("{}: {e}", path.display())))?;
        }
        let at = |e: rusqlite::Error| match db(e) {
            IpamError::Store(m) => IpamError::Store(format!("{}: {m}", path.display())),
            other => other,
        };
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(at)?;
        // SQLite's own busy_timeout backs off to 100 ms sleeps: under many parallel
        // hooks a waiter keeps missing the short gaps between other writers' commits
        // and can starve for seconds. Poll at a short, steady interval instead,
        // giving up at the store's deadline.
        let deadline: Arc<Mutex<Option<Deadline>>> = Arc::default();
        let limit = deadline.clone();
        let mut until = Deadline::default_wait();
        let mut started = Instant::now();
        let database = path.clone();
        conn.busy_handler(Some(move |count: i32| {
            if count == 0 {
                until = lock_ignoring_poison(&limit).unwrap_or_else(Deadline::default_wait);
                started = Instant::now();
                GAVE_UP.set(None);
            }
            if until.expired() {
                GAVE_UP.set(Some(GaveUp {
                    database: database.clone(),
                    waited_ms: started.elapsed().as_millis(),
                    held_by: database_writers(&database),
                }));
                return false;
            }
            std::thread::sleep(BUSY_POLL.min(until.remaining()));
            true
        }))
        .map_err(at)?;
        // The WAL outlives this process (see the module comment and `Drop`).
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(at)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(at)?;
        if version != SCHEMA_VERSION {
            init(&mut conn, segment_of).map_err(|e| match e {
                IpamError::Store(m) => IpamError::Store(format!("{}: {m}", path.display())),
                other => other,
            })?;
        }
        if new_file {
            // The file's directory entry must survive power loss too.
            sync_dir(state_dir)?;
            if new_dir {
                if let Some(parent) = state_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    sync_dir(parent)?;
                }
            }
        }
        let queue_path = state_dir.join(LOCK_FILE);
        let queue = crate::secure_fs::private_file(&queue_path)
            .map_err(|e| IpamError::Store(format!("{}: {e}", queue_path.display())))?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path,
            queue,
            queue_path,
            deadline,
            fold_at: AtomicU64::new(WAL_FOLD_BYTES),
            returning: Mutex::new(Vec::new()),
        })
    }

    /// This process is on a container's start path (an attach): closing the
    /// store leaves the WAL's fold, and its fsyncs, to a process that is not,
    /// unless the WAL has grown to [`START_PATH_FOLD_BYTES`].
    pub fn on_start_path(&self) {
        self.fold_at.store(START_PATH_FOLD_BYTES, Ordering::Relaxed);
    }

    /// Bounds every later wait of this store (for its write turn, for SQLite's
    /// lock) by `deadline`; `None`: each wait may last [`deadline::DEFAULT_WAIT`].
    /// A hook sets its runtime's budget once; the NRI plugin sets each request's.
    pub fn set_deadline(&self, deadline: Option<Deadline>) {
        *lock_ignoring_poison(&self.deadline) = deadline;
    }

    fn wait_deadline(&self) -> Deadline {
        lock_ignoring_poison(&self.deadline).unwrap_or_else(Deadline::default_wait)
    }

    /// The write queue's lock file (`doctor` reports who holds it).
    pub fn queue_path(&self) -> &Path {
        &self.queue_path
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for a write transaction, after waiting our turn.
    ///
    /// SQLite's own write lock cannot queue waiters: each one polls, and under
    /// many parallel hooks some lose every race and starve for seconds. A
    /// blocking flock on a side file lets the kernel hand the turn over as soon
    /// as it is free; SQLite's lock (and busy handler) stays as the safety net.
    fn writer(
        &self,
        commit: Commit,
    ) -> Result<(MutexGuard<'_, Connection>, WriteTurn<'_>), IpamError> {
        let conn = self.conn();
        conn.pragma_update(None, "synchronous", commit.synchronous())
            .map_err(db)?;
        let deadline = self.wait_deadline();
        let started = Instant::now();
        match deadline::flock_exclusive(self.queue.as_fd(), deadline) {
            Ok(true) => Ok((conn, WriteTurn(&self.queue))),
            Ok(false) => Err(IpamError::Waited {
                what: format!("the lease store's write lock {}", self.queue_path.display()),
                waited_ms: started.elapsed().as_millis(),
                held_by: locks::held_by(&self.queue_path),
            }),
            Err(e) => Err(IpamError::Store(format!(
                "lock {}: {e}",
                self.queue_path.display()
            ))),
        }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-transaction rolled the transaction back when it unwound.
        lock_ignoring_poison(&self.conn)
    }
}

fn lock_ignoring_poison<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Switches a new database to WAL and creates or upgrades the schema; several
/// processes may do this at once on a fresh file.
fn init(conn: &mut Connection, segment_of: SegmentOf<'_>) -> Result<(), IpamError> {
    // WAL is a property of the file and persists. Switching needs the file to
    // itself, and SQLite may report "busy" at once instead of waiting, so retry.
    let deadline = Deadline::default_wait();
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => break,
            Ok(mode) => {
                return Err(IpamError::Store(format!(
                    "cannot use WAL journaling (journal mode is {mode})"
                )))
            }
            Err(e) if is_busy(&e) && !deadline.expired() => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(db(e)),
        }
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db)?;
    if version > SCHEMA_VERSION {
        return Err(IpamError::Store(format!(
            "schema version {version} is newer than this netattach knows ({SCHEMA_VERSION})"
        )));
    }
    if version == 2 {
        migrate_from_2(&tx, segment_of)?;
    } else if version < SCHEMA_VERSION {
        tx.execute_batch(SCHEMA).map_err(db)?;
    }
    tx.commit().map_err(db)
}

fn migrate_from_2(tx: &Transaction<'_>, segment_of: SegmentOf<'_>) -> Result<(), IpamError> {
    tx.execute_batch(MIGRATE_FROM_2).map_err(db)?;
    tx.execute_batch(SCHEMA).map_err(db)?;
    tx.execute_batch(
        "CREATE TEMP TABLE segmap (network TEXT PRIMARY KEY, segment TEXT, driver TEXT, mode TEXT)",
    )
    .map_err(db)?;
    let networks: Vec<String> = tx
        .prepare("SELECT network FROM attachments_v2 UNION SELECT network FROM leases_v2")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(db)?;
    for network in networks {
        if let Some((segment, link)) = segment_of(&network) {
            tx.execute(
                "INSERT INTO segmap VALUES (?1, ?2, ?3, ?4)",
                params![
                    network,
                    segment,
                    link.driver.to_string(),
                    link.mode.to_string()
                ],
            )
            .map_err(db)?;
        }
    }
    tx.execute_batch(COPY_FROM_2).map_err(db)
}

/// The first free address of `lo..=hi` (integers of one family) that is not
/// excluded, walking the index upwards from `lo` and stopping at the first gap.
fn find_free(
    tx: &Transaction<'_>,
    segment: &str,
    ipv6: bool,
    lo: u128,
    hi: u128,
    excluded: &[u128],
) -> rusqlite::Result<Option<u128>> {
    let skip = |mut c: u128| -> Option<u128> {
        while excluded.binary_search(&c).is_ok() {
            c = c.checked_add(1)?;
        }
        (c <= hi).then_some(c)
    };
    let Some(mut cand) = skip(lo) else {
        return Ok(None);
    };
    let mut stmt = tx.prepare_cached(
        "SELECT key FROM leases WHERE segment = ?1 AND key >= ?2 AND key <= ?3 ORDER BY key",
    )?;
    let mut rows = stmt.query(params![segment, key_of(ipv6, cand), key_of(ipv6, hi)])?;
    while let Some(row) = rows.next()? {
        let key = row.get_ref(0)?.as_blob()?;
        let (_, taken) = decode_key(key).ok_or_else(|| bad_key(key))?;
        if taken < cand {
            continue; // skipped over as excluded
        }
        if taken > cand {
            break; // a gap: cand is free
        }
        match cand.checked_add(1).and_then(skip) {
            Some(next) => cand = next,
            None => return Ok(None),
        }
    }
    Ok(Some(cand))
}

/// Picks the next free address of the segment in one family's ranges (in
/// order, round-robin from each range's cursor) and moves that range's cursor
/// to it.
fn allocate<'r>(
    tx: &Transaction<'_>,
    segment: &str,
    network: &str,
    ranges: &'r [PoolRange],
) -> Result<(IpAddr, &'r PoolRange), IpamError> {
    if ranges.is_empty() {
        return Err(IpamError::Store(format!(
            "network {network}: pool request without a range"
        )));
    }
    for r in ranges {
        let Some((lo, hi)) = r.bounds() else {
            continue;
        };
        let v6 = r.is_ipv6();
        let excluded = r.excluded_u128();
        let label = r.range.to_string();
        let cursor: Option<Vec<u8>> = tx
            .prepare_cached("SELECT last FROM cursors WHERE network = ?1 AND range = ?2")
            .and_then(|mut s| {
                s.query_row(params![network, label], |row| row.get(0))
                    .optional()
            })
            .map_err(db)?;
        let cursor = cursor
            .as_deref()
            .and_then(decode_key)
            .filter(|&(cv6, c)| cv6 == v6 && (lo..=hi).contains(&c))
            .map(|(_, c)| c);
        let found = match cursor {
            Some(c) => {
                let after = if c < hi {
                    find_free(tx, segment, v6, c + 1, hi, &excluded).map_err(db)?
                } else {
                    None
                };
                match after {
                    Some(a) => Some(a),
                    None => find_free(tx, segment, v6, lo, c, &excluded).map_err(db)?,
                }
            }
            None => find_free(tx, segment, v6, lo, hi, &excluded).map_err(db)?,
        };
        if let Some(value) = found {
            tx.prepare_cached(
                "INSERT INTO cursors (network, range, last) VALUES (?1, ?2, ?3)
                 ON CONFLICT (network, range) DO UPDATE SET last = excluded.last",
            )
            .and_then(|mut s| s.execute(params![network, label, key_of(v6, value)]))
            .map_err(db)?;
            let addr = u128_to_addr(value, v6)
                .ok_or_else(|| IpamError::Store(format!("address {value} out of range")))?;
            return Ok((addr, r));
        }
    }
    Err(IpamError::Exhausted {
        network: network.to_string(),
        range: ranges_label(ranges),
    })
}

fn insert_lease(tx: &Transaction<'_>, lease: &Lease) -> Result<(), IpamError> {
    tx.prepare_cached(
        "INSERT INTO leases (segment, key, network, address, prefix_len, owner, ifname, netns, mac, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            lease.segment,
            key_of_addr(lease.address),
            lease.network,
            lease.address.to_string(),
            lease.prefix_len,
            lease.owner,
            lease.ifname,
            lease.netns,
            lease.mac.map(|m| m.to_string()),
            lease.created as i64,
        ])
    })
    .map(drop)
    .map_err(db)
}

fn sort_leases(mut leases: Vec<Lease>) -> Vec<Lease> {
    leases.sort_by(|a, b| (&a.network, a.address).cmp(&(&b.network, b.address)));
    leases
}

/// Runs a `DELETE ... RETURNING <lease columns>` and collects the leases.
impl SqliteStore {
    /// Commits a release: on shared networks, the blocks it emptied are
    /// marked for return in the same transaction (see
    /// `blocks::mark_empty_blocks`), and noted for the caller once committed.
    fn commit_release(&self, tx: Transaction<'_>, freed: &[Lease]) -> Result<(), IpamError> {
        let mut networks: Vec<&str> = freed.iter().map(|l| l.network.as_str()).collect();
        networks.sort_unstable();
        networks.dedup();
        let mut marked = blocks::mark_keys_for_deletion(&tx, freed)?;
        marked.extend(blocks::mark_empty_blocks(&tx, &networks)?);
        marked.sort_unstable();
        marked.dedup();
        tx.commit().map_err(db)?;
        self.note_returning(marked);
        Ok(())
    }
}

/// The address `identity` last held on `network` in one of `ranges`, if it
/// is free on the segment and may be handed out; with its prefix length.
fn sticky_pick(
    tx: &Transaction<'_>,
    segment: &str,
    network: &str,
    identity: &str,
    ranges: &[PoolRange],
) -> Result<Option<(IpAddr, u8)>, IpamError> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT s.key FROM sticky s WHERE s.network = ?1 AND s.identity = ?2
               AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.segment = ?3 AND l.key = s.key)
             ORDER BY s.updated DESC",
        )
        .map_err(db)?;
    let keys = stmt
        .query_map(params![network, identity, segment], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .map_err(db)?;
    for k in keys {
        let Some(address) = addr_of_key(&k.map_err(db)?) else {
            continue;
        };
        let usable = ranges.iter().find(|r| {
            r.range.contains(&address)
                && !r.excluded.contains(&address)
                && usable_bounds(r.subnet, r.range)
                    .is_some_and(|(lo, hi)| (lo..=hi).contains(&addr_to_u128(address)))
        });
        if let Some(r) = usable {
            return Ok(Some((address, r.subnet.prefix_len())));
        }
    }
    Ok(None)
}

/// Remembers that `identity` was given `address` on `network` (sticky_ips).
fn remember_sticky(
    tx: &Transaction<'_>,
    network: &str,
    identity: &str,
    address: IpAddr,
) -> Result<(), IpamError> {
    tx.prepare_cached(
        "INSERT INTO sticky (network, identity, key, updated) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (network, identity, key) DO UPDATE SET updated = excluded.updated",
    )
    .and_then(|mut s| s.execute(params![network, identity, key_of_addr(address), now_ns()]))
    .map_err(db)?;
    Ok(())
}

/// Unix time in nanoseconds: orders the addresses an identity held, also
/// two given within one second.
fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn delete_leases(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Lease>, IpamError> {
    let mut stmt = tx.prepare_cached(sql).map_err(db)?;
    let rows = stmt.query_map(params, lease_of_row).map_err(db)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
}

/// The attachments matching `filter` (an SQL condition on the table).
fn attachments_where(
    conn: &Connection,
    filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Attachment>, IpamError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE {filter} ORDER BY owner, network"
        ))
        .map_err(db)?;
    let rows = stmt.query_map(params, attachment_of_row).map_err(db)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
}

fn holder_of(a: &Attachment) -> Holder {
    Holder {
        owner: a.owner.clone(),
        ifname: a.ifname.clone(),
        network: a.network.clone(),
    }
}

/// Frees one attachment and its leases (its owner was found dead).
fn drop_attachment(tx: &Transaction<'_>, a: &Attachment) -> Result<(), IpamError> {
    delete_leases(
        tx,
        &format!("DELETE FROM leases WHERE owner = ?1 AND network = ?2 RETURNING {LEASE_COLUMNS}"),
        params![a.owner, a.network],
    )?;
    tx.prepare_cached("DELETE FROM attachments WHERE owner = ?1 AND network = ?2")
        .and_then(|mut s| s.execute(params![a.owner, a.network]))
        .map_err(db)?;
    Ok(())
}

/// A random unicast, locally administered MAC.
fn random_mac() -> Result<MacAddr, IpamError> {
    let mut m = [0u8; 6];
    // SAFETY: getrandom writes at most m.len() bytes into m.
    let n = unsafe { libc::getrandom(m.as_mut_ptr().cast(), m.len(), 0) };
    if n != m.len() as isize {
        return Err(IpamError::Store(format!(
            "getrandom: {}",
            std::io::Error::last_os_error()
        )));
    }
    m[0] = (m[0] & 0xfc) | 0x02;
    Ok(MacAddr(m))
}

/// The state of one `reserve` transaction: the owner, and what it dropped.
struct Reserving<'t, 'c, 'a> {
    tx: &'t Transaction<'c>,
    owner: &'t str,
    alive: Liveness<'a>,
    dropped: Vec<Attachment>,
}

impl Reserving<'_, '_, '_> {
    /// Whether `other` still stands in the way: it does if its owner is this
    /// one or alive; a dead one is freed here.
    fn in_the_way(&mut self, other: &Attachment) -> Result<bool, IpamError> {
        if other.owner == self.owner || (self.alive)(other) {
            return Ok(true);
        }
        drop_attachment(self.tx, other)?;
        self.dropped.push(other.clone());
        Ok(false)
    }

    /// Refuses the claim's link if a live link on its segment clashes with it.
    fn check_sharing(&mut self, claim: &Claim, link: LinkSpec) -> Result<(), IpamError> {
        for (kind, rule) in link.clashing() {
            let others = attachments_where(
                self.tx,
                "segment = ?1 AND driver = ?2 AND mode = ?3",
                params![
                    claim.segment,
                    kind.driver.to_string(),
                    kind.mode.to_string()
                ],
            )?;
            for other in others {
                if self.in_the_way(&other)? {
                    return Err(IpamError::Clash {
                        network: claim.network.clone(),
                        segment: claim.segment.clone(),
                        theirs: kind,
                        holder: Box::new(holder_of(&other)),
                        rule,
                    });
                }
            }
        }
        Ok(())
    }

    /// The attachment on the segment that has `mac`, if any.
    fn mac_holder(&self, segment: &str, mac: MacAddr) -> Result<Option<Attachment>, IpamError> {
        Ok(attachments_where(
            self.tx,
            "segment = ?1 AND mac = ?2",
            params![segment, mac.to_string()],
        )?
        .pop())
    }

    /// The MAC for the claim's link, unique on its segment.
    fn pick_mac(&mut self, claim: &Claim) -> Result<Option<MacAddr>, IpamError> {
        match claim.mac {
            MacWant::None => Ok(None),
            MacWant::Requested(mac) => {
                if let Some(other) = self.mac_holder(&claim.segment, mac)? {
                    if self.in_the_way(&other)? {
                        return Err(IpamError::MacTaken {
                            segment: claim.segment.clone(),
                            mac,
                            holder: holder_of(&other),
                        });
                    }
                }
                Ok(Some(mac))
            }
            MacWant::Random => loop {
                let mac = random_mac()?;
                if self.mac_holder(&claim.segment, mac)?.is_none() {
                    return Ok(Some(mac));
                }
            },
            // Chosen with the addresses (see `derive_macs_from_ipv4`).
            MacWant::FromIpv4 => Ok(None),
        }
    }

    /// `02:42:` and the first IPv4 address of the claim's leases (Docker's
    /// classic MAC), checked like a requested one and written to the
    /// attachment and its leases.
    fn derive_mac_from_ipv4(
        &mut self,
        claim: &Claim,
        owner: &str,
        leases: &mut [Option<Lease>],
    ) -> Result<MacAddr, IpamError> {
        let Some(v4) = leases.iter().flatten().find_map(|l| match l.address {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }) else {
            return Err(IpamError::Store(format!(
                "network {}: mac_policy ipv4 derives the MAC from an IPv4 address, and this attach has none",
                claim.network
            )));
        };
        let o = v4.octets();
        let mac = MacAddr([0x02, 0x42, o[0], o[1], o[2], o[3]]);
        let mut derived = claim.clone();
        derived.mac = MacWant::Requested(mac);
        self.pick_mac(&derived)?;
        for table in ["attachments", "leases"] {
            self.tx
                .prepare_cached(&format!(
                    "UPDATE {table} SET mac = ?3 WHERE owner = ?1 AND network = ?2"
                ))
                .and_then(|mut s| s.execute(params![owner, claim.network, mac.to_string()]))
                .map_err(db)?;
        }
        for l in leases.iter_mut().flatten() {
            l.mac = Some(mac);
        }
        Ok(mac)
    }

    /// Makes sure `address` is free on the segment, freeing it from a dead owner.
    fn check_address_free(&mut self, segment: &str, address: IpAddr) -> Result<(), IpamError> {
        let holder: Option<(String, String, String)> = self
            .tx
            .prepare_cached(
                "SELECT owner, network, ifname FROM leases WHERE segment = ?1 AND key = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![segment, key_of_addr(address)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(db)?;
        let Some((owner, network, ifname)) = holder else {
            return Ok(());
        };
        let attachment = attachments_where(
            self.tx,
            "owner = ?1 AND network = ?2",
            params![owner, network],
        )?
        .pop();
        // A lease without an attachment cannot be checked: it stays.
        let in_the_way = match attachment {
            Some(a) => self.in_the_way(&a)?,
            None => true,
        };
        if in_the_way {
            return Err(IpamError::Taken {
                segment: segment.to_string(),
                address,
                holder: Holder {
                    owner,
                    ifname,
                    network,
                },
            });
        }
        Ok(())
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        let wal = self.path.with_extension("db-wal");
        let fold_at = self.fold_at.load(Ordering::Relaxed);
        let long = fs::metadata(&wal).is_ok_and(|m| m.len() > fold_at);
        if long {
            // Best effort and brief (this runs on the start path): if other
            // processes keep it busy, a later close folds it.
            let wait = self.wait_deadline().remaining().min(CHECKPOINT_WAIT);
            self.set_deadline(Some(Deadline::after(wait)));
            let conn = self.conn();
            let folded = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                })
                .is_ok_and(|busy| busy == 0);
            if folded {
                // The first commit into an emptied WAL writes its header and
                // syncs it, even under synchronous=NORMAL: make that commit
                // here (it rewrites the unchanged schema version), so that
                // the next attach appends without an fsync.
                let _ = conn.pragma_update(None, "user_version", SCHEMA_VERSION);
            }
        }
    }
}

impl LeaseStore for SqliteStore {
    fn reserve(
        &self,
        owner: &str,
        netns: &str,
        claims: &[Claim],
        alive: Liveness<'_>,
    ) -> Result<Reservation, IpamError> {
        // No netns: a reservation with no container behind it.
        let commit = if netns.is_empty() {
            Commit::PowerLoss
        } else {
            Commit::ProcessCrash
        };
        let (mut conn, _queue) = self.writer(commit)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let created = now();
        let mut r = Reserving {
            tx: &tx,
            owner,
            alive,
            dropped: Vec::new(),
        };
        let mut macs = Vec::with_capacity(claims.len());
        let mut out: Vec<Vec<Option<Lease>>> =
            claims.iter().map(|c| vec![None; c.wants.len()]).collect();
        let lease = |claim: &Claim, mac: Option<MacAddr>, address: IpAddr, prefix_len: u8| Lease {
            network: claim.network.clone(),
            segment: claim.segment.clone(),
            address,
            prefix_len,
            owner: owner.to_string(),
            ifname: claim.ifname.clone(),
            netns: netns.to_string(),
            mac,
            created,
        };

        // Attachments (after the sharing rules, with their MACs) and requested
        // addresses first, so that a pooled pick in this same reservation
        // cannot take an address one of its claims asks for.
        for (ci, claim) in claims.iter().enumerate() {
            if claim.shared {
                blocks::check_fence(&tx, &claim.network)?;
            }
            if let Some(link) = claim.link {
                r.check_sharing(claim, link)?;
            }
            let mac = r.pick_mac(claim)?;
            macs.push(mac);
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO attachments
                       (owner, network, ifname, netns, created, segment, driver, mode, mac)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (owner, network) DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        owner,
                        claim.network,
                        claim.ifname,
                        netns,
                        created as i64,
                        claim.segment,
                        claim.link.map(|l| l.driver.to_string()),
                        claim.link.map(|l| l.mode.to_string()),
                        mac.map(|m| m.to_string()),
                    ])
                })
                .map_err(db)?;
            if inserted == 0 {
                return Err(IpamError::Store(format!(
                    "owner {owner} already attached to network {}",
                    claim.network
                )));
            }
            for (wi, want) in claim.wants.iter().enumerate() {
                let Want::Address { address, subnet } = want else {
                    continue;
                };
                if claim.shared {
                    blocks::check_own_block(&tx, &claim.network, *address)?;
                }
                r.check_address_free(&claim.segment, *address)?;
                let l = lease(claim, mac, *address, subnet.prefix_len());
                insert_lease(&tx, &l)?;
                out[ci][wi] = Some(l);
            }
        }
        for (ci, claim) in claims.iter().enumerate() {
            for (wi, want) in claim.wants.iter().enumerate() {
                let Want::Pool { ranges } = want else {
                    continue;
                };
                let remembered = match &claim.sticky {
                    Some(identity) => {
                        sticky_pick(&tx, &claim.segment, &claim.network, identity, ranges)?
                    }
                    None => None,
                };
                let (address, prefix_len) = if let Some(picked) = remembered {
                    picked
                } else if claim.shared {
                    blocks::allocate(&tx, &claim.segment, &claim.network, ranges)?
                } else {
                    let (address, range) = allocate(&tx, &claim.segment, &claim.network, ranges)?;
                    (address, range.subnet.prefix_len())
                };
                if let Some(identity) = &claim.sticky {
                    remember_sticky(&tx, &claim.network, identity, address)?;
                }
                let l = lease(claim, macs[ci], address, prefix_len);
                insert_lease(&tx, &l)?;
                out[ci][wi] = Some(l);
            }
        }
        for (ci, claim) in claims.iter().enumerate() {
            if claim.mac == MacWant::FromIpv4 {
                let mac = r.derive_mac_from_ipv4(claim, owner, &mut out[ci])?;
                macs[ci] = Some(mac);
            }
        }
        let dropped = std::mem::take(&mut r.dropped);
        tx.commit().map_err(db)?;
        Ok(Reservation {
            leases: out
                .into_iter()
                .map(|c| c.into_iter().flatten().collect())
                .collect(),
            macs,
            dropped,
        })
    }

    fn state_dir(&self) -> Option<PathBuf> {
        self.path.parent().map(Path::to_path_buf)
    }

    fn record_lease(
        &self,
        owner: &str,
        network: &str,
        address: IpAddr,
        prefix_len: u8,
        alive: Liveness<'_>,
    ) -> Result<Lease, IpamError> {
        let (mut conn, _queue) = self.writer(Commit::ProcessCrash)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let Some(a) =
            attachments_where(&tx, "owner = ?1 AND network = ?2", params![owner, network])?.pop()
        else {
            return Err(IpamError::Store(format!(
                "{owner} is not attached to network {network}"
            )));
        };
        let mut r = Reserving {
            tx: &tx,
            owner,
            alive,
            dropped: Vec::new(),
        };
        r.check_address_free(&a.segment, address)?;
        let lease = Lease {
            network: network.to_string(),
            segment: a.segment.clone(),
            address,
            prefix_len,
            owner: owner.to_string(),
            ifname: a.ifname.clone(),
            netns: a.netns.clone(),
            mac: a.mac,
            created: now(),
        };
        insert_lease(&tx, &lease)?;
        tx.commit().map_err(db)?;
        Ok(lease)
    }

    fn attachments_of(&self, owner: &str) -> Result<Vec<Attachment>, IpamError> {
        attachments_where(&self.conn(), "owner = ?1", [owner])
    }

    fn attachments(&self) -> Result<Vec<Attachment>, IpamError> {
        attachments_where(&self.conn(), "1", [])
    }

    fn release_networks(&self, owner: &str, networks: &[String]) -> Result<Vec<Lease>, IpamError> {
        let (mut conn, _queue) = self.writer(Commit::ProcessCrash)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let mut freed = Vec::new();
        for network in networks {
            freed.extend(delete_leases(
                &tx,
                &format!("DELETE FROM leases WHERE owner = ?1 AND network = ?2 RETURNING {LEASE_COLUMNS}"),
                params![owner, network],
            )?);
            tx.prepare_cached("DELETE FROM attachments WHERE owner = ?1 AND network = ?2")
                .and_then(|mut s| s.execute(params![owner, network]))
                .map_err(db)?;
        }
        self.commit_release(tx, &freed)?;
        Ok(sort_leases(freed))
    }

    fn release_owner(&self, owner: &str) -> Result<Vec<Lease>, IpamError> {
        let (mut conn, _queue) = self.writer(Commit::ProcessCrash)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let freed = delete_leases(
            &tx,
            &format!("DELETE FROM leases WHERE owner = ?1 RETURNING {LEASE_COLUMNS}"),
            [owner],
        )?;
        tx.prepare_cached("DELETE FROM attachments WHERE owner = ?1")
            .and_then(|mut s| s.execute([owner]))
            .map_err(db)?;
        self.commit_release(tx, &freed)?;
        Ok(sort_leases(freed))
    }

    fn release_address(&self, network: &str, address: IpAddr) -> Result<Option<Lease>, IpamError> {
        let (mut conn, _queue) = self.writer(Commit::ProcessCrash)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let freed = delete_leases(
            &tx,
            &format!(
                "DELETE FROM leases WHERE network = ?1 AND key = ?2 RETURNING {LEASE_COLUMNS}"
            ),
            params![network, key_of_addr(address)],
        )?;
        // The owner's last address on this network gone: so is its attachment,
        // or its next reservation there would be refused as a duplicate.
        if let Some(lease) = freed.first() {
            tx.execute(
                "DELETE FROM attachments WHERE owner = ?1 AND network = ?2 AND NOT EXISTS \
                 (SELECT 1 FROM leases WHERE owner = ?1 AND network = ?2)",
                params![lease.owner, network],
            )
            .map_err(db)?;
        }
        self.commit_release(tx, &freed)?;
        Ok(freed.into_iter().next())
    }

    fn lease_of(&self, network: &str, address: IpAddr) -> Result<Option<Lease>, IpamError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {LEASE_COLUMNS} FROM leases WHERE network = ?1 AND key = ?2"
            ))
            .map_err(db)?;
        stmt.query_row(params![network, key_of_addr(address)], lease_of_row)
            .optional()
            .map_err(db)
    }

    fn leases_of(&self, owner: &str) -> Result<Vec<Lease>, IpamError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {LEASE_COLUMNS} FROM leases WHERE owner = ?1 ORDER BY network, key"
            ))
            .map_err(db)?;
        let rows = stmt.query_map([owner], lease_of_row).map_err(db)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
    }

    fn record_vlan(&self, name: &str) -> Result<(), IpamError> {
        let (conn, _queue) = self.writer(Commit::ProcessCrash)?;
        conn.execute(
            "INSERT OR IGNORE INTO vlans (name, created) VALUES (?1, ?2)",
            params![name, now() as i64],
        )
        .map_err(db)?;
        Ok(())
    }

    fn forget_vlan(&self, name: &str) -> Result<(), IpamError> {
        let (conn, _queue) = self.writer(Commit::ProcessCrash)?;
        conn.execute("DELETE FROM vlans WHERE name = ?1", [name])
            .map_err(db)?;
        Ok(())
    }

    fn vlans(&self) -> Result<Vec<String>, IpamError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT name FROM vlans ORDER BY name")
            .map_err(db)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(db)?;
        rows.collect::<rusqlite::Result<Vec<String>>>().map_err(db)
    }

    fn leases(&self, network: Option<&str>) -> Result<Vec<Lease>, IpamError> {
        let conn = self.conn();
        let (sql, params): (String, Vec<&str>) = match network {
            Some(n) => (
                format!("SELECT {LEASE_COLUMNS} FROM leases WHERE network = ?1 ORDER BY key"),
                vec![n],
            ),
            None => (
                format!("SELECT {LEASE_COLUMNS} FROM leases ORDER BY network, key"),
                vec![],
            ),
        };
        let mut stmt = conn.prepare_cached(&sql).map_err(db)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), lease_of_row)
            .map_err(db)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
    }

    fn deadline(&self) -> Deadline {
        self.wait_deadline()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    use ipnet::IpNet;

    use super::*;
    use crate::config::{Driver, IpamMode, Network, Subnet};
    use crate::ipam::pool::pools_of;
    use crate::ipam::MacWant;

    /// A unique temporary state directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "netattach-ipam-{}-{tag}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn subnet(s: &str, gw: Option<&str>, range: Option<&str>, aux: &[&str]) -> Subnet {
        Subnet {
            subnet: net(s),
            // No gateway unless given: these tests are about the pool arithmetic.
            gateway: Some(gw.map_or(crate::config::Gateway::None, |g| g.parse().unwrap())),
            ip_range: range.map(net),
            aux_addresses: aux
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("aux{i}"), ip(a)))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn network(name: &str, subnets: Vec<Subnet>, ipam: IpamMode) -> Network {
        Network {
            shared: None,
            host_addresses: Vec::new(),
            macvlan_sources: Vec::new(),
            announce: None,
            dhcp_timeout: None,
            mac_policy: None,
            sticky_ips: false,
            name: name.into(),
            driver: Driver::Macvlan,
            parent: "eth0".into(),
            mode: None,
            flag: None,
            mtu: None,
            subnets,
            internal: false,
            ipam,
            requests: Default::default(),
        }
    }

    /// `reserve` with every owner alive, as a test of addresses alone needs;
    /// a claim without a segment gets one of its network's own.
    fn reserve(
        store: &SqliteStore,
        owner: &str,
        netns: &str,
        claims: &[Claim],
    ) -> Result<Vec<Vec<Lease>>, IpamError> {
        let claims: Vec<Claim> = claims
            .iter()
            .cloned()
            .map(|mut c| {
                if c.segment.is_empty() {
                    c.segment = format!("seg-{}", c.network);
                }
                c
            })
            .collect();
        Ok(store.reserve(owner, netns, &claims, &mut |_| true)?.leases)
    }

    /// The claim an attach of `n` makes: one pooled address per family.
    fn pool_claim(n: &Network) -> Claim {
        Claim {
            shared: false,
            sticky: None,
            network: n.name.clone(),
            ifname: "eth0".into(),
            segment: String::new(),
            link: None,
            mac: MacWant::None,
            wants: pools_of(n)
                .into_iter()
                .map(|ranges| Want::Pool { ranges })
                .collect(),
        }
    }

    fn take(store: &SqliteStore, owner: &str, n: &Network) -> Result<Vec<IpAddr>, IpamError> {
        let got = reserve(store, owner, "/proc/1/ns/net", &[pool_claim(n)])?;
        Ok(got[0].iter().map(|l| l.address).collect())
    }

    fn take1(store: &SqliteStore, owner: &str, n: &Network) -> IpAddr {
        let got = take(store, owner, n).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        got[0]
    }

    #[test]
    fn key_order_and_round_trip() {
        let addrs = [
            "0.0.0.0",
            "10.0.0.2",
            "10.0.0.10",
            "255.255.255.255",
            "::",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ];
        let keys: Vec<Key> = addrs.iter().map(|a| key_of_addr(ip(a))).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for a in addrs {
            assert_eq!(addr_of_key(&key_of_addr(ip(a))), Some(ip(a)));
        }
        assert_eq!(addr_of_key(&[4u8; 3]), None);
    }

    #[test]
    fn open_creates_and_reopens() {
        let dir = TempDir::new("open");
        let deep = dir.0.join("a/b");
        let s = SqliteStore::open(&deep).unwrap();
        assert!(deep.join(DB_FILE).exists());
        let n = network(
            "n1",
            vec![subnet("10.0.0.0/24", None, None, &[])],
            IpamMode::Pool,
        );
        assert_eq!(take1(&s, "c1", &n), ip("10.0.0.1"));
        drop(s);
        let s = SqliteStore::open(&deep).unwrap();
        let mode: String = s
            .conn()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(s.leases(None).unwrap().len(), 1);
        assert_eq!(
            take1(&s, "c2", &n),
            ip("10.0.0.2"),
            "the cursor survives a reopen"
        );
    }

    /// A closing store folds a long WAL back, except on a container's start
    /// path, which leaves that (and its fsyncs) to a release until the WAL is
    /// very long.
    #[test]
    fn only_a_very_long_wal_is_folded_on_the_start_path() {
        let dir = TempDir::new("fold");
        let n = network(
            "n1",
            vec![subnet("10.0.0.0/16", None, None, &[])],
            IpamMode::Pool,
        );
        let wal = dir.0.join("leases.db-wal");
        let wal_len = || fs::metadata(&wal).map_or(0, |m| m.len());
        let mut owner = 0;
        // Grows the WAL past `to` through one store on the start path.
        let grow_past = |to: u64, owner: &mut i32| {
            let s = SqliteStore::open(&dir.0).unwrap();
            s.on_start_path();
            while wal_len() <= to {
                *owner += 1;
                take1(&s, &format!("c{owner}"), &n);
            }
        };
        grow_past(WAL_FOLD_BYTES, &mut owner);
        assert!(wal_len() > WAL_FOLD_BYTES, "the attach left it long");
        // Folded: emptied, then primed with one page (see `Drop`).
        let primed = 32 + 4120;
        drop(SqliteStore::open(&dir.0).unwrap());
        assert_eq!(wal_len(), primed, "a release-side close folds it");
        grow_past(START_PATH_FOLD_BYTES, &mut owner);
        assert_eq!(
            wal_len(),
            primed,
            "past the start-path limit, an attach folds it too"
        );
    }

    /// A container's lease commits safe against process crashes, a lease with
    /// no container behind it safe against power loss. (Power loss itself
    /// cannot be staged here; this checks the mode each commit ran under.)
    #[test]
    fn a_lease_without_a_container_commits_fully_synced() {
        let dir = TempDir::new("durability");
        let s = SqliteStore::open(&dir.0).unwrap();
        let n = network(
            "n1",
            vec![subnet("10.0.0.0/24", None, None, &[])],
            IpamMode::Pool,
        );
        let synchronous = |s: &SqliteStore| -> i64 {
            s.conn()
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        take1(&s, "container", &n);
        assert_eq!(synchronous(&s), 1, "NORMAL for a container's lease");
        reserve(&s, "printer", "", &[pool_claim(&n)]).unwrap();
        assert_eq!(synchronous(&s), 2, "FULL for a reservation");
        s.release_owner("container").unwrap();
        assert_eq!(synchronous(&s), 1, "NORMAL for a release");
    }

    #[test]
    fn static_lease_and_taken_names_holder() {
        let dir = TempDir::new("static");
        let s = SqliteStore::open(&dir.0).unwrap();
        let claim = |ifname: &str| Claim {
            shared: false,
            sticky: None,
            network: "lan".into(),
            ifname: ifname.into(),
            segment: String::new(),
            link: None,
            mac: MacWant::None,
            wants: vec![Want::Address {
                address: ip("192.168.32.140"),
                subnet: net("192.168.32.0/24"),
            }],
        };
        let got = reserve(&s, "ctr-a", "/run/netns/a", &[claim("eth1")]).unwrap();
        assert_eq!(got.len(), 1);
        let l = &got[0][0];
        assert_eq!((l.address, l.prefix_len), (ip("192.168.32.140"), 24));
        assert_eq!(
            (l.owner.as_str(), l.ifname.as_str(), l.netns.as_str()),
            ("ctr-a", "eth1", "/run/netns/a")
        );
        assert_eq!(s.leases(Some("lan")).unwrap(), got[0]);

        let err = reserve(&s, "ctr-b", "/run/netns/b", &[claim("eth0")]).unwrap_err();
        assert!(matches!(err, IpamError::Taken { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "address 192.168.32.140 is taken on parent seg-lan by ctr-a (eth1, network lan)"
        );
        assert!(
            s.attachments_of("ctr-b").unwrap().is_empty(),
            "failed reserve left an attachment"
        );

        // A pooled allocation never hands out the requested address.
        let n = network(
            "lan",
            vec![subnet(
                "192.168.32.0/24",
                None,
                Some("192.168.32.140/31"),
                &[],
            )],
            IpamMode::Pool,
        );
        assert_eq!(take1(&s, "ctr-c", &n), ip("192.168.32.141"));
        let err = take(&s, "ctr-d", &n).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free address in 192.168.32.140/31 of lan"
        );

        // Same owner attached twice to one network is refused.
        let err = reserve(&s, "ctr-a", "/run/netns/a", &[claim("eth1")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "lease store: owner ctr-a already attached to network lan"
        );
    }

    #[test]
    fn pooled_request_in_same_reservation_does_not_take_a_requested_address() {
        let dir = TempDir::new("same");
        let s = SqliteStore::open(&dir.0).unwrap();
        let n = network(
            "n",
            vec![subnet("10.0.0.0/24", None, None, &[])],
            IpamMode::Pool,
        );
        let claim = Claim {
            shared: false,
            sticky: None,
            network: "n".into(),
            ifname: "eth0".into(),
            segment: String::new(),
            link: None,
            mac: MacWant::None,
            wants: vec![
                Want::Pool {
                    ranges: pools_of(&n).remove(0),
                },
                Want::Address {
                    address: ip("10.0.0.1"),
                    subnet: net("10.0.0.0/24"),
                },
            ],
        };
        let got = reserve(&s, "o", "ns", &[claim]).unwrap();
        let addrs: Vec<IpAddr> = got[0].iter().map(|l| l.address).collect();
        assert_eq!(
            addrs,
            vec![ip("10.0.0.2"), ip("10.0.0.1")],
            "results in the order of the wants"
        );
    }

    #[test]
    fn pool_skips_network_broadcast_gateway_aux() {
        let dir = TempDir::new("skip");
        let s = SqliteStore::open(&dir.0).unwrap();
        let n = network(
            "n",
            vec![subnet(
                "10.0.0.0/29",
                Some("10.0.0.1"),
                None,
                &["10.0.0.3", "10.0.0.6"],
            )],
            IpamMode::Pool,
        );
        let got: Vec<IpAddr> = (0..3).map(|i| take1(&s, &format!("c{i}"), &n)).collect();
        assert_eq!(got, vec![ip("10.0.0.2"), ip("10.0.0.4"), ip("10.0.0.5")]);
        let err = take(&s, "c9", &n).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { .. }));
        assert_eq!(err.to_string(), "no free address in 10.0.0.0/29 of n");
    }

    #[test]
    fn ip_range_honoured() {
        let dir = TempDir::new("range");
        let s = SqliteStore::open(&dir.0).unwrap();
        let n = network(
            "lan",
            vec![subnet(
                "192.168.32.0/24",
                Some("192.168.32.254"),
                Some("192.168.32.252/30"),
                &["192.168.32.253"],
            )],
            IpamMode::Pool,
        );
        assert_eq!(take1(&s, "a", &n), ip("192.168.32.252"));
        let err = take(&s, "b", &n).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free address in 192.168.32.252/30 of lan"
        );
        let leases = s.leases(Some("lan")).unwrap();
        assert_eq!(
            leases[0].prefix_len, 24,
            "prefix of the subnet, not the range"
        );
    }

    #[test]
    fn releasing_an_owners_last_address_ends_its_attachment() {
        let dir = TempDir::new("last");
        let s = SqliteStore::open(&dir.0).unwrap();
        let n = network(
            "n",
            vec![subnet("10.0.0.0/24", None, None, &[])],
            IpamMode::Pool,
        );
        let a = take1(&s, "host", &n);
        s.release_address("n", a).unwrap().unwrap();
        assert!(s.attachments_of("host").unwrap().is_empty());
        // The owner can reserve on that network again.
        take1(&s, "host", &n);
    }

    #[test]
    fn round_robin_and_wrap_around() {
        let dir = TempDir::new("rr");
        let s = SqliteStore::open(&dir.0).unwrap();
        let n = network(
            "n",
            vec![subnet("10.0.0.0/29", None, None, &[])],
            IpamMode::Pool,
        );
        let a = take1(&s, "a", &n);
        let b = take1(&s, "b", &n);
        assert_eq!((a, b), (ip("10.0.0.1"), ip("10.0.0.2")));
        assert_eq!(s.release_owner("a").unwrap().len(), 1);
        assert_eq!(
            take1(&s, "c", &n),
            ip("10.0.0.3"),
            "a freed address is not reused at once"
        );
        for (o, want) in [("d", "10.0.0.4"), ("e", "10.0.0.5"), ("f", "10.0.0.6")] {
            assert_eq!(take1(&s, o, &n), ip(want));
        }
        // End of range reached: wrap to the start, where .1 is free.
        assert_eq!(take1(&s, "g", &n), ip("10.0.0.1"));
        assert_eq!(
            s.release_address("n", ip("10.0.0.4"))
                .unwrap()
                .unwrap()
                .owner,
            "d"
        );
        assert_eq!(s.release_address("n", ip("10.0.0.4")).unwrap(), None);
        assert_eq!(take1(&s, "h", &n), ip("10.0.0.4"));
        assert!(matches!(
            take(&s, "i", &n),
            Err(IpamError::Exhausted { .. })
        ));
        // Releasing the address at the cursor makes it the last choice, not the next.
        s.release_address("n", ip("10.0.0.4")).unwrap();
        s.release_address("n", ip("10.0.0.2")).unwrap();
        assert_eq!(take1(&s, "j", &n), ip("10.0.0.2"));
        assert_eq!(take1(&s, "k", &n), ip("10.0.0.4"));
    }

    #[test]
    fn exhaustion_message() {
        let dir = TempDir::new("full");
        let s = SqliteStore::open(&dir.0).unwrap();
        let n = network(
            "n1",
            vec![subnet("10.0.0.0/30", None, None, &[])],
            IpamMode::Pool,
        );
        take1(&s, "a", &n);
        take1(&s, "b", &n);
        let err = take(&s, "c", &n).unwrap_err();
        assert_eq!(err.to_string(), "no free address in 10.0.0.0/30 of n1");
        assert!(s.attachments_of("c").unwrap().is_empty());
    }

    #[test]
    fn dual_stack_gets_one_of_each() {
        let dir = TempDir::new("dual");
        let s = SqliteStore::open(&dir.0).unwrap();
        let n = network(
            "lan",
            vec![
                subnet("2001:db8::/64", Some("2001:db8::1"), None, &[]),
                subnet("192.168.32.0/24", Some("192.168.32.1"), None, &[]),
            ],
            IpamMode::Pool,
        );
        let got = reserve(&s, "c", "ns", &[pool_claim(&n)]).unwrap();
        let got: Vec<(IpAddr, u8)> = got[0].iter().map(|l| (l.address, l.prefix_len)).collect();
        assert_eq!(got, vec![(ip("192.168.32.2"), 24), (ip("2001:db8::2"), 64)]);
        let all = s.leases(None).unwrap();
        assert_eq!(
            all.iter().map(|l| l.address).collect::<Vec<_>>(),
            vec![ip("192.168.32.2"), ip("2001:db8::2")]
        );
    }

    #[test]
    fn multi_subnet_falls_over_in_order() {
        let dir = TempDir::new("multi");
        let s = SqliteStore::open(&dir.0).unwrap();
        let n = network(
            "n1",
            vec![
                subnet("10.0.0.0/30", None, None, &[]),
                subnet("10.0.1.0/30", Some("10.0.1.1"), None, &[]),
            ],
            IpamMode::Pool,
        );
        let got: Vec<IpAddr> = (0..3).map(|i| take1(&s, &format!("c{i}"), &n)).collect();
        assert_eq!(got, vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.1.2")]);
        let leases = s.leases(Some("n1")).unwrap();
        assert_eq!(leases.len(), 3);
        let err = take(&s, "c9", &n).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free address in 10.0.0.0/30, 10.0.1.0/30 of n1"
        );
        // Room in the first subnet again: it is preferred.
        s.release_owner("c0").unwrap();
        assert_eq!(take1(&s, "c10", &n), ip("10.0.0.1"));
    }

    #[test]
    fn static_network_hands_out_nothing() {
        let dir = TempDir::new("staticnet");
        let s = SqliteStore::open(&dir.0).unwrap();
        let n = network(
            "st",
            vec![subnet("10.0.0.0/24", None, None, &[])],
            IpamMode::Static,
        );
        let got = reserve(&s, "c", "ns", &[pool_claim(&n)]).unwrap();
        assert_eq!(got, vec![Vec::<Lease>::new()]);
        assert!(s.leases(None).unwrap().is_empty());
        assert_eq!(
            s.attachments_of("c").unwrap().len(),
            1,
            "the attachment is still recorded"
        );
    }

    #[test]
    fn release_owner_and_networks() {
        let dir = TempDir::new("release");
        let s = SqliteStore::open(&dir.0).unwrap();
        let a = network(
            "a",
            vec![
                subnet("10.0.0.0/24", None, None, &[]),
                subnet("fd00::/64", None, None, &[]),
            ],
            IpamMode::Pool,
        );
        let b = network(
            "b",
            vec![subnet("10.1.0.0/24", None, None, &[])],
            IpamMode::Pool,
        );
        let mut cb = pool_claim(&b);
        cb.ifname = "eth1".into();
        reserve(&s, "x", "nsx", &[pool_claim(&a), cb.clone()]).unwrap();
        reserve(&s, "y", "nsy", &[pool_claim(&a)]).unwrap();
        let atts = s.attachments().unwrap();
        let keys: Vec<(&str, &str)> = atts
            .iter()
            .map(|t| (t.owner.as_str(), t.network.as_str()))
            .collect();
        assert_eq!(keys, vec![("x", "a"), ("x", "b"), ("y", "a")]);
        assert_eq!(s.attachments_of("x").unwrap()[1].ifname, "eth1");

        let freed = s
            .release_networks("x", &["b".to_string(), "nope".to_string()])
            .unwrap();
        assert_eq!(
            freed.iter().map(|l| l.address).collect::<Vec<_>>(),
            vec![ip("10.1.0.1")]
        );
        assert_eq!(s.attachments_of("x").unwrap().len(), 1);

        let freed = s.release_owner("x").unwrap();
        assert_eq!(
            freed.iter().map(|l| l.address).collect::<Vec<_>>(),
            vec![ip("10.0.0.1"), ip("fd00::1")]
        );
        assert!(s.attachments_of("x").unwrap().is_empty());
        assert!(s.release_owner("x").unwrap().is_empty());
        assert!(s.leases(None).unwrap().iter().all(|l| l.owner == "y"));
        assert_eq!(s.leases(Some("a")).unwrap().len(), 2);
        // Re-attaching after release works.
        reserve(&s, "x", "nsx", &[cb]).unwrap();
    }

    #[test]
    fn atomic_claim() {
        let dir = TempDir::new("atomic");
        let s = SqliteStore::open(&dir.0).unwrap();
        let n = network(
            "n",
            vec![subnet("10.0.0.0/24", None, None, &[])],
            IpamMode::Pool,
        );
        reserve(
            &s,
            "holder",
            "ns",
            &[Claim {
                shared: false,
                sticky: None,
                network: "m".into(),
                ifname: "eth0".into(),
                segment: String::new(),
                link: None,
                mac: MacWant::None,
                wants: vec![Want::Address {
                    address: ip("10.9.0.9"),
                    subnet: net("10.9.0.0/24"),
                }],
            }],
        )
        .unwrap();
        let claims = [
            pool_claim(&n),
            Claim {
                shared: false,
                sticky: None,
                network: "m".into(),
                ifname: "eth1".into(),
                segment: String::new(),
                link: None,
                mac: MacWant::None,
                wants: vec![
                    Want::Address {
                        address: ip("10.9.0.8"),
                        subnet: net("10.9.0.0/24"),
                    },
                    Want::Address {
                        address: ip("10.9.0.9"),
                        subnet: net("10.9.0.0/24"),
                    },
                ],
            },
        ];
        let err = reserve(&s, "c", "ns", &claims).unwrap_err();
        assert!(matches!(err, IpamError::Taken { .. }), "{err:?}");
        assert!(s.attachments_of("c").unwrap().is_empty());
        assert!(s.leases(Some("n")).unwrap().is_empty());
        assert_eq!(s.leases(Some("m")).unwrap().len(), 1);
        // The cursor did not move either: the next allocation starts at .1.
        assert_eq!(take1(&s, "d", &n), ip("10.0.0.1"));
    }

    /// Reserve/release cycles against one state dir; returns (successes, exhausted).
    /// `held` marks an address as held by creating `<held>/<addr>` with O_EXCL, so a
    /// duplicate is caught across threads and processes alike.
    fn churn(state: &Path, held: &Path, worker: usize, cycles: usize) -> (usize, usize) {
        let s = SqliteStore::open(state).unwrap();
        let n = network(
            "n",
            vec![subnet("10.0.0.0/29", Some("10.0.0.1"), None, &[])],
            IpamMode::Pool,
        );
        let (mut ok, mut full) = (0, 0);
        for c in 0..cycles {
            let owner = format!("w{worker}-{}-c{c}", std::process::id());
            match take(&s, &owner, &n) {
                Ok(addrs) => {
                    ok += 1;
                    let marker = held.join(addrs[0].to_string());
                    fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&marker)
                        .unwrap_or_else(|e| panic!("{} handed out twice: {e}", addrs[0]));
                    // Hold it a moment so that workers overlap and the pool runs dry.
                    std::thread::sleep(Duration::from_millis(2));
                    fs::remove_file(&marker).unwrap();
                    assert_eq!(s.release_owner(&owner).unwrap().len(), 1);
                }
                Err(IpamError::Exhausted { .. }) => full += 1,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        (ok, full)
    }

    #[test]
    fn many_threads_never_share_an_address() {
        let dir = TempDir::new("threads");
        let held = dir.0.join("held");
        fs::create_dir_all(&held).unwrap();
        let state = dir.0.join("state");
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|w| {
                let (state, held, barrier) = (state.clone(), held.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait(); // everyone opens the fresh database at once
                    churn(&state, &held, w, 50)
                })
            })
            .collect();
        let (mut ok, mut full) = (0, 0);
        for h in handles {
            let (o, f) = h.join().unwrap();
            ok += o;
            full += f;
        }
        eprintln!("threads: {ok} reservations, {full} exhausted");
        assert!(ok > 0);
        let s = SqliteStore::open(&state).unwrap();
        assert!(s.leases(None).unwrap().is_empty());
        assert!(s.attachments().unwrap().is_empty());
    }

    /// Prints the worst wait of one reserve per thread when 16 writers contend
    /// (a sanity check of the busy handler; no assertion on time).
    #[test]
    fn contention_latency() {
        let dir = TempDir::new("lat");
        let state = dir.0.join("state");
        SqliteStore::open(&state).unwrap();
        let t0 = Instant::now();
        let handles: Vec<_> = (0..16)
            .map(|w| {
                let state = state.clone();
                std::thread::spawn(move || {
                    let s = SqliteStore::open(&state).unwrap();
                    let n = network(
                        "n",
                        vec![subnet("10.0.0.0/24", None, None, &[])],
                        IpamMode::Pool,
                    );
                    let mut worst = Duration::ZERO;
                    for c in 0..10 {
                        let owner = format!("w{w}-c{c}");
                        let t = Instant::now();
                        take(&s, &owner, &n).unwrap();
                        worst = worst.max(t.elapsed());
                        s.release_owner(&owner).unwrap();
                    }
                    worst
                })
            })
            .collect();
        let mut w: Vec<Duration> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        w.sort();
        eprintln!(
            "16 writers x 10 cycles: total {:?}, worst reserve per thread {:?}",
            t0.elapsed(),
            w
        );
    }

    const CHILD_ENV: &str = "NETATTACH_IPAM_TEST_CHILD";

    /// The body of a child process of `many_processes_never_share_an_address`; a
    /// no-op when run as a normal test.
    #[test]
    fn child_worker() {
        let Ok(arg) = std::env::var(CHILD_ENV) else {
            return;
        };
        let mut parts = arg.splitn(3, '\n');
        let worker: usize = parts.next().unwrap().parse().unwrap();
        let state = PathBuf::from(parts.next().unwrap());
        let held = PathBuf::from(parts.next().unwrap());
        let (ok, full) = churn(&state, &held, worker, 50);
        eprintln!("child {worker}: {ok} reservations, {full} exhausted");
    }

    #[test]
    fn many_processes_never_share_an_address() {
        if std::env::var_os(CHILD_ENV).is_some() {
            return;
        }
        let dir = TempDir::new("procs");
        let held = dir.0.join("held");
        fs::create_dir_all(&held).unwrap();
        let state = dir.0.join("state");
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..6)
            .map(|w| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "ipam::sqlite::tests::child_worker",
                        "--test-threads=1",
                        "--nocapture",
                        "-q",
                    ])
                    .env(
                        CHILD_ENV,
                        format!("{w}\n{}\n{}", state.display(), held.display()),
                    )
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success(), "a child process failed");
        }
        let s = SqliteStore::open(&state).unwrap();
        assert!(s.leases(None).unwrap().is_empty());
    }

    #[test]
    fn timing_sanity() {
        let dir = TempDir::new("timing");
        let t = Instant::now();
        let s = SqliteStore::open(&dir.0).unwrap();
        let open_new = t.elapsed();
        let n = network(
            "big",
            vec![subnet("10.0.0.0/16", Some("10.0.0.1"), None, &[])],
            IpamMode::Pool,
        );
        let ranges = pools_of(&n).remove(0);
        let bulk = Claim {
            shared: false,
            sticky: None,
            network: "big".into(),
            ifname: "eth0".into(),
            segment: String::new(),
            link: None,
            mac: MacWant::None,
            wants: vec![Want::Pool { ranges }; 30_000],
        };
        let t = Instant::now();
        reserve(&s, "bulk", "ns", &[bulk]).unwrap();
        let bulk_time = t.elapsed();
        drop(s);
        let t = Instant::now();
        let s = SqliteStore::open(&dir.0).unwrap();
        let open_again = t.elapsed();
        let t = Instant::now();
        let mut seen = HashSet::new();
        for i in 0..20 {
            assert!(seen.insert(take1(&s, &format!("c{i}"), &n)));
        }
        let per_reserve = t.elapsed() / 20;
        // Worst case for the index walk: cursor wrapped, a 30 000-lease run to skip.
        s.conn()
            .execute(
                "UPDATE cursors SET last = ?1",
                [key_of_addr(ip("10.0.255.254"))],
            )
            .unwrap();
        let t = Instant::now();
        assert_eq!(take1(&s, "wrap", &n), ip("10.0.117.70"));
        let wrap = t.elapsed();
        let t = Instant::now();
        for i in 0..20 {
            s.release_owner(&format!("c{i}")).unwrap();
        }
        let per_release = t.elapsed() / 20;
        let t = Instant::now();
        assert_eq!(s.leases(Some("big")).unwrap().len(), 30_001);
        let list = t.elapsed();
        eprintln!(
            "timing (30k leases): open new {open_new:?}, open existing {open_again:?}, \
             bulk 30k {bulk_time:?}, reserve {per_reserve:?}, release {per_release:?}, \
             reserve after wrap over 30k run {wrap:?}, list {list:?}"
        );
    }

    /// A link claim of `network` on `segment` wanting `wants`.
    fn link_claim(
        network: &str,
        segment: &str,
        link: LinkSpec,
        mac: MacWant,
        wants: Vec<Want>,
    ) -> Claim {
        Claim {
            shared: false,
            sticky: None,
            network: network.into(),
            segment: segment.into(),
            ifname: "eth0".into(),
            link: Some(link),
            mac,
            wants,
        }
    }

    fn static_want(a: &str) -> Want {
        Want::Address {
            address: ip(a),
            subnet: net("10.0.0.0/24"),
        }
    }

    const BRIDGE: LinkSpec = LinkSpec {
        driver: Driver::Macvlan,
        mode: crate::config::Mode::Bridge,
    };

    #[test]
    fn one_segment_is_one_address_space_across_networks() {
        let dir = TempDir::new("segment");
        let s = SqliteStore::open(&dir.0).unwrap();
        let a = link_claim(
            "a",
            "lan0",
            BRIDGE,
            MacWant::Random,
            vec![static_want("10.0.0.50")],
        );
        s.reserve("c1", "net:[1]#1", &[a], &mut |_| true).unwrap();
        // Another network on the same parent cannot have the address...
        let b = link_claim(
            "b",
            "lan0",
            BRIDGE,
            MacWant::Random,
            vec![static_want("10.0.0.50")],
        );
        let err = s
            .reserve("c2", "net:[2]#2", &[b], &mut |_| true)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "address 10.0.0.50 is taken on parent lan0 by c1 (eth0, network a)"
        );
        // ...nor can its pool hand it out; another parent can.
        let n = network(
            "b",
            vec![subnet("10.0.0.0/24", None, Some("10.0.0.50/31"), &[])],
            IpamMode::Pool,
        );
        let pool = |seg: &str| {
            link_claim(
                "b",
                seg,
                BRIDGE,
                MacWant::Random,
                vec![Want::Pool {
                    ranges: pools_of(&n).remove(0),
                }],
            )
        };
        let got = s
            .reserve("c3", "net:[3]#3", &[pool("lan0")], &mut |_| true)
            .unwrap();
        assert_eq!(got.leases[0][0].address, ip("10.0.0.51"));
        let got = s
            .reserve("c4", "net:[4]#4", &[pool("lan1")], &mut |_| true)
            .unwrap();
        assert_eq!(got.leases[0][0].address, ip("10.0.0.50"));
        assert_eq!(s.leases(Some("b")).unwrap().len(), 2);
    }

    #[test]
    fn a_dead_holder_is_freed_a_live_one_refuses() {
        let dir = TempDir::new("dead");
        let s = SqliteStore::open(&dir.0).unwrap();
        let claim = |net: &str| {
            link_claim(
                net,
                "lan0",
                BRIDGE,
                MacWant::Random,
                vec![static_want("10.0.0.7")],
            )
        };
        s.reserve("old", "net:[1]#1", &[claim("a")], &mut |_| true)
            .unwrap();
        let mut asked = Vec::new();
        let err = s
            .reserve("new", "net:[2]#2", &[claim("b")], &mut |a| {
                asked.push(a.owner.clone());
                true
            })
            .unwrap_err();
        assert!(matches!(err, IpamError::Taken { .. }), "{err}");
        assert_eq!(asked, ["old"]);
        let got = s
            .reserve("new", "net:[2]#2", &[claim("b")], &mut |a| a.owner != "old")
            .unwrap();
        assert_eq!(got.dropped.len(), 1);
        assert_eq!(got.dropped[0].owner, "old");
        let owners: Vec<String> = s
            .leases(None)
            .unwrap()
            .into_iter()
            .map(|l| l.owner)
            .collect();
        assert_eq!(owners, ["new"]);
        assert!(s.attachments_of("old").unwrap().is_empty());
    }

    #[test]
    fn sharing_rules_are_checked_in_the_transaction_with_liveness() {
        use crate::config::Mode;
        let dir = TempDir::new("sharing");
        let s = SqliteStore::open(&dir.0).unwrap();
        let ipvlan = |mode| LinkSpec {
            driver: Driver::Ipvlan,
            mode,
        };
        let l2 = link_claim("v2", "eth1", ipvlan(Mode::L2), MacWant::None, vec![]);
        let l3 = link_claim("v3", "eth1", ipvlan(Mode::L3), MacWant::None, vec![]);
        s.reserve("c1", "net:[1]#1", std::slice::from_ref(&l2), &mut |_| true)
            .unwrap();
        s.reserve("c2", "net:[2]#2", std::slice::from_ref(&l2), &mut |_| true)
            .unwrap();
        let err = s
            .reserve("c3", "net:[3]#3", std::slice::from_ref(&l3), &mut |_| true)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("network v3: parent eth1 carries a ipvlan l2 link of c1"),
            "{err}"
        );
        assert!(err.to_string().contains("one ipvlan mode"), "{err}");
        // Only when every l2 owner is dead does l3 get the parent.
        s.reserve("c3", "net:[3]#3", std::slice::from_ref(&l3), &mut |a| {
            a.owner == "c2"
        })
        .unwrap_err();
        let got = s.reserve("c3", "net:[3]#3", &[l3], &mut |_| false).unwrap();
        assert_eq!(got.dropped.len(), 2);
        // Passthru wants the parent alone, even beside its own network.
        let pt = LinkSpec {
            driver: Driver::Macvlan,
            mode: Mode::Passthru,
        };
        let p = link_claim("pt", "eth2", pt, MacWant::None, vec![]);
        s.reserve("c4", "net:[4]#4", std::slice::from_ref(&p), &mut |_| true)
            .unwrap();
        let err = s
            .reserve("c5", "net:[5]#5", &[p], &mut |_| true)
            .unwrap_err();
        assert!(
            err.to_string().contains("passthru needs the parent"),
            "{err}"
        );
        // A reservation is no link and clashes with nothing.
        let mut r = link_claim("pt", "eth2", pt, MacWant::None, vec![]);
        r.link = None;
        s.reserve("printer", "", &[r], &mut |_| true).unwrap();
    }

    #[test]
    fn macs_are_unique_per_segment_and_recorded() {
        let dir = TempDir::new("macs");
        let s = SqliteStore::open(&dir.0).unwrap();
        let mac = MacAddr([0x02, 0, 0, 0xaa, 0xbb, 0x01]);
        let n = network(
            "a",
            vec![subnet("10.0.0.0/24", None, None, &[])],
            IpamMode::Pool,
        );
        let claim = |net: &str, seg: &str, m| {
            link_claim(
                net,
                seg,
                BRIDGE,
                m,
                vec![Want::Pool {
                    ranges: pools_of(&n).remove(0),
                }],
            )
        };
        let got = s
            .reserve(
                "c1",
                "net:[1]#1",
                &[claim("a", "lan0", MacWant::Requested(mac))],
                &mut |_| true,
            )
            .unwrap();
        assert_eq!(got.macs, [Some(mac)]);
        assert_eq!(got.leases[0][0].mac, Some(mac));
        assert_eq!(s.attachments_of("c1").unwrap()[0].mac, Some(mac));
        let err = s
            .reserve(
                "c2",
                "net:[2]#2",
                &[claim("b", "lan0", MacWant::Requested(mac))],
                &mut |_| true,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "MAC 02:00:00:aa:bb:01 is in use on parent lan0 by c1 (eth0, network a)"
        );
        // Another segment may use it; a dead holder is no obstacle.
        s.reserve(
            "c3",
            "net:[3]#3",
            &[claim("a", "lan1", MacWant::Requested(mac))],
            &mut |_| true,
        )
        .unwrap();
        s.reserve(
            "c2",
            "net:[2]#2",
            &[claim("b", "lan0", MacWant::Requested(mac))],
            &mut |a| a.owner != "c1",
        )
        .unwrap();
        // Random MACs: unicast, locally administered, distinct.
        let mut seen = HashSet::new();
        for i in 0..50 {
            let got = s
                .reserve(
                    &format!("r{i}"),
                    "net:[9]#9",
                    &[claim("a", "lan0", MacWant::Random)],
                    &mut |_| true,
                )
                .unwrap();
            let m = got.macs[0].unwrap();
            assert!(m.check_assignable().is_ok(), "{m}");
            assert!(seen.insert(m));
        }
    }

    #[test]
    fn version_2_databases_are_migrated_without_losing_a_lease() {
        let dir = TempDir::new("migrate");
        fs::create_dir_all(&dir.0).unwrap();
        {
            let conn = Connection::open(dir.0.join(DB_FILE)).unwrap();
            conn.execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE leases (network TEXT NOT NULL, key BLOB NOT NULL, address TEXT NOT NULL,
                   prefix_len INTEGER NOT NULL, owner TEXT NOT NULL, ifname TEXT NOT NULL,
                   netns TEXT NOT NULL, created INTEGER NOT NULL, PRIMARY KEY (network, key)) WITHOUT ROWID;
                 CREATE INDEX leases_owner ON leases (owner, network);
                 CREATE TABLE attachments (owner TEXT NOT NULL, network TEXT NOT NULL, ifname TEXT NOT NULL,
                   netns TEXT NOT NULL, created INTEGER NOT NULL, PRIMARY KEY (owner, network)) WITHOUT ROWID;
                 CREATE TABLE cursors (network TEXT NOT NULL, range TEXT NOT NULL, last BLOB NOT NULL,
                   PRIMARY KEY (network, range)) WITHOUT ROWID;
                 CREATE INDEX attachments_network ON attachments (network);
                 CREATE TABLE vlans (name TEXT NOT NULL PRIMARY KEY, created INTEGER NOT NULL) WITHOUT ROWID;
                 PRAGMA user_version = 2;",
            )
            .unwrap();
            // c1 on a and c2 on b hold one address; a and b turn out to share lan0.
            for (owner, network, addr) in [
                ("c1", "a", "10.0.0.5"),
                ("c2", "b", "10.0.0.5"),
                ("c3", "gone", "10.0.0.5"),
            ] {
                conn.execute(
                    "INSERT INTO leases VALUES (?1, ?2, ?3, 24, ?4, 'eth0', 'net:[1]#1', 0)",
                    params![network, key_of_addr(ip(addr)), addr, owner],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO attachments VALUES (?1, ?2, 'eth0', 'net:[1]#1', 0)",
                    params![owner, network],
                )
                .unwrap();
            }
        }
        let s = SqliteStore::open_with(&dir.0, &|n| {
            (n != "gone").then(|| ("lan0".to_string(), BRIDGE))
        })
        .unwrap();
        let leases = s.leases(None).unwrap();
        let got: Vec<(&str, &str)> = leases
            .iter()
            .map(|l| (l.owner.as_str(), l.segment.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("c1", "lan0"),
                ("c2", "duplicate:b"),
                ("c3", "network:gone")
            ]
        );
        let a = &s.attachments_of("c1").unwrap()[0];
        assert_eq!((a.segment.as_str(), a.link), ("lan0", Some(BRIDGE)));
        // The migrated store goes on working.
        let err = s
            .reserve(
                "c4",
                "net:[4]#4",
                &[link_claim(
                    "a",
                    "lan0",
                    BRIDGE,
                    MacWant::None,
                    vec![static_want("10.0.0.5")],
                )],
                &mut |_| true,
            )
            .unwrap_err();
        assert!(err.to_string().contains("by c1"), "{err}");
    }
}
