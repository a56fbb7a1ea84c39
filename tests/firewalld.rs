//! gearnat's firewalld step against a real firewalld: `apply` puts the bridge in zone `trusted`
//! and says so, traffic flows with firewalld's rules loaded, and `down` takes the bridge out
//! again, leaving firewalld's settings as they were.
//!
//! The test starts a firewalld of its own, with its systemd unit's flags (`--nofork --nopid`),
//! inside the test's host namespace, so its nftables table is there and nowhere else. It talks
//! D-Bus on a system bus of the test's own (a `dbus-daemon` on a socket in a tempdir, reached
//! through DBUS_SYSTEM_BUS_ADDRESS by firewalld, firewall-cmd and the gearnat it runs), so it
//! neither needs the machine's bus nor meets a firewalld already running there. firewalld's
//! configuration is a tempdir (`--system-config`), and it runs in a private mount namespace
//! (`ip netns exec`) with a tmpfs on /run, where it makes /run/firewalld. Both daemons are
//! stopped on drop, before the namespaces go, also when the test fails.
//!
//! Skipped only without root or without firewalld (`apt-get install firewalld`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{addr, output_in, reach, require_root, serve_tcp, tcp_request, write_file, TestHost};

/// Longest wait for a daemon to answer, or to exit.
const SOON: Duration = Duration::from_secs(20);

/// firewalld's settings for the test: the packaged defaults, with the backend named (the test
/// is about the nftables one) and kernel modules left loaded on exit (unloading them would
/// reach beyond the test's namespaces).
const FIREWALLD_CONF: &str = "DefaultZone=public\nFirewallBackend=nftables\nCleanupOnExit=yes\n\
                              CleanupModulesOnExit=no\nIndividualCalls=no\nLogDenied=off\n";

/// A D-Bus system bus and a firewalld on it, in the test's host namespace; both stopped on drop.
struct Firewalld {
    dir: tempfile::TempDir,
    bus: Child,
    daemon: Option<Child>,
}

impl Firewalld {
    fn start(host_ns: &str) -> Firewalld {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("system_bus_socket");
        fs::write(dir.path().join("bus.conf"), bus_conf(&socket)).unwrap();
        let bus = Command::new("dbus-daemon")
            .arg(format!(
                "--config-file={}",
                dir.path().join("bus.conf").display()
            ))
            .args(["--nofork", "--nopidfile"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir.path(), "dbus.log"))
            .spawn()
            .expect("starting dbus-daemon");
        let mut fw = Firewalld {
            dir,
            bus,
            daemon: None,
        };
        fw.wait_for_bus(&socket);

        let config = fw.dir.path().join("etc");
        fs::create_dir(&config).unwrap();
        fs::write(config.join("firewalld.conf"), FIREWALLD_CONF).unwrap();
        let log = fw.dir.path().join("firewalld.log");
        // `ip netns exec` runs it in the host namespace and a mount namespace of its own,
        // where the tmpfs on /run stays; it execs, so the child is firewalld itself.
        let daemon = Command::new("ip")
            .args(["netns", "exec", host_ns, "sh", "-c"])
            .arg("mount -t tmpfs gearnat-test /run && exec \"$@\"")
            .args(["sh", "firewalld", "--nofork", "--nopid"])
            .arg("--system-config")
            .arg(&config)
            .args(["--log-target", "file", "--log-file"])
            .arg(&log)
            .env("DBUS_SYSTEM_BUS_ADDRESS", fw.bus_address())
            .stdin(Stdio::null())
            .stdout(log_file(fw.dir.path(), "firewalld.out"))
            .stderr(log_file(fw.dir.path(), "firewalld.out"))
            .spawn()
            .expect("starting firewalld");
        fw.daemon = Some(daemon);
        fw.wait_running();
        fw
    }

    fn bus_address(&self) -> String {
        let socket = self.dir.path().join("system_bus_socket");
        format!("unix:path={}", socket.display())
    }

