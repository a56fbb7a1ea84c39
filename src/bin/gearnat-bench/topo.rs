//! The bench's namespaces and processes: every namespace it makes is named
//! `gnb-<pid>-...`, and [`cleanup`] removes them all (and the scratch folder), on success, on
//! failure and on Ctrl-C. The root network namespace is never changed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gearnat::netns::{self, Netns};
use nix::sys::signal::{SigSet, Signal};

/// The host's address on the client link, and the client's.
pub const HOST_ADDR: &str = "192.0.2.1";
pub const CLIENT_ADDR: &str = "192.0.2.2";

static PREFIX: OnceLock<String> = OnceLock::new();

/// `gnb-<pid>-`: every namespace (and instance id) of this run starts with it.
pub fn prefix() -> &'static str {
    PREFIX.get_or_init(|| format!("gnb-{}-", std::process::id()))
}

/// Scratch folder for deployment files, state directories and outputs.
pub fn scratch() -> PathBuf {
    std::env::temp_dir().join(prefix().trim_end_matches('-'))
}

/// Removes every namespace named `gnb-<pid>-*` and the scratch folder.
pub fn cleanup() {
    if let Ok(entries) = fs::read_dir(netns::RUN_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix()) {
                if let Err(e) = netns::delete_named(&name) {
                    eprintln!("gearnat-bench: cleanup: {e}");
                }
            }
        }
    }
    let _ = fs::remove_dir_all(scratch());
}

/// Cleans up when dropped, so a panic or an early return leaves nothing behind.
pub struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup();
    }
}

/// Ctrl-C and SIGTERM: blocked in every thread (call before starting any), and taken by one
/// thread that cleans up and exits.
pub fn clean_up_on_signals() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().expect("blocking SIGINT and SIGTERM");
    std::thread::spawn(move || {
        if let Ok(signal) = set.wait() {
            eprintln!("gearnat-bench: {signal}, removing the bench's namespaces");
            cleanup();
            std::process::exit(130);
        }
    });
}

/// Makes the named namespace with loopback up.
pub fn add_ns(name: &str) {
    netns::create_named(name).unwrap_or_else(|e| panic!("{e}"));
    ip(&["-n", name, "link", "set", "lo", "up"]);
}

/// Makes `host` and `client`, joined by a veth `ext0` (HOST_ADDR / CLIENT_ADDR), the client's
/// default route via the host.
pub fn add_host_and_client(host: &str, client: &str) {
    add_ns(host);
    add_ns(client);
    let (h, c) = (host, client);
    let host_cidr = format!("{HOST_ADDR}/24");
    let client_cidr = format!("{CLIENT_ADDR}/24");
    let steps: &[&[&str]] = &[
        &[
            "-n", h, "link", "add", "ext0", "type", "veth", "peer", "name", "ext0", "netns", c,
        ],
        &["-n", h, "addr", "add", &host_cidr, "dev", "ext0"],
        &["-n", c, "addr", "add", &client_cidr, "dev", "ext0"],
        &["-n", h, "link", "set", "ext0", "up"],
        &["-n", c, "link", "set", "ext0", "up"],
        &["-n", c, "route", "add", "default", "via", HOST_ADDR],
    ];
    for args in steps {
        ip(args);
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A finished child process: its wall time, peak RSS and output.
#[derive(Debug, Clone)]
pub struct Finished {
    pub wall: Duration,
    pub max_rss_kib: u64,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn ms(&self) -> f64 {
        self.wall.as_secs_f64() * 1e3
    }
}

/// Runs `cmd` inside the named namespace: started from a thread that entered it (not with
/// `ip netns exec`, whose private mount namespace would swallow the namespaces gearnat creates),
/// stdin from `stdin` if given, output to files. The wall time runs from spawn to reaping, and
/// the peak RSS is the child's own (wait4).
// The child is reaped by `wait4`, which std's `Child::wait` cannot do (it drops the rusage).
#[allow(clippy::zombie_processes)]
pub fn run_in(ns_name: &str, mut cmd: Command, stdin: Option<&Path>) -> Finished {
    let dir = scratch().join("out");
    fs::create_dir_all(&dir).expect("scratch folder");
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    cmd.stdout(File::create(&out_path).expect("stdout file"));
    cmd.stderr(File::create(&err_path).expect("stderr file"));
    match stdin {
        Some(path) => cmd.stdin(File::open(path).expect("stdin file")),
        None => cmd.stdin(Stdio::null()),
    };
    let ns = Netns::open_named(ns_name).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let child = netns::run_in(&ns, move || cmd.spawn())
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("starting a command in {ns_name}: {e}"));
    let (status, rusage) = wait4(child.id());
    let wall = started.elapsed();
    Finished {
        wall,
        max_rss_kib: rusage.ru_maxrss as u64,
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Reaps `pid` and returns its wait status and resource usage.
fn wait4(pid: u32) -> (i32, libc::rusage) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `rusage` are valid for writes for the duration of the call; the
        // pid is our own unreaped child (std's Child is dropped without waiting, which neither
        // waits nor kills).
        let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut rusage) };
        if r == pid as i32 {
            return (status, rusage);
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "wait4: {e}");
    }
}
