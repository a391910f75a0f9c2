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
use std::time::Duration;

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
    // kind of namespace and every /proc entry), so a later namespace gets the
    // gone one's back once it is cleaned up (asynchronously) and the lower
    // free numbers are taken: first, network namespaces that get a lower
    // number are kept, filling those holes. A network namespace also takes
    // dozens of numbers for its /proc/net entries, and in a pool that other
    // tests left fragmented one of those can take the gone number and keep
    // it; then the holes are filled again with UTS namespaces (one number
    // each, pinned by a bind mount), the one that lands on the gone number
    // is let go, and the next network namespace takes it.
    let reused = match reuse_by_netns(&lan, inode, "r", Duration::from_secs(10)) {
        Some(ns) => ns,
        None => {
            let holes =
                common::TempDir::new(&format!("netattach-test-{}-uts", common::unique_tag()));
            let _fillers = fill_below_with_uts(&holes, inode);
            reuse_by_netns(&lan, inode, "s", Duration::from_secs(60))
                .unwrap_or_else(|| panic!("no new namespace got inode {inode} back"))
        }
    };
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

/// A new network namespace with inode number `inode`, made within `wait`:
/// those that get a lower number are kept until then, higher ones let go.
fn reuse_by_netns(lan: &FakeLan, inode: u64, tag: &str, wait: Duration) -> Option<common::Netns> {
    let until = std::time::Instant::now() + wait;
    let mut lower = Vec::new();
    while std::time::Instant::now() < until && lower.len() < 512 {
        let ns = lan.container_ns(&format!("{tag}{}", lower.len()));
        let got = inode_of(&ns);
        if got == inode {
            return Some(ns);
        }
        if got < inode {
            lower.push(ns);
        } else {
            drop(ns);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    None
}

/// Fills every free number below `inode` with UTS namespaces pinned in
/// `holes`, and leaves `inode` itself free.
fn fill_below_with_uts(holes: &common::TempDir, inode: u64) -> Pinned {
    use std::os::unix::fs::MetadataExt;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let mut fillers = Pinned(Vec::new());
    loop {
        let file = holes.0.join(format!("uts{}", fillers.0.len()));
        std::fs::write(&file, "").unwrap();
        let pin = format!("--uts={}", file.display());
        common::run_ok("unshare", &[&pin, "sh", "-c", ":"]);
        let got = std::fs::metadata(&file).unwrap().ino();
        if got < inode {
            fillers.0.push(file);
            continue;
        }
        common::run_ok("umount", &[file.to_str().unwrap()]);
        if got == inode {
            return fillers;
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            std::time::Instant::now() < until && fillers.0.len() < 4096,
            "inode {inode} did not come free within 60 s ({} lower ones filled)",
            fillers.0.len()
        );
    }
}
