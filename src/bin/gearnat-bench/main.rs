//! gearnat-bench: gearnat's control path and packet path, measured in private network
//! namespaces it makes and removes (`gnb-<pid>-...`), against `nft -f` and a linear DNAT
//! ruleset. Prints a table; `--json FILE` writes the figures. Needs root.
//!
//! ```sh
//! cargo build --release && sudo ./target/release/gearnat-bench --json bench.json
//! ```

mod control;
mod packet;
mod topo;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};

use control::{Step, STEPS};
use packet::{Sample, Setup};

#[derive(Debug, Parser)]
#[command(
    name = "gearnat-bench",
    about = "gearnat's control and packet paths, measured"
)]
struct Args {
    /// The gearnat binary (default: the one next to this program).
    #[arg(long)]
    gearnat: Option<PathBuf>,
    /// Numbers of public ports to measure the control path at.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    ports: Vec<usize>,
    /// Rounds per control-path figure (the table shows the median).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Numbers of public ports to measure the packet path at.
    #[arg(long, value_delimiter = ',', default_value = "1,10000")]
    packet_ports: Vec<usize>,
    /// Seconds of connections per ruleset and N, in 6 interleaved slices.
    #[arg(long, default_value_t = 6.0)]
    packet_secs: f64,
    /// Also write the figures as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("gearnat-bench: needs root (it makes network namespaces)");
        std::process::exit(2);
    }
    let gearnat = args.gearnat.clone().unwrap_or_else(|| {
        let me = std::env::current_exe().expect("own path");
        me.with_file_name("gearnat")
    });
    topo::clean_up_on_signals();
    let _cleanup = topo::Cleanup;

    let mut control = BTreeMap::new();
    for (i, &n) in args.ports.iter().enumerate() {
        eprintln!("control path, N = {n} ...");
        control.insert(n, control::measure(&gearnat, n, args.reps, &format!("{i}")));
    }
    eprintln!("packet path ...");
    let (packets, during_apply) = packet_path(&gearnat, &args);

    let report = Report {
        control,
        packets,
        during_apply,
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = format!("{:#}\n", report.json());
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Connections while a batch of this many elements is committed in the same namespace (the
/// N = 1 deployment grows to 10,000 ports, gearnat's limit per container).
const BATCH_UNDER_TRAFFIC: usize = 9_999;

/// Connections per (ruleset, N). Every (ruleset, N) has a host of its own, all alive at once,
/// measured in interleaved slices (in reverse order every other round), so that load from
/// elsewhere on the machine and conntrack entries piling up fall on all of them alike. Then
/// connections through gearnat's N = 1 host while gearnat commits a batch of
/// [`BATCH_UNDER_TRAFFIC`] elements beside them.
fn packet_path(gearnat: &std::path::Path, args: &Args) -> (PacketFigures, Option<DuringApply>) {
    let mut setups: Vec<(&'static str, Setup)> = Vec::new();
    for (r, ruleset) in ["gearnat maps", "linear rules"].into_iter().enumerate() {
        for (i, &n) in args.packet_ports.iter().enumerate() {
            let setup = Setup::new(gearnat, n, &format!("p{r}{i}"));
            if ruleset == "linear rules" {
                setup.switch_to_linear();
            }
            setups.push((ruleset, setup));
        }
    }
    // Warm up (ARP, caches), then measure.
    for (_, s) in &setups {
        s.connect_for(Duration::from_millis(100));
    }
    let slice = Duration::from_secs_f64(args.packet_secs / SLICES as f64);
    let mut out: PacketFigures = BTreeMap::new();
    for round in 0..SLICES {
        let mut order: Vec<&(&'static str, Setup)> = setups.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for (ruleset, s) in order {
            let sample = s.connect_for(slice);
            out.entry((ruleset, s.n)).or_default().merge(sample);
        }
    }
    let during = setups
        .first()
        .map(|(_, s)| s.connect_during_apply(gearnat, BATCH_UNDER_TRAFFIC, Duration::from_secs(2)));
    (out, during)
}

/// Slices each packet-path figure is measured in, interleaved with the others'.
const SLICES: usize = 6;

type PacketFigures = BTreeMap<(&'static str, usize), Sample>;

/// Connections measured while gearnat applied a big batch, and that apply's wall time (ms).
type DuringApply = (Sample, f64);

struct Report {
    control: BTreeMap<usize, BTreeMap<&'static str, Step>>,
    packets: PacketFigures,
    during_apply: Option<DuringApply>,
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The step timings of the median run, grouped so that they do not overlap: where the time
/// goes. `other` is the rest of the process's wall time (start-up, the lock, diffing, sysctls,
/// freeing memory at exit).
fn split_groups(step: &Step) -> BTreeMap<&'static str, f64> {
    let at = median_index(&step.wall_ms);
    let Some(split) = at.and_then(|i| step.split_ms.get(i)) else {
        return BTreeMap::new();
    };
    let get = |k: &str| split.get(k).copied().unwrap_or(0.0);
    let dumps = get("dump host table");
    let groups = [
        ("parse+resolve", get("load file") + get("resolve")),
        // What apply read while it parsed (state, the kernel), beyond the parse.
        ("read ahead", get("wait for read ahead")),
        ("dumps", dumps),
        // Observing and reading back are the dumps plus the instances' wiring checks.
        (
            "checks",
            (get("observe") + get("read back") - dumps).max(0.0),
        ),
        (
            "wiring",
            get("wire bridge")
                + get("wire instances")
                + get("unwire instances")
                + get("unwire bridge"),
        ),
        ("plan", get("plan desired")),
        ("batch build", get("build batch")),
        (
            "batch commit",
            get("send batch (kernel commit)") + get("read answers"),
        ),
        ("state files", get("read state") + get("save state")),
        ("print", get("print plan")),
    ];
    let mut out: BTreeMap<&'static str, f64> = groups.into_iter().collect();
    let counted: f64 = out.values().sum();
    out.insert("other", (step.wall_ms[at.unwrap()] - counted).max(0.0));
    out
}

fn median_index(v: &[f64]) -> Option<usize> {
    let m = median(v);
    v.iter().position(|x| *x == m)
}

impl Report {
    fn table(&self) -> String {
        let mut t =
            String::from("\nControl path (ms; median; gearnat = wall time of the process)\n");
        t.push_str(&format!(
            "{:>6}  {:<11} {:>9} {:>8} {:>8} {:>7}  {}\n",
            "N", "step", "gearnat", "inside", "nft", "g/nft", "where gearnat's time goes"
        ));
        for (n, steps) in &self.control {
            for name in STEPS {
                let Some(s) = steps.get(name) else { continue };
                let (g, nft) = (median(&s.wall_ms), median(&s.nft_ms));
                let groups = split_groups(s);
                let split: Vec<String> = groups
                    .iter()
                    .filter(|(_, ms)| **ms >= 0.5)
                    .map(|(k, ms)| format!("{k} {ms:.0}"))
                    .collect();
                t.push_str(&format!(
                    "{n:>6}  {name:<11} {g:>9.1} {:>8} {:>8} {:>7}  {}\n",
                    opt(median(&s.inside_ms), 0),
                    opt(nft, 1),
                    opt(g / nft, 2),
                    split.join(", ")
                ));
            }
        }
        t.push_str(
            "\nCold apply: gearnat's netlink batch alone (build + send/commit) against nft -f\n",
        );
        for (n, steps) in &self.control {
            let Some(s) = steps.get("cold apply") else {
                continue;
            };
            let groups = split_groups(s);
            let batch = groups.get("batch build").unwrap_or(&0.0)
                + groups.get("batch commit").unwrap_or(&0.0);
            let nft = median(&s.nft_ms);
            let sent: Vec<String> = (s.batches.iter())
                .map(|(m, b)| format!("{m} messages, {} KiB", b / 1024))
                .collect();
            t.push_str(&format!(
                "{n:>6}  batch {batch:>6.1} ms  nft -f {nft:>6.1} ms  ratio {:>5}  sent: {}\n",
                opt(batch / nft, 2),
                sent.join("; ")
            ));
        }
        if let Some(s) = self.control.get(&10000).and_then(|s| s.get("cold apply")) {
            t.push_str(&format!(
                "\nPeak RSS of gearnat apply at N = 10000: {:.1} MiB\n",
                s.max_rss_kib as f64 / 1024.0
            ));
        }
        t.push_str(
            "\nPacket path (new TCP connections, outside client -> host DNAT -> instance)\n",
        );
        t.push_str(&format!(
            "{:<13} {:>6} {:>9} {:>8} {:>8} {:>8} {:>9} {:>6}\n",
            "ruleset", "N", "conn/s", "p50 us", "p99 us", "max us", "vs N=1", "fails"
        ));
        for ((ruleset, n), s) in &self.packets {
            let mut s = s.clone();
            let base = self.packets.get(&(*ruleset, 1)).map(Sample::per_second);
            t.push_str(&format!(
                "{ruleset:<13} {n:>6} {:>9.0} {:>8.0} {:>8.0} {:>8.0} {:>9} {:>6}\n",
                s.per_second(),
                s.percentile_us(50.0),
                s.percentile_us(99.0),
                s.max_us(),
                base.map_or("-".into(), |b| format!(
                    "{:+.1}%",
                    (s.per_second() / b - 1.0) * 100.0
                )),
                s.failures
            ));
        }
        if let Some((s, apply_ms)) = &self.during_apply {
            let mut s = s.clone();
            t.push_str(&format!(
                "{:<13} {:>6} {:>9.0} {:>8.0} {:>8.0} {:>8.0} {:>9} {:>6}\n",
                "during batch",
                1,
                s.per_second(),
                s.percentile_us(50.0),
                s.percentile_us(99.0),
                s.max_us(),
                "-",
                s.failures
            ));
            t.push_str(&format!(
                "  (gearnat maps, N = 1, while an apply added {BATCH_UNDER_TRAFFIC} ports to the \
                 same deployment: one batch in the same namespace, {apply_ms:.0} ms)\n"
            ));
        }
        t
    }

    fn json(&self) -> Value {
        let mut control = serde_json::Map::new();
        for (n, steps) in &self.control {
            let mut per = serde_json::Map::new();
            for (name, s) in steps {
                per.insert(
                    name.to_string(),
                    json!({
                        "gearnat_wall_ms": s.wall_ms,
                        "gearnat_inside_ms": s.inside_ms,
                        "nft_ms": s.nft_ms,
                        "median_gearnat_ms": median(&s.wall_ms),
                        "median_nft_ms": finite(median(&s.nft_ms)),
                        "ratio_gearnat_nft": finite(median(&s.wall_ms) / median(&s.nft_ms)),
                        "split_ms_of_median_run": split_groups(s),
                        "step_timings_ms": s.split_ms,
                        "max_rss_kib": s.max_rss_kib,
                        "batches_messages_bytes": s.batches,
                    }),
                );
            }
            control.insert(n.to_string(), Value::Object(per));
        }
        let packets: Vec<Value> = self
            .packets
            .iter()
            .map(|((ruleset, n), s)| {
                let mut s = s.clone();
                json!({
                    "ruleset": ruleset,
                    "ports": n,
                    "connections": s.connects,
                    "failures": s.failures,
                    "seconds": s.elapsed.as_secs_f64(),
                    "connections_per_second": s.per_second(),
                    "p50_us": s.percentile_us(50.0),
                    "p99_us": s.percentile_us(99.0),
                    "max_us": s.max_us(),
                })
            })
            .collect();
        let during = self.during_apply.as_ref().map(|(s, apply_ms)| {
            let mut s = s.clone();
            json!({
                "batch_elements": BATCH_UNDER_TRAFFIC,
                "apply_wall_ms": apply_ms,
                "connections": s.connects,
                "failures": s.failures,
                "p50_us": s.percentile_us(50.0),
                "p99_us": s.percentile_us(99.0),
                "max_us": s.max_us(),
            })
        });
        json!({
            "machine": machine(),
            "control": control,
            "packet": packets,
            "packet_during_batch": during,
        })
    }
}

fn opt(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "-".into()
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "kernel": kernel.trim(),
    })
}
