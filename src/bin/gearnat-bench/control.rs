//! The control path: `gearnat` applying, re-applying, growing, shrinking and removing a
//! deployment of N public ports in a private host namespace, against `nft -f` loading the same
//! ruleset in a namespace of its own.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::topo::{self, Finished};

/// The instances a deployment of `n` ports is spread over.
fn instances(n: usize) -> usize {
    if n >= 100 {
        10
    } else {
        1
    }
}

/// A deployment of `n` public ports over [`instances`] containers (count 1 each), host ports
/// from 20000 up; the last container has `extra` more, on host ports from 20000 + n up.
pub fn deployment(id_prefix: &str, n: usize, extra: usize) -> String {
    let containers = instances(n);
    let per = n / containers;
    let list: Vec<Value> = (0..containers)
        .map(|c| {
            let mut ports: Vec<Value> = (0..per)
                .map(|j| json!({"internal": 10000 + j, "external": 20000 + c * per + j}))
                .collect();
            if c == containers - 1 {
                ports.extend(
                    (0..extra)
                        .map(|j| json!({"internal": 10000 + per + j, "external": 20000 + n + j})),
                );
            }
            json!({"name": format!("c{c}"), "count": 1, "image": "bench", "publicports": ports})
        })
        .collect();
    json!({"IdPrefix": id_prefix, "containers": list}).to_string()
}

/// The last mapping of [`deployment`]: (instance id, internal port, host port).
pub fn last_mapping(id_prefix: &str, n: usize) -> (String, u16, u16) {
    let containers = instances(n);
    let per = n / containers;
    let id = format!("{id_prefix}c{}-1", containers - 1);
    (id, (10000 + per - 1) as u16, (20000 + n - 1) as u16)
}

/// One timed step: the gearnat process, its own figure and its step timings, and nft's.
#[derive(Debug, Default, Clone)]
pub struct Step {
    pub wall_ms: Vec<f64>,
    pub inside_ms: Vec<f64>,
    pub split_ms: Vec<BTreeMap<String, f64>>,
    pub nft_ms: Vec<f64>,
    pub max_rss_kib: u64,
    /// The batches gearnat sent: (messages, bytes), from its debug log.
    pub batches: Vec<(usize, usize)>,
}

pub const STEPS: [&str; 6] = [
    "cold apply",
    "re-apply",
    "restore",
    "add one",
    "remove one",
    "down",
];

/// What `restore` starts from: gearnat's table deleted by hand (as `nft flush ruleset` or a
/// firewall reload would), the instances still up. Run untimed before the step.
const DELETE_TABLE: &str = "delete table ip gearnat\n";

/// Runs `reps` rounds at `n` and returns each step's samples.
pub fn measure(gearnat: &Path, n: usize, reps: usize, tag: &str) -> BTreeMap<&'static str, Step> {
    let mut steps: BTreeMap<&'static str, Step> = BTreeMap::new();
    for rep in 0..reps {
        let round = format!("{tag}{rep}");
        gearnat_round(gearnat, n, &round, &mut steps);
        nft_round(gearnat, n, &round, &mut steps);
    }
    steps
}

/// gearnat's five steps in a fresh host namespace.
fn gearnat_round(gearnat: &Path, n: usize, round: &str, steps: &mut BTreeMap<&'static str, Step>) {
    let host = format!("{}h{round}", topo::prefix());
    let id_prefix = format!("{}{round}-", topo::prefix());
    let dir = topo::scratch().join(format!("control-{round}"));
    fs::create_dir_all(&dir).expect("scratch folder");
    let state = dir.join("state");
    let file = |name: &str, extra: usize| -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, deployment(&id_prefix, n, extra)).expect("writing a deployment");
        path
    };
    let (base, grown) = (file("base.json", 0), file("grown.json", 1));
    topo::add_ns(&host);
    let run = |args: &[&Path]| -> Finished {
        let mut cmd = Command::new(gearnat);
        // Instances are network namespaces, whether or not a Docker daemon answers.
        cmd.env("GEARNAT_RUNTIME", "netns");
        cmd.arg("-vv").arg("--state-dir").arg(&state);
        cmd.args(args);
        let out = topo::run_in(&host, cmd, None);
        assert!(out.success, "gearnat {args:?} failed:\n{}", out.stderr);
        out
    };
    let name = Path::new("--name=bench");
    let plan: [(&str, &[&Path]); 6] = [
        ("cold apply", &[Path::new("apply"), name, &base]),
        ("re-apply", &[Path::new("apply"), name, &base]),
        ("restore", &[Path::new("apply"), name, &base]),
        ("add one", &[Path::new("apply"), name, &grown]),
        ("remove one", &[Path::new("apply"), name, &base]),
        ("down", &[Path::new("down"), name]),
    ];
    let script = dir.join("delete-table.nft");
    fs::write(&script, DELETE_TABLE).expect("writing an nft script");
    for (step, args) in plan {
        if step == "restore" {
            nft_file(&host, &script);
        }
        let out = run(args);
        let entry = steps.entry(step).or_default();
        entry.wall_ms.push(out.ms());
        if let Some(ms) = applied_ms(&out.stdout) {
            entry.inside_ms.push(ms);
        }
        entry.split_ms.push(split(&out.stderr));
        entry.batches = batches(&out.stderr);
        entry.max_rss_kib = entry.max_rss_kib.max(out.max_rss_kib);
        if step == "cold apply" {
            settle();
        }
    }
    gearnat::netns::delete_named(&host).expect("deleting the host namespace");
    settle();
}

