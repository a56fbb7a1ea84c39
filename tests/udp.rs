//! End to end over UDP: public ports and links that say `"protocol": "udp"` carry real
//! datagrams (from outside, from the host, from a linking instance, and hairpin), also when the
//! file is geard's output form; and when a mapping moves, a flow that keeps its source port
//! follows it at once, because apply deletes the conntrack entries that lead to the old target.

mod common;

use std::fs;
use std::net::UdpSocket;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use common::{addr, require_root, serve_udp, udp_request, write_file, TestHost};
use gearnat::netns::{self, Netns};

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
    let file = write_file(&files, "dns.json", &dns_and_app(&tag));
    let out = host.apply_ok(&file);
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
    // Hairpin: an instance reaching its own public port, or another's, through the host,
    // whether bridged traffic passes netfilter or not.
    for bridge_nf in [false, true] {
        common::set_bridge_nf(host.host_ns(), bridge_nf);
        assert_eq!(
            ask(&dns, "10.211.0.1:5353"),
            "dns-udp",
            "bridge-nf {bridge_nf}"
        );
        assert_eq!(
            ask(&dns, "192.0.2.1:5353"),
            "dns-udp",
            "bridge-nf {bridge_nf}"
        );
        assert_eq!(
            ask(&app, "192.0.2.1:5353"),
            "dns-udp",
            "bridge-nf {bridge_nf}"
        );
        assert_eq!(
            ask(&app, "127.0.0.1:53"),
            "dns-udp",
            "bridge-nf {bridge_nf}"
        );
    }

    // The resolved file gearnat keeps is geard's output form (Instances, Protocol udp); it
    // applies as it is, in sync.
    let resolved = host.state_dir().join("deployments/dns.json");
    let text = fs::read_to_string(&resolved).unwrap();
    assert!(text.contains("\"Protocol\": \"udp\""), "{text}");
    let copy = write_file(&files, "dns.json.20140422-072112", &text);
    let out = host.apply_ok(&copy);
    assert!(out.contains("in sync"), "{out}");

    let out = host.run(&["down", file.to_str().unwrap()]);
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
    let file = write_file(&files, "syslog.json.20140422-072112", &text);
    let out = host.apply_ok(&file);
    assert!(out.contains("PortMapping: 514/udp -> 4514"), "{out}");
    let log = format!("{tag}log-1");
    let app = format!("{tag}app-1");
    let _server = serve_udp(&log, addr("0.0.0.0:514"), "logged");
    assert_eq!(ask(host.client_ns(), "192.0.2.1:4514"), "logged");
    assert_eq!(ask(&app, "127.0.0.1:514"), "logged");
}

/// `a` and `b` each publish UDP 53 on host ports `ext_a` and `ext_b`; `app`, when `link` names
/// one of them, links to it.
fn two_servers(tag: &str, ext_a: u16, ext_b: u16, link: Option<&str>) -> String {
    let app = link.map_or(String::new(), |to| {
        format!(r#", {{ "Name": "app", "Count": 1, "Links": [{{"To": "{to}"}}] }}"#)
    });
    format!(
        r#"{{
  "IdPrefix": "{tag}",
  "Containers": [
    {{ "Name": "a", "Count": 1,
       "PublicPorts": [{{"Internal": 53, "External": {ext_a}, "Protocol": "udp"}}] }},
    {{ "Name": "b", "Count": 1,
       "PublicPorts": [{{"Internal": 53, "External": {ext_b}, "Protocol": "udp"}}] }}{app}
  ]
}}"#
    )
}

/// A UDP client in a namespace that keeps one source port for all it sends, as a resolver or a
/// syslog sender does: its datagrams are one conntrack flow.
struct SteadyClient(UdpSocket);

impl SteadyClient {
    fn new(ns: &str) -> SteadyClient {
        let ns = Netns::open_named(ns).unwrap();
        let socket = netns::run_in(&ns, || UdpSocket::bind("0.0.0.0:0"))
            .unwrap()
            .unwrap();
        SteadyClient(socket)
    }

    /// Sends one datagram to `to` and returns the reply, if one comes within the timeout.
    fn ask_once(&self, to: &str) -> Option<String> {
        let mut buf = [0u8; 512];
        // Drop late replies to earlier datagrams.
        self.0.set_nonblocking(true).unwrap();
        while self.0.recv_from(&mut buf).is_ok() {}
        self.0.set_nonblocking(false).unwrap();
        self.0.set_read_timeout(Some(TIMEOUT)).unwrap();
        self.0.send_to(b"q", addr(to)).unwrap();
        let (len, _) = self.0.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..len]).into_owned())
    }

    /// Sends until a reply comes (a fresh veth may take a moment).
    fn ask(&self, to: &str) -> String {
        (0..20)
            .find_map(|_| self.ask_once(to))
            .unwrap_or_else(|| panic!("no UDP answer from {to}"))
    }
}

