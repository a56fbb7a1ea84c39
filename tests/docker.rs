//! End to end with a real Docker daemon: the docker runtime, `gearnat watch`, and Docker's
//! FORWARD DROP policy.
//!
//! dockerd lives in the machine's root network namespace, so these tests change it: each
//! uses names and addresses of its own (bridge `gnd<pid><letter>`, subnet 10.212.N.0/24,
//! IdPrefix `gnd-<pid><letter>-`, images `gnd-<pid>/...`, a state directory in a tempdir), and
//! [`Env`]'s drop removes everything they may have added even when they fail: containers,
//! images, bridge, veths, the DOCKER-USER rules and the host table of their pool. Traffic goes
//! only to 127.0.0.1 and to the test's own containers. The tests take a lock: they share the
//! host's `table ip gearnat`.
//!
//! The images are made offline from Debian's busybox-static (`docker import`): busybox httpd
//! serving "web", and a `nc -ll ... -e echo db` responder for the database.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use gearnat::netns::{self, Netns};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &["sh", "httpd", "nc", "sleep", "echo", "cat"];
/// Longest wait for something that should happen "within seconds".
const SOON: Duration = Duration::from_secs(10);

static SERIAL: Mutex<()> = Mutex::new(());

/// Why these tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!("needs {BUSYBOX} (apt-get install busybox-static)"));
    }
    if let Err(e) = gearnat::docker::Docker::connect() {
        return Some(format!("no Docker daemon answers ({e})"));
    }
    // The tests' `down` of their last deployment deletes the host table: never on a host
    // whose own gearnat deployments are in it.
    let table = quiet("nft", &["list", "table", "ip", "gearnat"]);
    let text = String::from_utf8_lossy(&table.stdout);
    if table.status.success() && !text.contains("pool 10.212.") {
        return Some("this host has gearnat deployments of its own in table ip gearnat".into());
    }
    None
}

