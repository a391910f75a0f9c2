//! A namespace is recognised by inode *and* a second part the kernel never
//! reuses (its cookie, or before Linux 5.14 netattach's mark): a new
//! namespace that gets a gone one's inode number is not mistaken for it.
//! Alone in its test binary, because the inode reuse it waits for must not be
//! taken by namespaces that other tests create at the same time; run on the
//! host (cookies) and in the VM under Debian 11's 5.10 (marks, tests/vm.rs).

mod common;

use common::{assert_bare, FakeLan};
use serde_json::Value;

/// The inode number of a namespace (what `/proc/PID/ns/net` shows).
fn inode_of(ns: &common::Netns) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(&ns.path).unwrap().ino()
}

/// UTS namespaces kept by bind mounts on these files, unmounted on drop
/// (also when the test fails).
struct Pinned(Vec<std::path::PathBuf>);

impl Drop for Pinned {
    fn drop(&mut self) {
        for file in &self.0 {
            let _ = common::run("umount", &[file.to_str().unwrap()]);
        }
    }
}

#[test]
fn a_new_namespace_with_a_gone_ones_inode_is_told_apart() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    // The identity this kernel allows: its cookie, or (before Linux 5.14)
    // netattach's mark in the alias of the namespace's lo.
    let report: Value = serde_json::from_str(&lan.netattach_ok(&["doctor", "--json"])).unwrap();
    let scheme = report["host"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "netns identity")
        .expect("doctor reports the netns identity")["state"]
        .as_str()
        .unwrap()
        .to_string();
    let marked = !scheme.starts_with("netns cookie");
    // SO_NETNS_COOKIE came with Linux 5.14.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    assert_eq!(
        marked,
        version < (5, 14),
        "{scheme} on Linux {}",
        release.trim()
    );
    let lo_alias = |ns: &common::Netns| common::link_json(&ns.name, "lo")["ifalias"].clone();

    let gone = lan.container_ns("gone");
    let inode = inode_of(&gone);
    lan.netattach_ok(&["attach", "--netns", gone.path_str(), "--id", "gone", "lan"]);
    let mark = lo_alias(&gone);
    assert_eq!(
        mark.as_str().is_some_and(|a| a.starts_with("netattach:")),
        marked,
        "lo alias {mark} under {scheme}"
    );
    drop(gone);

    // The kernel hands out the lowest free inode number (one pool for every
    // kind of namespace and every /proc entry). A new network namespace takes
    // its own number first, then dozens more for its /proc/net entries, so
    // the holes below the gone one's number are filled with UTS namespaces,
    // which take exactly one each (kept by a bind mount on a file). Once one
    // of them gets the gone number (the gone namespace's clean-up is
    // asynchronous: until then they get higher ones), it is let go and the
    // next network namespace takes that number.
    let holes = common::TempDir::new(&format!("netattach-test-{}-uts", common::unique_tag()));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut fillers = Pinned(Vec::new());
    loop {
        let file = holes.0.join(format!("uts{}", fillers.0.len()));
        std::fs::write(&file, "").unwrap();
        let pin = format!("--uts={}", file.display());
        common::run_ok("unshare", &[&pin, "true"]);
        use std::os::unix::fs::MetadataExt;
        let got = std::fs::metadata(&file).unwrap().ino();
        if got < inode {
            fillers.0.push(file);
            continue;
        }
        common::run_ok("umount", &[file.to_str().unwrap()]);
        if got == inode {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            std::time::Instant::now() < until && fillers.0.len() < 4096,
            "inode {inode} did not come free within 120 s ({} lower ones filled)",
            fillers.0.len()
        );
    }
    let reused = lan.container_ns("reused");
    drop(fillers);
    assert_eq!(
        inode_of(&reused),
        inode,
        "the new namespace took the gone one's number"
    );
    assert_eq!(
        lo_alias(&reused),
        Value::Null,
        "a new namespace has no mark"
    );
    lan.netattach_ok(&["attach", "--netns", reused.path_str(), "--id", "new", "lan"]);
    if marked {
        let new_mark = lo_alias(&reused);
        assert!(
            new_mark.is_string() && new_mark != mark,
            "{new_mark} after {mark}"
        );
    }

    // Same inode, different namespaces: gc frees the gone one's lease only.
    let out = lan.netattach_ok(&["gc"]);
    assert!(out.contains("of gone"), "{out}");
    assert!(lan.addresses_of("gone").is_empty());
    assert_eq!(lan.addresses_of("new").len(), 1);
    // And the live one is released (its interface first) when asked.
    lan.netattach_ok(&["detach", "--id", "new"]);
    assert!(lan.addresses_of("new").is_empty());
    assert_bare(&reused);
}
