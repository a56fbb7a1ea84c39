//! Harness for end-to-end tests: a private "host" network namespace with an "outside client"
//! namespace joined to it by a veth, the built `gearnat` binary run inside the host, and small
//! TCP/UDP servers and clients placed in any namespace.
//!
//! ```text
//!   <tag>-<pid>-c (client)          <tag>-<pid>-h (host: gearnat runs here)
//!   ext0 192.0.2.2/24  <── veth ──>  ext0 192.0.2.1/24
//!   default via 192.0.2.1
//! ```
//!
//! The topology is made with iproute2, not with gearnat's own code, so the end-to-end tests do
//! not check gearnat against itself. Use `host.tag()` as the deployment's IdPrefix: [`Drop`]
//! removes every `/run/netns/<tag>-<pid>-*` namespace, the instances' included.
//!
//! `gearnat` is started from a thread that entered the host namespace, not with
//! `ip netns exec`: that command also gives the process a private mount namespace, and a
//! namespace gearnat creates there (`/run/netns/<instance>`) would vanish when it exits.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use gearnat::netns::{self, Netns};

/// The host's address on the client link.
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The outside client's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The interface joining host and client, on both sides.
pub const LINK_IF: &str = "ext0";
/// Longest a test server runs, whether or not it is stopped.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(120);

/// True when running as root; otherwise says the test is skipped.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root");
    false
}

/// A host namespace and an outside client namespace, removed on drop with every namespace
/// whose name starts with [`TestHost::tag`].
pub struct TestHost {
    tag: String,
    host: String,
    client: String,
    state_dir: tempfile::TempDir,
}

impl TestHost {
    /// Makes `<tag>-<pid>-h` and `<tag>-<pid>-c` (the pid keeps concurrent runs of the same
    /// test apart). Tags must be distinct per test; the cleanup removes every namespace whose
    /// name starts with [`TestHost::tag`], `<tag>-<pid>-`.
    pub fn new(tag: &str) -> TestHost {
        assert!(
            tag.len() >= 3 && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "tag {tag:?}: at least 3 characters, letters, digits or '-'"
        );
        // Ends in '-' so that no other pid's tag is a prefix of this one.
        let tag = format!("{tag}-{}-", std::process::id());
        let state_dir = tempfile::Builder::new()
            .prefix(&format!("gearnat-{tag}-"))
            .tempdir()
            .expect("creating the state directory");
        // As gearnat makes its own: private (a wider one is warned about on every run).
        {
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(0o700);
            std::fs::set_permissions(state_dir.path(), private).expect("chmod 700 state dir");
        }
        let test_host = TestHost {
            host: format!("{tag}h"),
            client: format!("{tag}c"),
            tag,
            state_dir,
        };
        // Leftovers of a crashed run with the same pid.
        test_host.remove_namespaces();
        test_host.build_topology();
        test_host
    }

