//! End to end over UDP: public ports and links that say `"protocol": "udp"` carry real
//! datagrams (from outside, from the host, from a linking instance, and hairpin), also when the
//! file is geard's output form; and when a mapping moves, a flow that keeps its source port
//! follows it at once, because apply deletes the conntrack entries that lead to the old target.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread::sleep;
use std::time::Duration;

use common::{require_root, serve_udp, udp_request, TestHost};

const TIMEOUT: Duration = Duration::from_millis(500);

/// `dns` publishes UDP 53 on host port 5353 and TCP 53 on a host-picked port; `app` links to
/// both of dns's ports, so it dials 127.0.0.1:53 over UDP and over TCP.
fn dns_and_app(tag: &str) -> String {
    format!(
        r#"{{
  "IdPrefix": "{tag}",
  "Containers": [
    {{ "Name": "dns", "Count": 1,
       "PublicPorts": [{{"Internal": 53, "External": 5353, "Protocol": "udp"}},
                       {{"Internal": 53}}] }},
    {{ "Name": "app", "Count": 1, "Links": [{{"To": "dns"}}] }}
  ]
}}"#
    )
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, text).unwrap();
    path
}

fn run(host: &TestHost, args: &[&str]) -> Output {
    let out = host.gearnat(args);
    eprintln!(
        "$ gearnat {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn apply_ok(host: &TestHost, file: &Path) -> String {
    let out = run(host, &["apply", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "apply failed");
    String::from_utf8(out.stdout).unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Sends a datagram from `ns` to `to` until one reply comes back (a fresh veth may take a
/// moment to pass traffic), and returns it.
fn ask(ns: &str, to: &str) -> String {
    let mut last = String::new();
    for _ in 0..20 {
        match udp_request(ns, addr(to), "q", TIMEOUT) {
            Ok(reply) => return reply,
            Err(e) => last = e.to_string(),
        }
        sleep(Duration::from_millis(50));
    }
    panic!("{ns} gets no UDP answer from {to}: {last}");
}

fn no_answer(ns: &str, to: &str) {
    let r = udp_request(ns, addr(to), "q", TIMEOUT);
    assert!(r.is_err(), "{ns} still gets an answer from {to}: {r:?}");
}

#[test]
fn udp_public_ports_and_links_carry_real_datagrams() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gu01");
    let tag = host.tag().to_string();
    let files = tempfile::tempdir().unwrap();
    let file = write(&files, "dns.json", &dns_and_app(&tag));
    let out = apply_ok(&host, &file);
    assert!(out.contains("+ host udp 5353 -> "), "{out}");
    assert!(out.contains(": PortMapping: 53/udp -> 5353"), "{out}");
    assert!(out.contains("127.0.0.1:53 -> 10.211.0.1:5353"), "{out}");

    let dns = format!("{tag}dns-1");
    let app = format!("{tag}app-1");
    let _udp = serve_udp(&dns, addr("0.0.0.0:53"), "dns-udp");
    let _tcp = common::serve_tcp(&dns, addr("0.0.0.0:53"), "dns-tcp");

    // From outside, and from the host on its own address and on loopback.
    assert_eq!(ask(host.client_ns(), "192.0.2.1:5353"), "dns-udp");
    assert_eq!(ask(host.host_ns(), "192.0.2.1:5353"), "dns-udp");
    assert_eq!(ask(host.host_ns(), "127.0.0.1:5353"), "dns-udp");
    // Through the link, UDP and TCP side by side on the same dialed address and port.
    assert_eq!(ask(&app, "127.0.0.1:53"), "dns-udp");
    let tcp = common::tcp_request(&app, addr("127.0.0.1:53"), TIMEOUT).unwrap();
    assert_eq!(tcp, "dns-tcp");
    // Hairpin: the instance reaching its own public port through the host.
    assert_eq!(ask(&dns, "10.211.0.1:5353"), "dns-udp");
    assert_eq!(ask(&dns, "192.0.2.1:5353"), "dns-udp");
    assert_eq!(ask(&app, "192.0.2.1:5353"), "dns-udp");

    // The resolved file gearnat keeps is geard's output form (Instances, Protocol udp); it
    // applies as it is, in sync.
    let resolved = host.state_dir().join("deployments/dns.json");
    let text = fs::read_to_string(&resolved).unwrap();
    assert!(text.contains("\"Protocol\": \"udp\""), "{text}");
    let copy = write(&files, "dns.json.20140422-072112", &text);
    let out = apply_ok(&host, &copy);
    assert!(out.contains("in sync"), "{out}");

    let out = run(&host, &["down", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    no_answer(host.client_ns(), "192.0.2.1:5353");
}

/// geard's output form written by hand: `Instances` pin UDP host ports (with `Protocol`), and
/// apply keeps them.
#[test]
fn geard_output_form_pins_udp_host_ports() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gu02");
    let tag = host.tag().to_string();
    let files = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{{
  "IdPrefix": "{tag}",
  "Containers": [
    {{ "Name": "log", "Count": 1, "PublicPorts": [{{"Internal": 514, "Protocol": "udp"}}] }},
    {{ "Name": "app", "Count": 1, "Links": [{{"To": "log"}}] }}
  ],
  "Instances": [
    {{ "Id": "{tag}log-1", "From": "log",
       "Ports": [{{"Internal": 514, "External": 4514, "Protocol": "udp"}}] }}
  ]
}}"#
    );
    let file = write(&files, "syslog.json.20140422-072112", &text);
    let out = apply_ok(&host, &file);
    assert!(out.contains("PortMapping: 514/udp -> 4514"), "{out}");
    let log = format!("{tag}log-1");
    let app = format!("{tag}app-1");
    let _server = serve_udp(&log, addr("0.0.0.0:514"), "logged");
    assert_eq!(ask(host.client_ns(), "192.0.2.1:4514"), "logged");
    assert_eq!(ask(&app, "127.0.0.1:514"), "logged");
}
