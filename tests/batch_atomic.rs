//! A cold apply of 10,000 public ports is one transaction in the host namespace: when the
//! kernel refuses one element deep in the batch, the table is left exactly as it was.

mod common;

use std::fs;

use common::{exec, nft_table, require_root, TestHost};

/// `n` public ports over 10 containers, host ports 20000 .. 20000 + n.
fn deployment(id_prefix: &str, n: usize) -> String {
    let per = n / 10;
    let containers: Vec<String> = (0..10)
        .map(|c| {
            let ports: Vec<String> = (0..per)
                .map(|j| {
                    let external = 20000 + c * per + j;
                    format!(r#"{{"internal":{},"external":{external}}}"#, 10000 + j)
                })
                .collect();
            format!(
                r#"{{"name":"c{c}","count":1,"image":"x","publicports":[{}]}}"#,
                ports.join(",")
            )
        })
        .collect();
    format!(
        r#"{{"IdPrefix":"{id_prefix}","containers":[{}]}}"#,
        containers.join(",")
    )
}

#[test]
fn a_cold_apply_of_10000_ports_is_all_or_nothing() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gba01");
    let dir = tempfile::tempdir().unwrap();

    // Another deployment's table is there first, and the kernel holds host port 29999 (the
    // last of the 10,000, deep in the batch's last message) for an owner gearnat has no
    // record of.
    let small = dir.path().join("small.json");
    let small_text = format!(
        r#"{{"IdPrefix":"{}s-","containers":[{{"name":"web","count":1,"image":"x",
            "publicports":[{{"internal":80,"external":6060}}]}}]}}"#,
        host.tag()
    );
    fs::write(&small, small_text).unwrap();
    let out = host.gearnat(["apply", small.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = exec(
        host.host_ns(),
        &[
            "nft",
            "add element ip gearnat tcp_ports { 29999 comment \"gearnat:other/x-1\" : \
             10.211.9.9 . 80 }",
        ],
    );
    assert!(
        held.status.success(),
        "{}",
        String::from_utf8_lossy(&held.stderr)
    );
    let before = nft_table(host.host_ns());
    assert_eq!(before.matches(" comment \"gearnat:").count(), 2, "{before}");

    let big = dir.path().join("big.json");
    fs::write(&big, deployment(&format!("{}b-", host.tag()), 10_000)).unwrap();
    let out = host.gearnat(["apply", big.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("adding element tcp_ports 29999") && stderr.contains("File exists"),
        "the error names the refused element: {stderr}"
    );

    // Not one of the 9,999 other elements got in: the table is byte for byte what it was.
    assert_eq!(nft_table(host.host_ns()), before);
    // geard's output file, written beside its place while the kernel was changed, is gone
    // with the failure: no output file, no temporary file.
    let deployments = host.state_dir().join("deployments");
    assert!(!deployments.join("big.json").exists());
    let left: Vec<_> = fs::read_dir(&deployments)
        .unwrap()
        .chain(fs::read_dir(host.state_dir()).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
