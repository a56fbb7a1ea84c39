//! Concurrent runs: gearnat's lock on the state directory serializes them, so applies started at
//! the same moment neither lose each other's work nor hand a host port out twice, and the host
//! table (shared by every deployment) is created once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::process::Output;

use common::{require_root, reserved_ports, spawn_gearnat, state_parses, table_in, TestHost};
use gearnat::ruleset::Element;

/// Deployment `i`: two instances of `s<i>` with three public ports the host picks, one instance
/// of `t<i>` with an explicit host port (7000 + i) that `s<i>` links to.
fn deployment(tag: &str, i: usize) -> String {
    format!(
        r#"{{"IdPrefix": "{tag}", "containers": [
  {{"name": "s{i}", "count": 2,
   "publicports": [{{"internal": 80}}, {{"internal": 443}}, {{"internal": 53, "protocol": "udp"}}],
   "links": [{{"to": "t{i}"}}]}},
  {{"name": "t{i}", "count": 1, "publicports": [{{"internal": 5432, "external": {}}}]}}
]}}"#,
        7000 + i
    )
}

/// Mappings of one deployment: 2 instances x 3 ports, and t's one.
const MAPPINGS: usize = 2 * 3 + 1;

/// Runs `apply FILE` for every file at once and waits for all of them.
fn apply_at_once(host: &TestHost, files: &[PathBuf]) -> Vec<Output> {
    let children: Vec<_> = files
        .iter()
        .map(|f| {
            let args = ["apply", f.to_str().unwrap()];
            spawn_gearnat(host.host_ns(), host.state_dir(), &args, true)
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn assert_ok(what: &str, out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The host table's port elements by (protocol, host port), failing on a host port that is
/// mapped twice.
fn host_ports(host: &TestHost) -> BTreeMap<(String, u16), String> {
    let (_, elements) = table_in(host.host_ns()).expect("a host table");
    let mut out = BTreeMap::new();
    for e in elements {
        if let Element::Port {
            proto,
            host_port,
            owner,
            ..
        } = e
        {
            let key = (proto.to_string(), host_port);
            let owner = format!("{owner:?}");
            if let Some(first) = out.insert(key.clone(), owner.clone()) {
                panic!("host port {key:?} mapped twice: {first} and {owner}");
            }
        }
    }
    out
}

/// Eight applies of eight different deployments at once: all succeed, the host table holds all
/// 8 x 7 mappings on distinct host ports, the reservations match it, and each deployment is in
/// sync afterwards.
#[test]
fn eight_different_deployments_applied_at_once() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gk01");
    let files = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..8)
        .map(|i| {
            let path = files.path().join(format!("dep{i}.json"));
            fs::write(&path, deployment(host.tag(), i)).unwrap();
            path
        })
        .collect();
    for (i, out) in apply_at_once(&host, &paths).iter().enumerate() {
        assert_ok(&format!("apply dep{i}"), out);
    }

    let mapped = host_ports(&host);
    assert_eq!(mapped.len(), 8 * MAPPINGS, "{mapped:#?}");
    let reservations = state_parses(host.state_dir());
    let reserved: BTreeSet<(String, u16)> = (reserved_ports(&reservations).into_iter())
        .map(|r| (r.proto, r.port))
        .collect();
    let in_kernel: BTreeSet<(String, u16)> = mapped.keys().cloned().collect();
    assert_eq!(reserved, in_kernel, "reservations and the kernel disagree");
    let addresses: BTreeSet<&str> = reservations["addresses"]
        .as_object()
        .unwrap()
        .values()
        .map(|h| h["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        addresses.len(),
        8 * 3,
        "one address per instance: {reservations:#}"
    );
    for (i, path) in paths.iter().enumerate() {
        let out = host.gearnat(["diff", path.to_str().unwrap()]);
        assert_ok(&format!("diff dep{i}"), &out);
        let linked = format!("{}s{i}-1", host.tag());
        let (_, links) = table_in(&linked).expect("a link table");
        assert_eq!(links.len(), 1, "{linked}'s link to t{i}");
    }
}

/// Two applies of the same deployment at once end where one apply ends: the same tables in
/// every namespace and the same reservations.
#[test]
fn the_same_deployment_applied_twice_at_once_is_applied_once() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gk02");
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("twice.json");
    fs::write(&path, deployment(host.tag(), 0)).unwrap();
    let both = apply_at_once(&host, &[path.clone(), path.clone()]);
    for out in &both {
        assert_ok("apply twice.json", out);
    }
    // One of them found the work done.
    let in_sync = both
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stdout).contains("in sync; nothing to change"))
        .count();
    assert_eq!(in_sync, 1, "exactly one run found nothing to do");
    let kernel = |host: &TestHost| {
        let instances: Vec<_> = ["s0-1", "s0-2", "t0-1"]
            .iter()
            .map(|i| table_in(&format!("{}{i}", host.tag())))
            .collect();
        (table_in(host.host_ns()), instances)
    };
    let twice = (kernel(&host), state_parses(host.state_dir()));

    let p = path.to_str().unwrap();
    assert_ok("down", &host.gearnat(["down", p]));
    assert_ok("apply once", &host.gearnat(["apply", p]));
    let once = (kernel(&host), state_parses(host.state_dir()));
    assert!(twice == once, "two applies at once differ from one");
}
