//! Kernel tests: each runs on its own thread inside a private network namespace, which the
//! kernel frees with the thread, so nothing outside it is touched even when a test fails. They
//! need root (CAP_SYS_ADMIN for the namespace, CAP_NET_ADMIN for nf_tables) and `nft`, and say
//! so when skipped.

use std::net::SocketAddrV4;
use std::process::Command;
use std::time::Instant;

use super::*;
use crate::model::Proto;
use crate::ruleset::{ActualTable, Element, Layout, Owner, TableChange};

/// Runs `f` on a fresh thread in a fresh network namespace; `None` when not root.
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: kernel tests need root to create network namespaces");
        return None;
    }
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET) on a test thread");
        f()
    });
    Some(
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
    )
}

/// Runs nft with `args` (and `stdin`) in the calling thread's namespace; its stdout.
fn nft(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running nft");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?} failed: {}\ninput:\n{}",
        String::from_utf8_lossy(&out.stderr),
        stdin.unwrap_or("")
    );
    String::from_utf8(out.stdout).unwrap()
}

fn generation_now() -> u32 {
    super::generation().unwrap()
}

fn host_layout() -> Layout {
    Layout::Host {
        pool: "10.211.0.0/16".parse().unwrap(),
    }
}

fn owner(deployment: &str, instance: &str) -> Owner {
    Owner {
        deployment: deployment.into(),
        instance: instance.into(),
    }
}

fn port(proto: Proto, host_port: u16, target: &str, instance: &str) -> Element {
    Element::Port {
        proto,
        host_port,
        target: target.parse().unwrap(),
        owner: owner("seed", instance),
    }
}

fn link(proto: Proto, dial: &str, via: &str, instance: &str) -> Element {
    let (dial, via): (SocketAddrV4, SocketAddrV4) = (dial.parse().unwrap(), via.parse().unwrap());
    Element::Link {
        proto,
        dial,
        via,
        owner: owner("seed", instance),
    }
}

fn host_elements() -> Vec<Element> {
    vec![
        port(Proto::Tcp, 6060, "10.211.0.2:80", "rockmongo-1"),
        port(Proto::Tcp, 6061, "10.211.0.3:80", "rockmongo-2"),
        port(Proto::Udp, 5353, "10.211.0.4:53", "dns-1"),
    ]
}

fn instance_elements() -> Vec<Element> {
    vec![
        link(Proto::Tcp, "127.0.0.1:27017", "10.211.0.1:4000", "web-1"),
        link(Proto::Tcp, "127.0.0.2:27017", "10.211.0.1:4001", "web-1"),
        link(Proto::Udp, "127.0.0.1:53", "10.211.0.1:5353", "web-1"),
    ]
}

fn create(layout: Layout, add: Vec<Element>) -> TableChange {
    TableChange {
        create: Some(layout),
        add,
        ..TableChange::default()
    }
}

fn sorted(mut elements: Vec<Element>) -> Vec<Element> {
    elements.sort();
    elements
}

#[test]
fn empty_namespace_has_no_table_and_empty_change_sends_nothing() {
    in_netns(|| {
        assert_eq!(dump().unwrap(), None);
        commit(&TableChange::default()).unwrap();
        assert_eq!(dump().unwrap(), None);
    });
}

#[test]
fn host_round_trip_add_remove_delete() {
    in_netns(|| {
        let layout = host_layout();
        commit(&create(layout, host_elements())).unwrap();
        let actual = dump().unwrap().expect("table after create");
        assert_eq!(actual.comment.as_deref(), Some(layout.comment().as_str()));
        assert_eq!(actual.elements, sorted(host_elements()));
        assert_eq!(actual.unowned, 0);

        // nft sees the comments where it shows them.
        let listed = nft(&["list", "table", "ip", "gearnat"], None);
        assert!(
            listed.contains("comment \"gearnat r4 host pool 10.211.0.0/16\""),
            "{listed}"
        );
        assert!(listed.contains("6060 comment \"gearnat:seed/rockmongo-1\" : 10.211.0.2 . 80"));

        let removed = host_elements()[..2].to_vec();
        let added = vec![port(Proto::Tcp, 7000, "10.211.0.9:8080", "api-1")];
        let change = TableChange {
            remove: removed,
            add: added.clone(),
            ..TableChange::default()
        };
        commit(&change).unwrap();
        let mut expected = vec![host_elements()[2].clone()];
        expected.extend(added);
        assert_eq!(dump().unwrap().unwrap().elements, sorted(expected));

        // Retargeting: remove and add the same key in one batch.
        let old = host_elements()[2].clone();
        let new = port(Proto::Udp, 5353, "10.211.0.5:5353", "dns-2");
        let change = TableChange {
            remove: vec![old],
            add: vec![new.clone()],
            ..TableChange::default()
        };
        commit(&change).unwrap();
        let actual = dump().unwrap().unwrap();
        assert!(actual.elements.contains(&new), "{actual:?}");
        assert_eq!(actual.elements.len(), 2);

        commit(&TableChange {
            delete_table: true,
            ..TableChange::default()
        })
        .unwrap();
        assert_eq!(dump().unwrap(), None);
    });
}