/// Loads an nft script into gearnat's table in `ns` by hand (to show what the kernel does
/// without gearnat's conntrack cleanup).
fn nft_script(ns: &str, script: &str) {
    let path = std::env::temp_dir().join(format!("gearnat-test-{}-{ns}.nft", std::process::id()));
    fs::write(&path, script).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = fs::remove_file(&path);
    assert!(
        out.status.success(),
        "nft -f:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn instance_addr(ns: &str) -> String {
    let out = common::exec(ns, &["ip", "-4", "-o", "addr", "show", "eth0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text.split_whitespace().nth(3).expect("an address on eth0");
    cidr.split('/').next().unwrap().to_string()
}

/// A public port moves from instance a to instance b. A client that keeps its source port
/// would stay on a forever (shown first by retargeting the map by hand: the steady client keeps
/// reaching a while a fresh one reaches b); after `gearnat apply` its very next datagram
/// reaches b, because apply deleted the conntrack entries that led to a.
#[test]
fn a_udp_flow_follows_its_public_port_to_the_new_instance_at_once() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gu03");
    let tag = host.tag().to_string();
    let files = tempfile::tempdir().unwrap();
    let file = write_file(&files, "ct.json", &two_servers(&tag, 5353, 5354, None));
    host.apply_ok(&file);
    let (a, b) = (format!("{tag}a-1"), format!("{tag}b-1"));
    let _sa = serve_udp(&a, addr("0.0.0.0:53"), "a");
    let _sb = serve_udp(&b, addr("0.0.0.0:53"), "b");
    let client = SteadyClient::new(host.client_ns());
    assert_eq!(client.ask("192.0.2.1:5353"), "a");

    // Without cleanup: the map says b, the steady flow still reaches a.
    let (addr_a, addr_b) = (instance_addr(&a), instance_addr(&b));
    let element = |to: &str| {
        format!(
            "delete element ip gearnat udp_ports {{ 5353 }}\n\
             add element ip gearnat udp_ports {{ 5353 comment \"gearnat:ct/{a}\" : {to} . 53 }}\n"
        )
    };
    nft_script(host.host_ns(), &element(&addr_b));
    assert_eq!(ask(host.client_ns(), "192.0.2.1:5353"), "b", "a new flow");
    for _ in 0..3 {
        assert_eq!(client.ask_once("192.0.2.1:5353").as_deref(), Some("a"));
    }
    nft_script(host.host_ns(), &element(&addr_a));
    assert_eq!(client.ask_once("192.0.2.1:5353").as_deref(), Some("a"));

    // With gearnat: the port moves to b and the very next datagram of the same flow reaches b.
    fs::write(&file, two_servers(&tag, 5355, 5353, None)).unwrap();
    let out = host.apply_ok(&file);
    let line = format!("- host conntrack udp 5353 -> {a} {addr_a}:53");
    assert!(out.contains(&line), "{out}");
    assert_eq!(client.ask_once("192.0.2.1:5353").as_deref(), Some("b"));
    assert_eq!(ask(host.client_ns(), "192.0.2.1:5355"), "a");
}

/// A link's target changes from a to b: in the linking instance, a flow to 127.0.0.1:53 that
/// keeps its source port reaches b with its next datagram (and would stay on a without the
/// cleanup, shown by retargeting the link map by hand first).
#[test]
fn a_udp_flow_follows_its_link_to_the_new_target_at_once() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gu04");
    let tag = host.tag().to_string();
    let files = tempfile::tempdir().unwrap();
    let file = write_file(&files, "ct.json", &two_servers(&tag, 5353, 5354, Some("a")));
    host.apply_ok(&file);
    let (a, b, app) = (
        format!("{tag}a-1"),
        format!("{tag}b-1"),
        format!("{tag}app-1"),
    );
    let _sa = serve_udp(&a, addr("0.0.0.0:53"), "a");
    let _sb = serve_udp(&b, addr("0.0.0.0:53"), "b");
    let client = SteadyClient::new(&app);
    assert_eq!(client.ask("127.0.0.1:53"), "a");

    let element = |port: u16| {
        format!(
            "delete element ip gearnat udp_links {{ 127.0.0.1 . 53 }}\n\
             add element ip gearnat udp_links \
             {{ 127.0.0.1 . 53 comment \"gearnat:ct/{app}\" : 10.211.0.1 . {port} }}\n"
        )
    };
    nft_script(&app, &element(5354));
    assert_eq!(ask(&app, "127.0.0.1:53"), "b", "a new flow");
    for _ in 0..3 {
        assert_eq!(client.ask_once("127.0.0.1:53").as_deref(), Some("a"));
    }
    nft_script(&app, &element(5353));

    fs::write(&file, two_servers(&tag, 5353, 5354, Some("b"))).unwrap();
    let out = host.apply_ok(&file);
    let line = format!("- {app} conntrack udp 127.0.0.1:53 -> 10.211.0.1:5353");
    assert!(out.contains(&line), "{out}");
    assert_eq!(client.ask_once("127.0.0.1:53").as_deref(), Some("b"));
}
