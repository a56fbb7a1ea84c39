//! The packet path: new TCP connections from an outside client namespace through the host's
//! DNAT to a server in an instance namespace, with gearnat's maps and with one linear DNAT rule
//! per mapping (the measured port's rule last).

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use gearnat::netns::{self, Netns};
use nix::sys::socket::{listen, setsockopt, sockopt, Backlog};

use crate::control::{deployment, last_mapping};
use crate::topo;

/// Connections measured in one run of the client.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    pub connects: usize,
    pub failures: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    /// Connections per second of each slice merged in.
    pub slice_rates: Vec<f64>,
}

impl Sample {
    pub fn merge(&mut self, other: Sample) {
        self.connects += other.connects;
        self.failures += other.failures;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.slice_rates.extend(other.slice_rates);
    }

    /// The median of the slices' rates: a slice slowed by load from elsewhere on the machine
    /// moves it less than it moves the overall mean.
    pub fn per_second(&self) -> f64 {
        let mut rates = self.slice_rates.clone();
        if rates.is_empty() {
            return self.connects as f64 / self.elapsed.as_secs_f64().max(1e-9);
        }
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    }

    /// The slowest connect, in microseconds.
    pub fn max_us(&self) -> f64 {
        self.latencies
            .iter()
            .max()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
    }

    /// The `p`th percentile of connect latency, in microseconds.
    pub fn percentile_us(&mut self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        self.latencies.sort();
        let at = ((self.latencies.len() - 1) as f64 * p / 100.0).round() as usize;
        self.latencies[at].as_secs_f64() * 1e6
    }
}

/// A host namespace with gearnat's deployment of `n` ports applied, an outside client, and a
/// server behind the last mapping.
pub struct Setup {
    pub n: usize,
    host: String,
    client: String,
    host_port: u16,
    linear: String,
    id_prefix: String,
    dir: std::path::PathBuf,
    server: Server,
}

impl Setup {
    pub fn new(gearnat: &Path, n: usize, tag: &str) -> Setup {
        let host = format!("{}{tag}h", topo::prefix());
        let client = format!("{}{tag}c", topo::prefix());
        topo::add_host_and_client(&host, &client);
        let id_prefix = format!("{}{tag}-", topo::prefix());
        let dir = topo::scratch().join(format!("packet-{tag}"));
        fs::create_dir_all(&dir).expect("scratch folder");
        let file = dir.join("bench.json");
        fs::write(&file, deployment(&id_prefix, n, 0)).expect("writing a deployment");
        let mut cmd = Command::new(gearnat);
        // Instances are network namespaces, whether or not a Docker daemon answers.
        cmd.env("GEARNAT_RUNTIME", "netns");
        cmd.arg("--state-dir").arg(dir.join("state"));
        cmd.arg("apply").arg(&file);
        let out = topo::run_in(&host, cmd, None);
        assert!(out.success, "gearnat apply failed:\n{}", out.stderr);
        tune_for_many_connections(&host, &client);
        let (instance, internal, host_port) = last_mapping(&id_prefix, n);
        let server = Server::start(&instance, internal);
        let linear = linear_ruleset(&out.stdout);
        Setup {
            n,
            host,
            client,
            host_port,
            linear,
            id_prefix,
            dir,
            server,
        }
    }

    /// Connections for `time` while gearnat grows this host's deployment by `ports` public
    /// ports on its last instance (no new instance, so no wiring: one batch of that many
    /// elements), started a fifth of the way in; returns the connections and the apply's wall
    /// time in ms.
    pub fn connect_during_apply(
        &self,
        gearnat: &Path,
        ports: usize,
        time: Duration,
    ) -> (Sample, f64) {
        let dir = self.dir.join("grown");
        fs::create_dir_all(&dir).expect("scratch folder");
        // Same file name, so the same deployment.
        let file = dir.join("bench.json");
        let text = deployment(&self.id_prefix, self.n, ports);
        fs::write(&file, text).expect("writing a deployment");
        let mut cmd = Command::new(gearnat);
        // Instances are network namespaces, whether or not a Docker daemon answers.
        cmd.env("GEARNAT_RUNTIME", "netns");
        cmd.arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("apply")
            .arg(&file);
        thread::scope(|scope| {
            let client = scope.spawn(|| self.connect_for(time));
            thread::sleep(time / 5);
            let out = topo::run_in(&self.host, cmd, None);
            assert!(out.success, "gearnat apply (grown) failed:\n{}", out.stderr);
            assert!(
                out.stdout.lines().all(|l| !l.contains("netns")),
                "growing the deployment wired instances:\n{}",
                out.stdout
            );
            (client.join().expect("client thread"), out.ms())
        })
    }

    /// Replaces gearnat's table by the linear ruleset (the sysctls and wiring stay).
    pub fn switch_to_linear(&self) {
        let path = topo::scratch().join(format!("{}-linear.nft", self.host));
        let script = format!("delete table ip gearnat\n{}", self.linear);
        fs::write(&path, script).expect("writing the linear ruleset");
        let mut cmd = Command::new("nft");
        cmd.arg("-f").arg(&path);
        let out = topo::run_in(&self.host, cmd, None);
        assert!(out.success, "nft -f linear ruleset: {}", out.stderr);
    }

