//! Kernel tests of the namespace helper, the link layer and the netns runtime.
//!
//! They need root, and never change the root network namespace: every bridge, veth and sysctl
//! lives in namespaces the test creates (`gnt-<pid>-<n>`) and a guard deletes them even when an
//! assertion fails. Only `/run/netns` itself is shared with the rest of the system.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use gearnat::link;
use gearnat::model::Proto;
use gearnat::netns::{self, Netns};
use gearnat::runtime::{self, Network};

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root (creates network namespaces)");
    false
}

/// Namespaces a test made; deleted on drop, also when the test panics.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn new() -> Self {
        Namespaces { names: Vec::new() }
    }

    /// A unique name, deleted with the guard (whoever creates it).
    fn name(&mut self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "gnt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.names.push(name.clone());
        name
    }

    fn create(&mut self) -> Netns {
        let name = self.name();
        netns::create_named(&name).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            if let Err(e) = netns::delete_named(name) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// A host namespace with the bridge of `Network::default()` in it.
fn host_with_bridge(guard: &mut Namespaces) -> (Netns, Network) {
    let host = guard.create();
    let net = Network::default();
    assert!(runtime::ensure_bridge(&host, &net).unwrap());
    (host, net)
}

/// Listens on `addr` inside `ns`, answers each connection with `reply`, up to `count` times.
fn serve(
    ns: &Netns,
    addr: SocketAddr,
    reply: &'static str,
    count: usize,
) -> thread::JoinHandle<()> {
    // The socket is made inside the namespace and stays there; accepting needs no setns.
    let listener = netns::run_in(ns, move || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().take(count) {
            let mut stream = stream.unwrap();
            stream.write_all(reply.as_bytes()).unwrap();
        }
    })
}

/// Connects from inside `ns` and reads the reply.
fn request(ns: &Netns, addr: SocketAddr) -> std::io::Result<String> {
    request_within(ns, addr, Duration::from_secs(3))
}

fn request_within(ns: &Netns, addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    netns::run_in(ns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    })
    .unwrap()
}

#[test]
fn named_namespaces_work_with_iproute2() {
    if !is_root() {
        return;
    }
    let mut guard = Namespaces::new();
    let ns = guard.create();
    let name = ns.name().to_string();
    assert!(netns::exists_named(&name));

    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains(&name));
    let exec = Command::new("ip")
        .args(["netns", "exec", &name, "ip", "-o", "link"])
        .output();
    let links = String::from_utf8_lossy(&exec.unwrap().stdout).to_string();
    assert!(links.contains(": lo:"), "{links}");
    assert_eq!(
        links.lines().count(),
        1,
        "a fresh namespace has only lo: {links}"
    );

    // The closure runs inside: its thread's namespace is the one created.
    let inside = netns::run_in(&ns, || Netns::current().unwrap().id().unwrap()).unwrap();
    assert_eq!(inside, ns.id().unwrap());
    assert_ne!(inside, Netns::current().unwrap().id().unwrap());
    assert_eq!(Netns::open_named(&name).unwrap().id().unwrap(), inside);

    assert!(matches!(
        netns::create_named(&name),
        Err(netns::Error::Exists { .. })
    ));
    assert!(netns::delete_named(&name).unwrap());
    assert!(!netns::exists_named(&name));
    assert!(!netns::delete_named(&name).unwrap());
    // The handle still keeps the namespace alive.
    assert!(netns::run_in(&ns, || link::link_exists("lo"))
        .unwrap()
        .unwrap());
}

#[test]
fn unbound_namespace_file_is_reused() {
    if !is_root() {
        return;
    }
    let mut guard = Namespaces::new();
    let name = guard.name();
    std::fs::write(netns::named_path(&name), "").unwrap();
    assert!(!netns::exists_named(&name));
    netns::create_named(&name).unwrap();
    assert!(netns::exists_named(&name));
}

