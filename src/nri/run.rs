//! The plugin's life: connect (or take the inherited fd), register, serve until
//! the runtime goes away; as an external plugin, then reconnect with backoff.
//!
//! Registration, as the runtime expects it: start serving conn 1, call
//! `RegisterPlugin` on conn 2, then the runtime calls `Configure` and
//! `Synchronize`. If that has not completed within the runtime's registration
//! timeout (5 s unless `Configure` says otherwise, plus a margin), the
//! connection is given up and tried again: never wait forever.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message;

use super::plugin::{Connection, Paths, Plugin};
use super::proto::nri::RegisterPluginRequest;
use super::session::Session;
use super::settings::{Identity, Transport};
use crate::nri_log;

/// Registration deadline of the runtime when `Configure` does not give one.
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Our own wait beyond the runtime's deadline before giving up.
const REGISTRATION_MARGIN: Duration = Duration::from_secs(1);
/// Time allowed for the answer to `RegisterPlugin`.
const REGISTER_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection backoff of the external plugin.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Everything `netattach nri` needs.
pub struct Options {
    pub transport: Transport,
    pub identity: Identity,
    pub paths: Paths,
}

/// Runs the plugin. Launched mode returns when the runtime closes the
/// connection (it launches a new process when it wants one); external mode
/// runs until killed.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let plugin = Arc::new(Plugin::new(opts.paths));
    plugin.start_upkeep()?;
    plugin.start_repair_on_link_events()?;
    nri_log!(
        info,
        "netattach {} NRI plugin {}-{} starting",
        env!("CARGO_PKG_VERSION"),
        opts.identity.idx,
        opts.identity.name
    );
    match opts.transport {
        Transport::Inherited(fd) => {
            match inherited_socket(fd).and_then(|s| serve(&plugin, s, &opts.identity)) {
                Ok(why) => nri_log!(info, "connection ended: {why}; exiting"),
                Err(e) => {
                    nri_log!(error, "{e}; exiting");
                    return Err(e.into());
                }
            }
            Ok(())
        }
        Transport::Socket(path) => external(&plugin, &path, &opts.identity),
    }
}

/// Connect, serve, reconnect: forever.
fn external(plugin: &Arc<Plugin>, path: &Path, identity: &Identity) -> ! {
    let mut backoff = BACKOFF_MIN;
    let mut last_error = String::new();
    let mut last_logged = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => {
                last_error.clear();
                match serve(plugin, stream, identity) {
                    Ok(why) => {
                        nri_log!(info, "connection ended: {why}; reconnecting");
                        backoff = BACKOFF_MIN;
                    }
                    Err(e) => nri_log!(error, "{e}; retrying"),
                }
            }
            Err(e) => {
                let error = format!("cannot connect to {}: {e}", path.display());
                // Log a new error at once, a persisting one once a minute.
                if error != last_error || last_logged.elapsed() >= Duration::from_secs(60) {
                    nri_log!(warn, "{error}; retrying");
                    last_logged = Instant::now();
                    last_error = error;
                }
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection: register, wait for `Synchronize`, serve until it ends.
/// Returns why it ended, or why registration failed.
fn serve(plugin: &Arc<Plugin>, stream: UnixStream, identity: &Identity) -> io::Result<String> {
    let started = Instant::now();
    let conn = Arc::new(Connection::new(plugin.clone()));
    let session = Session::start(stream, conn.clone())?;
    let mut req = RegisterPluginRequest::new();
    req.plugin_name = identity.name.clone();
    req.plugin_idx = identity.idx.clone();
    let payload = req.write_to_bytes().map_err(io::Error::other)?;
    if let Err(e) = session.call("RegisterPlugin", payload, REGISTER_CALL_TIMEOUT) {
        session.close();
        return Err(io::Error::other(format!("registration refused: {e}")));
    }
    loop {
        let limit =
            conn.registration_timeout().unwrap_or(REGISTRATION_TIMEOUT) + REGISTRATION_MARGIN;
        if conn.wait_synchronized(Duration::from_millis(100)) {
            break;
        }
        if session.is_closed() {
            return Ok(format!("{} before registration completed", session.wait()));
        }
        if started.elapsed() >= limit {
            if conn.configured() {
                // NRI before v0.8 (containerd up to 1.7.25) never synchronizes
                // the plugins it launches itself, yet sends them every pod
                // event: serve them; only the reconciliation is missing.
                nri_log!(
                    warn,
                    "configured, but no Synchronize within {} ms (runtimes with NRI before v0.8 \
                     send none to plugins they launch): serving pod events without \
                     reconciling; `netattach gc` frees the leases of pods removed while \
                     the plugin was away",
                    limit.as_millis()
                );
                break;
            }
            session.close();
            return Err(io::Error::other(format!(
                "registration did not complete within {} ms (no Configure/Synchronize)",
                limit.as_millis()
            )));
        }
    }
    nri_log!(
        info,
        "registered as {}-{} in {} ms",
        identity.idx,
        identity.name,
        started.elapsed().as_millis()
    );
    Ok(session.wait())
}

/// The connected socket the runtime passed (fd 3).
fn inherited_socket(fd: RawFd) -> io::Result<UnixStream> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes into `st` and only reads `fd`.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(io::Error::other(format!(
            "NRI_PLUGIN_SOCKET fd {fd}: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: fstat succeeded, so `st` is initialised.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::other(format!(
            "NRI_PLUGIN_SOCKET fd {fd} is not a socket"
        )));
    }
    // SAFETY: the fd is open, a socket, and nothing else in this process owns
    // it: the runtime handed it to us for this use.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: plain fcntl on an fd we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(stream)
}

/// The default identity and transport: the runtime's environment if it
/// launched us, else the flags.
pub fn transport_and_identity(
    socket: PathBuf,
    name: &str,
    idx: &str,
) -> anyhow::Result<(Transport, Identity, bool)> {
    match super::settings::launched_from_env().map_err(anyhow::Error::msg)? {
        Some((fd, identity)) => Ok((Transport::Inherited(fd), identity, true)),
        None => Ok((
            Transport::Socket(socket),
            Identity::new(name, idx).map_err(anyhow::Error::msg)?,
            false,
        )),
    }
}
