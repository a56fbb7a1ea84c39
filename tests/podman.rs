//! The docker runtime against Podman's Docker-compatible API: gearnat talks to a `podman system
//! service` of the test's own through DOCKER_HOST, as it would to dockerd.
//!
//! The service listens on a socket in a tempdir and is stopped on drop. Podman keeps its
//! images and containers in the machine's storage (/var/lib/containers), so what the test adds
//! there has names of its own (IdPrefix `gnp-<pid>-`, images `gnp-<pid>/...`) and [`Env`]'s
//! drop removes it even when the test fails, before the service stops: containers, images,
//! veths, bridge `gnp<pid>`, gearnat's DOCKER-USER rules and the host table of its pool
//! (10.213.N.0/24). Traffic goes only to 127.0.0.1, to the test's containers and to an
//! outside client namespace of its own.
//!
//! Skipped only without root or without podman (`apt-get install podman`); anything else that
//! keeps it from running is a failure.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::containers::{
    assert_wiring_gone, eventually, exchange, http_get, import, in_pid, local, quiet,
    OutsideClient, Watch, BUSYBOX, SOON,
};

/// podman's options for the service and the test's own podman commands. Without systemd (CI,
/// a container) podman picks these itself; named, they stay the same on a host with systemd,
/// where the service and the commands must still share one events log: `gearnat watch` sees
/// the test's `podman restart` and `podman rm` only through the service's event stream.
const PODMAN_OPTIONS: &[&str] = &["--cgroup-manager=cgroupfs", "--events-backend=file"];

/// podman's path; None, with the reason printed, when the test cannot run here.
fn podman_or_skip() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    let Some(podman) = common::which("podman") else {
        eprintln!("skipped: needs podman (apt-get install podman)");
        return None;
    };
    assert!(
        Path::new(BUSYBOX).exists(),
        "needs {BUSYBOX} (apt-get install busybox-static)"
    );
    // `down` of the test's deployment deletes the host table: never on a host whose own
    // gearnat deployments are in it.
    let table = quiet("nft", &["list", "table", "ip", "gearnat"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        !table.status.success() || text.contains("pool 10.213."),
        "this host has gearnat deployments of its own in table ip gearnat; not touching it"
    );
    Some(podman)
}

/// A `podman system service` on a socket of its own; stopped on drop.
struct Service {
    child: Child,
    dir: tempfile::TempDir,
}

impl Service {
    fn start(podman: &Path) -> Service {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("containers.conf"), containers_conf()).unwrap();
        let log = std::fs::File::create(dir.path().join("service.log")).unwrap();
        let socket = format!("unix://{}", dir.path().join("podman.sock").display());
        let child = podman_command(podman, dir.path())
            .args(["system", "service", "--time=0", &socket])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut service = Service { child, dir };
        service.wait_ready();
        service
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("podman.sock")
    }

    /// DOCKER_HOST for gearnat.
    fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Waits (bounded) for `GET /_ping` to answer OK.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + SOON;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("podman system service exited ({status}):\n{}", self.log());
            }
            if ping(&self.socket()).is_ok_and(|reply| reply.ends_with("OK")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "podman system service did not answer within {SOON:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + SOON;
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "podman service log, last lines (newest first):\n{}",
                tail.join("\n")
            );
        }
    }
}

/// `podman` with the test's options and configuration (see [`containers_conf`]).
fn podman_command(podman: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(podman);
    cmd.args(PODMAN_OPTIONS)
        .env("CONTAINERS_CONF", dir.join("containers.conf"));
    cmd
}

