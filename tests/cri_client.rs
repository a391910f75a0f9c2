//! The test CRI client (`real_containerd/cri.rs`) on its own: its unit tests
//! (framing, status handling, deadlines, concurrency against an in-process
//! HTTP/2 server), and, when `NETATTACH_TEST_CRI_SOCKET` names the socket of a
//! running containerd with the CRI plugin, a few calls against it.

#[path = "real_containerd/cri.rs"]
mod cri;

use std::path::PathBuf;
use std::time::Duration;

use cri::{code, Cri, PodConfig};

/// The value, or a panic with the error's one line.
fn ok<T>(r: Result<T, cri::CriError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn runtime_socket() -> Option<PathBuf> {
    let socket = std::env::var_os("NETATTACH_TEST_CRI_SOCKET")?;
    Some(PathBuf::from(socket))
}

/// Version and ListPodSandbox answer; errors come back with the runtime's
/// code and message.
#[test]
fn against_a_running_runtime() {
    let Some(socket) = runtime_socket() else {
        eprintln!("skipped: NETATTACH_TEST_CRI_SOCKET is not set");
        return;
    };
    let cri = ok(Cri::connect(&socket, Duration::from_secs(10)));
    let (name, version) = ok(cri.version());
    eprintln!("runtime: {name} {version}");
    let pods = ok(cri.list_pod_sandbox());
    eprintln!("pods: {}", pods.len());

    let err = cri
        .pod_sandbox_status("no-such-sandbox")
        .expect_err("status of a sandbox that does not exist");
    eprintln!("{err}");
    assert_eq!(err.code, code::NOT_FOUND, "{err}");

    // A sandbox: without its sandbox image the runtime's own error (not a
    // deadline or broken connection of ours); with it, a pod, removed again.
    let pod = PodConfig {
        name: "cri-client-test".into(),
        namespace: "netattach-test".into(),
        uid: "cri-client-test-uid".into(),
        ..Default::default()
    };
    for stale in pods
        .iter()
        .filter(|p| p.name == pod.name && p.namespace == pod.namespace)
    {
        ok(cri.stop_pod_sandbox(&stale.id));
        ok(cri.remove_pod_sandbox(&stale.id));
    }
    match cri.run_pod_sandbox(&pod) {
        Ok(id) => {
            eprintln!("RunPodSandbox: {id}");
            ok(cri.stop_pod_sandbox(&id));
            ok(cri.remove_pod_sandbox(&id));
        }
        Err(err) => {
            eprintln!("{err}");
            assert!(
                ![code::DEADLINE_EXCEEDED, code::UNAVAILABLE, code::INTERNAL].contains(&err.code),
                "{err}"
            );
        }
    }
}

/// With `NETATTACH_TEST_CRI_IMAGE` naming an image the runtime has (with
/// `/bin/sh`, `sleep`, `cat`, `ip`) and its sandbox image present: a
/// host-network pod and a pod-network pod, each with a container that
/// answers ExecSync; then 16 sandboxes started at once; all removed after.
#[test]
fn pods_on_a_running_runtime() {
    let (Some(socket), Some(image)) = (
        runtime_socket(),
        std::env::var("NETATTACH_TEST_CRI_IMAGE").ok(),
    ) else {
        eprintln!("skipped: NETATTACH_TEST_CRI_SOCKET or NETATTACH_TEST_CRI_IMAGE is not set");
        return;
    };
    let cri = ok(Cri::connect(&socket, Duration::from_secs(10)));
    let pod = |name: &str, host_network: bool| PodConfig {
        name: name.into(),
        namespace: "netattach-test".into(),
        uid: format!("{name}-uid"),
        host_network,
        annotations: [("netattach/test".to_string(), name.to_string())].into(),
        ..Default::default()
    };

    for host_network in [true, false] {
        let config = pod(
            if host_network { "host-pod" } else { "pod-net" },
            host_network,
        );
        let start = std::time::Instant::now();
        let id = ok(cri.run_pod_sandbox(&config));
        eprintln!(
            "RunPodSandbox {} -> {id} in {:?}",
            config.name,
            start.elapsed()
        );
        let status = ok(cri.pod_sandbox_status(&id));
        eprintln!(
            "status: state {:?} ip {:?} netns {:?} pid {:?} annotations {:?}",
            status.state,
            status.ip,
            status.netns_path(),
            status.pid(),
            status.annotations
        );
        assert_eq!(status.state, cri::SandboxState::Ready);
        assert_eq!(status.annotations["netattach/test"], config.name);
        let pid = status.pid().expect("sandbox pid in the verbose info");
        let host_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
        let pod_netns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        if host_network {
            assert_eq!(status.netns_path(), None);
            assert_eq!(status.ip, None);
            assert_eq!(pod_netns, host_netns);
        } else {
            let path = status
                .netns_path()
                .expect("netns path of a pod-network pod");
            assert!(path.exists(), "{}", path.display());
            assert!(status.ip.is_some());
            assert_ne!(pod_netns, host_netns);
            // The file is the netns the pause process is in.
            use std::os::unix::fs::MetadataExt;
            let file = std::fs::metadata(&path).unwrap();
            let of_pid = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
            assert_eq!((file.dev(), file.ino()), (of_pid.dev(), of_pid.ino()));
        }
        let listed = ok(cri.list_pod_sandbox());
        assert!(listed.iter().any(|p| p.id == id && p.name == config.name));

        let container = ok(cri.create_container(&id, &config, "main", &image, &["sleep", "3600"]));
        ok(cri.start_container(&container));
        let exec = ok(cri.exec_sync(
            &container,
            &["sh", "-c", "ip -o addr; echo to-stderr >&2; exit 3"],
            Duration::from_secs(10),
        ));
        eprintln!(
            "exec: exit {} stdout {:?} stderr {:?}",
            exec.exit_code,
            exec.stdout_text(),
            exec.stderr_text()
        );
        assert_eq!(exec.exit_code, 3);
        assert_eq!(exec.stderr_text(), "to-stderr\n");
        if let Some(ip) = &status.ip {
            assert!(exec.stdout_text().contains(ip.as_str()));
        }
        ok(cri.stop_pod_sandbox(&id));
        ok(cri.remove_pod_sandbox(&id));
        // Both are idempotent.
        ok(cri.stop_pod_sandbox(&id));
        ok(cri.remove_pod_sandbox(&id));
    }

    // 16 at once from threads over the one connection.
    let start = std::time::Instant::now();
    let started: Vec<(String, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let cri = &cri;
                s.spawn(move || {
                    let t = std::time::Instant::now();
                    let id = ok(cri.run_pod_sandbox(&pod(&format!("many-{i}"), false)));
                    (id, t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut latencies: Vec<_> = started.iter().map(|(_, l)| l.as_millis()).collect();
    latencies.sort();
    eprintln!(
        "16 RunPodSandbox at once: {:?} in all, each (ms, sorted) {latencies:?}",
        start.elapsed()
    );
    for (id, _) in &started {
        ok(cri.stop_pod_sandbox(id));
        ok(cri.remove_pod_sandbox(id));
    }
    let left = ok(cri.list_pod_sandbox());
    assert!(!left
        .iter()
        .any(|p| started.iter().any(|(id, _)| *id == p.id)));
}