    fn wait_for_bus(&mut self, socket: &Path) {
        let deadline = Instant::now() + SOON;
        while !socket.exists() {
            if let Some(status) = self.bus.try_wait().unwrap() {
                panic!("dbus-daemon exited ({status}):\n{}", self.log("dbus.log"));
            }
            assert!(Instant::now() < deadline, "dbus-daemon made no socket");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until `firewall-cmd --state` says `running`.
    fn wait_running(&mut self) {
        let deadline = Instant::now() + SOON;
        loop {
            let daemon = self.daemon.as_mut().unwrap();
            if let Some(status) = daemon.try_wait().unwrap() {
                panic!("firewalld exited ({status}):\n{}", self.logs());
            }
            let (ok, text) = self.cmd(&["--state"]);
            if ok && text == "running" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "firewalld not running after {SOON:?} (firewall-cmd --state: {text}):\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `firewall-cmd ARGS...` on the test's bus: whether it succeeded, and what it printed.
    fn cmd(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("firewall-cmd")
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .output()
            .expect("running firewall-cmd");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text.trim().to_string())
    }

    /// `firewall-cmd ARGS...`, which must succeed, echoed; what it printed.
    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.cmd(args);
        eprintln!("$ firewall-cmd {}\n{text}", args.join(" "));
        assert!(ok, "firewall-cmd {}: {text}", args.join(" "));
        text
    }

    /// The zone `interface` is bound to, as firewall-cmd says it (`no zone` when none).
    fn zone_of(&self, interface: &str) -> String {
        self.cmd(&[&format!("--get-zone-of-interface={interface}")])
            .1
    }

    /// What firewalld holds at runtime and permanently, to compare before and after.
    fn settings(&self) -> String {
        [
            &["--get-default-zone"][..],
            &["--list-all-zones"],
            &["--permanent", "--list-all-zones"],
        ]
        .iter()
        .map(|args| {
            let (ok, text) = self.cmd(args);
            assert!(ok, "firewall-cmd {}: {text}", args.join(" "));
            text
        })
        .collect::<Vec<_>>()
        .join("\n")
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "firewalld.log:\n{}\nfirewalld's output:\n{}\ndbus-daemon:\n{}",
            self.log("firewalld.log"),
            self.log("firewalld.out"),
            self.log("dbus.log")
        )
    }
}

impl Drop for Firewalld {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for child in self.daemon.iter_mut().chain([&mut self.bus]) {
            stop(child);
        }
    }
}

/// SIGTERM (firewalld removes its table on it), then SIGKILL after [`SOON`]; reaped.
fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + SOON;
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn log_file(dir: &Path, name: &str) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap()
}

/// A system bus that only root uses: the policy of dbus's system.conf without its service
/// activation, its user switch and the machine's own socket.
fn bus_conf(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

/// Runs gearnat in the host namespace with the test's bus, echoing what it printed.
fn gearnat(host: &TestHost, fw: &Firewalld, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gearnat"));
    cmd.env("GEARNAT_RUNTIME", "netns")
        .env("DBUS_SYSTEM_BUS_ADDRESS", fw.bus_address())
        .arg("--state-dir")
        .arg(host.state_dir())
        .args(args);
    let out = common::echoed(args, output_in(host.host_ns(), cmd));
    assert_eq!(out.status.code(), Some(0), "gearnat {}", args.join(" "));
    out
}

/// firewalld's reject (`reject with icmpx admin-prohibited`) reaches a TCP client as an
/// ICMP host-unreachable: the connect fails at once, it does not time out.
fn rejected(ns: &str, to: &str) {
    let r = tcp_request(ns, addr(to), Duration::from_secs(2));
    match r {
        Err(e) if e.kind() == io::ErrorKind::HostUnreachable => {}
        other => panic!("{ns} -> {to}: expected firewalld's reject, got {other:?}"),
    }
}

/// firewalld's chains in `ns`, by name, as `nft list table inet firewalld` prints them.
fn firewalld_chains(ns: &str) -> BTreeMap<String, String> {
    let out = common::exec(ns, &["nft", "list", "table", "inet", "firewalld"]);
    assert!(out.status.success(), "nft list table inet firewalld");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut chains = BTreeMap::new();
    for block in text.split("\n\tchain ").skip(1) {
        let (name, rest) = block.split_once(" {\n").unwrap();
        let body = rest.split("\t}\n").next().unwrap();
        chains.insert(name.to_string(), body.to_string());
    }
    chains
}

/// Every chain of `before` is in `after` unchanged, and none of them leads to a chain that
/// was not there: firewalld keeps a zone's chains once it made them, unused.
fn same_rules_in_force(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) {
    for (name, body) in before {
        assert_eq!(
            after.get(name),
            Some(body),
            "firewalld's chain {name} changed"
        );
        for new in after.keys().filter(|n| !before.contains_key(*n)) {
            let leads = [format!("jump {new}\n"), format!("goto {new}\n")];
            assert!(
                !leads.iter().any(|l| body.contains(l.as_str())),
                "firewalld's chain {name} leads to {new}, made since"
            );
        }
    }
}

fn deployment(tag: &str) -> String {
    format!(
        r#"{{ "IdPrefix": "{tag}", "Containers": [
  {{ "Name": "web", "Count": 1, "PublicPorts": [{{"Internal": 80, "External": 6060}}],
     "Links": [{{"To": "db"}}] }},
  {{ "Name": "db", "Count": 1, "PublicPorts": [{{"Internal": 5432, "External": 4000}}] }} ] }}"#
    )
}

