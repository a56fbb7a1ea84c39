//! End to end: gearnat applies deployments inside a private "host" namespace, and real TCP
//! connections prove the mappings and links; the reconciler's changes are checked in the
//! kernel. Each test makes its own namespaces (named after its tag) and removes them on drop.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use common::{addr, nft_list, reach, require_root, serve_tcp, tcp_request, write_file, TestHost};

/// The seed's deployment, with the test's tag as IdPrefix so instance namespaces are its own.
fn seed(tag: &str) -> String {
    format!(
        r#"{{
  "IdPrefix": "{tag}",
  "containers":[
    {{
      "name":"rockmongo",
      "count":1,
      "image":"derekwaynecarr/rockmongo",
      "publicports":[{{"internal":80,"external":6060}}],
      "links":[{{"to":"mongodb"}}]
    }},
    {{
      "name":"mongodb",
      "count":1,
      "image":"ccoleman/ubuntu-mongodb",
      "publicports":[{{"internal":27017}}]
    }}
  ]
}}"#
    )
}

/// A test host and the seed's deployment with the host's tag as IdPrefix, written to a file in
/// a folder of its own; `None` (the test is skipped) without root.
fn seeded(tag: &str) -> Option<(TestHost, tempfile::TempDir, PathBuf)> {
    if !require_root() {
        return None;
    }
    let host = TestHost::new(tag);
    let files = tempfile::tempdir().unwrap();
    let file = write_file(&files, "seed.json", &seed(host.tag()));
    Some((host, files, file))
}

