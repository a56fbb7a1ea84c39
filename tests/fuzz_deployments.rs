//! A bounded fuzz run on the stable toolchain: the deployment fixtures, mutated at random, go
//! through parsing, validation, resolution and planning (tests/fuzz/check.rs says what each
//! must satisfy). The coverage-guided run is the cargo-fuzz target in tests/fuzz; this one runs
//! with every `cargo test`. `GEARNAT_FUZZ_CASES` sets the number of cases (default 2,000; the
//! run stops after 20 seconds in any case) and `GEARNAT_TEST_SEED` the seed; a failing case is
//! written to the temporary directory.

#[path = "fuzz/check.rs"]
mod check;
mod common;

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

use common::Rng;

/// Fragments spliced in: the values and shapes that validation has cases for.
const TOKENS: &[&str] = &[
    "0",
    "1",
    "-1",
    "65535",
    "65536",
    "4000",
    "59999",
    "10000",
    "10001",
    "1.5",
    "1e3",
    "99999999999999999999",
    "null",
    "true",
    "false",
    "\"\"",
    "\"tcp\"",
    "\"udp\"",
    "\"sctp\"",
    "[]",
    "{}",
    "\"a\"",
    "\"db\"",
    "\"web\"",
    "\"../x\"",
    ",",
    ":",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\u0000",
    "\\ud800",
    "\"Count\": 3",
    "\"External\": 6060",
    "\"Internal\": 80",
    "\"Links\": [{\"To\": \"db\"}]",
    "\"Ports\": [27017]",
    "\"MatchPort\": true",
    "\"NonLocal\": true",
    "\"AliasPorts\": [{\"Internal\": 27017, \"External\": 1}]",
    "\"Protocol\": \"udp\"",
    "\"IdPrefix\": \"p.\"",
    "{\"Id\": \"db-1\", \"Ports\": [{\"Internal\": 27017, \"External\": 4001}]}",
];

/// Longest the bounded run goes on, whatever the number of cases.
const BUDGET: std::time::Duration = std::time::Duration::from_secs(20);

/// Numbers that stay valid JSON where a number was: limits, their neighbours, ports.
const NUMBERS: &[&str] = &[
    "0", "1", "2", "3", "9", "10", "99", "100", "1000", "4000", "4001", "6060", "27017", "59999",
    "60000", "65535", "65536", "9999", "10000", "10001", "50000", "-1", "-0",
];

/// Where the runs of ASCII digits in `input` are.
fn digit_runs(input: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        if input[i].is_ascii_digit() {
            let from = i;
            while i < input.len() && input[i].is_ascii_digit() {
                i += 1;
            }
            out.push((from, i));
        } else {
            i += 1;
        }
    }
    out
}

fn seeds() -> Vec<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/deployments");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut out: Vec<Vec<u8>> = files
        .iter()
        .filter_map(|p| fs::read(p).ok())
        .filter(|b| b.len() <= 16 * 1024)
        .collect();
    out.push(
        br#"{"IdPrefix": "p.", "Containers": [
  {"Name": "web", "Count": 2, "PublicPorts": [{"Internal": 80}, {"Internal": 53, "Protocol": "udp"}],
   "Links": [{"To": "db", "MatchPort": true}, {"To": "cache", "AliasPorts": [{"Internal": 6379, "External": 7000}]}]},
  {"Name": "db", "Count": 2, "PublicPorts": [{"Internal": 27017}, {"Internal": 28017, "External": 8017}],
   "Links": [{"To": "web", "NonLocal": true, "Ports": [80]}]},
  {"Name": "cache", "Count": 1, "PublicPorts": [{"Internal": 6379}]}
],
"Instances": [{"Id": "p.db-1", "Ports": [{"Internal": 27017, "External": 4100}]}]}"#
            .to_vec(),
    );
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            collect(&path, out);
        } else if meta.is_file() {
            out.push(path);
        }
    }
}