/// What the service's containers.conf sets: the containers' open-file and process limits.
/// As root, podman asks runc for 1048576 of each, and without CAP_SYS_RESOURCE (a machine
/// that is itself a container) raising a hard limit fails ("error setting rlimit type 7:
/// operation not permitted"). The test's own hard limits can always be kept; podman lowers
/// its own process limit to 32768 as it starts (seen with strace), so no more of that.
fn containers_conf() -> String {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let hard = |name: &str| -> String {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    let nproc = match hard("Max processes").parse::<u64>() {
        Ok(n) => n.min(32768).to_string(),
        Err(_) => "32768".to_string(),
    };
    let nofile = hard("Max open files");
    format!("[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n")
}

/// `GET /_ping` over the API socket: the whole reply.
fn ping(socket: &Path) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

/// The test's names, addresses, images, state and service, all removed on drop.
struct Env {
    podman: PathBuf,
    tag: String,
    bridge: String,
    subnet: String,
    port: u16,
    state: tempfile::TempDir,
    files: tempfile::TempDir,
    /// Stops after [`Env::cleanup`] (fields drop after `drop`); the containers outlive it
    /// anyway (conmon holds them), so the cleanup removes them with podman's command.
    service: Service,
}

impl Env {
    fn new() -> Option<Env> {
        let podman = podman_or_skip()?;
        let pid = std::process::id();
        let service = Service::start(&podman);
        let env = Env {
            tag: format!("gnp-{pid}-"),
            bridge: format!("gnp{pid}"),
            subnet: format!("10.213.{}.0/24", pid % 256),
            port: 40000 + (pid % 1000) as u16 * 10,
            state: private_tempdir(),
            files: tempfile::tempdir().unwrap(),
            podman,
            service,
        };
        env.cleanup();
        Some(env)
    }

    fn podman_command(&self) -> Command {
        podman_command(&self.podman, self.service.dir.path())
    }

    /// `podman ARGS...`, which must succeed; what it printed.
    fn podman(&self, args: &[&str]) -> String {
        let out = self.podman_command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn image(&self, name: &str) -> String {
        format!("gnp-{}/{name}:1", std::process::id())
    }

    /// The web and db images, offline, as tests/docker.rs makes them.
    fn build_images(&self) {
        let (web, db) = (self.image("web"), self.image("db"));
        import(
            self.podman_command(),
            &web,
            r#"trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"#,
        );
        import(
            self.podman_command(),
            &db,
            r#"trap 'exit 0' TERM; nc -ll -p 27017 -e echo db & wait"#,
        );
    }

    fn id(&self, instance: &str) -> String {
        format!("{}{instance}", self.tag)
    }

    fn deployment(&self) -> String {
        self.tag.trim_end_matches('-').to_string()
    }

    /// The deployment file: web (environment ROLE=`role`) on the public port, linked to db.
    fn write(&self, role: &str) -> PathBuf {
        let text = format!(
            r#"{{
  "IdPrefix": "{tag}",
  "containers": [
    {{ "name": "web", "count": 1, "image": "{web}",
       "publicports": [{{"internal": 80, "external": {port}}}],
       "links": [{{"to": "db"}}],
       "environment": [{{"name": "ROLE", "value": "{role}"}}] }},
    {{ "name": "db", "count": 1, "image": "{db}",
       "publicports": [{{"internal": 27017, "external": {db_port}}}] }}
  ]
}}"#,
            tag = self.tag,
            web = self.image("web"),
            db = self.image("db"),
            port = self.port,
            db_port = self.port + 1,
        );
        let path = self
            .files
            .path()
            .join(format!("{}.json", self.deployment()));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// gearnat with the docker runtime, talking to this test's service.
    fn gearnat_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gearnat"));
        cmd.env("DOCKER_HOST", self.service.docker_host())
            .env("GEARNAT_RUNTIME", "docker")
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .args(["--bridge", &self.bridge, "--subnet", &self.subnet]);
        cmd
    }

    fn gearnat(&self, args: &[&str]) -> Output {
        common::echoed(args, self.gearnat_command(args).output().unwrap())
    }

    fn apply(&self, file: &Path) -> String {
        let out = self.gearnat(&["apply", "--runtime", "docker", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "apply failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `f` inside container `name`'s network namespace; an error while it is missing or
    /// stopped.
    fn in_container<T: Send>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send,
    ) -> std::io::Result<T> {
        let out = self
            .podman_command()
            .args(["inspect", "-f", "{{.State.Pid}}", name])
            .output()
            .unwrap();
        in_pid(&String::from_utf8_lossy(&out.stdout), f)
    }

    /// The link from inside web-1: 127.0.0.1:27017 -> host -> db-1:27017.
    fn link_answers(&self) -> std::io::Result<String> {
        self.in_container(&self.id("web-1"), || exchange(local(27017), ""))?
    }

    /// The test's containers, as podman lists them.
    fn containers(&self) -> String {
        self.podman(&["ps", "-aq", "--filter", &format!("name=^{}", self.tag)])
    }

    /// Removes whatever the test may have left: its containers, their veths, the bridge,
    /// gearnat's DOCKER-USER rules for it, the host table of its pool, and its images.
    fn cleanup(&self) {
        let ids = self
            .podman_command()
            .args(["ps", "-aq", "--filter", &format!("name=^{}", self.tag)])
            .output()
            .unwrap();
        for c in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.podman_command().args(["rm", "-f", c]).output();
        }
        for inst in ["web-1", "db-1"] {
            quiet(
                "ip",
                &["link", "del", &gearnat::link::host_ifname(&self.id(inst))],
            );
        }
        quiet("ip", &["link", "del", &self.bridge]);
        if let Err(e) = gearnat::firewall::remove(&self.bridge) {
            eprintln!("cleanup: {e}");
        }
        let table = quiet("nft", &["list", "table", "ip", "gearnat"]);
        if String::from_utf8_lossy(&table.stdout).contains(&format!("pool {}", self.subnet)) {
            quiet("nft", &["delete", "table", "ip", "gearnat"]);
        }
        for image in [self.image("web"), self.image("db")] {
            let _ = self.podman_command().args(["rmi", "-f", &image]).output();
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A state directory as gearnat makes its own: private (a wider one is warned about).
fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

#[test]
fn podmans_docker_compatible_socket_runs_the_docker_runtime() {
    let started = Instant::now();
    let Some(env) = Env::new() else {
        return;
    };
    eprintln!("podman service answered after {:?}", started.elapsed());
    env.build_images();
    let (web, db) = (env.id("web-1"), env.id("db-1"));
    let file = env.write("web");

    let out = env.apply(&file);
    let web_image = env.image("web");
    assert!(
        out.contains(&format!("+ container {web} image {web_image}")),
        "{out}"
    );
    assert!(out.contains(&format!("+ container {db} image")), "{out}");
    let labels = env.podman(&["inspect", "-f", "{{json .Config.Labels}}", &web]);
    assert!(labels.contains(r#""gearnat.deployment""#), "{labels}");
    let network = env.podman(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", &web]);
    assert_eq!(network, "none");

    // From the host, from a client outside it (forwarded, past Docker's FORWARD policy where
    // dockerd runs too), and the link inside web.
    let port = env.port;
    assert_eq!(eventually("host -> web", || http_get(local(port))), "web\n");
    let outside = OutsideClient::new(&env.tag);
    assert_eq!(
        eventually("outside client -> web", || outside.http_get(port)),
        "web\n"
    );
    assert_eq!(eventually("link web -> db", || env.link_answers()), "db\n");

    let out = env.apply(&file);
    assert!(out.contains("in sync; nothing to change"), "{out}");

    // Podman reports the image qualified (localhost/...): the reason still tells image from
    // environment.
    let out = env.apply(&env.write("web2"));
    assert!(
        out.contains(&format!("~ container {web} (environment changed)")),
        "{out}"
    );
    assert_eq!(
        eventually("link after recreate", || env.link_answers()),
        "db\n"
    );

    // watch follows Podman's events (no resync: only events can trigger it). db unwired
    // first: its start-of-watch line shows that watch has looked before anything happens.
    quiet("ip", &["link", "del", &gearnat::link::host_ifname(&db)]);
    let mut watch = Watch::start(env.gearnat_command(&["-v", "watch", "--resync", "0"]));
    watch.wait_for("following Docker events");
    let line = watch.wait_for(&format!("+ wiring of container {db}"));
    assert!(line.ends_with("(start of watch)"), "{line}");
    assert_eq!(eventually("link rewired", || env.link_answers()), "db\n");
    // Stopped, web is left stopped; then removed, Podman's `remove` event (Docker's
    // `destroy`) has it created again. First, while no other event is on its way: the
    // stopped line then comes from the pass of web's own `die`.
    env.podman(&["stop", "-t", "1", &web]);
    watch.wait_for(&format!("container {web} is stopped; left so"));
    env.podman(&["rm", &web]);
    let line = watch.wait_for(&format!("+ container {web} image"));
    assert!(
        line.ends_with(&format!("(container {web} remove)")),
        "{line}"
    );
    assert_eq!(
        eventually("link from the new web", || env.link_answers()),
        "db\n"
    );
    assert_eq!(
        eventually("outside client -> new web", || outside.http_get(port)),
        "web\n"
    );
    // A restarted container has a new namespace: wired again on the events (the latest
    // event of a pass names it, which may be another container's).
    watch.forget_lines();
    env.podman(&["restart", "-t", "1", &db]);
    let line = watch.wait_for(&format!("+ wiring of container {db}"));
    assert!(line.contains("(container "), "{line}");
    assert_eq!(
        eventually("link after restart", || env.link_answers()),
        "db\n"
    );
    watch.terminate();

    let out = env.gearnat(&["down", "--name", &env.deployment()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("- container {web}")), "{text}");
    assert_eq!(env.containers(), "", "containers left");
    assert_wiring_gone(
        &[web.clone(), db.clone()],
        &env.bridge,
        &env.subnet,
        &env.tag,
    );
    eprintln!("whole test: {:?}", started.elapsed());
}
