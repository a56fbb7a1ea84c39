//! The command line without a kernel: `compile` against the golden file, exit statuses, and the
//! plain refusal without privileges.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn gearnat(args: &[&str], state_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gearnat"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn compile_of_the_seed_matches_the_golden_file() {
    let state = tempfile::tempdir().unwrap();
    let seed = root().join("tests/deployments/rockmongo_mongodb.json");
    let out = gearnat(&["compile", seed.to_str().unwrap()], state.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let golden = std::fs::read_to_string(root().join("nft/rockmongo_mongodb.nft")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), golden);
    assert_eq!(
        std::fs::read_dir(state.path()).unwrap().count(),
        0,
        "compile wrote state"
    );
}

#[test]
fn compile_of_a_bad_file_exits_2_naming_file_and_place() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("typo.json");
    std::fs::write(
        &bad,
        "{\n  \"containers\": [ {\"name\": \"web\", \"count\": 1,\n    \"publicport\": []} ]\n}\n",
    )
    .unwrap();
    let out = gearnat(&["compile", bad.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("typo.json:3:"), "{err}");
    assert!(err.contains("publicports"), "no did-you-mean: {err}");
}

/// apply, diff, down and status refuse plainly without CAP_NET_ADMIN, before touching anything.
#[test]
fn without_privileges_commands_say_so_and_exit_2() {
    let Some(setpriv) = common::which("setpriv") else {
        eprintln!("skipped: setpriv (util-linux) not found");
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let state = tempfile::tempdir().unwrap();
    // The file must be readable by the unprivileged user, wherever the checkout lives.
    let files = tempfile::tempdir().unwrap();
    std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let seed = files.path().join("rockmongo_mongodb.json");
    std::fs::copy(
        root().join("tests/deployments/rockmongo_mongodb.json"),
        &seed,
    )
    .unwrap();
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o644)).unwrap();
    let seed = seed.to_str().unwrap();
    for args in [
        vec!["apply", seed],
        vec!["diff", seed],
        vec!["down", seed],
        vec!["status"],
    ] {
        let out = Command::new(&setpriv)
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(env!("CARGO_BIN_EXE_gearnat"))
            .arg("--state-dir")
            .arg(state.path())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("needs root"), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
}