/// One random edit of `input`.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let at = |rng: &mut Rng, len: usize| rng.below(len as u64 + 1) as usize;
    match rng.below(8) {
        6 | 7 => {
            // Keep the JSON valid: replace one of the numbers with another.
            let numbers: Vec<(usize, usize)> = digit_runs(input);
            if let Some(&(from, to)) = numbers.get(rng.below(numbers.len() as u64) as usize) {
                let n = NUMBERS[rng.below(NUMBERS.len() as u64) as usize];
                input.splice(from..to, n.bytes());
            }
        }
        0 if !input.is_empty() => {
            let i = at(rng, input.len() - 1);
            input[i] = rng.next() as u8;
        }
        1 if !input.is_empty() => {
            let from = at(rng, input.len() - 1);
            let to = (from + 1 + rng.below(16) as usize).min(input.len());
            input.drain(from..to);
        }
        2 if !input.is_empty() => {
            let from = at(rng, input.len() - 1);
            let to = (from + 1 + rng.below(64) as usize).min(input.len());
            let copy = input[from..to].to_vec();
            let i = at(rng, input.len());
            input.splice(i..i, copy);
        }
        3 => {
            let other = &seeds[rng.below(seeds.len() as u64) as usize];
            let from = at(rng, other.len());
            let to = (from + rng.below(128) as usize).min(other.len());
            let i = at(rng, input.len());
            input.splice(i..i, other[from..to].iter().copied());
        }
        _ => {
            // Replace a number or insert a token.
            let token = TOKENS[rng.below(TOKENS.len() as u64) as usize].as_bytes();
            let i = at(rng, input.len());
            let end = input[i..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .map_or(input.len(), |n| i + n);
            input.splice(i..end, token.iter().copied());
        }
    }
}

#[test]
fn mutated_deployments_keep_every_promise() {
    let cases: usize = std::env::var("GEARNAT_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let seeds = seeds();
    assert!(seeds.len() >= 40, "{} seeds", seeds.len());
    // Most cases start from a valid deployment and change it a little, so that they get past
    // parsing; the rest start anywhere and change more.
    let valid: Vec<&Vec<u8>> = seeds
        .iter()
        .filter(|s| {
            let text = std::str::from_utf8(s).unwrap_or("");
            gearnat::deployment::parse(text, "f", "f").is_ok()
        })
        .collect();
    assert!(valid.len() >= 3, "{} valid seeds", valid.len());
    let mut rng = Rng::from_env_or_clock();
    let (mut accepted, mut refused) = (0usize, 0usize);
    // Valid deployments near the limits take a while each (50,000 mappings resolved, planned,
    // rendered and read back), so the run also stops after a time budget.
    let started = std::time::Instant::now();
    let mut ran = 0;
    for case in 0..cases {
        if started.elapsed() > BUDGET {
            break;
        }
        ran += 1;
        let (mut input, edits) = if rng.below(4) > 0 {
            (
                valid[rng.below(valid.len() as u64) as usize].clone(),
                1 + rng.below(2),
            )
        } else {
            (
                seeds[rng.below(seeds.len() as u64) as usize].clone(),
                1 + rng.below(8),
            )
        };
        for _ in 0..edits {
            mutate(&mut rng, &mut input, &seeds);
        }
        let one = std::time::Instant::now();
        let result = panic::catch_unwind(|| check::check(&input));
        if one.elapsed().as_secs() >= 2 {
            let path = std::env::temp_dir().join(format!("gearnat-fuzz-slow-{case}.json"));
            fs::write(&path, &input).unwrap();
            eprintln!("case {case} took {:?}: {}", one.elapsed(), path.display());
        }
        if let Err(e) = result {
            let path = std::env::temp_dir().join(format!("gearnat-fuzz-case-{case}.json"));
            fs::write(&path, &input).unwrap();
            panic::resume_unwind(Box::new(format!(
                "case {case} fails; input written to {}: {:?}",
                path.display(),
                e.downcast_ref::<String>()
                    .map(String::as_str)
                    .or(e.downcast_ref::<&str>().copied())
            )));
        }
        match std::str::from_utf8(&input).map(|s| gearnat::deployment::parse(s, "f", "f")) {
            Ok(Ok(_)) => accepted += 1,
            _ => refused += 1,
        }
    }
    eprintln!(
        "{ran} of {cases} cases in {:?}: {accepted} accepted, {refused} refused",
        started.elapsed()
    );
    assert!(accepted > 0, "no mutated input was a valid deployment");
}

/// Inputs the fuzzers found, kept as regression cases.
#[test]
fn fuzz_findings_stay_fixed() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/findings");
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        check::check(&fs::read(e.path()).unwrap());
    }
}
