//! Crashes and reboots: `gearnat apply` killed with SIGKILL at random moments of a large apply,
//! and a host whose kernel state is gone. The kernel is read with gearnat's own netlink dump
//! and compared as sets of map elements per namespace.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{
    namespaces_with, reach, require_root, reserved_ports, serve_tcp, spawn_gearnat, state_parses,
    table_in, Rng, Table, TestHost,
};

/// How many times an apply is killed.
const KILLS: usize = 15;

/// A large deployment: 20 instances of `w` with 100 public ports each (2,000 mappings, host
/// ports picked by the host), each linking to `d`. Version `b` moves half of w's ports, gives
/// `d` a second port (so every w instance's link table changes) and adds three instances of
/// `x` (three namespaces to create, and to delete on the way back).
fn large(tag: &str, b: bool) -> String {
    let w_ports: Vec<String> = if b { 51..=150 } else { 1..=100 }
        .map(|p| format!("{{\"internal\": {p}}}"))
        .collect();
    let d_ports = if b {
        r#"[{"internal": 27017}, {"internal": 28017}]"#
    } else {
        r#"[{"internal": 27017}]"#
    };
    let x = if b {
        r#",
  {"name": "x", "count": 3, "publicports": [{"internal": 1}, {"internal": 2}]}"#
    } else {
        ""
    };
    format!(
        r#"{{"IdPrefix": "{tag}", "containers": [
  {{"name": "w", "count": 20, "publicports": [{}], "links": [{{"to": "d"}}]}},
  {{"name": "d", "count": 1, "publicports": {d_ports}}}{x}
]}}"#,
        w_ports.join(", ")
    )
}

/// gearnat's table in the host and in every namespace under the test's tag.
fn kernel(host: &TestHost) -> BTreeMap<String, Table> {
    let mut out = BTreeMap::new();
    out.insert("host".to_string(), table_in(host.host_ns()));
    for ns in namespaces_with(host.tag()) {
        if ns != host.host_ns() && ns != host.client_ns() {
            let table = table_in(&ns);
            out.insert(ns, table);
        }
    }
    out
}