    fn build_topology(&self) {
        let (h, c) = (self.host.as_str(), self.client.as_str());
        let host_cidr = format!("{HOST_ADDR}/24");
        let client_cidr = format!("{CLIENT_ADDR}/24");
        let gateway = HOST_ADDR.to_string();
        let steps: &[&[&str]] = &[
            &["netns", "add", h],
            &["netns", "add", c],
            &[
                "-n", h, "link", "add", LINK_IF, "type", "veth", "peer", "name", LINK_IF, "netns",
                c,
            ],
            &["-n", h, "addr", "add", &host_cidr, "dev", LINK_IF],
            &["-n", c, "addr", "add", &client_cidr, "dev", LINK_IF],
            &["-n", h, "link", "set", "lo", "up"],
            &["-n", c, "link", "set", "lo", "up"],
            &["-n", h, "link", "set", LINK_IF, "up"],
            &["-n", c, "link", "set", LINK_IF, "up"],
            &["-n", c, "route", "add", "default", "via", &gateway],
        ];
        for args in steps {
            let out = Command::new("ip").args(*args).output().expect("running ip");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// `<tag>-<pid>-`: prefix of every namespace this host owns; the deployment's IdPrefix in
    /// tests, so that instance ids (and their namespaces) are `<tag>-<pid>-<container>-<n>`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Name of the host namespace (`<tag>-<pid>-h`).
    pub fn host_ns(&self) -> &str {
        &self.host
    }

    /// Name of the outside client namespace (`<tag>-<pid>-c`).
    pub fn client_ns(&self) -> &str {
        &self.client
    }

    /// gearnat's state directory for this host.
    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// Runs `gearnat --state-dir <dir> ARGS...` in the host namespace.
    pub fn gearnat<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gearnat"));
        // These tests are about the netns runtime; on a host running Docker, `auto` would
        // pick docker. An explicit --runtime still wins.
        cmd.env("GEARNAT_RUNTIME", "netns");
        cmd.arg("--state-dir").arg(self.state_dir()).args(args);
        output_in(&self.host, cmd)
    }

    /// Removes every `/run/netns/<tag>-<pid>-*` namespace.
    fn remove_namespaces(&self) {
        let Ok(entries) = std::fs::read_dir(netns::RUN_DIR) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&self.tag) {
                if let Err(e) = netns::delete_named(&name) {
                    eprintln!("cleanup: {e}");
                }
            }
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.remove_namespaces();
    }
}

/// Runs `cmd` in the named namespace and waits for it. The process is started from a thread
/// inside the namespace and inherits it; its mount namespace stays the host's.
pub fn output_in(ns_name: &str, mut cmd: Command) -> Output {
    let ns = Netns::open_named(ns_name).unwrap_or_else(|e| panic!("{e}"));
    netns::run_in(&ns, move || cmd.output())
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("starting a command in {ns_name}: {e}"))
}

/// `ip netns exec NS ARGS...`: for read-only tools such as nft, ss or sysctl.
pub fn exec(ns_name: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns_name])
        .args(args)
        .output()
        .expect("running ip netns exec")
}

/// The whole ruleset of the namespace, as `nft list ruleset` prints it.
pub fn nft_list(ns_name: &str) -> String {
    let out = exec(ns_name, &["nft", "list", "ruleset"]);
    assert!(
        out.status.success(),
        "nft list ruleset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test server in some namespace; stops when dropped (or after [`SERVER_LIFETIME`]).
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// The address it listens on (with the port chosen when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections (TCP) it has answered, or datagrams (UDP) it has received.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// How often a server's loop looks at its stop flag.
const POLL: Duration = Duration::from_millis(20);

/// Listens on `addr` in the named namespace and answers each connection with `reply`, then
/// closes it.
pub fn serve_tcp(ns_name: &str, addr: SocketAddr, reply: &str) -> Server {
    let ns = Netns::open_named(ns_name).unwrap_or_else(|e| panic!("{e}"));
    // The socket is created inside the namespace and stays there; the accept loop needs no
    // namespace of its own.
    let listener = netns::run_in(&ns, move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("listening on {addr} in {ns_name}: {e}"));
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let addr = listener.local_addr().expect("listener address");
    let reply = reply.to_string();
    spawn_server(addr, move |stop, served| {
        let deadline = Instant::now() + SERVER_LIFETIME;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                    if stream.write_all(reply.as_bytes()).is_ok() {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
                Err(e) => panic!("accepting on {addr}: {e}"),
            }
        }
    })
}

/// Binds `addr` (UDP) in the named namespace and answers each datagram with `reply`.
pub fn serve_udp(ns_name: &str, addr: SocketAddr, reply: &str) -> Server {
    let ns = Netns::open_named(ns_name).unwrap_or_else(|e| panic!("{e}"));
    let socket = netns::run_in(&ns, move || UdpSocket::bind(addr))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("binding {addr} in {ns_name}: {e}"));
    socket.set_read_timeout(Some(POLL)).expect("read timeout");
    let addr = socket.local_addr().expect("socket address");
    let reply = reply.to_string();
    spawn_server(addr, move |stop, served| {
        let deadline = Instant::now() + SERVER_LIFETIME;
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            match socket.recv_from(&mut buf) {
                Ok((_, peer)) => {
                    // Counted before the reply: a client that has its reply must find the
                    // datagram counted.
                    served.fetch_add(1, Ordering::SeqCst);
                    let _ = socket.send_to(reply.as_bytes(), peer);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("receiving on {addr}: {e}"),
            }
        }
    })
}

