//! Nothing but the declared mappings is reachable: scans from the outside client find only the
//! published host ports and none of the instances' own addresses; packets for 127.0.0.1 sent
//! from outside to the host or to an instance are dropped; the state directory is 0700.
//!
//! Each test ends by removing the protection it tested, by hand, and showing that the same
//! probe then gets through: the probes are real, and gearnat's chains are what stops them.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use common::{addr, exec, require_root, serve_tcp, serve_udp, tcp_request, udp_request, TestHost};
use gearnat::netns::{self, Netns};

const TIMEOUT: Duration = Duration::from_secs(1);
/// A dropped SYN is never answered; a closed port answers at once with a reset.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const SCAN_WORKERS: usize = 32;

/// `web` publishes 80 on 6060 and 8080 on a host-picked port (4000); `dns` publishes UDP 53 on
/// 5353; `app` links to web (so it has gearnat's table and route_localnet on its eth0).
fn deployment(tag: &str) -> String {
    format!(
        r#"{{
  "IdPrefix": "{tag}",
  "Containers": [
    {{ "Name": "web", "Count": 1,
       "PublicPorts": [{{"Internal": 80, "External": 6060}}, {{"Internal": 8080}}] }},
    {{ "Name": "dns", "Count": 1,
       "PublicPorts": [{{"Internal": 53, "External": 5353, "Protocol": "udp"}}] }},
    {{ "Name": "app", "Count": 1, "Links": [{{"To": "web"}}] }}
  ]
}}"#
    )
}