/// A batch on the generation a snapshot read goes in and leaves exactly what
/// `ActualTable::after` predicts; after anyone else's commit, the same batch is refused on that
/// generation and committed again without it.
#[test]
fn commit_on_a_generation() {
    in_netns(|| {
        let layout = host_layout();
        let (none, generation) = snapshot().unwrap();
        assert_eq!(none, None);
        let change = create(layout, host_elements());
        let made = commit_on(&change, generation).unwrap();
        // The batch's own transaction is the one generation step since.
        assert_eq!(made, Some(next_generation(generation)), "nothing moved");
        assert_eq!(generation_now(), next_generation(generation));
        let (read, generation) = snapshot().unwrap();
        assert_eq!(read, ActualTable::after(None, &change));
        assert_eq!(generation_now(), generation);

        let change = TableChange {
            remove: host_elements()[..1].to_vec(),
            add: vec![port(Proto::Tcp, 7000, "10.211.0.9:8080", "api-1")],
            ..TableChange::default()
        };
        let predicted = ActualTable::after(read.as_ref(), &change);
        // Another table's commit moves the generation: the condition fails, the change still
        // goes in.
        nft(&["add", "table", "inet", "other"], None);
        assert_eq!(generation_now(), next_generation(generation));
        assert_eq!(
            commit_on(&change, generation).unwrap(),
            None,
            "the ruleset moved"
        );
        assert_eq!(dump().unwrap(), predicted);
        // On the generation read now, the next batch fits again.
        let (_, generation) = snapshot().unwrap();
        let again = TableChange {
            add: vec![port(Proto::Tcp, 7001, "10.211.0.9:8081", "api-1")],
            ..TableChange::default()
        };
        assert!(commit_on(&again, generation).unwrap().is_some());
        assert_eq!(
            dump().unwrap().unwrap().elements.len(),
            host_elements().len() + 1
        );
    });
}

#[test]
fn instance_round_trip_and_replace() {
    in_netns(|| {
        commit(&create(Layout::Instance, instance_elements())).unwrap();
        let actual = dump().unwrap().unwrap();
        assert_eq!(actual.comment.as_deref(), Some("gearnat r4 instance"));
        assert_eq!(actual.elements, sorted(instance_elements()));

        // Replacing the table as a whole in one batch.
        let change = TableChange {
            delete_table: true,
            create: Some(host_layout()),
            add: host_elements(),
            ..TableChange::default()
        };
        commit(&change).unwrap();
        let actual = dump().unwrap().unwrap();
        assert_eq!(actual.comment, Some(host_layout().comment()));
        assert_eq!(actual.elements, sorted(host_elements()));
    });
}

#[test]
fn foreign_tables_and_unowned_elements() {
    in_netns(|| {
        // Another tool's tables, one with a map of the same name and shape as gearnat's.
        let foreign = "table inet filter {
	chain input {
		type filter hook input priority 0; policy accept;
		tcp dport 22 accept
	}
}
table ip other {
	map tcp_ports {
		type inet_service : ipv4_addr . inet_service
		elements = { 80 comment \"gearnat:seed/imposter-1\" : 10.0.0.9 . 80 }
	}
}
";
        nft(&["-f", "-"], Some(foreign));
        let before = nft(&["list", "ruleset"], None);

        commit(&create(host_layout(), host_elements())).unwrap();
        nft(
            &[
                "add",
                "element",
                "ip",
                "gearnat",
                "tcp_ports",
                "{ 9999 : 10.0.0.1 . 1 }",
            ],
            None,
        );
        let hand = "{ 9998 comment \"by hand\" : 10.0.0.1 . 2 }";
        nft(
            &["add", "element", "ip", "gearnat", "tcp_ports", hand],
            None,
        );
        let actual = dump().unwrap().unwrap();
        assert_eq!(actual.elements, sorted(host_elements()));
        assert_eq!(actual.unowned, 2);

        commit(&TableChange {
            delete_table: true,
            ..TableChange::default()
        })
        .unwrap();
        assert_eq!(nft(&["list", "ruleset"], None), before);
    });
}

