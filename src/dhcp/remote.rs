//! The hooks' way to the resident service: `STATE_DIR/dhcp.sock`, a unix
//! stream socket (root only), one JSON request and one JSON answer per
//! connection. Both ends are here, so the format lives in one place.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::service::{log, Service};
use super::{Acquire, Agent, Granted};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Ask {
    Acquire(Acquire),
    Release { owner: String, network: String },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Granted(Granted),
    Released,
    Error(String),
}

/// Past the acquisition's own wait: the time to reach the service and hear
/// back. Releases wait this long in all.
const MARGIN: Duration = Duration::from_secs(6);

/// The agent a hook talks to.
pub struct Remote {
    socket: PathBuf,
}

impl Remote {
    pub fn new(state_dir: &Path) -> Remote {
        Remote {
            socket: super::socket_path(state_dir),
        }
    }

    fn ask(&self, network: &str, ask: &Ask, wait: Duration) -> Result<Answer> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|e| {
            anyhow!(
                "network {network} uses DHCP but the netattach dhcp service is not running \
                 (systemctl start netattach-dhcp; {}: {e})",
                self.socket.display()
            )
        })?;
        stream.set_read_timeout(Some(wait))?;
        stream.set_write_timeout(Some(wait))?;
        let mut line = serde_json::to_vec(ask)?;
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut answer = String::new();
        BufReader::new(&stream)
            .read_line(&mut answer)
            .with_context(|| {
                format!(
                    "network {network}: no answer from the netattach dhcp service within {} s",
                    wait.as_secs()
                )
            })?;
        if answer.is_empty() {
            bail!("network {network}: the netattach dhcp service closed the connection");
        }
        Ok(serde_json::from_str(&answer)?)
    }
}

impl Agent for Remote {
    fn acquire(&self, request: &Acquire) -> Result<Granted> {
        let wait = Duration::from_millis(request.wait_ms) + MARGIN;
        match self.ask(&request.network, &Ask::Acquire(request.clone()), wait)? {
            Answer::Granted(g) => Ok(g),
            Answer::Error(e) => Err(anyhow!(e)),
            Answer::Released => bail!("the netattach dhcp service answered out of turn"),
        }
    }

    fn release(&self, owner: &str, network: &str) -> Result<()> {
        let ask = Ask::Release {
            owner: owner.to_string(),
            network: network.to_string(),
        };
        match self.ask(network, &ask, MARGIN)? {
            Answer::Released => Ok(()),
            Answer::Error(e) => Err(anyhow!(e)),
            Answer::Granted(_) => bail!("the netattach dhcp service answered out of turn"),
        }
    }
}

/// Serves `state_dir`'s socket until the process is stopped. A stale socket
/// file of an earlier run is replaced; one that still answers is another
/// service, which is refused.
pub fn serve(state_dir: &Path, service: Arc<Service>) -> Result<()> {
    let path = super::socket_path(state_dir);
    if UnixStream::connect(&path).is_ok() {
        bail!(
            "{}: another netattach dhcp service is running",
            path.display()
        );
    }
    let _ = std::fs::remove_file(&path);
    std::fs::create_dir_all(state_dir)?;
    let listener =
        UnixListener::bind(&path).with_context(|| format!("listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    log(&format!("listening on {}", path.display()));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let service = service.clone();
        std::thread::spawn(move || {
            if let Err(e) = answer(&service, conn) {
                log(&format!("a request failed on the way: {e:#}"));
            }
        });
    }
    Ok(())
}

fn answer(service: &Arc<Service>, conn: UnixStream) -> Result<()> {
    // A client that connects and says nothing does not hold a thread forever.
    conn.set_read_timeout(Some(MARGIN))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let answer = match serde_json::from_str::<Ask>(&line) {
        Ok(Ask::Acquire(a)) => match service.acquire(&a) {
            Ok(g) => Answer::Granted(g),
            Err(e) => Answer::Error(format!("{e:#}")),
        },
        Ok(Ask::Release { owner, network }) => match service.release(&owner, &network) {
            Ok(()) => Answer::Released,
            Err(e) => Answer::Error(format!("{e:#}")),
        },
        Err(e) => Answer::Error(format!("not a request: {e}")),
    };
    let mut out = serde_json::to_vec(&answer)?;
    out.push(b'\n');
    (&conn).write_all(&out)?;
    Ok(())
}
