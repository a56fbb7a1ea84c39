//! What gearnat put in the kernel, read with gearnat's own netlink dump (the element sets are
//! compared, not rendered), and gearnat runs that can be killed half way.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use gearnat::netns::{self, Netns};
use gearnat::ruleset::Element;

/// gearnat's table in namespace `ns`: its comment and its owned elements; `None` when the
/// namespace or the table does not exist.
pub type Table = Option<(Option<String>, BTreeSet<Element>)>;

pub fn table_in(ns: &str) -> Table {
    if !netns::exists_named(ns) {
        return None;
    }
    let handle = Netns::open_named(ns).unwrap_or_else(|e| panic!("{e}"));
    let table = netns::run_in(&handle, gearnat::netfilter::dump)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("dumping gearnat's table in {ns}: {e}"))?;
    assert_eq!(table.unowned, 0, "elements without an owner in {ns}");
    Some((table.comment, table.elements.into_iter().collect()))
}

/// Starts `gearnat --state-dir STATE ARGS...` in the named namespace and returns at once. Its
/// output is piped when `capture` (read it all, with `wait_with_output`), else discarded (for a
/// run that is killed: a full pipe would stop it where it prints).
pub fn spawn_gearnat(ns: &str, state_dir: &Path, args: &[&str], capture: bool) -> Child {
    let output = || {
        if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gearnat"));
    // Instances are network namespaces whether or not a Docker daemon answers.
    cmd.env("GEARNAT_RUNTIME", "netns");
    cmd.arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(output())
        .stderr(output());
    let handle = Netns::open_named(ns).unwrap_or_else(|e| panic!("{e}"));
    netns::run_in(&handle, move || cmd.spawn())
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("starting gearnat in {ns}: {e}"))
}

/// Every `/run/netns` name that starts with `prefix`, sorted.
pub fn namespaces_with(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(netns::RUN_DIR)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A small deterministic generator (xorshift64*), seeded so that a failing run can be
/// repeated: the seed is printed, and `GEARNAT_TEST_SEED` sets it.
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_clock() -> Rng {
        let seed = std::env::var("GEARNAT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        eprintln!("random seed {seed} (set GEARNAT_TEST_SEED={seed} to repeat)");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