#[test]
fn table_made_by_hand_is_read_as_unowned() {
    in_netns(|| {
        // A set where gearnat has a map, and one owned element in a map of gearnat's shape.
        let by_hand = "table ip gearnat {
	set tcp_ports {
		type inet_service
		elements = { 1, 2 }
	}
	map udp_links {
		type ipv4_addr . inet_service : ipv4_addr . inet_service
		elements = { 127.0.0.1 . 53 comment \"gearnat:seed/dns-1\" : 10.0.0.1 . 53 }
	}
}
";
        nft(&["-f", "-"], Some(by_hand));
        let actual = dump().unwrap().unwrap();
        assert_eq!(actual.comment, None);
        assert_eq!(
            actual.elements,
            [link(Proto::Udp, "127.0.0.1:53", "10.0.0.1:53", "dns-1")]
        );
        assert_eq!(actual.unowned, 2);
    });
}

#[test]
fn failing_batch_changes_nothing() {
    in_netns(|| {
        commit(&create(host_layout(), host_elements())).unwrap();
        let before = dump().unwrap();
        let listed = nft(&["list", "ruleset"], None);

        // The existing element sits in the middle of a message: the error still names it.
        let change = TableChange {
            remove: vec![host_elements()[0].clone()],
            add: vec![
                port(Proto::Tcp, 5000, "10.211.0.8:5000", "new-1"),
                host_elements()[1].clone(),
                port(Proto::Tcp, 5001, "10.211.0.8:5001", "new-2"),
                port(Proto::Udp, 5000, "10.211.0.8:5000", "new-1"),
            ],
            ..TableChange::default()
        };
        let error = commit(&change).unwrap_err();
        assert_eq!(
            error.to_string(),
            "adding element tcp_ports 6061 (gearnat:seed/rockmongo-2): File exists"
        );
        assert_eq!(dump().unwrap(), before);
        assert_eq!(nft(&["list", "ruleset"], None), listed);

        // Removing what is not there fails too, and names it.
        let missing = port(Proto::Tcp, 1, "10.211.0.8:1", "gone-1");
        let change = TableChange {
            remove: vec![missing],
            ..TableChange::default()
        };
        let error = commit(&change).unwrap_err();
        assert_eq!(
            error.to_string(),
            "removing element tcp_ports 1 (gearnat:seed/gone-1): No such file or directory"
        );

        // Creating a table that exists is refused as a whole, with its elements.
        let error = commit(&create(host_layout(), vec![])).unwrap_err();
        assert!(matches!(error, Error::CreateTable { .. }), "{error}");
        assert_eq!(dump().unwrap(), before);
    });
}

fn many_ports(n: u16) -> Vec<Element> {
    (0..n)
        .map(|i| {
            let proto = if i % 2 == 0 { Proto::Tcp } else { Proto::Udp };
            let target =
                SocketAddrV4::new([10, 211, (i / 250) as u8, (i % 250) as u8 + 2].into(), 80);
            Element::Port {
                proto,
                host_port: 40000 + i,
                target,
                owner: owner("bench", &format!("web-{}", i + 1)),
            }
        })
        .collect()
}

