//! The Fedora VM's Vagrantfile is valid (`vagrant validate`, with the libvirt provider's
//! settings when vagrant-libvirt is installed), and the provisioning script parses.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn vagrant_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vagrant")
}

#[test]
fn the_vagrantfile_validates() {
    let Ok(version) = Command::new("vagrant").arg("--version").output() else {
        eprintln!("skipped: vagrant is not installed");
        return;
    };
    assert!(version.status.success());
    let plugins = Command::new("vagrant")
        .arg("plugin")
        .arg("list")
        .output()
        .unwrap();
    let libvirt = String::from_utf8_lossy(&plugins.stdout).contains("vagrant-libvirt");
    let mut cmd = Command::new("vagrant");
    cmd.arg("validate").current_dir(vagrant_dir());
    if libvirt {
        cmd.env("VAGRANT_DEFAULT_PROVIDER", "libvirt");
    } else {
        eprintln!("vagrant-libvirt is not installed: validating without provider settings");
        cmd.arg("--ignore-provider");
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("validated successfully"), "{text}");
}

#[test]
fn the_provisioning_script_parses_and_refuses_non_root() {
    let script = vagrant_dir().join("provision.sh");
    let out = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let Some(setpriv) = common::which("setpriv") else {
        eprintln!("skipped: setpriv not found");
        return;
    };
    let out = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"])
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run as root"));
}