/// One test's names, addresses, images and state, all removed on drop.
struct Env {
    tag: String,
    bridge: String,
    subnet: String,
    gateway: Ipv4Addr,
    port: u16,
    images: Vec<String>,
    state: tempfile::TempDir,
    files: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Env {
    /// `letter` keeps the tests of one run apart.
    fn new(letter: char, index: u8) -> Option<Env> {
        if let Some(why) = unavailable() {
            eprintln!("skipped: {why}");
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let pid = std::process::id();
        let n = (pid % 100) as u8 * 2 + index;
        let env = Env {
            tag: format!("gnd-{pid}{letter}-"),
            bridge: format!("gnd{pid}{letter}"),
            subnet: format!("10.212.{n}.0/24"),
            gateway: Ipv4Addr::new(10, 212, n, 1),
            port: 20000 + (pid % 1000) as u16 * 20 + u16::from(index) * 10,
            images: Vec::new(),
            state: tempfile::tempdir().unwrap(),
            files: tempfile::tempdir().unwrap(),
            _serial: serial,
        };
        env.cleanup();
        Some(env)
    }

    fn image(&self, name: &str, tag: u32) -> String {
        format!("gnd-{}/{name}:{tag}", std::process::id())
    }

    /// Builds the web and db images offline.
    fn build_images(&mut self) {
        let web = self.image("web", 1);
        let db = self.image("db", 1);
        import(&web, r#"trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"#);
        import(
            &db,
            r#"trap 'exit 0' TERM; nc -ll -p 27017 -e echo db & wait"#,
        );
        self.images.extend([web, db]);
    }

    /// A second tag of the web image: another image name, same content.
    fn tag_web(&mut self, tag: u32) -> String {
        let name = self.image("web", tag);
        docker(&["tag", &self.image("web", 1), &name]);
        self.images.push(name.clone());
        name
    }

    fn web_port(&self) -> u16 {
        self.port
    }

    fn db_port(&self) -> u16 {
        self.port + 1
    }

    fn id(&self, instance: &str) -> String {
        format!("{}{instance}", self.tag)
    }

    /// The deployment file: web (image `web_image`) linked to db, and `spares` instances of a
    /// container without ports.
    fn write(&self, web_image: &str, spares: u32) -> PathBuf {
        let text = format!(
            r#"{{
  "IdPrefix": "{tag}",
  "containers": [
    {{ "name": "web", "count": 1, "image": "{web_image}",
       "publicports": [{{"internal": 80, "external": {web_port}}}],
       "links": [{{"to": "db"}}],
       "environment": [{{"name": "ROLE", "value": "web"}}] }},
    {{ "name": "db", "count": 1, "image": "{db_image}",
       "publicports": [{{"internal": 27017, "external": {db_port}}}] }},
    {{ "name": "spare", "count": {spares}, "image": "{db_image}" }}
  ]
}}"#,
            tag = self.tag,
            web_port = self.web_port(),
            db_image = self.image("db", 1),
            db_port = self.db_port(),
        );
        let path = self
            .files
            .path()
            .join(format!("{}.json", self.deployment()));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn deployment(&self) -> String {
        self.tag.trim_end_matches('-').to_string()
    }

    fn gearnat(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_gearnat"))
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .args(["--bridge", &self.bridge, "--subnet", &self.subnet])
            .output()
            .unwrap();
        eprintln!(
            "$ gearnat {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn apply(&self, file: &Path) -> String {
        let out = self.gearnat(&["apply", "--runtime", "docker", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "apply failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts `gearnat watch`, killed when the returned guard drops.
    fn watch(&self) -> Watch {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gearnat"))
            .arg("--state-dir")
            .arg(self.state.path())
            .args(["watch", "--resync", "2"])
            .args(["--bridge", &self.bridge, "--subnet", &self.subnet])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            let mut text = String::new();
            let mut reader = std::io::BufReader::new(stdout);
            loop {
                text.clear();
                match std::io::BufRead::read_line(&mut reader, &mut text) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        eprint!("watch| {text}");
                        if tx.send(text.trim_end().to_string()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Watch {
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Removes whatever the test may have left: containers named with its tag, their veths,
    /// the bridge, gearnat's DOCKER-USER rules for the bridge, the host table of its pool,
    /// and its images.
    fn cleanup(&self) {
        let ids = quiet(
            "docker",
            &["ps", "-aq", "--filter", &format!("name=^{}", self.tag)],
        );
        for c in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            quiet("docker", &["rm", "-f", c]);
        }
        for inst in ["web-1", "db-1", "spare-1", "spare-2"] {
            let veth = gearnat::link::host_ifname(&self.id(inst));
            quiet("ip", &["link", "del", &veth]);
        }
        quiet("ip", &["link", "del", &self.bridge]);
        if let Err(e) = gearnat::firewall::remove(&self.bridge) {
            eprintln!("cleanup: {e}");
        }
        let table = quiet("nft", &["list", "table", "ip", "gearnat"]);
        if String::from_utf8_lossy(&table.stdout).contains(&format!("pool {}", self.subnet)) {
            quiet("nft", &["delete", "table", "ip", "gearnat"]);
        }
        for image in &self.images {
            quiet("docker", &["rmi", "-f", image]);
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A running `gearnat watch` and its output lines.
struct Watch {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watch {
    /// Waits (bounded) for an output line containing `text`.
    fn wait_for(&mut self, text: &str) -> String {
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

    /// SIGTERM, then waits (bounded) for a clean exit.
    fn terminate(&mut self) {
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

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn quiet(tool: &str, args: &[&str]) -> Output {
    Command::new(tool).args(args).output().unwrap()
}

fn docker(args: &[&str]) -> String {
    let out = quiet("docker", args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `docker import` of a root folder with busybox and its applets, running `script` with sh.
fn import(name: &str, script: &str) {
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
    let out = Command::new("docker")
        .args(["import", "--change", &format!("CMD {cmd}"), "-", name])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(tar.wait().unwrap().success());
    assert!(
        out.status.success(),
        "docker import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn container_id(name: &str) -> String {
    docker(&["inspect", "-f", "{{.Id}}", name])
}

/// Runs `f` inside container `name`'s network namespace.
/// Runs `f` inside container `name`'s network namespace; an error while the container is
/// missing or stopped.
fn in_container<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let out = quiet("docker", &["inspect", "-f", "{{.State.Pid}}", name]);
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("no running container {name}")))?;
    let ns = Netns::open_pid(pid).map_err(std::io::Error::other)?;
    netns::run_in(&ns, f).map_err(std::io::Error::other)
}

/// What a server sends before closing, after `request`.
fn exchange(addr: SocketAddr, request: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(request.as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

/// The body of `GET /` from `addr`.
fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let reply = exchange(addr, "GET / HTTP/1.0\r\n\r\n")?;
    match reply.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("not HTTP: {reply:?}"))),
    }
}

/// Retries `f` (bounded by [`SOON`]) until it succeeds.
fn eventually<T>(what: &str, mut f: impl FnMut() -> std::io::Result<T>) -> T {
    let deadline = Instant::now() + SOON;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A client outside the host: a namespace of the test's own, joined to the root namespace by a
/// veth whose root end holds an address of the TEST-NET-2 range (198.51.100.0/24, RFC 5737).
/// Dropping it deletes the namespace, and the veth pair with it.
struct OutsideClient {
    ns: String,
    host: Ipv4Addr,
}

impl OutsideClient {
    fn new(env: &Env) -> OutsideClient {
        let pid = std::process::id();
        let base = (pid % 60) as u8 * 4;
        let (host, client) = (
            Ipv4Addr::new(198, 51, 100, base + 1),
            Ipv4Addr::new(198, 51, 100, base + 2),
        );
        let ns = format!("{}client", env.tag);
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
    fn http_get(&self, port: u16) -> std::io::Result<String> {
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

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The link from inside web-1: 127.0.0.1:27017 -> host:db_port -> db-1:27017.
fn link_answers(env: &Env) -> std::io::Result<String> {
    let web = env.id("web-1");
    in_container(&web, || exchange(local(27017), ""))?
}

/// The plan's container actions.
fn container_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| {
            ["+ ", "~ ", "- "]
                .iter()
                .any(|p| l.starts_with(&format!("{p}container ")))
        })
        .collect()
}

fn forward_policy_drops() -> bool {
    let out = quiet("iptables", &["-S", "FORWARD"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l == "-P FORWARD DROP")
}

fn iptables_rules_of(bridge: &str) -> Vec<String> {
    let out = quiet("iptables", &["-S"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(bridge))
        .map(str::to_string)
        .collect()
}

/// Nothing of the test's deployment is left: no container, veth, bridge, rule or host table.
fn assert_all_gone(env: &Env) {
    let left = docker(&["ps", "-aq", "--filter", &format!("name=^{}", env.tag)]);
    assert_eq!(left, "", "containers left");
    for inst in ["web-1", "db-1", "spare-1", "spare-2"] {
        let veth = gearnat::link::host_ifname(&env.id(inst));
        assert!(
            !quiet("ip", &["link", "show", &veth]).status.success(),
            "{veth} left"
        );
    }
    assert!(
        !quiet("ip", &["link", "show", &env.bridge]).status.success(),
        "bridge left"
    );
    assert_eq!(iptables_rules_of(&env.bridge), Vec::<String>::new());
    let table = quiet("nft", &["list", "table", "ip", "gearnat"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(!text.contains(&env.subnet), "host table left:\n{text}");
    assert!(!text.contains(&env.tag), "elements left:\n{text}");
}

#[test]
fn containers_are_mapped_linked_recreated_and_removed() {
    let Some(mut env) = Env::new('a', 0) else {
        return;
    };
    env.build_images();
    let web_image = env.image("web", 1);
    let file = env.write(&web_image, 0);
    let (web, db) = (env.id("web-1"), env.id("db-1"));

    let out = env.apply(&file);
    assert!(
        out.contains(&format!("+ container {web} image {web_image}")),
        "{out}"
    );
    assert!(out.contains(&format!("+ container {db} image")), "{out}");
    let drops = forward_policy_drops();
    if drops {
        assert!(
            out.contains("firewall: iptables FORWARD policy is DROP"),
            "{out}"
        );
        assert_eq!(iptables_rules_of(&env.bridge).len(), 2);
    }

    // Public port from the host, the link inside web, and hairpin from web to its own
    // public port through the host's bridge address (forwarded: needs the DOCKER-USER rule).
    let port = env.web_port();
    assert_eq!(eventually("host -> web", || http_get(local(port))), "web\n");
    assert_eq!(eventually("link web -> db", || link_answers(&env)), "db\n");
    let hairpin = SocketAddr::from((env.gateway, port));
    assert_eq!(
        in_container(&web, || http_get(hairpin)).unwrap().unwrap(),
        "web\n"
    );
    // From outside the host, to the host's address on the client's link (forwarded past
    // Docker's FORWARD policy by gearnat's DOCKER-USER rule).
    let outside = OutsideClient::new(&env);
    assert_eq!(
        eventually("outside client -> web", || outside.http_get(port)),
        "web\n"
    );

    // Without gearnat's DOCKER-USER rules Docker's policy drops the forwarded link; the next
    // apply puts them back and says so.
    if drops {
        gearnat::firewall::remove(&env.bridge).unwrap();
        assert!(link_answers(&env).is_err(), "link passes without the rule");
        let out = env.apply(&file);
        assert!(out.contains("in sync; nothing to change"), "{out}");
        assert!(
            out.contains("firewall: iptables FORWARD policy is DROP"),
            "{out}"
        );
        assert_eq!(eventually("link back", || link_answers(&env)), "db\n");
    }

    let status = env.gearnat(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("{}: 2 instances, in sync", env.deployment())),
        "{text}"
    );

    // Unchanged: nothing recreated.
    let (web_id, db_id) = (container_id(&web), container_id(&db));
    let out = env.apply(&file);
    assert!(out.contains("in sync; nothing to change"), "{out}");
    assert_eq!(container_id(&web), web_id);

    // A changed image recreates exactly that container.
    let web2 = env.tag_web(2);
    let file = env.write(&web2, 0);
    let diff = env.gearnat(&["diff", file.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(1), "diff: changes pending");
    let out = env.apply(&file);
    let actions = container_lines(&out);
    assert_eq!(
        actions,
        [format!("~ container {web} (image changed) image {web2}")],
        "{out}"
    );
    assert_ne!(container_id(&web), web_id);
    assert_eq!(container_id(&db), db_id);
    assert_eq!(
        eventually("link after recreate", || link_answers(&env)),
        "db\n"
    );
    assert_eq!(
        eventually("host -> new web", || http_get(local(port))),
        "web\n"
    );

    // Count up adds containers; count down removes exactly the extra one.
    let out = env.apply(&env.write(&web2, 2));
    let (spare1, spare2) = (env.id("spare-1"), env.id("spare-2"));
    assert_eq!(container_lines(&out).len(), 2, "{out}");
    assert!(
        out.contains(&format!("+ container {spare2} image")),
        "{out}"
    );
    let spare1_id = container_id(&spare1);
    let out = env.apply(&env.write(&web2, 1));
    assert_eq!(
        container_lines(&out),
        [format!("- container {spare2}")],
        "{out}"
    );
    assert_eq!(container_id(&spare1), spare1_id);
    assert_eq!(container_id(&db), db_id);

    let out = env.gearnat(&["down", "--name", &env.deployment()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("- container {web}")), "{text}");
    assert_all_gone(&env);
}

#[test]
fn watch_rewires_a_restarted_container_and_restores_a_deleted_table() {
    let Some(mut env) = Env::new('b', 1) else {
        return;
    };
    env.build_images();
    let file = env.write(&env.image("web", 1), 0);
    let db = env.id("db-1");
    env.apply(&file);
    assert_eq!(eventually("link", || link_answers(&env)), "db\n");

    let mut watch = env.watch();
    watch.wait_for("following Docker events");

    // A restarted container has a new namespace: watch wires it and fills its table again.
    let started = Instant::now();
    docker(&["restart", "-t", "1", &db]);
    assert_eq!(
        eventually("link after restart", || link_answers(&env)),
        "db\n"
    );
    eprintln!(
        "link answered {:?} after docker restart began",
        started.elapsed()
    );
    watch.wait_for(&format!("+ wiring of container {db}"));

    // Someone deletes gearnat's host table: watch puts it back.
    assert!(quiet("nft", &["delete", "table", "ip", "gearnat"])
        .status
        .success());
    watch.wait_for("+ host table ip gearnat (table deleted from table ip gearnat by nft)");
    let port = env.web_port();
    assert_eq!(
        eventually("host port back", || http_get(local(port))),
        "web\n"
    );

    // gearnat's DOCKER-USER rules removed by someone: the next resync puts them back.
    if forward_policy_drops() {
        gearnat::firewall::remove(&env.bridge).unwrap();
        watch.wait_for("firewall: iptables FORWARD policy is DROP");
        assert_eq!(iptables_rules_of(&env.bridge).len(), 2);
    }

    // A container removed behind gearnat's back is created again, and wired.
    let web = env.id("web-1");
    docker(&["rm", "-f", &web]);
    watch.wait_for(&format!("+ container {web} image"));
    assert_eq!(
        eventually("link from the new web", || link_answers(&env)),
        "db\n"
    );

    watch.terminate();
    let out = env.gearnat(&["down", "--name", &env.deployment()]);
    assert_eq!(out.status.code(), Some(0));
    assert_all_gone(&env);
}

#[test]
fn auto_picks_docker_the_record_keeps_it_and_down_can_keep_containers() {
    let Some(mut env) = Env::new('c', 2) else {
        return;
    };
    env.build_images();
    let file = env.write(&env.image("web", 1), 0);
    let path = file.to_str().unwrap();
    // No --runtime: auto picks docker here, and says so.
    let out = env.gearnat(&["apply", path]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gearnat: runtime docker (a Docker API"),
        "{err}"
    );
    // The record keeps the runtime: another one is refused until down.
    let out = env.gearnat(&["apply", "--runtime", "netns", path]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runs on the docker runtime"), "{err}");
    let state = std::fs::read_to_string(
        env.state
            .path()
            .join(format!("deployments/{}.state.json", env.deployment())),
    )
    .unwrap();
    assert!(state.contains(r#""runtime": "docker""#), "{state}");

    let web = env.id("web-1");
    let out = env.gearnat(&["down", "--keep-containers", "--name", &env.deployment()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("- container"), "{text}");
    let running = docker(&["inspect", "-f", "{{.State.Running}}", &web]);
    assert_eq!(running, "true");
    // Unwired: its eth0 went with the host end of the veth.
    let eth0 = in_container(&web, || gearnat::link::link_exists("eth0").unwrap()).unwrap();
    assert!(!eth0, "eth0 left inside after down --keep-containers");
}

/// A registry of the test's own on loopback (Debian's `docker-registry`), stopped on drop.
struct Registry {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl Registry {
    fn start(program: &Path, port: u16) -> Registry {
        let store = tempfile::tempdir().unwrap();
        let config = store.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: \
                 127.0.0.1:{port}\n",
                store.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(program)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let registry = Registry {
            child,
            port,
            _store: store,
        };
        eventually("the registry listens", || {
            TcpStream::connect_timeout(&local(port), Duration::from_secs(1))
        });
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A missing image is pulled, with its progress shown on a terminal (a pseudo-terminal from
/// `script`): the web image is pushed to a registry on loopback and removed locally first.
#[test]
fn a_missing_image_is_pulled_with_progress_on_a_terminal() {
    let (Some(registry), Some(script)) =
        (common::which("docker-registry"), common::which("script"))
    else {
        eprintln!("skipped: needs docker-registry and script");
        return;
    };
    let Some(mut env) = Env::new('d', 3) else {
        return;
    };
    env.build_images();
    let registry = Registry::start(&registry, env.port + 9);
    let pushed = format!("127.0.0.1:{}/{}web:1", registry.port, env.tag);
    docker(&["tag", &env.image("web", 1), &pushed]);
    docker(&["push", &pushed]);
    docker(&["rmi", &pushed]);
    env.images.push(pushed.clone());
    let file = env.write(&pushed, 0);

    let command = format!(
        "{} --state-dir {} apply --runtime docker --bridge {} --subnet {} {}",
        env!("CARGO_BIN_EXE_gearnat"),
        env.state.path().display(),
        env.bridge,
        env.subnet,
        file.display()
    );
    let out = Command::new(script)
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("pulling image {pushed}")), "{text}");
    assert!(
        text.contains("Pull complete") || text.contains("Downloaded"),
        "{text}"
    );
    assert_eq!(
        eventually("host -> pulled web", || http_get(local(env.web_port()))),
        "web\n"
    );
    let out = env.gearnat(&["down", "--name", &env.deployment()]);
    assert_eq!(out.status.code(), Some(0));
    assert_all_gone(&env);
}