/// Every file under the state directory, with its inode and modification time: a file
/// written again (a new file renamed into place, or rewritten) shows a change.
fn state_files(dir: &std::path::Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("deployments")] {
        for entry in fs::read_dir(&sub).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_file() {
                out.push((entry.path(), meta.ino(), meta.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Runs `nft ARGS` in namespace `ns`, as a person changing gearnat's table by hand would.
fn nft_by_hand(ns: &str, args: &[&str]) {
    let out = common::exec(ns, &[&["nft"], args].concat());
    assert!(out.status.success(), "nft {args:?}: {out:?}");
}

fn unreachable(ns: &str, to: &str) {
    let r = tcp_request(ns, addr(to), Duration::from_secs(1));
    assert!(r.is_err(), "{ns} still reaches {to}: {r:?}");
}

#[test]
fn seed_public_port_and_link_carry_real_tcp() {
    let Some((host, _files, file)) = seeded("ga01") else {
        return;
    };
    let tag = host.tag();
    let out = host.apply_ok(&file);
    assert!(
        out.contains(&format!("{tag}rockmongo-1: PortMapping: 80 -> 6060")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{tag}mongodb-1: PortMapping: 27017 -> 4000")),
        "{out}"
    );
    assert!(out.contains("127.0.0.1:27017 -> 10.211.0.1:4000"), "{out}");

    let rock = format!("{tag}rockmongo-1");
    let mongo = format!("{tag}mongodb-1");
    let _web = serve_tcp(&rock, addr("0.0.0.0:80"), "rockmongo");
    let _db = serve_tcp(&mongo, addr("0.0.0.0:27017"), "mongodb");

    // 1. From outside, and from the host itself on its own address and on loopback.
    assert_eq!(reach(host.client_ns(), "192.0.2.1:6060"), "rockmongo");
    assert_eq!(reach(host.host_ns(), "192.0.2.1:6060"), "rockmongo");
    assert_eq!(reach(host.host_ns(), "127.0.0.1:6060"), "rockmongo");

    // 2. The link, and hairpin to a public port through the host's address, with bridged
    //    traffic passing netfilter and not.
    for bridge_nf in [false, true] {
        common::set_bridge_nf(host.host_ns(), bridge_nf);
        assert_eq!(
            reach(&rock, "127.0.0.1:27017"),
            "mongodb",
            "bridge-nf {bridge_nf}"
        );
        assert_eq!(
            reach(&mongo, "192.0.2.1:6060"),
            "rockmongo",
            "bridge-nf {bridge_nf}"
        );
        assert_eq!(
            reach(&mongo, "10.211.0.1:6060"),
            "rockmongo",
            "bridge-nf {bridge_nf}"
        );
    }

    // Packets for 127/8 from outside are dropped (CVE-2020-8558), in host and instance alike.
    let _local = serve_tcp(host.host_ns(), addr("127.0.0.1:7777"), "local-only");
    assert_eq!(reach(host.host_ns(), "127.0.0.1:7777"), "local-only");
    let guard = nft_list(host.host_ns());
    assert!(guard.contains("ip daddr 127.0.0.0/8 drop"), "{guard}");

    // down removes everything gearnat made.
    let out = host.run(&["down", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!nft_list(host.host_ns()).contains("gearnat"));
    assert!(!PathBuf::from("/run/netns").join(&rock).exists());
    unreachable(host.client_ns(), "192.0.2.1:6060");
}

/// Runs `nft monitor` (or `ip monitor`) in `ns` until dropped; what it printed tells whether
/// anything changed.
struct Monitor(Child);

impl Monitor {
    fn start(ns: &str) -> Monitor {
        Monitor::run(ns, &["nft", "monitor"])
    }

    /// Links, IPv4 addresses and routes (IPv6 link-local addresses come and go by themselves).
    fn links(ns: &str) -> Monitor {
        Monitor::run(ns, &["ip", "-4", "monitor", "link", "address", "route"])
    }

    fn run(ns: &str, command: &[&str]) -> Monitor {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        sleep(Duration::from_millis(300));
        Monitor(child)
    }

    fn events(mut self) -> String {
        sleep(Duration::from_millis(300));
        let _ = self.0.kill();
        let out = self.0.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn an_unchanged_reapply_writes_nothing_and_diff_says_in_sync() {
    let Some((host, _files, file)) = seeded("ga02") else {
        return;
    };
    let tag = host.tag();
    host.apply_ok(&file);
    let rock = format!("{tag}rockmongo-1");

    let monitors = [
        Monitor::start(host.host_ns()),
        Monitor::start(&rock),
        Monitor::links(host.host_ns()),
        Monitor::links(&rock),
    ];
    let files = state_files(host.state_dir());
    let out = host.apply_ok(&file);
    assert!(out.contains("in sync"), "{out}");
    for m in monitors {
        assert_eq!(m.events(), "", "re-apply wrote to the kernel");
    }
    // Nor a file: every state file (the table cache included) is the one it was.
    assert_eq!(
        state_files(host.state_dir()),
        files,
        "re-apply rewrote a state file"
    );
    let out = host.run(&["diff", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let out = host.run(&["diff", "--output", "json", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["in_sync"], true);
    assert_eq!(plan["mappings"][0]["Ports"][0]["External"], 6060);

    // status draws the seed's figure and reads the kernel.
    let out = host.run(&["status"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let figure = format!("Client -> 6060 -> 80 {rock} 27017 -> 4000 -> 27017 {tag}mongodb-1");
    assert!(text.contains(&figure), "{text}");
    assert!(text.contains("in sync"), "{text}");
    let out = host.run(&["status", "--output", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status[0]["in_sync"], true);
    // Drift is seen: a host element deleted by hand.
    nft_by_hand(
        host.host_ns(),
        &[
            "delete",
            "element",
            "ip",
            "gearnat",
            "tcp_ports",
            "{ 6060 }",
        ],
    );
    let text = String::from_utf8(host.run(&["status"]).stdout).unwrap();
    assert!(
        text.contains("drifted") && text.contains("(missing)"),
        "{text}"
    );
    let out = host.run(&["diff", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn reconcile_removes_exactly_what_the_file_dropped() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("ga03");
    let tag = host.tag().to_string();
    let tag = tag.as_str();
    let files = tempfile::tempdir().unwrap();
    let two = seed(tag).replacen("\"count\":1", "\"count\":2", 1).replace(
        "\"publicports\":[{\"internal\":80,\"external\":6060}]",
        "\"publicports\":[{\"internal\":80}]",
    );
    let file = write_file(&files, "dep.json", &two);
    host.apply_ok(&file);
    let rock1 = format!("{tag}rockmongo-1");
    let rock2 = format!("{tag}rockmongo-2");
    let _w1 = serve_tcp(&rock1, addr("0.0.0.0:80"), "rock1");
    let _w2 = serve_tcp(&rock2, addr("0.0.0.0:80"), "rock2");
    // mongodb's 27017 got 4000 (it came first... rockmongo's two ports come first in the file).
    assert_eq!(reach(host.client_ns(), "192.0.2.1:4000"), "rock1");
    assert_eq!(reach(host.client_ns(), "192.0.2.1:4001"), "rock2");

    // Count 2 -> 1, the link removed, rockmongo-1's port moved to an explicit 6070.
    let one = seed(tag)
        .replace("\"links\":[{\"to\":\"mongodb\"}]", "\"links\":[]")
        .replace("\"external\":6060", "\"external\":6070");
    fs::write(&file, one).unwrap();
    let out = host.run(&["diff", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut changes: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("deployment"))
        .collect();
    changes.sort();
    let mut expected = vec![
        format!("- netns {rock2}"),
        format!("- host tcp 4000 -> {rock1} 10.211.0.2:80"),
        format!("- host tcp 4001 -> {rock2} 10.211.0.3:80"),
        format!("+ host tcp 6070 -> {rock1} 10.211.0.2:80"),
        format!("- {rock1} table ip gearnat"),
    ];
    expected.sort();
    assert_eq!(changes, expected, "{text}");

    host.apply_ok(&file);
    assert_eq!(reach(host.client_ns(), "192.0.2.1:6070"), "rock1");
    unreachable(host.client_ns(), "192.0.2.1:4000");
    unreachable(host.client_ns(), "192.0.2.1:4001");
    let ruleset = nft_list(host.host_ns());
    assert!(
        !ruleset.contains(&rock2) && !ruleset.contains(" 4001 "),
        "{ruleset}"
    );
    assert!(!PathBuf::from("/run/netns").join(&rock2).exists());
    assert!(
        !nft_list(&rock1).contains("gearnat"),
        "the link table is left in {rock1}"
    );
    let out = host.run(&["diff", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));

    // Only a port given back (mongodb's public port dropped): the reservations follow the
    // batch rather than precede it, and still end up without it.
    let reservations = || -> serde_json::Value {
        let text = fs::read_to_string(host.state_dir().join("reservations.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let mongo = format!("{tag}mongodb-1");
    assert!(reservations()["held_ports"]["dep"].get(&mongo).is_some());
    let fewer = seed(tag)
        .replace("\"links\":[{\"to\":\"mongodb\"}]", "\"links\":[]")
        .replace("\"external\":6060", "\"external\":6070")
        .replace(
            "\"publicports\":[{\"internal\":27017}]",
            "\"publicports\":[]",
        );
    fs::write(&file, fewer).unwrap();
    let out = host.gearnat(["-vv", "apply", file.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("only give ports back"), "{log}");
    let held = reservations();
    assert!(held["held_ports"]["dep"].get(&mongo).is_none(), "{held}");
    assert!(held["held_ports"]["dep"].get(&rock1).is_some(), "{held}");
    assert_eq!(
        nft_list(host.host_ns())
            .matches("comment \"gearnat:")
            .count(),
        1
    );
    let out = host.run(&["diff", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_foreign_table_is_untouched_from_apply_to_down() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("ga04");
    let tag = host.tag().to_string();
    let tag = tag.as_str();
    let files = tempfile::tempdir().unwrap();
    let foreign = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 9999 counter drop\n\t}\n}\n";
    let nft = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", host.host_ns(), "nft"])
            .args(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    nft(&["-f", "-"], Some(foreign));
    let before = nft(&["list", "table", "inet", "filter"], None);
    assert!(before.contains("tcp dport 9999"), "{before}");

    let file = write_file(&files, "seed.json", &seed(tag));
    host.apply_ok(&file);
    assert_eq!(nft(&["list", "table", "inet", "filter"], None), before);
    let changed = seed(tag).replace("\"external\":6060", "\"external\":6061");
    fs::write(&file, changed).unwrap();
    host.apply_ok(&file);
    assert_eq!(nft(&["list", "table", "inet", "filter"], None), before);
    assert_eq!(
        host.run(&["down", file.to_str().unwrap()]).status.code(),
        Some(0)
    );
    assert_eq!(nft(&["list", "table", "inet", "filter"], None), before);
}

/// What apply loads is what nft/rockmongo_mongodb.nft (`gearnat compile` of the seed) holds:
/// each namespace's table, listed by nft, equals the golden block loaded by `nft -f` into a
/// scratch namespace and listed the same way.
#[test]
fn the_kernel_holds_the_golden_ruleset() {
    if !require_root() {
        return;
    }
    // The seed has no IdPrefix: its instances are /run/netns/rockmongo-1 and mongodb-1.
    let instances = ["rockmongo-1", "mongodb-1"];
    if instances
        .iter()
        .any(|n| PathBuf::from("/run/netns").join(n).exists())
    {
        eprintln!("skipped: a namespace named rockmongo-1 or mongodb-1 exists already");
        return;
    }
    let host = TestHost::new("ga06");
    let tag = host.tag().to_string();
    let tag = tag.as_str();
    let _cleanup = common::NetnsGuard(instances.iter().map(|s| s.to_string()).collect());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let golden = fs::read_to_string(root.join("nft/rockmongo_mongodb.nft")).unwrap();
    let file = root.join("tests/deployments/rockmongo_mongodb.json");
    host.apply_ok(&file);
    let blocks = common::nft_blocks(&golden);
    assert_eq!(blocks.len(), 2, "a host block and rockmongo-1's");
    for (ns, text) in blocks {
        let target = if ns == "host" {
            host.host_ns().to_string()
        } else {
            ns.clone()
        };
        let scratch = common::Scratch::new(&format!("{tag}s"));
        assert_eq!(
            common::nft_table(&target),
            scratch.load_and_list(&text),
            "namespace {ns}"
        );
    }
    assert_eq!(
        host.run(&["down", "--name", "rockmongo_mongodb"])
            .status
            .code(),
        Some(0)
    );
}

/// `--bridge` and `--subnet` move the instances; a namespace gearnat found is kept by `down`,
/// one it created is deleted.
#[test]
fn another_bridge_and_subnet_and_found_namespaces_are_kept() {
    let Some((host, _files, file)) = seeded("ga07") else {
        return;
    };
    let tag = host.tag();
    let rock = format!("{tag}rockmongo-1");
    let mongo = format!("{tag}mongodb-1");
    // The user made rockmongo-1's namespace; gearnat makes mongodb-1's.
    assert!(common::output_in(host.host_ns(), {
        let mut c = Command::new("ip");
        c.args(["netns", "add", &rock]);
        c
    })
    .status
    .success());
    let net = ["--bridge", "gnt7", "--subnet", "10.77.0.0/24"];
    let mut args = vec!["apply", file.to_str().unwrap()];
    args.extend(net);
    let out = host.run(&args);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("+ netns {rock} 10.77.0.2 on gnt7")),
        "{text}"
    );
    assert!(
        text.contains(&format!("+ netns (new) {mongo} 10.77.0.3 on gnt7")),
        "{text}"
    );
    assert!(text.contains("127.0.0.1:27017 -> 10.77.0.1:4000"), "{text}");

    let _web = serve_tcp(&rock, addr("0.0.0.0:80"), "rockmongo");
    let _db = serve_tcp(&mongo, addr("0.0.0.0:27017"), "mongodb");
    assert_eq!(reach(host.client_ns(), "192.0.2.1:6060"), "rockmongo");
    assert_eq!(reach(&rock, "127.0.0.1:27017"), "mongodb");

    let mut args = vec!["down", file.to_str().unwrap()];
    args.extend(net);
    assert_eq!(host.run(&args).status.code(), Some(0));
    assert!(
        gearnat::netns::exists_named(&rock),
        "a found namespace was deleted"
    );
    assert!(
        !gearnat::netns::exists_named(&mongo),
        "a created namespace was kept"
    );
    assert!(
        !nft_list(&rock).contains("gearnat"),
        "{rock} keeps gearnat's table"
    );
    let links = common::exec(host.host_ns(), &["ip", "-o", "link"]);
    let links = String::from_utf8(links.stdout).unwrap();
    assert!(!links.contains("gnt7") && !links.contains(" gn"), "{links}");
}

/// Two deployments share the host's table: each reconciles and goes down without touching the
/// other's mappings.
#[test]
fn deployments_leave_each_other_alone() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("ga08");
    let tag = host.tag().to_string();
    let tag = tag.as_str();
    let files = tempfile::tempdir().unwrap();
    let first = write_file(&files, "first.json", &seed(tag));
    let second = seed(tag)
        .replace("\"rockmongo\"", "\"web\"")
        .replace("mongodb", "db")
        .replace("\"external\":6060", "\"external\":7070");
    let second = write_file(&files, "second.json", &second);
    host.apply_ok(&first);
    let out = host.apply_ok(&second);
    assert!(
        out.contains(&format!("{tag}db-1: PortMapping: 27017 -> 4001")),
        "{out}"
    );
    let _web = serve_tcp(&format!("{tag}web-1"), addr("0.0.0.0:80"), "web");
    let _rock = serve_tcp(
        &format!("{tag}rockmongo-1"),
        addr("0.0.0.0:80"),
        "rockmongo",
    );
    assert_eq!(reach(host.client_ns(), "192.0.2.1:6060"), "rockmongo");
    assert_eq!(reach(host.client_ns(), "192.0.2.1:7070"), "web");

    // Re-applying the first changes nothing of the second, and diff of either is in sync.
    assert!(host.apply_ok(&first).contains("in sync"));
    for file in [&first, &second] {
        assert_eq!(
            host.run(&["diff", file.to_str().unwrap()]).status.code(),
            Some(0)
        );
    }
    // Down of the first leaves the second's mappings, table and bridge.
    assert_eq!(
        host.run(&["down", first.to_str().unwrap()]).status.code(),
        Some(0)
    );
    unreachable(host.client_ns(), "192.0.2.1:6060");
    assert_eq!(reach(host.client_ns(), "192.0.2.1:7070"), "web");
    let table = common::nft_table(host.host_ns());
    assert!(
        table.contains("gearnat:second/") && !table.contains("gearnat:first/"),
        "{table}"
    );
    assert_eq!(
        host.run(&["diff", second.to_str().unwrap()]).status.code(),
        Some(0)
    );
}

/// Connections instances open to other hosts leave with the host's address: the outside client
/// has no route back to the instances' pool, so only a masqueraded connection is answered.
#[test]
fn instances_reach_other_hosts_with_the_hosts_address() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("ga09");
    let tag = host.tag().to_string();
    let files = tempfile::tempdir().unwrap();
    let file = write_file(&files, "seed.json", &seed(&tag));
    host.apply_ok(&file);
    let out = common::exec(host.client_ns(), &["ip", "route", "del", "default"]);
    assert!(out.status.success());
    let _outside = serve_tcp(host.client_ns(), addr("192.0.2.2:9000"), "outside");
    assert_eq!(
        reach(&format!("{tag}rockmongo-1"), "192.0.2.2:9000"),
        "outside"
    );
}

/// A reader that goes away (`gearnat down | head -1`) loses the rest of the output, not the
/// rest of the work: down still removes everything and exits 0.
#[test]
fn down_finishes_when_its_reader_has_gone() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("ga10");
    let tag = host.tag().to_string();
    let files = tempfile::tempdir().unwrap();
    let file = write_file(&files, "seed.json", &seed(&tag));
    host.apply_ok(&file);
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    drop(read_end);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gearnat"));
    cmd.env("GEARNAT_RUNTIME", "netns")
        .arg("--state-dir")
        .arg(host.state_dir())
        .args(["down", file.to_str().unwrap()])
        .stdout(Stdio::from(write_end));
    let out = common::output_in(host.host_ns(), cmd);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!nft_list(host.host_ns()).contains("gearnat"));
    assert!(!PathBuf::from("/run/netns")
        .join(format!("{tag}rockmongo-1"))
        .exists());
    let status = host.run(&["status"]);
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("seed"),
        "the deployment is still recorded"
    );
}

/// geard's output form in the state directory follows the file: rewritten when the file
/// changes, put back when it is missing, and left alone by an unchanged re-apply.
#[test]
fn the_resolved_file_follows_the_deployment() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("ga11");
    let tag = host.tag().to_string();
    let files = tempfile::tempdir().unwrap();
    let file = write_file(&files, "seed.json", &seed(&tag));
    host.apply_ok(&file);
    let resolved = host.state_dir().join("deployments/seed.json");
    let first = fs::read_to_string(&resolved).unwrap();
    assert!(first.contains("derekwaynecarr/rockmongo"), "{first}");
    let written = fs::metadata(&resolved).unwrap().modified().unwrap();

    host.apply_ok(&file);
    assert_eq!(
        fs::metadata(&resolved).unwrap().modified().unwrap(),
        written,
        "an unchanged re-apply rewrote it"
    );

    let changed = seed(&tag).replace("derekwaynecarr/rockmongo", "example/rockmongo:2");
    fs::write(&file, changed).unwrap();
    host.apply_ok(&file);
    let second = fs::read_to_string(&resolved).unwrap();
    assert!(second.contains("example/rockmongo:2"), "{second}");

    fs::remove_file(&resolved).unwrap();
    host.apply_ok(&file);
    assert_eq!(fs::read_to_string(&resolved).unwrap(), second);
}

/// The host table cached in the state directory is taken only while the ruleset generation is
/// the one it was written at: an element added by hand with the deployment's own comment, and
/// one deleted by hand, are both seen and put right by the next apply; a cache file that is
/// garbage is ignored.
#[test]
fn the_cached_host_table_gives_way_to_any_change_in_the_kernel() {
    let Some((host, _files, file)) = seeded("ga10") else {
        return;
    };
    let tag = host.tag();
    host.apply_ok(&file);
    let cache = host.state_dir().join("host-table.cache");
    let text = fs::read_to_string(&cache).expect("apply writes the host table cache");
    assert!(text.contains(" 6060 10.211.0.2:80 "), "{text}");
    assert!(host.apply_ok(&file).contains("in sync"));

    let stale = format!("{{ 7070 comment \"gearnat:seed/{tag}rockmongo-1\" : 10.211.0.2 . 81 }}");
    let nft = |args: &[&str]| nft_by_hand(host.host_ns(), args);
    nft(&["add", "element", "ip", "gearnat", "tcp_ports", &stale]);
    nft(&[
        "delete",
        "element",
        "ip",
        "gearnat",
        "tcp_ports",
        "{ 6060 }",
    ]);
    let out = host.apply_ok(&file);
    assert!(out.contains("- host tcp 7070 ->"), "{out}");
    assert!(out.contains("+ host tcp 6060 ->"), "{out}");
    let table = nft_list(host.host_ns());
    assert!(!table.contains("7070"), "{table}");
    assert!(table.contains("6060 comment"), "{table}");

    fs::write(&cache, "gearnat host table cache 1\nboot x\n").unwrap();
    let out = host.apply_ok(&file);
    assert!(out.contains("in sync"), "{out}");
    assert!(fs::read_to_string(&cache).unwrap().contains(" 6060 "));
    let server = serve_tcp(&format!("{tag}rockmongo-1"), addr("10.211.0.2:80"), "web");
    assert_eq!(reach(host.client_ns(), "192.0.2.1:6060"), "web");
    server.stop();
}

/// Apply reads the kernel as the last apply observed it while it parses the file (the
/// record's probes). What it reads that way is the kernel as it is now, and an instance the
/// file now asks more of is read again: a veth pair and a sysctl undone by hand are put back,
/// and an instance that gains a link has its sysctl read, not taken for missing.
#[test]
fn what_apply_reads_ahead_is_the_kernel_now_and_gives_way_to_the_file() {
    let Some((host, files, file)) = seeded("ga11") else {
        return;
    };
    let tag = host.tag();
    let (rock, mongo) = (format!("{tag}rockmongo-1"), format!("{tag}mongodb-1"));
    host.apply_ok(&file);
    let record = host.state_dir().join("deployments/seed.state.json");
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(record).unwrap()).unwrap();
    let probes = record["probes"].to_string();
    assert!(
        probes.contains(&rock) && probes.contains("route_localnet"),
        "{probes}"
    );

    let localnet = "net.ipv4.conf.eth0.route_localnet";
    let sysctl = |ns: &str, value: &str| {
        let out = common::exec(ns, &["sysctl", "-qw", &format!("{localnet}={value}")]);
        assert!(out.status.success(), "{out:?}");
    };
    let deleted = common::exec(&mongo, &["ip", "link", "del", "eth0"]);
    assert!(deleted.status.success(), "{deleted:?}");
    sysctl(&rock, "0");
    let out = host.apply_ok(&file);
    assert!(out.contains(&format!("+ netns {mongo} ")), "{out}");
    assert!(
        out.contains(&format!("~ {rock} sysctl {localnet} 0 -> 1")),
        "{out}"
    );
    let server = serve_tcp(&mongo, addr("10.211.0.3:27017"), "db");
    assert_eq!(reach(&rock, "127.0.0.1:27017"), "db");
    server.stop();

    // mongodb gains a link: its probe had no sysctl. Set by hand already, it needs no change.
    sysctl(&mongo, "1");
    let linked = seed(tag).replace(
        r#""publicports":[{"internal":27017}]"#,
        r#""publicports":[{"internal":27017}],"links":[{"to":"rockmongo"}]"#,
    );
    assert_ne!(linked, seed(tag));
    let file = write_file(&files, "seed.json", &linked);
    let out = host.apply_ok(&file);
    assert!(
        out.contains(&format!("+ {mongo} table ip gearnat")),
        "{out}"
    );
    assert!(!out.contains(&format!("~ {mongo} sysctl")), "{out}");
    assert!(host.apply_ok(&file).contains("in sync"));
}
