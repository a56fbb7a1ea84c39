//! End to end: every malformed or hostile deployment file is refused before anything is
//! touched. The expected message of each file is checked without root in
//! `src/deployment/tests.rs` (`bad_fixtures`); here the real binary runs against a kernel that
//! holds an applied deployment, and nothing may change.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{nft_list, require_root, state_files, TestHost};

/// A deployment with a public port on 6060 and a link, instance namespaces under `tag`.
fn seed(tag: &str) -> String {
    format!(
        r#"{{"IdPrefix": "{tag}", "containers": [
  {{"name": "web", "count": 1, "publicports": [{{"internal": 80, "external": 6060}}],
   "links": [{{"to": "db"}}]}},
  {{"name": "db", "count": 1, "publicports": [{{"internal": 27017}}]}}
]}}"#
    )
}

/// What gearnat could have changed: the host's ruleset, each instance namespace's, the
/// namespaces under the test's tag, and the state directory, byte for byte.
type Snapshot = (String, Vec<(String, String)>, Vec<(PathBuf, Vec<u8>)>);

fn snapshot(host: &TestHost) -> Snapshot {
    let mut namespaces: Vec<String> = fs::read_dir("/run/netns")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(host.tag()) && *n != host.host_ns() && *n != host.client_ns())
        .collect();
    namespaces.sort();
    let instances = namespaces
        .into_iter()
        .map(|ns| {
            let rules = nft_list(&ns);
            (ns, rules)
        })
        .collect();
    (
        nft_list(host.host_ns()),
        instances,
        state_files(host.state_dir()),
    )
}

/// Refused with exit 2 and one line naming the file (and for a problem inside the file, its
/// line and column); no panic, no change.
fn refused(host: &TestHost, command: &str, bad: &Path, before: &Snapshot) -> String {
    let out = host.run(&[command, bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let shown = format!("{command} {}", bad.display());
    assert_eq!(out.status.code(), Some(2), "{shown}: {stderr}");
    assert!(!stderr.contains("panicked"), "{shown}: {stderr}");
    assert!(out.stdout.is_empty(), "{shown} printed a plan");
    assert_eq!(stderr.lines().count(), 1, "{shown}: one message: {stderr}");
    let file_and_place = stderr
        .strip_prefix(&format!("gearnat: {}:", bad.display()))
        .unwrap_or_else(|| panic!("{shown}: the message does not start with the file: {stderr}"));
    let at_a_place = file_and_place
        .split(':')
        .take(2)
        .all(|n| n.parse::<u32>().is_ok());
    // Only a problem with the path itself (a directory, a dangling link, the name) has no place.
    assert!(
        at_a_place || file_and_place.starts_with(' '),
        "{shown}: {stderr}"
    );
    assert!(snapshot(host) == *before, "{shown} changed something");
    stderr
}

/// Every file in tests/deployments/bad: exit 2, one message naming the file and the place, and
/// the kernel and the state directory exactly as before.
#[test]
fn bad_files_change_nothing() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gb01");
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("seed.json");
    fs::write(&file, seed(host.tag())).unwrap();
    assert_eq!(
        host.run(&["apply", file.to_str().unwrap()]).status.code(),
        Some(0)
    );
    let before = snapshot(&host);
    assert_eq!(before.1.len(), 2, "two instance namespaces");

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/deployments/bad");
    let mut bad_files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    bad_files.sort();
    assert!(bad_files.len() >= 40, "bad files in {}", dir.display());
    for bad in &bad_files {
        for command in ["apply", "diff", "compile"] {
            refused(&host, command, bad, &before);
        }
    }

    // A file that is missing, and a deployment name that is a path.
    refused(&host, "apply", &dir.join("missing.json"), &before);
    let out = host.run(&["apply", "--name", "../x", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("contains \"/\""));
    assert!(snapshot(&host) == before);
}

/// Two deployments whose files are each valid but claim the same host port: the second is
/// refused, naming the port and the deployment that holds it, and changes nothing.
#[test]
fn an_external_held_by_another_deployment_is_refused() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gb02");
    let files = tempfile::tempdir().unwrap();
    let first = files.path().join("first.json");
    fs::write(&first, seed(host.tag())).unwrap();
    assert_eq!(
        host.run(&["apply", first.to_str().unwrap()]).status.code(),
        Some(0)
    );
    let before = snapshot(&host);
    let second = files.path().join("second.json");
    let text = format!(
        r#"{{"IdPrefix": "{}", "containers": [
  {{"name": "api", "count": 1, "publicports": [{{"internal": 8080, "external": 6060}}]}}
]}}"#,
        host.tag()
    );
    fs::write(&second, text).unwrap();
    for command in ["apply", "diff"] {
        let stderr = refused(&host, command, &second, &before);
        assert!(
            stderr.contains(&format!(
                "host port tcp/6060 of {}api-1 is held by deployment first ({}web-1)",
                host.tag(),
                host.tag()
            )),
            "{stderr}"
        );
    }
}