#[test]
fn the_bridge_joins_firewalds_trusted_zone_and_leaves_it() {
    if !require_root() {
        return;
    }
    if common::which("firewalld").is_none() || common::which("firewall-cmd").is_none() {
        eprintln!("skipped: needs firewalld (apt-get install firewalld)");
        return;
    }
    let started = Instant::now();
    let host = TestHost::new("gfw1");
    // Bridged traffic between instances passes netfilter, as on a host with Docker.
    common::set_bridge_nf(host.host_ns(), true);
    // Declared after the host: dropped first, so firewalld stops before its namespace goes.
    let fw = Firewalld::start(host.host_ns());
    eprintln!("firewalld answered after {:?}", started.elapsed());
    let before = fw.settings();
    let rules_before = firewalld_chains(host.host_ns());

    let bridge = format!("gnf{}", std::process::id());
    let tag = host.tag().to_string();
    let files = tempfile::tempdir().unwrap();
    let file = write_file(&files, "web.json", &deployment(&tag));
    let file = file.to_str().unwrap();
    let apply = ["apply", "--bridge", &bridge, file];
    let out = gearnat(&host, &fw, &apply);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let added = format!("firewall: firewalld is running; added {bridge} to zone trusted");
    assert!(stdout.contains(&added), "{stdout}");
    assert_eq!(fw.ok(&["--zone=trusted", "--list-interfaces"]), bridge);

    let (web, db) = (format!("{tag}web-1"), format!("{tag}db-1"));
    let db_addr = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("+ netns (new) {db} ")))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no address for {db} in:\n{stdout}"))
        .to_string();
    let _web = serve_tcp(&web, addr("0.0.0.0:80"), "web");
    let _db = serve_tcp(&db, addr("0.0.0.0:5432"), "db");
    let _outside = serve_tcp(host.client_ns(), addr("192.0.2.2:7000"), "outside");
    let (public, link) = ("192.0.2.1:6060", "127.0.0.1:5432");
    let (out_to_client, direct) = ("192.0.2.2:7000", format!("{db_addr}:5432"));

    // With the bridge in trusted: the mapping, the link, an instance's own connection to
    // another host, and one between instances on the bridge.
    assert_eq!(reach(host.client_ns(), public), "web");
    assert_eq!(reach(&web, link), "db");
    assert_eq!(reach(&web, out_to_client), "outside");
    assert_eq!(reach(&web, &direct), "db");

    // Without it, firewalld's default zone rejects what the instances start themselves;
    // what a DNAT rule sent passes its `ct status dnat accept`.
    fw.ok(&["--zone=trusted", &format!("--remove-interface={bridge}")]);
    rejected(&web, out_to_client);
    rejected(&web, &direct);
    assert_eq!(reach(host.client_ns(), public), "web");
    assert_eq!(reach(&web, link), "db");
    let out = gearnat(&host, &fw, &["status", "--bridge", &bridge]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = format!(
        "gearnat: warning: firewalld is running (table inet firewalld): {bridge} is in none of \
         its zones"
    );
    assert!(stderr.contains(&warning), "{stderr}");

    // The next apply puts it back, though the deployment itself is in sync.
    let out = gearnat(&host, &fw, &apply);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("in sync; nothing to change"), "{stdout}");
    assert!(stdout.contains(&added), "{stdout}");
    assert_eq!(reach(&web, out_to_client), "outside");
    let out = gearnat(&host, &fw, &["status", "--bridge", &bridge]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));

    // `down` takes the bridge out, and firewalld holds what it held before the apply.
    let down = ["down", "--bridge", &bridge, file];
    let out = gearnat(&host, &fw, &down);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let removed = format!("firewall: removed {bridge} from firewalld zone trusted");
    assert!(stdout.contains(&removed), "{stdout}");
    assert_eq!(fw.zone_of(&bridge), "no zone");
    assert_eq!(fw.settings(), before);
    same_rules_in_force(&rules_before, &firewalld_chains(host.host_ns()));

    // A bridge the user bound to another zone is left there, by apply and by down.
    fw.ok(&["--zone=internal", &format!("--add-interface={bridge}")]);
    let out = gearnat(&host, &fw, &apply);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("firewall:"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
    assert_eq!(fw.zone_of(&bridge), "internal");
    let out = gearnat(&host, &fw, &down);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("firewall:"));
    assert_eq!(fw.zone_of(&bridge), "internal");
    fw.ok(&["--zone=internal", &format!("--remove-interface={bridge}")]);
    assert_eq!(fw.settings(), before);
    same_rules_in_force(&rules_before, &firewalld_chains(host.host_ns()));

    // A binding to trusted the user made permanent is the user's: down leaves it.
    let permanent = ["--permanent", "--zone=trusted"];
    fw.ok(&[&permanent[..], &[&format!("--add-interface={bridge}")]].concat());
    fw.ok(&["--zone=trusted", &format!("--add-interface={bridge}")]);
    gearnat(&host, &fw, &apply);
    let out = gearnat(&host, &fw, &down);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("firewall:"));
    assert_eq!(fw.zone_of(&bridge), "trusted");
    fw.ok(&[&permanent[..], &[&format!("--remove-interface={bridge}")]].concat());
    fw.ok(&["--zone=trusted", &format!("--remove-interface={bridge}")]);
    assert_eq!(fw.settings(), before);
    eprintln!("test took {:?}", started.elapsed());
}