fn apply(host: &TestHost, dir: &tempfile::TempDir) -> PathBuf {
    let file = dir.path().join("sec.json");
    fs::write(&file, deployment(host.tag())).unwrap();
    let out = host.run(&["apply", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "apply failed");
    file
}

fn instance_addr(ns: &str) -> Ipv4Addr {
    let out = exec(ns, &["ip", "-4", "-o", "addr", "show", "eth0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text.split_whitespace().nth(3).expect("an address on eth0");
    cidr.split('/').next().unwrap().parse().unwrap()
}

/// The ports among `ports` of `ip` that accept a TCP connection from namespace `ns`, probed by
/// a bounded number of threads (threads started inside a namespace stay in it).
fn open_ports(ns: &str, ip: Ipv4Addr, ports: &BTreeSet<u16>) -> BTreeSet<u16> {
    let ns = Netns::open_named(ns).unwrap();
    let ports: Vec<u16> = ports.iter().copied().collect();
    netns::run_in(&ns, || {
        let next = AtomicUsize::new(0);
        let open = Mutex::new(BTreeSet::new());
        thread::scope(|s| {
            for _ in 0..SCAN_WORKERS {
                s.spawn(|| {
                    while let Some(&port) = ports.get(next.fetch_add(1, Ordering::SeqCst)) {
                        let to = SocketAddr::from((ip, port));
                        if TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).is_ok() {
                            open.lock().unwrap().insert(port);
                        }
                    }
                });
            }
        });
        open.into_inner().unwrap()
    })
    .unwrap()
}

fn nft(ns: &str, args: &[&str]) {
    let mut all = vec!["nft"];
    all.extend_from_slice(args);
    let out = exec(ns, &all);
    assert!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_scan_from_outside_finds_only_the_published_ports() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gs01");
    let tag = host.tag().to_string();
    let files = tempfile::tempdir().unwrap();
    apply(&host, &files);
    let (web, dns, app) = (
        format!("{tag}web-1"),
        format!("{tag}dns-1"),
        format!("{tag}app-1"),
    );
    // Every instance listens on more than it publishes; the host on loopback and on all
    // addresses of its own (the host's own services are its business, not gearnat's).
    let listening: [(&str, &[u16]); 3] = [
        (&web, &[80, 8080, 22]),
        (&dns, &[53, 9000]),
        (&app, &[3000, 27017]),
    ];
    let mut servers = Vec::new();
    for (ns, ports) in listening {
        for port in ports {
            servers.push(serve_tcp(ns, SocketAddr::from(([0; 4], *port)), ns));
        }
    }
    let _udp = serve_udp(&dns, addr("0.0.0.0:53"), "dns");
    let _own = serve_tcp(host.host_ns(), addr("127.0.0.1:7777"), "host-loopback");
    let client = host.client_ns();
    let reply = (0..20).find_map(|_| tcp_request(client, addr("192.0.2.1:6060"), TIMEOUT).ok());
    assert_eq!(reply.as_deref(), Some(web.as_str()), "the mapping works");

    // The host: 1..2000, gearnat's range start, and every port anyone listens on.
    let mut ports: BTreeSet<u16> = (1..=2000).chain(4000..=4100).collect();
    ports.extend([5353, 6060, 7777, 8080, 9000, 3000, 27017]);
    let open = open_ports(client, common::HOST_ADDR, &ports);
    assert_eq!(open, BTreeSet::from([4000, 6060]), "open on the host");

    // The instances' own addresses, on every port they listen on: nothing, not even the ports
    // they publish (those are reached through the host's ports only).
    for (ns, ports) in listening {
        let ip = instance_addr(ns);
        let ports: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(open_ports(client, ip, &ports), BTreeSet::new(), "{ns} {ip}");
    }
    let dns_ip = instance_addr(&dns);
    let direct = udp_request(client, SocketAddr::from((dns_ip, 53)), "q", TIMEOUT);
    assert!(direct.is_err(), "UDP to {dns_ip}:53 answered: {direct:?}");
    let mapped = udp_request(client, addr("192.0.2.1:5353"), "q", TIMEOUT);
    assert_eq!(mapped.unwrap(), "dns");

    // The instances still reach each other and the outside answers them: only new connections
    // from outside the pool are dropped.
    let web_ip = instance_addr(&web);
    let to_web = tcp_request(&app, SocketAddr::from((web_ip, 22)), TIMEOUT).unwrap();
    assert_eq!(to_web, web);
    let _outside = serve_tcp(client, addr("0.0.0.0:8000"), "outside");
    let out = tcp_request(&dns, addr("192.0.2.2:8000"), TIMEOUT);
    assert_eq!(
        out.unwrap(),
        "outside",
        "an instance reaches an outside server"
    );

    // Without gearnat's forward chain, the host routes the client straight to an instance.
    nft(
        host.host_ns(),
        &["flush", "chain", "ip", "gearnat", "forward"],
    );
    let open = open_ports(client, web_ip, &BTreeSet::from([22]));
    assert_eq!(open, BTreeSet::from([22]), "the probe is real");
}

/// Makes instance `ns` send packets for 127.0.0.1 out of its eth0 to `via`, as a hostile
/// neighbour on the bridge can: its own loopback routes deleted, a route for 127.0.0.1 through
/// `via`, and route_localnet on so that its kernel lets such packets out.
fn aim_loopback_at(ns: &str, via: Ipv4Addr) {
    let via = via.to_string();
    let steps: [&[&str]; 4] = [
        &["sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"],
        &["ip", "route", "del", "local", "127.0.0.1", "table", "local"],
        &[
            "ip",
            "route",
            "del",
            "local",
            "127.0.0.0/8",
            "table",
            "local",
        ],
        &[
            "ip",
            "route",
            "add",
            "127.0.0.1/32",
            "via",
            &via,
            "dev",
            "eth0",
        ],
    ];
    for args in steps {
        let out = exec(ns, args);
        assert!(
            out.status.success(),
            "{ns}: {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Sends three datagrams from namespace `ns` to `to` without waiting for anything.
fn send_udp(ns: &str, to: SocketAddr) {
    let ns = Netns::open_named(ns).unwrap();
    netns::run_in(&ns, || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3 {
            socket.send_to(b"probe", to).unwrap();
        }
    })
    .unwrap();
    thread::sleep(Duration::from_millis(300));
}

/// Packets for 127.0.0.1 from outside are dropped (CVE-2020-8558). The host has route_localnet
/// on its bridge, and a linking instance on its eth0, so that DNAT from 127.0.0.1 works; they
/// would also accept packets *to* 127.0.0.1 arriving there. Here one instance aims datagrams at
/// a UDP service bound to 127.0.0.1 on the host, and another at one bound to 127.0.0.1 in the
/// linking instance: neither service receives anything. With the guard chains flushed by hand
/// the same datagrams reach both services, which shows the packets really arrive and the guard
/// is what stops them. (UDP rather than TCP: a one-way datagram is the attack, as on a syslog or
/// DNS service; a TCP handshake would also need the reply from 127.0.0.1 to make it back.)
#[test]
fn packets_for_loopback_from_outside_are_dropped() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gs02");
    let tag = host.tag().to_string();
    let files = tempfile::tempdir().unwrap();
    apply(&host, &files);
    let (web, dns, app) = (
        format!("{tag}web-1"),
        format!("{tag}dns-1"),
        format!("{tag}app-1"),
    );
    let gateway = Ipv4Addr::new(10, 211, 0, 1);
    let target = addr("127.0.0.1:7777");
    let on_host = serve_udp(host.host_ns(), target, "host-loopback");
    let in_app = serve_udp(&app, target, "app-loopback");
    let _web = serve_tcp(&web, addr("0.0.0.0:80"), "web");
    aim_loopback_at(&dns, gateway);
    aim_loopback_at(&web, instance_addr(&app));
    // The local routes are gone in the probing instances, but their veths work.
    assert!(tcp_request(&dns, addr("10.211.0.1:6060"), TIMEOUT).is_ok());
    // And the services work locally.
    assert_eq!(
        udp_request(&app, target, "q", TIMEOUT).unwrap(),
        "app-loopback"
    );
    let app_served = in_app.served();

    send_udp(&dns, target);
    send_udp(&web, target);
    assert_eq!(
        on_host.served(),
        0,
        "the host's 127.0.0.1 service got a datagram"
    );
    assert_eq!(
        in_app.served(),
        app_served,
        "{app}'s 127.0.0.1 service got a datagram"
    );

    nft(
        host.host_ns(),
        &["flush", "chain", "ip", "gearnat", "guard"],
    );
    nft(&app, &["flush", "chain", "ip", "gearnat", "guard"]);
    send_udp(&dns, target);
    send_udp(&web, target);
    assert!(on_host.served() > 0, "the probe is real");
    assert!(in_app.served() > app_served, "the probe is real");
}

/// The state directory gearnat creates is 0700, its deployments folder too, and no file in it
/// is readable by others.
#[test]
fn the_state_directory_is_private() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gs03");
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("sec.json");
    fs::write(&file, deployment(host.tag())).unwrap();
    let state = files.path().join("new/state");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gearnat"));
    cmd.arg("--state-dir")
        .arg(&state)
        .args(["apply", "--runtime", "netns"])
        .arg(&file);
    let out = common::output_in(host.host_ns(), cmd);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("deployments")), 0o700);
    let mut seen = 0;
    for dir in [state.clone(), state.join("deployments")] {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                seen += 1;
                assert_eq!(
                    mode(&path) & 0o077,
                    0,
                    "{} is {:o}",
                    path.display(),
                    mode(&path)
                );
            }
        }
    }
    assert!(seen >= 3, "reservations, record, resolved file");
}
