//! The test CRI client (`real_containerd/cri.rs`) on its own: its unit tests
//! (framing, status handling, deadlines, concurrency against an in-process
//! HTTP/2 server), and, when `NETATTACH_TEST_CRI_SOCKET` names the socket of a
//! running containerd with the CRI plugin, a few calls against it.

#[path = "real_containerd/cri.rs"]
mod cri;

use std::path::PathBuf;
use std::time::Duration;

use cri::{code, Cri, PodConfig};

fn runtime_socket() -> Option<PathBuf> {
    let socket = std::env::var_os("NETATTACH_TEST_CRI_SOCKET")?;
    Some(PathBuf::from(socket))
}

/// Version and ListPodSandbox answer, and a pod whose sandbox image is not
/// there fails with the runtime's own message.
#[test]
fn against_a_running_runtime() {
    let Some(socket) = runtime_socket() else {
        eprintln!("skipped: NETATTACH_TEST_CRI_SOCKET is not set");
        return;
    };
    let cri = Cri::connect(&socket, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    let (name, version) = cri.version().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("runtime: {name} {version}");
    let pods = cri.list_pod_sandbox().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("pods: {}", pods.len());

    let err = cri
        .pod_sandbox_status("no-such-sandbox")
        .expect_err("status of a sandbox that does not exist");
    eprintln!("{err}");
    assert_eq!(err.code, code::NOT_FOUND, "{err}");

    if std::env::var_os("NETATTACH_TEST_CRI_NO_PAUSE").is_some() {
        let pod = PodConfig {
            name: "cri-client-test".into(),
            namespace: "default".into(),
            uid: "cri-client-test-uid".into(),
            ..Default::default()
        };
        let err = cri
            .run_pod_sandbox(&pod)
            .expect_err("a sandbox without its image");
        eprintln!("{err}");
        assert_ne!(err.code, code::DEADLINE_EXCEEDED, "{err}");
    }
}