#[test]
fn ten_thousand_elements() {
    in_netns(|| {
        let elements = many_ports(10_000);
        let change = create(host_layout(), elements.clone());
        let start = Instant::now();
        commit(&change).unwrap();
        let committed = start.elapsed();
        let start = Instant::now();
        let actual = dump().unwrap().unwrap();
        let dumped = start.elapsed();
        eprintln!("10,000 elements: commit {committed:?}, dump {dumped:?}");
        assert_eq!(actual.elements, sorted(elements.clone()));

        // Remove half and add another 5,000, in one batch.
        let more: Vec<Element> = many_ports(15_000).split_off(10_000);
        let change = TableChange {
            remove: elements[..5000].to_vec(),
            add: more.clone(),
            ..TableChange::default()
        };
        let start = Instant::now();
        commit(&change).unwrap();
        eprintln!("remove 5,000 and add 5,000: {:?}", start.elapsed());
        let mut expected = elements[5000..].to_vec();
        expected.extend(more);
        let before = dump().unwrap().unwrap();
        assert_eq!(before.elements, sorted(expected.clone()));

        // A large batch failing deep inside one message changes nothing and names the element.
        let mut add: Vec<Element> = many_ports(20_000).split_off(15_000);
        add.insert(3210, expected[1234].clone());
        let change = TableChange {
            remove: expected[..100].to_vec(),
            add,
            ..TableChange::default()
        };
        let error = commit(&change).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("adding element {}: File exists", describe(&expected[1234]))
        );
        assert_eq!(dump().unwrap().unwrap(), before);
    });
}

/// 60,000 mappings (every port 3000..33000 for TCP and UDP): `cargo test --release --lib
/// netfilter -- --ignored --nocapture` prints the times.
#[test]
#[ignore = "benchmark"]
fn sixty_thousand_elements() {
    in_netns(|| {
        let elements: Vec<Element> = (0..60_000u32)
            .map(|i| Element::Port {
                proto: if i % 2 == 0 { Proto::Tcp } else { Proto::Udp },
                host_port: 3000 + (i / 2) as u16,
                target: SocketAddrV4::new((0x0ad3_0000 + i).into(), 80),
                owner: owner("bench", &format!("web-{}", i + 1)),
            })
            .collect();
        let start = Instant::now();
        commit(&create(host_layout(), elements.clone())).unwrap();
        let committed = start.elapsed();
        let start = Instant::now();
        let actual = dump().unwrap().unwrap();
        eprintln!(
            "60,000 elements: commit {committed:?}, dump {:?}",
            start.elapsed()
        );
        assert_eq!(actual.elements, sorted(elements));
    });
}

/// The same table loaded by `nft -f` from `render` and committed over netlink lists the same:
/// as nft text, as JSON (every attribute nft knows, handles included) and as the kernel's
/// expressions and element bytes (`nft --debug=netlink list`); and the kernel's table, chain,
/// set and rule objects are the same bytes.
fn golden(layout: Layout, elements: Vec<Element>) {
    let text = render(&layout, &elements);
    let list = || {
        let listings = ["", "-j", "--debug=netlink"].map(|option| {
            let mut args = vec!["list", "table", "ip", "gearnat"];
            if !option.is_empty() {
                args.insert(0, option);
            }
            nft(&args, None)
        });
        let kinds = [
            libc::NFT_MSG_GETTABLE,
            libc::NFT_MSG_GETCHAIN,
            libc::NFT_MSG_GETSET,
            libc::NFT_MSG_GETRULE,
        ];
        let objects = kinds.map(|msg| dump::raw_objects(msg as u16));
        (listings, objects)
    };
    let by_nft = in_netns(move || {
        nft(&["-f", "-"], Some(&text));
        list()
    });
    let by_commit = in_netns(move || {
        commit(&create(layout, elements)).unwrap();
        list()
    });
    if let (Some(by_nft), Some(by_commit)) = (by_nft, by_commit) {
        for (by_commit, by_nft) in by_commit.0.iter().zip(&by_nft.0) {
            assert_eq!(
                element_lines_sorted(by_commit),
                element_lines_sorted(by_nft)
            );
        }
        // Tables, chains, sets and rules as the kernel holds them: names, hooks, flags, key and
        // data types, userdata, expressions, handles.
        assert!(by_nft.1.iter().all(|objects| !objects.is_empty()));
        assert_eq!(by_commit.1, by_nft.1);
    }
}

/// The debug listing shows each map's elements in hash order, which a random seed per set
/// decides: sort each run of element lines.
fn element_lines_sorted(listing: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut run: Vec<&str> = Vec::new();
    for line in listing.lines() {
        if line.starts_with("\telement ") {
            run.push(line);
            continue;
        }
        run.sort_unstable();
        out.append(&mut run);
        out.push(line);
    }
    run.sort_unstable();
    out.append(&mut run);
    out.join("\n")
}

