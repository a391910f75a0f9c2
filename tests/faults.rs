//! Root integration tests of faults and hostile input on the fake LAN: what
//! one broken file, one stuck process or one odd kernel may and may not break.

mod common;

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
