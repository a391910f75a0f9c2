//! The etcd client (src/etcd.rs) against a real etcd 3.4 (tests/etcd_harness):
//! reads and writes, compare-and-swap both ways, the range compares the
//! multi-host protocol relies on (docs/multi-host.md), leases, deadlines on
//! dead and silent endpoints, failover, and etcd killed and restarted.

mod common;
mod etcd_harness;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use etcd_harness::Etcd;
use netattach::etcd::{Client, Compare, Error, Op, OpResult, Timeouts};

fn client(endpoints: &[String], total_ms: u64) -> Client {
    Client::new(
        endpoints,
        Timeouts {
            connect: Duration::from_millis(300),
            total: Duration::from_millis(total_ms),
        },
    )
    .unwrap()
}

/// An endpoint that refuses connections (nobody listens on its port).
fn refused() -> String {
    format!("http://127.0.0.1:{}", etcd_harness::free_port())
}

/// An endpoint that accepts connections (the kernel's backlog) but never
/// answers. Keep the listener alive while it is used.
fn silent() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

fn assert_one_line(e: &Error, needle: &str) {
    let text = e.to_string();
    assert!(!text.contains('\n'), "not one line: {text}");
    assert!(text.contains(needle), "{needle:?} not in: {text}");
}

#[test]
fn put_get_and_prefix_range() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let c = client(&[etcd.url()], 2000);
    assert_eq!(c.get(b"/t/a/1").unwrap(), None);
    let r1 = c.put(b"/t/a/1", b"one", 0).unwrap();
    let r2 = c.put(b"/t/a/2", b"\x00\xffbinary", 0).unwrap();
    c.put(b"/t/b/1", b"other", 0).unwrap();
    assert!(r2 > r1, "{r1} {r2}");
    let kv = c.get(b"/t/a/1").unwrap().unwrap();
    assert_eq!(kv.value, b"one");
    assert_eq!(kv.create_revision, r1);
    assert_eq!(kv.mod_revision, r1);
    assert_eq!(kv.version, 1);

    let r = c.get_prefix(b"/t/a/").unwrap();
    assert_eq!(r.count, 2);
    let keys: Vec<&[u8]> = r.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [b"/t/a/1".as_slice(), b"/t/a/2"]);
    assert_eq!(r.kvs[1].value, b"\x00\xffbinary");
    assert!(r.revision >= r2);

    assert_eq!(c.delete(b"/t/a/", Some(b"/t/a0")).unwrap(), 2);
    assert_eq!(c.get_prefix(b"/t/a/").unwrap().count, 0);
    assert_eq!(c.get_prefix(b"/t/").unwrap().count, 1);
}

#[test]
fn compare_and_swap_wins_once_and_loses_after() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let c = client(&[etcd.url()], 2000);
    let key = b"/t/blocks/10.0.0.0-30".to_vec();
    let claim = |host: &str| {
        c.txn(
            &[Compare::absent(key.clone())],
            &[Op::put(key.clone(), host)],
            &[Op::get(key.clone())],
        )
        .unwrap()
    };
    let won = claim("host-a");
    assert!(won.succeeded);
    assert_eq!(won.results, [OpResult::Put]);
    let lost = claim("host-b");
    assert!(!lost.succeeded);
    let [OpResult::Range(r)] = lost.results.as_slice() else {
        panic!("{:?}", lost.results);
    };
    assert_eq!(r.kvs[0].value, b"host-a", "the loser learns the winner");
    let rev = r.kvs[0].mod_revision;

    // A compare on the revision read: a stale one loses, the current one wins.
    let t = c
        .txn(
            &[Compare::mod_is(key.clone(), rev - 1)],
            &[Op::put(key.clone(), "x")],
            &[],
        )
        .unwrap();
    assert!(!t.succeeded);
    let t = c
        .txn(
            &[
                Compare::mod_is(key.clone(), rev),
                Compare::value_is(key.clone(), "host-a"),
            ],
            &[Op::put(key.clone(), "host-a shared")],
            &[],
        )
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(c.get(&key).unwrap().unwrap().value, b"host-a shared");
}

/// The range compares docs/multi-host.md builds on: "no key under a prefix"
/// and "no key under a prefix changed since revision R".
#[test]
fn range_compares_hold_for_every_key_of_the_range() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let c = client(&[etcd.url()], 2000);
    let p = b"/t/addrs/b1/".to_vec();
    let t = c
        .txn(&[Compare::prefix_empty(p.clone())], &[], &[])
        .unwrap();
    assert!(t.succeeded, "an empty range is empty");
    c.put(b"/t/addrs/b10", b"next to the prefix, not in it", 0)
        .unwrap();
    assert!(
        c.txn(&[Compare::prefix_empty(p.clone())], &[], &[])
            .unwrap()
            .succeeded
    );
    let r = c.put(b"/t/addrs/b1/10.0.0.1", b"host-a", 0).unwrap();
    assert!(
        !c.txn(&[Compare::prefix_empty(p.clone())], &[], &[])
            .unwrap()
            .succeeded
    );
    assert!(
        c.txn(&[Compare::prefix_unchanged_since(p.clone(), r)], &[], &[])
            .unwrap()
            .succeeded
    );
    c.put(b"/t/addrs/b1/10.0.0.2", b"host-b", 0).unwrap();
    assert!(
        !c.txn(&[Compare::prefix_unchanged_since(p.clone(), r)], &[], &[])
            .unwrap()
            .succeeded,
        "a key created after R is seen"
    );
    // Deleting everything under the prefix in the success branch.
    let t = c.txn(&[], &[Op::delete_prefix(p.clone())], &[]).unwrap();
    assert_eq!(t.results, [OpResult::Delete(2)]);
}