#[test]
fn instances_reach_each_other_over_the_bridge() {
    if !is_root() {
        return;
    }
    let mut guard = Namespaces::new();
    let (host, net) = host_with_bridge(&mut guard);
    assert!(
        !runtime::ensure_bridge(&host, &net).unwrap(),
        "second ensure changes nothing"
    );
    assert!(runtime::bridge_in_place(&host, &net).unwrap());

    let (a, b) = (guard.name(), guard.name());
    let (addr_a, addr_b) = (Ipv4Addr::new(10, 211, 0, 2), Ipv4Addr::new(10, 211, 0, 3));
    assert!(!runtime::instance_in_place(&host, &net, &a, addr_a).unwrap());
    let wired_a = runtime::ensure_instance(&host, &net, &a, addr_a).unwrap();
    assert!(wired_a.created_netns && wired_a.changed);
    let wired_b = runtime::ensure_instance(&host, &net, &b, addr_b).unwrap();
    assert!(wired_b.created_netns && wired_b.changed);

    // Idempotent: nothing to do the second time, and the read-only check agrees.
    let again = runtime::ensure_instance(&host, &net, &a, addr_a).unwrap();
    assert!(!again.created_netns && !again.changed);
    assert!(runtime::instance_in_place(&host, &net, &a, addr_a).unwrap());
    assert!(runtime::instance_in_place(&host, &net, &b, addr_b).unwrap());

    let target = SocketAddr::from((addr_a, 7000));
    let server = serve(&wired_a.netns, target, "hello from a", 2);
    assert_eq!(request(&wired_b.netns, target).unwrap(), "hello from a");
    assert_eq!(request(&host, target).unwrap(), "hello from a");
    server.join().unwrap();

    // Instance to gateway (the bridge's address in the host).
    let gateway = SocketAddr::from((net.gateway(), 7001));
    let server = serve(&host, gateway, "hello from the host", 1);
    assert_eq!(
        request(&wired_b.netns, gateway).unwrap(),
        "hello from the host"
    );
    server.join().unwrap();

    // Nothing appeared in the root namespace.
    assert!(!link::link_exists(&link::host_ifname(&a)).unwrap());
}

