//! Helpers of the docker runtime's end-to-end tests, for either engine's command line
//! (`docker`, or `podman` behind its Docker-compatible socket): images made offline from
//! Debian's busybox-static, a container's network namespace, TCP exchanges, a client outside
//! the host, and a running `gearnat watch`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use gearnat::netns::{self, Netns};

pub const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &["sh", "httpd", "nc", "sleep", "echo", "cat"];
/// Longest wait for something that should happen "within seconds".
pub const SOON: Duration = Duration::from_secs(10);

/// Runs `tool` and returns what it did, failed or not.
pub fn quiet(tool: &str, args: &[&str]) -> Output {
    Command::new(tool).args(args).output().unwrap()
}

/// `<engine> import` of a root folder with busybox and its applets, running `script` with sh.
/// `engine` is the command line to run (`docker`, or `podman` with its options).
pub fn import(mut engine: Command, name: &str, script: &str) {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in ["bin", "www", "tmp"] {
        std::fs::create_dir(r.join(dir)).unwrap();
    }
    std::fs::copy(BUSYBOX, r.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
    }
    std::fs::write(r.join("www/index.html"), "web\n").unwrap();
    let cmd = serde_json::json!(["sh", "-c", script]).to_string();
    let mut tar = Command::new("tar")
        .args(["-C", r.to_str().unwrap(), "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let program = engine.get_program().to_string_lossy().into_owned();
    let out = engine
        .args(["import", "--change", &format!("CMD {cmd}"), "-", name])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(tar.wait().unwrap().success());
    assert!(
        out.status.success(),
        "{program} import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` inside the network namespace of the container whose main process is `pid` (the
/// engine's `{{.State.Pid}}`, as printed); an error while the container is missing or stopped.
pub fn in_pid<T: Send>(pid: &str, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let pid: u32 = pid
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| std::io::Error::other(format!("no running container (pid {pid:?})")))?;
    let ns = Netns::open_pid(pid).map_err(std::io::Error::other)?;
    netns::run_in(&ns, f).map_err(std::io::Error::other)
}

/// What a server sends before closing, after `request`.
pub fn exchange(addr: SocketAddr, request: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(request.as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

/// The body of `GET /` from `addr`.
pub fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let reply = exchange(addr, "GET / HTTP/1.0\r\n\r\n")?;
    match reply.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("not HTTP: {reply:?}"))),
    }
}

/// Retries `f` (bounded by [`SOON`]) until it succeeds.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> std::io::Result<T>) -> T {
    let deadline = Instant::now() + SOON;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A client outside the host: a namespace of the test's own, joined to the root namespace by a
/// veth whose root end holds an address of the TEST-NET-2 range (198.51.100.0/24, RFC 5737).
/// Dropping it deletes the namespace, and the veth pair with it.
pub struct OutsideClient {
    ns: String,
    host: Ipv4Addr,
}

impl OutsideClient {
    /// The namespace is `<tag>client`.
    pub fn new(tag: &str) -> OutsideClient {
        let pid = std::process::id();
        let base = (pid % 60) as u8 * 4;
        let (host, client) = (
            Ipv4Addr::new(198, 51, 100, base + 1),
            Ipv4Addr::new(198, 51, 100, base + 2),
        );
        let ns = format!("{tag}client");
        let root_if = format!("gno{pid}");
        quiet("ip", &["netns", "delete", &ns]);
        let steps: [&[&str]; 8] = [
            &["netns", "add", &ns],
            &[
                "link", "add", &root_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
            &["addr", "add", &format!("{host}/30"), "dev", &root_if],
            &["link", "set", &root_if, "up"],
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{client}/30"),
                "dev",
                "eth0",
            ],
            &["-n", &ns, "link", "set", "eth0", "up"],
            &["-n", &ns, "link", "set", "lo", "up"],
            &[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &host.to_string(),
            ],
        ];
        // Made before the steps run, so that a failing step still removes the namespace.
        let outside = OutsideClient {
            ns: ns.clone(),
            host,
        };
        for args in steps {
            let out = quiet("ip", args);
            assert!(out.status.success(), "ip {}: {:?}", args.join(" "), out);
        }
        outside
    }

    /// The body of `GET /` from the host's address on this client's link, port `port`.
    pub fn http_get(&self, port: u16) -> std::io::Result<String> {
        let ns = Netns::open_named(&self.ns).map_err(std::io::Error::other)?;
        let to = SocketAddr::from((self.host, port));
        netns::run_in(&ns, || http_get(to)).map_err(std::io::Error::other)?
    }
}

impl Drop for OutsideClient {
    fn drop(&mut self) {
        quiet("ip", &["netns", "delete", &self.ns]);
    }
}

/// A running `gearnat watch` and its output lines (stdout and stderr, so that `-v`'s log is
/// seen too); killed on drop.
pub struct Watch {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watch {
    /// Starts `cmd` (a `gearnat ... watch`) with its stdout and stderr read line by line.
    pub fn start(mut cmd: Command) -> Watch {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        forward_lines(child.stdout.take().unwrap(), tx.clone());
        forward_lines(child.stderr.take().unwrap(), tx);
        Watch {
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for an output line containing `text`.
    pub fn wait_for(&mut self, text: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return l.clone();
        }
        let deadline = Instant::now() + SOON;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "watch did not print {text:?} within {SOON:?}; it printed {:?}",
            self.seen
        );
    }

    /// Forgets what watch has printed so far: [`Watch::wait_for`] then looks only at later
    /// lines.
    pub fn forget_lines(&mut self) {
        self.seen.clear();
        while self.lines.try_recv().is_ok() {}
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub fn terminate(&mut self) {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + SOON;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "watch exited with {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("watch did not stop within {SOON:?} of SIGTERM");
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.wait_for("watch: stopped (SIGTERM)");
    }
}

/// Sends each line of `from` to `to` (and echoes it to the test's output).
fn forward_lines(from: impl Read + Send + 'static, to: mpsc::Sender<String>) {
    thread::spawn(move || {
        let mut text = String::new();
        let mut reader = std::io::BufReader::new(from);
        loop {
            text.clear();
            match std::io::BufRead::read_line(&mut reader, &mut text) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    eprint!("watch| {text}");
                    if to.send(text.trim_end().to_string()).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// gearnat's rules in iptables that name `bridge`.
pub fn iptables_rules_of(bridge: &str) -> Vec<String> {
    let out = quiet("iptables", &["-S"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(bridge))
        .map(str::to_string)
        .collect()
}

/// Nothing of a test's wiring is left in the root namespace: no veth of `ids`, no `bridge`, no
/// iptables rule naming it, and nothing of `subnet` or `tag` in the host table.
pub fn assert_wiring_gone(ids: &[String], bridge: &str, subnet: &str, tag: &str) {
    for id in ids {
        let veth = gearnat::link::host_ifname(id);
        assert!(
            !quiet("ip", &["link", "show", &veth]).status.success(),
            "{veth} left"
        );
    }
    assert!(
        !quiet("ip", &["link", "show", bridge]).status.success(),
        "bridge left"
    );
    assert_eq!(iptables_rules_of(bridge), Vec::<String>::new());
    let table = quiet("nft", &["list", "table", "ip", "gearnat"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(!text.contains(subnet), "host table left:\n{text}");
    assert!(!text.contains(tag), "elements left:\n{text}");
}
