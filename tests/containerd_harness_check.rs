//! Sanity check of the real-containerd harness (tests/real_containerd/):
//! containerd starts with CRI and NRI on, runs a container from the test
//! image, restarts, and leaves nothing behind when dropped.

mod common;
mod real_containerd;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use real_containerd::{Containerd, Plugin};

fn netns_names() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn plugin_ok(ctrd: &Containerd, kind: &str, id: &str) -> bool {
    let out = ctrd.ctr(&["plugins", "ls"]);
    common::stdout(&out).lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 4 && f[0] == kind && f[1] == id && f[f.len() - 1] == "ok"
    })
}

#[test]
fn containerd_starts_runs_a_container_restarts_and_cleans_up() {
    if common::skip_unless_root()
        || common::skip_unless(
            Containerd::available(),
            "needs containerd 1.7 (scripts/containerd.sh) and runc",
        )
    {
        return;
    }
    let before = netns_names();
    let lan = common::FakeLan::new();
    let dir;
    {
        let mut ctrd = Containerd::start(&lan, Plugin::Launched);
        dir = ctrd.dir.clone();
        assert!(
            plugin_ok(&ctrd, "io.containerd.grpc.v1", "cri"),
            "{}",
            common::text(&ctrd.ctr(&["plugins", "ls"]))
        );
        assert!(plugin_ok(&ctrd, "io.containerd.nri.v1", "nri"));
        assert!(ctrd.nri_socket.exists());

        // containerd 1.7.24 (NRI v0.6.1) configures a launched plugin but
        // never sends it Synchronize: only the launch and Configure are
        // checked here.
        real_containerd::wait_until(
            "the launched plugin to be configured",
            Duration::from_secs(10),
            || ctrd.plugin_log_text().contains("configured by containerd"),
        );

        let flags = ctrd.ctr_run_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let t = Instant::now();
        let out = ctrd.ctr_ok(
            &[
                &["run", "--rm"][..],
                &flags,
                &[
                    Containerd::TEST_IMAGE,
                    "check1",
                    "sh",
                    "-c",
                    "echo hello from the test image; cat /etc/hosts",
                ],
            ]
            .concat(),
        );
        eprintln!("ctr run --rm: {} ms", t.elapsed().as_millis());
        assert!(out.contains("hello from the test image"), "{out}");

        // A container that outlives a restart, killed by the drop.
        ctrd.ctr_ok(
            &[
                &["run", "-d"][..],
                &flags,
                &[Containerd::TEST_IMAGE, "sleeper", "sleep", "3600"],
            ]
            .concat(),
        );
        let t = Instant::now();
        ctrd.restart();
        eprintln!("restart: {} ms", t.elapsed().as_millis());
        assert!(plugin_ok(&ctrd, "io.containerd.grpc.v1", "cri"));
        let tasks = ctrd.ctr_ok(&["tasks", "ls"]);
        assert!(
            tasks.contains("sleeper") && tasks.contains("RUNNING"),
            "{tasks}"
        );
        let images = ctrd.ctr_ok(&["images", "ls", "-q"]);
        assert!(images.contains(Containerd::PAUSE_IMAGE), "{images}");
        // The plugin is launched again by the new containerd.
        real_containerd::wait_until(
            "the launched plugin to be configured again",
            Duration::from_secs(10),
            || {
                ctrd.plugin_log_text()
                    .matches("configured by containerd")
                    .count()
                    >= 2
            },
        );
        let t = Instant::now();
        drop(ctrd);
        eprintln!("drop: {} ms", t.elapsed().as_millis());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(dir.to_str().unwrap()),
        "mounts left:\n{mountinfo}"
    );
    assert!(!dir.exists(), "{} left", dir.display());
    for pid in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(pid.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        assert!(!cmd.contains(dir.to_str().unwrap()), "process left: {cmd}");
    }
    let tag = lan.tag.clone();
    drop(lan);
    // Other tests may make netns meanwhile: only ours and CNI's count.
    let new: Vec<String> = netns_names()
        .difference(&before)
        .filter(|n| n.contains(&tag) || n.starts_with("cni-"))
        .cloned()
        .collect();
    assert!(new.is_empty(), "netns left: {new:?}");
}

#[test]
fn an_external_plugin_registers_and_reconnects_after_a_restart() {
    if common::skip_unless_root()
        || common::skip_unless(
            Containerd::available(),
            "needs containerd 1.7 (scripts/containerd.sh) and runc",
        )
    {
        return;
    }
    let lan = common::FakeLan::new();
    let mut ctrd = Containerd::start(&lan, Plugin::External);
    let mut plugin = ctrd.external_plugin().spawn().expect("spawn netattach nri");
    let registered = |ctrd: &Containerd, n: usize| {
        real_containerd::wait_until(
            &format!("the external plugin to register ({n})"),
            Duration::from_secs(10),
            || ctrd.plugin_log_text().matches("registered as").count() >= n,
        )
    };
    registered(&ctrd, 1);
    ctrd.restart();
    registered(&ctrd, 2);
    let _ = plugin.kill();
    let _ = plugin.wait();
}

#[test]
fn drop_cleans_up_containers_whose_containerd_is_gone() {
    if common::skip_unless_root()
        || common::skip_unless(
            Containerd::available(),
            "needs containerd 1.7 (scripts/containerd.sh) and runc",
        )
    {
        return;
    }
    let lan = common::FakeLan::new();
    let mut ctrd = Containerd::start(&lan, Plugin::None);
    let dir = ctrd.dir.clone();
    let flags = ctrd.ctr_run_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    ctrd.ctr_ok(
        &[
            &["run", "-d"][..],
            &flags,
            &[Containerd::TEST_IMAGE, "orphan", "sleep", "3600"],
        ]
        .concat(),
    );
    // Without containerd the drop cannot ask it to kill the task: it must
    // kill the shim and the container itself and unmount the rootfs.
    ctrd.stop();
    drop(ctrd);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(dir.to_str().unwrap()),
        "mounts left:\n{mountinfo}"
    );
    assert!(!dir.exists(), "{} left", dir.display());
    let leaf = std::path::Path::new("/sys/fs/cgroup/memory/k8s.io/orphan");
    assert!(!leaf.exists(), "{} left", leaf.display());
}