#[test]
fn changed_address_is_reconciled() {
    if !is_root() {
        return;
    }
    let mut guard = Namespaces::new();
    let (host, net) = host_with_bridge(&mut guard);
    let id = guard.name();
    let wired = runtime::ensure_instance(&host, &net, &id, Ipv4Addr::new(10, 211, 1, 10)).unwrap();
    let moved = Ipv4Addr::new(10, 211, 1, 11);
    assert!(!runtime::instance_in_place(&host, &net, &id, moved).unwrap());
    let again = runtime::ensure_instance(&host, &net, &id, moved).unwrap();
    assert!(again.changed && !again.created_netns);
    assert!(runtime::instance_in_place(&host, &net, &id, moved).unwrap());

    let listing = Command::new("ip")
        .args([
            "netns",
            "exec",
            &id,
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            runtime::INNER_IF,
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    assert!(listing.contains("10.211.1.11/16"), "{listing}");
    assert!(
        !listing.contains("10.211.1.10/"),
        "old address left: {listing}"
    );

    let target = SocketAddr::from((moved, 7002));
    let server = serve(&wired.netns, target, "moved", 1);
    assert_eq!(request(&host, target).unwrap(), "moved");
    server.join().unwrap();
}

#[test]
fn removed_instance_is_unreachable_and_comes_back() {
    if !is_root() {
        return;
    }
    let mut guard = Namespaces::new();
    let (host, net) = host_with_bridge(&mut guard);
    let id = guard.name();
    let address = Ipv4Addr::new(10, 211, 2, 2);
    let wired = runtime::ensure_instance(&host, &net, &id, address).unwrap();
    let host_if = link::host_ifname(&id);
    assert!(netns::run_in(&host, || link::link_exists(&host_if))
        .unwrap()
        .unwrap());

    runtime::remove_instance(&host, &net, &id, false).unwrap();
    assert!(!netns::run_in(&host, || link::link_exists(&host_if))
        .unwrap()
        .unwrap());
    assert!(netns::exists_named(&id), "the namespace is kept");
    let inner = netns::run_in(&wired.netns, || link::link_exists(runtime::INNER_IF));
    assert!(
        !inner.unwrap().unwrap(),
        "the inner end goes with the host end"
    );
    assert!(!runtime::instance_in_place(&host, &net, &id, address).unwrap());
    let gone = request_within(
        &host,
        SocketAddr::from((address, 7003)),
        Duration::from_millis(500),
    );
    assert!(gone.is_err());
    // Removing again is no error.
    runtime::remove_instance(&host, &net, &id, false).unwrap();

    let back = runtime::ensure_instance(&host, &net, &id, address).unwrap();
    assert!(back.changed && !back.created_netns);
    let server = serve(&back.netns, SocketAddr::from((address, 7003)), "back", 1);
    assert_eq!(
        request(&host, SocketAddr::from((address, 7003))).unwrap(),
        "back"
    );
    server.join().unwrap();

    runtime::remove_instance(&host, &net, &id, true).unwrap();
    assert!(!netns::exists_named(&id));
}

#[test]
fn veth_of_a_recreated_namespace_is_replaced() {
    if !is_root() {
        return;
    }
    let mut guard = Namespaces::new();
    let (host, net) = host_with_bridge(&mut guard);
    let id = guard.name();
    let address = Ipv4Addr::new(10, 211, 3, 2);
    let first = runtime::ensure_instance(&host, &net, &id, address).unwrap();
    // Another namespace under the same name while the first lives on (held by `first`): the
    // veth's peer is in the old one.
    netns::delete_named(&id).unwrap();
    let second = runtime::ensure_instance(&host, &net, &id, address).unwrap();
    assert!(second.created_netns && second.changed);
    assert_ne!(first.netns.id().unwrap(), second.netns.id().unwrap());
    assert!(runtime::instance_in_place(&host, &net, &id, address).unwrap());
    let server = serve(&second.netns, SocketAddr::from((address, 7004)), "new", 1);
    assert_eq!(
        request(&host, SocketAddr::from((address, 7004))).unwrap(),
        "new"
    );
    server.join().unwrap();
}

#[test]
fn errors_name_the_step_and_object() {
    if !is_root() {
        return;
    }
    let mut guard = Namespaces::new();
    let host = guard.create();
    let net = Network::default();
    let id = guard.name();
    // No bridge yet: a change for the read-only check, an error for ensure.
    assert!(!runtime::bridge_in_place(&host, &net).unwrap());
    let e = runtime::ensure_instance(&host, &net, &id, Ipv4Addr::new(10, 211, 0, 9)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("wiring instance {id} to bridge gearnat0: bridge gearnat0 does not exist")
    );
    assert!(
        netns::exists_named(&id),
        "the namespace was made before the wiring failed"
    );
    assert!(!runtime::instance_in_place(&host, &net, &id, Ipv4Addr::new(10, 211, 0, 9)).unwrap());
    // An eth0 already inside the instance.
    runtime::ensure_bridge(&host, &net).unwrap();
    let instance = Netns::open_named(&id).unwrap();
    netns::run_in(&instance, || {
        link::ensure_bridge("eth0", "10.9.9.9/24".parse().unwrap())
    })
    .unwrap()
    .unwrap();
    let e = runtime::ensure_instance(&host, &net, &id, Ipv4Addr::new(10, 211, 0, 9)).unwrap_err();
    let host_if = link::host_ifname(&id);
    assert_eq!(
        e.to_string(),
        format!(
            "wiring instance {id} to bridge gearnat0: creating veth {host_if} for {id}: File exists"
        )
    );
}

#[test]
fn sysctls_are_per_namespace() {
    if !is_root() {
        return;
    }
    let mut guard = Namespaces::new();
    let ns = guard.create();
    let root_forward = link::sysctl_get("net.ipv4.ip_forward").unwrap();
    let root_localnet = link::sysctl_get("net.ipv4.conf.lo.route_localnet").unwrap();

    let inside = netns::run_in(&ns, || {
        let forward = "net.ipv4.ip_forward";
        let flipped = if link::sysctl_get(forward)? == "1" {
            "0"
        } else {
            "1"
        };
        link::sysctl_set(forward, flipped)?;
        assert_eq!(link::sysctl_get(forward)?, flipped);
        // An interface name with a dot needs the slash form.
        link::ensure_bridge("br.0", "10.9.0.1/24".parse().unwrap())?;
        let key = link::conf_key("ipv4", "br.0", "route_localnet");
        assert_eq!(link::sysctl_get(&key)?, "0");
        link::sysctl_set(&key, "1")?;
        assert_eq!(link::sysctl_get(&key)?, "1");
        link::sysctl_set("net.ipv4.conf.lo.route_localnet", "1")?;
        link::sysctl_get("net.ipv4.conf.lo.route_localnet")
    });
    assert_eq!(inside.unwrap().unwrap(), "1");

    assert_eq!(
        link::sysctl_get("net.ipv4.ip_forward").unwrap(),
        root_forward
    );
    assert_eq!(
        link::sysctl_get("net.ipv4.conf.lo.route_localnet").unwrap(),
        root_localnet
    );
    let e = link::sysctl_set("kernel.hostname", "x").unwrap_err();
    assert!(e.to_string().contains("not under net"), "{e}");
}

#[test]
fn listening_ports_reads_the_threads_namespace() {
    if !is_root() {
        return;
    }
    let mut guard = Namespaces::new();
    let ns = guard.create();
    let empty = netns::run_in(&ns, || link::listening_ports(Proto::Tcp))
        .unwrap()
        .unwrap();
    assert!(
        empty.is_empty(),
        "a fresh namespace has no listeners: {empty:?}"
    );

    let (tcp, tcp6, udp, tcp_ports, udp_ports) = netns::run_in(&ns, || {
        // Wildcard addresses: `lo` is still down, so 127.0.0.1 is not there yet.
        let tcp = TcpListener::bind("0.0.0.0:0").unwrap();
        let tcp6 = TcpListener::bind("[::]:0").unwrap();
        let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        let tcp_ports = link::listening_ports(Proto::Tcp).unwrap();
        let udp_ports = link::listening_ports(Proto::Udp).unwrap();
        (tcp, tcp6, udp, tcp_ports, udp_ports)
    })
    .unwrap();
    let port = |a: SocketAddr| a.port();
    assert!(
        tcp_ports.contains(&port(tcp.local_addr().unwrap())),
        "{tcp_ports:?}"
    );
    assert!(
        tcp_ports.contains(&port(tcp6.local_addr().unwrap())),
        "{tcp_ports:?}"
    );
    assert!(!tcp_ports.contains(&port(udp.local_addr().unwrap())));
    assert_eq!(
        udp_ports.into_iter().collect::<Vec<_>>(),
        vec![port(udp.local_addr().unwrap())]
    );
}

#[test]
fn run_in_resumes_panics_and_leaves_the_caller_alone() {
    if !is_root() {
        return;
    }
    let mut guard = Namespaces::new();
    let ns = guard.create();
    let before = Netns::current().unwrap().id().unwrap();
    let panicked = std::panic::catch_unwind(|| netns::run_in(&ns, || panic!("inside")));
    assert!(panicked.is_err());
    // The caller's thread never left its namespace.
    assert_eq!(Netns::current().unwrap().id().unwrap(), before);
    // Borrowing from the caller works: the thread is scoped.
    let name = String::from("lo");
    let found = netns::run_in(&ns, || link::link_exists(&name))
        .unwrap()
        .unwrap();
    assert!(found);
}