/// Waits for the kernel to finish destroying the namespaces a round removed. Their cleanup
/// (`cleanup_net`) runs on a kernel worker after the last reference goes, takes rtnl for
/// their devices, and for about a second slows every netlink request of the next round: at
/// 10,000 mappings, a remove one measured right after the previous round's `down` took 32 ms
/// against 24 once the kernel had finished.
fn settle() {
    std::thread::sleep(std::time::Duration::from_secs(1));
}

/// The same ruleset through nft: `nft -f` of `gearnat compile`'s host block, one element
/// added and removed with `nft add/delete element`, and the table deleted.
fn nft_round(gearnat: &Path, n: usize, round: &str, steps: &mut BTreeMap<&'static str, Step>) {
    let ns = format!("{}n{round}", topo::prefix());
    let dir = topo::scratch().join(format!("nft-{round}"));
    fs::create_dir_all(&dir).expect("scratch folder");
    let id_prefix = format!("{}{round}-", topo::prefix());
    let deployment_file = dir.join("bench.json");
    fs::write(&deployment_file, deployment(&id_prefix, n, 0)).expect("writing a deployment");
    let compiled = Command::new(gearnat)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("compile")
        .arg(&deployment_file)
        .output()
        .expect("running gearnat compile");
    assert!(compiled.status.success(), "gearnat compile failed");
    let text = host_block(&String::from_utf8_lossy(&compiled.stdout));
    let (id, internal, _) = last_mapping(&id_prefix, n);
    let added = 20000 + n;
    let scripts = [
        ("cold apply", text.clone()),
        // The same load into the same namespace once its table is gone.
        ("restore", text),
        (
            "add one",
            format!(
                "add element ip gearnat tcp_ports {{ {added} comment \"gearnat:bench/{id}\" : \
                 10.211.0.{} . {} }}\n",
                instances(n) + 1,
                internal + 1
            ),
        ),
        (
            "remove one",
            format!("delete element ip gearnat tcp_ports {{ {added} }}\n"),
        ),
        ("down", DELETE_TABLE.to_string()),
    ];
    topo::add_ns(&ns);
    let delete_table = dir.join("delete-table.nft");
    fs::write(&delete_table, DELETE_TABLE).expect("writing an nft script");
    for (step, script) in scripts {
        if step == "restore" {
            nft_file(&ns, &delete_table);
        }
        let path = dir.join(format!("{}.nft", step.replace(' ', "-")));
        fs::write(&path, script).expect("writing an nft script");
        let out = nft_file(&ns, &path);
        steps.entry(step).or_default().nft_ms.push(out.ms());
    }
    gearnat::netns::delete_named(&ns).expect("deleting the nft namespace");
    settle();
}

/// `nft -f path` in the named namespace; fails the bench if nft does.
fn nft_file(ns: &str, path: &Path) -> Finished {
    let mut cmd = Command::new("nft");
    cmd.arg("-f").arg(path);
    let out = topo::run_in(ns, cmd, None);
    assert!(out.success, "nft -f {}: {}", path.display(), out.stderr);
    out
}

/// The `# namespace host` block of `gearnat compile`'s output.
pub fn host_block(compiled: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in compiled.lines() {
        if let Some(ns) = line.strip_prefix("# namespace ") {
            inside = ns == "host";
        } else if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `applied in N ms` from apply's output.
fn applied_ms(stdout: &str) -> Option<f64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("applied in "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
}

/// `sending an nf_tables batch of M messages, B bytes` debug lines: (M, B) per batch.
fn batches(stderr: &str) -> Vec<(usize, usize)> {
    stderr
        .lines()
        .filter_map(|l| {
            l.split_once("sending an nf_tables batch of ")
                .map(|(_, r)| r)
        })
        .filter_map(|r| {
            let (messages, rest) = r.split_once(" messages, ")?;
            let bytes = rest.strip_suffix(" bytes")?;
            Some((messages.parse().ok()?, bytes.parse().ok()?))
        })
        .collect()
}

/// The `took X ms: STEP` debug lines (see gearnat's `timing` module), summed per step.
fn split(stderr: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in stderr.lines() {
        let Some((_, rest)) = line.split_once("took ") else {
            continue;
        };
        let Some((ms, step)) = rest.split_once(" ms: ") else {
            continue;
        };
        if let Ok(ms) = ms.parse::<f64>() {
            *out.entry(step.to_string()).or_insert(0.0) += ms;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_spread_ports_over_instances() {
        let d: Value = serde_json::from_str(&deployment("gnb-1-a0-", 100, 1)).unwrap();
        let containers = d["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 10);
        assert_eq!(containers[9]["publicports"].as_array().unwrap().len(), 11);
        assert_eq!(
            last_mapping("gnb-1-a0-", 100),
            ("gnb-1-a0-c9-1".into(), 10009, 20099)
        );
        assert_eq!(last_mapping("p-", 1), ("p-c0-1".into(), 10000, 20000));
    }

    #[test]
    fn timing_lines_are_summed() {
        let log = "[DEBUG gearnat::timing] took 1.50 ms: dump host table\n\
                   [INFO x] joined\n[DEBUG gearnat::timing] took 2.00 ms: dump host table\n";
        assert_eq!(split(log)["dump host table"], 3.5);
        let sent = "[DEBUG x] sending an nf_tables batch of 43 messages, 644684 bytes\n";
        assert_eq!(batches(sent), vec![(43, 644684)]);
        assert_eq!(
            applied_ms("plan\napplied in 12 ms; read back: in sync\n"),
            Some(12.0)
        );
    }
}