fn gearnat_ok(host: &TestHost, args: &[&str]) {
    let out = host.gearnat(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "gearnat {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `diff` exits 0: the kernel holds exactly what the file says.
fn in_sync(host: &TestHost, file: &Path) {
    let out = host.gearnat(["diff", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "not in sync:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every namespace's table is as it was before the killed run or as it is after the run that
/// finished its work; a namespace absent in one counts as having no table.
fn each_table_before_or_after(
    kill: usize,
    before: &BTreeMap<String, Table>,
    killed: &BTreeMap<String, Table>,
    after: &BTreeMap<String, Table>,
) {
    let mut names: Vec<&String> = before
        .keys()
        .chain(killed.keys())
        .chain(after.keys())
        .collect();
    names.sort();
    names.dedup();
    for ns in names {
        let get = |m: &BTreeMap<String, Table>| m.get(ns).cloned().flatten();
        let (b, k, a) = (get(before), get(killed), get(after));
        let size = |t: &Table| t.as_ref().map(|(_, elements)| elements.len());
        assert!(
            k == b || k == a,
            "kill {kill}: {ns}'s table is half way: {:?} elements, before {:?}, after {:?}",
            size(&k),
            size(&b),
            size(&a)
        );
    }
}

/// SIGKILL at random moments of applies that move a 2,000-mapping deployment between two
/// versions: after each kill every namespace's table is whole (before or after), the state
/// directory parses, and the next apply converges. At the end `down` leaves nothing, so no
/// namespace created by a killed run was forgotten.
#[test]
fn killed_applies_leave_whole_tables_and_converge() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gc01");
    let tag = host.tag().to_string();
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("big.json");
    let state = host.state_dir().to_path_buf();
    let path = file.to_str().unwrap().to_string();

    // Both versions applied once whole, timing the change from a to b.
    fs::write(&file, large(&tag, false)).unwrap();
    gearnat_ok(&host, &["apply", &path]);
    fs::write(&file, large(&tag, true)).unwrap();
    let started = Instant::now();
    gearnat_ok(&host, &["apply", &path]);
    let duration = started.elapsed();
    eprintln!("a whole apply from a to b takes {duration:?}");
    let elements = table_in(host.host_ns()).unwrap().1.len();
    assert_eq!(elements, 2000 + 2 + 6, "host map elements in version b");

    let mut rng = Rng::from_env_or_clock();
    let mut version_b = true;
    let mut outcomes = (0, 0); // kills that left everything as before, and the others
    for kill in 0..KILLS {
        version_b = !version_b;
        fs::write(&file, large(&tag, version_b)).unwrap();
        let before = kernel(&host);
        let delay = Duration::from_micros(rng.below(duration.as_micros() as u64));
        let mut child = spawn_gearnat(host.host_ns(), &state, &["apply", &path], false);
        sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        let killed = kernel(&host);
        state_parses(&state);
        gearnat_ok(&host, &["apply", &path]);
        in_sync(&host, &file);
        let after = kernel(&host);
        each_table_before_or_after(kill, &before, &killed, &after);
        if killed == before {
            outcomes.0 += 1;
        } else {
            outcomes.1 += 1;
        }
        eprintln!(
            "kill {kill}: after {delay:?} ({status}); kernel {}",
            if killed == before {
                "as before"
            } else if killed == after {
                "as after"
            } else {
                "partly changed, each table whole"
            }
        );
    }
    eprintln!(
        "{} kills left the kernel as before, {} had changed it",
        outcomes.0, outcomes.1
    );

    gearnat_ok(&host, &["down", &path]);
    let left: Vec<String> = namespaces_with(&tag)
        .into_iter()
        .filter(|n| *n != host.host_ns() && *n != host.client_ns())
        .collect();
    assert_eq!(left, Vec::<String>::new(), "namespaces left after down");
    assert_eq!(table_in(host.host_ns()), None, "host table left after down");
}

/// A deployment with a public port and a link, as a small web service and its database.
fn service(tag: &str, web: &str, db: &str, port: u16) -> String {
    format!(
        r#"{{"IdPrefix": "{tag}", "containers": [
  {{"name": "{web}", "count": 1,
   "publicports": [{{"internal": 80}}, {{"internal": 81, "external": {port}}}],
   "links": [{{"to": "{db}"}}]}},
  {{"name": "{db}", "count": 2, "publicports": [{{"internal": 5432}}]}}
]}}"#
    )
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reboot: the instance namespaces, the bridge, gearnat's host table and the sysctls are gone
/// while the state directory stays. One apply per deployment puts back the same tables (so the
/// same host ports, addresses and link targets), the reservations are unchanged, and traffic
/// flows again.
#[test]
fn after_a_reboot_one_apply_restores_the_same_ports_and_addresses() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gc02");
    let tag = host.tag().to_string();
    let files = tempfile::tempdir().unwrap();
    let deployments = [("shop", "web", "db", 6101), ("blog", "wp", "sql", 6102)];
    let mut paths = Vec::new();
    for (name, web, db, port) in deployments {
        let file = files.path().join(format!("{name}.json"));
        fs::write(&file, service(&tag, web, db, port)).unwrap();
        gearnat_ok(&host, &["apply", file.to_str().unwrap()]);
        paths.push(file);
    }
    let kernel_before = kernel(&host);
    let reservations_before = state_parses(host.state_dir());
    assert_eq!(
        reserved_ports(&reservations_before).len(),
        2 * (2 + 2),
        "{reservations_before:#}"
    );

    // The reboot: nothing of the kernel's state survives, the state directory does.
    for ns in namespaces_with(&tag) {
        if ns != host.host_ns() && ns != host.client_ns() {
            ip(&["netns", "delete", &ns]);
        }
    }
    ip(&["-n", host.host_ns(), "link", "delete", "gearnat0"]);
    let nft = Command::new("ip")
        .args([
            "netns",
            "exec",
            host.host_ns(),
            "nft",
            "delete",
            "table",
            "ip",
            "gearnat",
        ])
        .status()
        .unwrap();
    assert!(nft.success());
    let sysctl = Command::new("ip")
        .args([
            "netns",
            "exec",
            host.host_ns(),
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=0",
        ])
        .status()
        .unwrap();
    assert!(sysctl.success());
    assert_eq!(table_in(host.host_ns()), None);
    for path in &paths {
        let out = host.gearnat(["diff", path.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "diff after the reboot says pending"
        );
    }

    for path in &paths {
        gearnat_ok(&host, &["apply", path.to_str().unwrap()]);
    }
    assert_eq!(
        kernel(&host),
        kernel_before,
        "tables after the reboot's applies"
    );
    assert_eq!(state_parses(host.state_dir()), reservations_before);
    for path in &paths {
        in_sync(&host, path);
    }

    // Traffic: each deployment's explicit port from outside, its picked ports, and its link.
    let reservations = reserved_ports(&reservations_before);
    for (name, web, db, port) in deployments {
        let web1 = format!("{tag}{web}-1");
        let db1 = format!("{tag}{db}-1");
        let _w80 = serve_tcp(&web1, "0.0.0.0:80".parse().unwrap(), &format!("{name} 80"));
        let _w81 = serve_tcp(&web1, "0.0.0.0:81".parse().unwrap(), &format!("{name} 81"));
        let _db = serve_tcp(&db1, "0.0.0.0:5432".parse().unwrap(), &format!("{name} db"));
        let picked = reservations
            .iter()
            .find(|r| r.instance == web1 && r.internal == 80 && r.proto == "tcp")
            .map(|r| r.port)
            .unwrap();
        let to = |p: u16| format!("{}:{p}", common::HOST_ADDR);
        assert_eq!(reach(host.client_ns(), &to(port)), format!("{name} 81"));
        assert_eq!(reach(host.client_ns(), &to(picked)), format!("{name} 80"));
        assert_eq!(reach(&web1, "127.0.0.1:5432"), format!("{name} db"));
    }
}
