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

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::containers::{
    assert_wiring_gone, eventually, exchange, http_get, import, in_pid, iptables_rules_of, local,
    quiet, OutsideClient, Watch, BUSYBOX,
};

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
        import(
            Command::new("docker"),
            &web,
            r#"trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"#,
        );
        import(
            Command::new("docker"),
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
        common::echoed(args, out)
    }

    fn apply(&self, file: &Path) -> String {
        let out = self.gearnat(&["apply", "--runtime", "docker", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "apply failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts `gearnat watch`, killed when the returned guard drops.
    fn watch(&self) -> Watch {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gearnat"));
        cmd.arg("--state-dir")
            .arg(self.state.path())
            .args(["watch", "--resync", "2"])
            .args(["--bridge", &self.bridge, "--subnet", &self.subnet]);
        Watch::start(cmd)
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

fn container_id(name: &str) -> String {
    docker(&["inspect", "-f", "{{.Id}}", name])
}

/// Runs `f` inside container `name`'s network namespace; an error while the container is
/// missing or stopped.
fn in_container<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let out = quiet("docker", &["inspect", "-f", "{{.State.Pid}}", name]);
    in_pid(&String::from_utf8_lossy(&out.stdout), f)
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

/// Nothing of the test's deployment is left: no container, veth, bridge, rule or host table.
fn assert_all_gone(env: &Env) {
    let left = docker(&["ps", "-aq", "--filter", &format!("name=^{}", env.tag)]);
    assert_eq!(left, "", "containers left");
    let ids: Vec<String> = ["web-1", "db-1", "spare-1", "spare-2"]
        .into_iter()
        .map(|inst| env.id(inst))
        .collect();
    assert_wiring_gone(&ids, &env.bridge, &env.subnet, &env.tag);
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
    let outside = OutsideClient::new(&env.tag);
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