fn spawn_server(
    addr: SocketAddr,
    run: impl FnOnce(Arc<AtomicBool>, Arc<AtomicUsize>) + Send + 'static,
) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let (stop_flag, counter) = (stop.clone(), served.clone());
    let thread = thread::Builder::new()
        .name(format!("server {addr}"))
        .spawn(move || run(stop_flag, counter))
        .expect("starting a server thread");
    Server {
        addr,
        stop,
        served,
        thread: Some(thread),
    }
}

/// Connects to `addr` from the named namespace and reads the reply until the server closes.
pub fn tcp_request(ns_name: &str, addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    let ns = Netns::open_named(ns_name).map_err(io::Error::other)?;
    netns::run_in(&ns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    })
    .map_err(io::Error::other)?
}

/// Sends `payload` to `addr` (UDP) from the named namespace and waits for one reply.
pub fn udp_request(
    ns_name: &str,
    addr: SocketAddr,
    payload: &str,
    timeout: Duration,
) -> io::Result<String> {
    let ns = Netns::open_named(ns_name).map_err(io::Error::other)?;
    let payload = payload.to_string();
    netns::run_in(&ns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(timeout))?;
        socket.send_to(payload.as_bytes(), addr)?;
        let mut buf = [0u8; 2048];
        let (len, _) = socket.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
    })
    .map_err(io::Error::other)?
}
pub mod containers;
mod kernel;
mod nft;
mod state;
#[allow(unused_imports)]
pub use kernel::*;
#[allow(unused_imports)]
pub use nft::*;

/// The path of program `name` on PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|p| p.join(name))
        .find(|p| p.is_file())
}
#[allow(unused_imports)]
pub use state::*;

impl TestHost {
    /// Runs gearnat in the host namespace and echoes the command and what it printed (shown
    /// when the test fails).
    pub fn run(&self, args: &[&str]) -> Output {
        echoed(args, self.gearnat(args))
    }

    /// `gearnat apply FILE`, which must succeed; what it printed.
    pub fn apply_ok(&self, file: &Path) -> String {
        let out = self.run(&["apply", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "apply failed");
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Prints `$ gearnat ARGS` and what that run printed (shown when the test fails); returns it.
pub fn echoed(args: &[&str], out: Output) -> Output {
    eprintln!(
        "$ gearnat {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Writes a deployment file into the test's own folder.
pub fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The reply from `to` seen from `ns`, retried a bounded number of times (a fresh veth may take
/// a moment to pass traffic); fails the test when it never answers.
pub fn reach(ns: &str, to: &str) -> String {
    let to = addr(to);
    let mut last = String::new();
    for _ in 0..30 {
        match tcp_request(ns, to, Duration::from_secs(2)) {
            Ok(reply) => return reply,
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("{ns} cannot reach {to}: {last}");
}

/// Whether bridged traffic in `ns` passes the ip netfilter hooks (br_netfilter; the sysctl is
/// per network namespace).
pub fn set_bridge_nf(ns: &str, on: bool) {
    let value = if on { "1" } else { "0" };
    let netns = Netns::open_named(ns).unwrap();
    netns::run_in(&netns, || {
        gearnat::link::sysctl_set("net.bridge.bridge-nf-call-iptables", value)
    })
    .unwrap()
    .expect("br_netfilter must be available (modprobe br_netfilter)");
}
