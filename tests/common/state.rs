//! Snapshots of what gearnat leaves behind: its state directory and the kernel's tables.

use std::fs;
use std::path::{Path, PathBuf};

/// Every file under `dir` with its bytes, sorted by path.
pub fn state_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push((path.clone(), fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// Checks that every JSON file in the state directory parses, and returns the reservations
/// (`reservations.json`, `Null` when there is none).
pub fn state_parses(dir: &Path) -> serde_json::Value {
    let mut reservations = serde_json::Value::Null;
    for (path, bytes) in state_files(dir) {
        if path.extension().is_some_and(|e| e == "json") {
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{} is not valid JSON ({e}):\n{}",
                    path.display(),
                    String::from_utf8_lossy(&bytes)
                )
            });
            if path.file_name().is_some_and(|n| n == "reservations.json") {
                reservations = value;
            }
        }
    }
    reservations
}

/// One host port in `reservations.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedPort {
    pub proto: String,
    pub port: u16,
    pub deployment: String,
    pub instance: String,
    pub internal: u16,
}

/// The host ports of `reservations` (as [`state_parses`] returns it), read from its grouping
/// `{"held_ports": {deployment: {instance: {proto: [[host port, container port]]}}}}`.
pub fn reserved_ports(reservations: &serde_json::Value) -> Vec<ReservedPort> {
    let mut out = Vec::new();
    let Some(deployments) = reservations["held_ports"].as_object() else {
        return out;
    };
    for (deployment, instances) in deployments {
        for (instance, protos) in instances.as_object().unwrap() {
            for (proto, pairs) in protos.as_object().unwrap() {
                for pair in pairs.as_array().unwrap() {
                    let number = |i: usize| u16::try_from(pair[i].as_u64().unwrap()).unwrap();
                    out.push(ReservedPort {
                        proto: proto.clone(),
                        port: number(0),
                        deployment: deployment.clone(),
                        instance: instance.clone(),
                        internal: number(1),
                    });
                }
            }
        }
    }
    out
}