#[test]
fn leases_grant_keepalive_revoke() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let c = client(&[etcd.url()], 2000);
    let (id, ttl) = c.lease_grant(30).unwrap();
    assert!(id != 0);
    assert_eq!(ttl, 30);
    c.put(b"/t/alive/host-a", b"", id).unwrap();
    assert_eq!(c.get(b"/t/alive/host-a").unwrap().unwrap().lease, id);
    let t = c
        .txn(
            &[],
            &[Op::put_leased(b"/t/alive/host-b".to_vec(), "", id)],
            &[],
        )
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(c.lease_keepalive(id).unwrap(), Some(30));
    c.lease_revoke(id).unwrap();
    assert_eq!(
        c.get(b"/t/alive/host-a").unwrap(),
        None,
        "gone with its lease"
    );
    assert_eq!(c.get(b"/t/alive/host-b").unwrap(), None);
    assert_eq!(c.lease_keepalive(id).unwrap(), None);
    c.lease_revoke(id).unwrap();
}

#[test]
fn dead_and_silent_endpoints_fail_within_the_deadline_on_one_line() {
    // No etcd needed: nothing answers here.
    let dead = refused();
    let c = client(std::slice::from_ref(&dead), 1000);
    let t = Instant::now();
    let e = c.get(b"/t/x").unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(e.not_applied());
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert_one_line(&e, &dead);

    let (_keep, quiet) = silent();
    let c = client(std::slice::from_ref(&quiet), 800);
    let t = Instant::now();
    let e = c.get(b"/t/x").unwrap_err();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert_one_line(&e, &quiet);
    // A transaction sent to an endpoint that never answered: maybe applied.
    let t = Instant::now();
    let e = c
        .txn(&[Compare::absent("/t/x")], &[Op::put("/t/x", "v")], &[])
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_millis(1500));
    assert!(matches!(e, Error::Unknown { .. }), "{e:?}");
    assert!(!e.not_applied());
    assert_one_line(&e, "may have been applied");
}

#[test]
fn fails_over_to_the_next_endpoint() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let (_keep, quiet) = silent();
    let dead = refused();
    let c = client(&[dead.clone(), etcd.url()], 2000);
    let t = Instant::now();
    c.put(b"/t/f", b"1", 0).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // A refused endpoint sent nothing, so even a transaction moves on.
    let t1 = c
        .txn(&[Compare::absent("/t/g")], &[Op::put("/t/g", "1")], &[])
        .unwrap();
    assert!(t1.succeeded);
    // A silent endpoint gets its share of the deadline, then a read moves on.
    let c = client(&[dead, quiet.clone(), etcd.url()], 3000);
    let t = Instant::now();
    assert_eq!(c.get(b"/t/f").unwrap().unwrap().value, b"1");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    // ...but a transaction it may have received is not sent again.
    let e = c
        .txn(&[Compare::absent("/t/h")], &[Op::put("/t/h", "1")], &[])
        .unwrap_err();
    assert_one_line(&e, &quiet);
    assert!(matches!(e, Error::Unknown { .. }), "{e:?}");
}

#[test]
fn etcd_killed_mid_use_then_restarted() {
    let Some(mut etcd) = Etcd::start_or_skip() else {
        return;
    };
    let c = client(&[etcd.url()], 1000);
    let key = b"/t/blocks/b0".to_vec();
    let t = c
        .txn(
            &[Compare::absent(key.clone())],
            &[Op::put(key.clone(), "a")],
            &[],
        )
        .unwrap();
    assert!(t.succeeded);

    etcd.kill();
    let t = Instant::now();
    let e = c
        .txn(
            &[Compare::absent(key.clone())],
            &[Op::put(key.clone(), "b")],
            &[],
        )
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    assert!(e.not_applied(), "{e}");
    assert_one_line(&e, &etcd.url());

    etcd.restart();
    let kv = c.get(&key).unwrap().unwrap();
    assert_eq!(kv.value, b"a", "what was committed survived the kill");
    let t = c
        .txn(
            &[Compare::absent(key.clone())],
            &[Op::put(key.clone(), "b")],
            &[],
        )
        .unwrap();
    assert!(!t.succeeded, "the claim still holds after the restart");
}