#[test]
fn golden_host() {
    golden(host_layout(), host_elements());
}

#[test]
fn golden_host_odd_pools() {
    for pool in ["172.20.16.0/20", "10.9.8.0/24", "10.9.8.7/32", "0.0.0.0/0"] {
        golden(
            Layout::Host {
                pool: pool.parse().unwrap(),
            },
            host_elements(),
        );
    }
}

#[test]
fn golden_instance() {
    golden(Layout::Instance, instance_elements());
}

/// Runs `ip` with `args` in the calling thread's namespace.
fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("running ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// Connects to `dial` and reads what the listener behind the DNAT wrote.
fn greeting_via(dial: &str) -> String {
    use std::io::Read;
    let dial = dial.parse().unwrap();
    let timeout = std::time::Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&dial, timeout)
        .unwrap_or_else(|e| panic!("connecting to {dial} through the DNAT: {e}"));
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// The rules do what they say: connections to a host port or a link's loopback address reach
/// the target through the maps.
#[test]
fn traffic_follows_the_maps() {
    in_netns(|| {
        use std::io::Write;
        ip(&["link", "set", "lo", "up"]);
        // The kernel here has no dummy interfaces; a veth pair serves.
        ip(&[
            "link", "add", "inst0", "type", "veth", "peer", "name", "inst1",
        ]);
        ip(&["addr", "add", "10.211.0.2/16", "dev", "inst0"]);
        ip(&["link", "set", "inst0", "up"]);
        ip(&["link", "set", "inst1", "up"]);
        let listener = std::net::TcpListener::bind("10.211.0.2:80").unwrap();
        // Not joined: should a connection fail, the test fails instead of waiting on accept.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let _ = stream.unwrap().write_all(b"hello from 10.211.0.2:80");
            }
        });
        let to_target = port(Proto::Tcp, 6060, "10.211.0.2:80", "web-1");
        commit(&create(host_layout(), vec![to_target])).unwrap();
        assert_eq!(greeting_via("127.0.0.1:6060"), "hello from 10.211.0.2:80");
        assert_eq!(greeting_via("10.211.0.2:6060"), "hello from 10.211.0.2:80");

        let dial = link(Proto::Tcp, "127.0.0.3:27017", "10.211.0.2:80", "web-1");
        let change = TableChange {
            delete_table: true,
            create: Some(Layout::Instance),
            add: vec![dial],
            ..TableChange::default()
        };
        commit(&change).unwrap();
        assert_eq!(greeting_via("127.0.0.3:27017"), "hello from 10.211.0.2:80");
    });
}

/// The inodes of the netfilter sockets of the calling thread's namespace, from
/// /proc/thread-self/net/netlink (protocol 12 is NETLINK_NETFILTER; the last column is the
/// inode).
fn netfilter_socket_inodes() -> Vec<u64> {
    let table = std::fs::read_to_string("/proc/thread-self/net/netlink").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            (columns.get(1) == Some(&"12")).then(|| columns.last()?.parse().ok())?
        })
        .collect()
}

#[test]
fn released_sockets_go_to_the_kernel_and_are_gone() {
    use std::os::unix::fs::MetadataExt;
    in_netns(|| {
        commit(&create(host_layout(), host_elements())).unwrap();
        // What follows a batch that removed something: the socket's release waits for the
        // kernel to free it.
        let change = TableChange {
            remove: vec![host_elements()[0].clone()],
            ..TableChange::default()
        };
        commit(&change).unwrap();
        let socket = sys::Socket::open().unwrap();
        let inode = socket.metadata().unwrap().ino();
        assert!(netfilter_socket_inodes().contains(&inode));

        let released = socket.release();
        if crate::release::io_uring_allowed() {
            assert_eq!(released, crate::release::Released::ToKernel);
        } else {
            eprintln!("io_uring disabled here: the socket was closed on a thread");
            assert_eq!(released, crate::release::Released::OnThread);
        }
        // The ring's teardown, on a kernel worker, drops the socket: it must not stay behind.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while netfilter_socket_inodes().contains(&inode) {
            assert!(
                Instant::now() < deadline,
                "socket {inode} still open after 5 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(dump().unwrap().unwrap().elements, host_elements()[1..]);
    });
}
