//! Root integration tests of faults and hostile input on the fake LAN: what
//! one broken file, one stuck process or one odd kernel may and may not break.

mod common;

use std::time::Instant;

use common::FakeLan;

#[test]
fn a_broken_definition_breaks_only_its_own_network() {
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    std::fs::write(lan.config_dir.join("broken.json"), "{").unwrap();
    std::fs::write(
        lan.config_dir.join("typo.json"),
        r#"{"name":"typo","driver":"macvlan","parent":"lan0","subnets":[{"subnet":"10.0.0.0/24","gw":"10.0.0.1"}]}"#,
    )
    .unwrap();

    // Attaches to other networks go on, saying what they skipped.
    let c = lan.container_ns("1");
    let out = lan.netattach(&["attach", "--netns", c.path_str(), "--id", "one", "lan"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let err = common::stderr(&out);
    assert!(
        err.contains("warning") && err.contains("broken.json") && err.contains("typo.json"),
        "{err}"
    );
    assert!(common::ping_from(&c.name, common::GW4));

    // Its own network fails with the file and the reason, said once.
    let c2 = lan.container_ns("2");
    let out = lan.netattach(&["attach", "--netns", c2.path_str(), "--id", "two", "typo"]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(err.contains("typo.json") && err.contains("`gw`"), "{err}");
    assert_eq!(
        err.matches("unknown field").count(),
        1,
        "a cause once: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(common::link_names(&c2.name), vec!["lo"]);

    // ls lists the good ones and names the broken ones; doctor reports them.
    let out = lan.netattach(&["network", "ls"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(common::stdout(&out).contains("lan"));
    let err = common::stderr(&out);
    assert!(err.contains("broken") && err.contains("typo"), "{err}");
    let out = lan.netattach(&["doctor", "--json"]);
    assert!(!out.status.success(), "doctor flags the broken files");
    let report: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    let broken: Vec<&str> = report["networks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "broken definition")
        .map(|n| n["network"].as_str().unwrap())
        .collect();
    assert_eq!(broken, ["broken", "typo"]);

    // rm removes them, and then all is well.
    lan.netattach_ok(&["network", "rm", "broken", "typo"]);
    let out = lan.netattach(&["doctor"]);
    assert!(out.status.success(), "{}", common::text(&out));
    lan.netattach_ok(&["detach", "--id", "one"]);
}

/// A stopped process holding the lease store's write lock (a frozen hook, a
/// debugger): a hook fails within the timeout its bundle gives it, naming the
/// lock and the holder, leaving nothing behind; doctor reports the holder.
#[test]
fn a_stopped_lock_holder_fails_hooks_within_their_timeout() {
    if common::skip_unless_root() || common::skip_unless(common::have("flock"), "no flock(1)") {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    lan.netattach_ok(&["lease", "ls"]); // creates the store
    let holder = common::LockHolder::new(&lan.state_dir.join("leases.lock"));
    holder.signal("STOP");
    let pid = format!("pid {}", holder.pid());

    let out = lan.netattach(&["doctor", "--json"]);
    assert!(!out.status.success(), "doctor flags the stopped holder");
    let report: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    let problems = report["host"][0]["problems"].to_string();
    assert!(
        problems.contains(&pid) && problems.contains("stopped"),
        "{problems}"
    );

    let c = lan.container_ns("late");
    let started = Instant::now();
    let out = common::hook_with_timeout(&lan, "attach", "late", &c, "lan", Some(1));
    let took = started.elapsed();
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("leases.lock") && err.contains(&pid) && err.contains("stopped"),
        "names the lock and its holder: {err}"
    );
    // The bundle's timeout, not the default wait, bounded it.
    assert!(took < netattach::deadline::DEFAULT_WAIT, "took {took:?}");
    common::assert_bare(&c);

    holder.signal("CONT");
    drop(holder);
    attach_ping_release(&lan, &c);
}

/// A process outside netattach's write queue (a sqlite3 shell, a backup)
/// holding the lease database: a hook gives up within its bundle's timeout,
/// naming the database and the process, leaving nothing behind.
#[test]
fn a_foreign_database_writer_fails_hooks_within_their_timeout() {
    if common::skip_unless_root() || common::skip_unless(common::have("python3"), "no python3") {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    lan.netattach_ok(&["lease", "ls"]); // creates the store
    let holder = common::LockHolder::sqlite_writer(&lan.state_dir.join("leases.db"));
    let pid = format!("pid {} (", holder.pid());

    let c = lan.container_ns("late");
    let started = Instant::now();
    let out = common::hook_with_timeout(&lan, "attach", "late", &c, "lan", Some(1));
    let took = started.elapsed();
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("waiting for the lease database") && err.contains("leases.db"),
        "names the database: {err}"
    );
    assert!(
        err.contains(&pid) && err.contains("python3"),
        "names the holder: {err}"
    );
    assert!(took < netattach::deadline::DEFAULT_WAIT, "took {took:?}");
    common::assert_bare(&c);

    drop(holder);
    attach_ping_release(&lan, &c);
}

/// Once the holder is gone, the hook that gave up works: it attaches and
/// reaches the gateway, and its release leaves the netns bare and no lease.
fn attach_ping_release(lan: &FakeLan, c: &common::Netns) {
    let out = common::hook_with_timeout(lan, "attach", "late", c, "lan", Some(1));
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(common::ping_from(&c.name, common::GW4));
    let out = common::hook_with_timeout(lan, "release", "late", c, "lan", Some(1));
    assert!(out.status.success(), "{}", common::text(&out));
    common::assert_bare(c);
    assert_eq!(lan.leases_json().as_array().unwrap().len(), 0);
}

/// A state or config directory other users can write is refused with the
/// fix; new state is private; a symlink planted for the lock is not followed.
#[test]
fn shared_directories_are_refused_and_state_is_private() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if common::skip_unless_root() {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let c = lan.container_ns("c");
    let attach = |id: &str| lan.netattach(&["attach", "--netns", c.path_str(), "--id", id, "lan"]);
    let out = attach("one");
    assert!(out.status.success(), "{}", common::text(&out));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    for file in ["leases.db", "leases.lock"] {
        assert_eq!(mode(&lan.state_dir.join(file)), 0o600, "{file}");
    }
    lan.netattach_ok(&["detach", "--id", "one"]);

    for dir in [&lan.state_dir, &lan.config_dir] {
        let before = std::fs::metadata(dir).unwrap().permissions();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = attach("two");
        std::fs::set_permissions(dir, before).unwrap();
        assert!(!out.status.success(), "{} shared", dir.display());
        let err = common::stderr(&out);
        assert!(
            err.contains("writable by other users") && err.contains("chmod go-w"),
            "{err}"
        );
        common::assert_bare(&c);
    }

    // A fresh state dir: the lock file replaced by a symlink is refused.
    let fresh = lan.dir.path().join("fresh-state");
    std::fs::create_dir(&fresh).unwrap();
    let target = lan.dir.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, fresh.join("leases.lock")).unwrap();
    let out = lan
        .command_in_host(common::bin())
        .args(["--config-dir", lan.config_dir_str()])
        .arg("--state-dir")
        .arg(&fresh)
        .args(["attach", "--netns", c.path_str(), "--id", "three", "lan"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("leases.lock"),
        "{}",
        common::text(&out)
    );
    assert!(!target.exists(), "the symlink was not followed");
    common::assert_bare(&c);
}

/// gc run where it cannot see the host's processes (its own pid namespace)
/// refuses and frees nothing, saying why.
#[test]
fn gc_without_the_host_pid_namespace_frees_nothing() {
    if common::skip_unless_root() || common::skip_unless(common::have("unshare"), "no unshare(1)") {
        return;
    }
    let lan = FakeLan::new();
    lan.create_network("lan", &[]);
    let c = lan.container_ns("c");
    lan.netattach_ok(&["attach", "--netns", c.path_str(), "--id", "kept", "lan"]);
    let out = lan
        .command_in_host("unshare")
        .args(["--pid", "--fork", "--mount-proc", common::bin()])
        .args(["--config-dir", lan.config_dir_str()])
        .args(["--state-dir", lan.state_dir_str(), "gc"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", common::text(&out));
    let err = common::stderr(&out);
    assert!(
        err.contains("frees nothing") && err.contains("pid namespace"),
        "{err}"
    );
    assert_eq!(lan.leases_json().as_array().unwrap().len(), 1);
    let out = lan.netattach(&["gc"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(
        lan.leases_json().as_array().unwrap().len(),
        1,
        "a live owner"
    );
    lan.netattach_ok(&["detach", "--id", "kept"]);
    common::assert_bare(&c);
}