    /// New connections for `time` from the client to the host's public port.
    pub fn connect_for(&self, time: Duration) -> Sample {
        let to: SocketAddr = format!("{}:{}", topo::HOST_ADDR, self.host_port)
            .parse()
            .unwrap();
        let ns = Netns::open_named(&self.client).unwrap_or_else(|e| panic!("{e}"));
        let sample =
            netns::run_in(&ns, || connect_loop(to, time)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            sample.connects > 0 && self.server.alive(),
            "no connection reached the server in {}",
            self.host
        );
        sample
    }
}

/// Sequential connections from one client reuse its source ports within seconds; a SYN that
/// meets the conntrack entry of the port's previous, reset connection may be dropped while that
/// entry is torn down, and the client retries only after a second. A wider port range and a
/// short CLOSE timeout, in the bench's own namespaces only, keep such collisions rare.
fn tune_for_many_connections(host: &str, client: &str) {
    let set = |ns_name: &str, key: &'static str, value: &'static str| {
        let ns = Netns::open_named(ns_name).unwrap_or_else(|e| panic!("{e}"));
        netns::run_in(&ns, || gearnat::link::sysctl_set(key, value))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{ns_name}: {e}"));
    };
    set(client, "net.ipv4.ip_local_port_range", "1024 65535");
    set(host, "net.netfilter.nf_conntrack_tcp_timeout_close", "1");
}

/// One linear rule per mapping, in the order apply printed them (`X: PortMapping: P -> H`),
/// so the measured (last) mapping's rule is the last one a packet is matched against.
fn linear_ruleset(apply_stdout: &str) -> String {
    let mut rules = String::new();
    let mut addresses = std::collections::BTreeMap::new();
    for line in apply_stdout.lines() {
        // `+ netns (new) ID ADDRESS on BRIDGE`
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["+", "netns", _, id, address, "on", _] = words[..] {
            addresses.insert(id.to_string(), address.to_string());
        }
        if let [id, "PortMapping:", internal, "->", host_port] = words[..] {
            let id = id.trim_end_matches(':');
            let address = &addresses[id];
            rules.push_str(&format!(
                "\t\ttcp dport {host_port} dnat to {address}:{internal}\n"
            ));
        }
    }
    format!(
        "table ip gnb_linear {{\n\tchain prerouting {{\n\t\t\
         type nat hook prerouting priority dstnat; policy accept;\n{rules}\t}}\n}}\n"
    )
}

/// Sequential connects, each closed with a reset (SO_LINGER 0) so that no TIME_WAIT piles up.
fn connect_loop(to: SocketAddr, time: Duration) -> Sample {
    let mut sample = Sample::default();
    let started = Instant::now();
    while started.elapsed() < time {
        let t = Instant::now();
        match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
            Ok(stream) => {
                sample.latencies.push(t.elapsed());
                sample.connects += 1;
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                let _ = setsockopt(&stream, sockopt::Linger, &linger);
            }
            Err(_) => sample.failures += 1,
        }
    }
    sample.elapsed = started.elapsed();
    let rate = sample.connects as f64 / sample.elapsed.as_secs_f64().max(1e-9);
    sample.slice_rates.push(rate);
    sample
}

/// Accepts and drops connections in an instance namespace until dropped. The accept blocks
/// (no polling), so that on a loaded machine the backlog never fills while the thread sleeps.
struct Server {
    stop: Arc<AtomicBool>,
    ns: Netns,
    port: u16,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start(instance: &str, port: u16) -> Server {
        let ns = Netns::open_named(instance).unwrap_or_else(|e| panic!("{e}"));
        let addr: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
        let listener = netns::run_in(&ns, move || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("listening on {addr} in {instance}: {e}"));
        // std listens with a backlog of 128: on a loaded machine the accept thread may not run
        // for tens of milliseconds, and SYNs past a full queue are dropped (the client then
        // waits a second). Listening again raises the queue to the namespace's somaxconn.
        listen(&listener, Backlog::MAXALLOWABLE).expect("raising the listen backlog");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let _ = listener.accept();
            }
        });
        Server {
            stop,
            ns,
            port,
            thread: Some(thread),
        }
    }

    fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // One more connection, from inside the instance, wakes the blocked accept.
        let to = SocketAddr::from(([127, 0, 0, 1], self.port));
        let _ = netns::run_in(&self.ns, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(1))
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_rules_follow_the_mappings_in_order() {
        let out = "deployment b: plan\n+ netns (new) p-c0-1 10.211.0.2 on gearnat0\n\
                   applied in 3 ms; read back: in sync\n\
                   p-c0-1: PortMapping: 10000 -> 20000\np-c0-1: PortMapping: 10001 -> 20001\n";
        let text = linear_ruleset(out);
        let first = text.find("dport 20000 dnat to 10.211.0.2:10000").unwrap();
        let last = text.find("dport 20001 dnat to 10.211.0.2:10001").unwrap();
        assert!(first < last);
    }

    #[test]
    fn percentiles() {
        let mut s = Sample {
            latencies: (1..=100).map(Duration::from_micros).collect(),
            ..Sample::default()
        };
        assert_eq!(s.percentile_us(50.0), 51.0);
        assert_eq!(s.percentile_us(99.0), 99.0);
    }
}
