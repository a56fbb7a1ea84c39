//! Smoke tests of the end-to-end harness itself (tests/common).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{TestHost, CLIENT_ADDR, HOST_ADDR};
use gearnat::netns;

const TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn client_and_host_reach_each_other() {
    if !common::require_root() {
        return;
    }
    let host = TestHost::new("gnth-tcp");
    assert!(netns::exists_named(host.host_ns()));
    assert!(netns::exists_named(host.client_ns()));

    let on_host = common::serve_tcp(host.host_ns(), SocketAddr::from((HOST_ADDR, 0)), "host");
    let reply = common::tcp_request(host.client_ns(), on_host.addr(), TIMEOUT).unwrap();
    assert_eq!(reply, "host");
    assert_eq!(on_host.served(), 1);

    let on_client = common::serve_tcp(host.client_ns(), SocketAddr::from((CLIENT_ADDR, 9000)), "c");
    assert_eq!(
        common::tcp_request(host.host_ns(), on_client.addr(), TIMEOUT).unwrap(),
        "c"
    );
    on_client.stop();
    assert!(common::tcp_request(
        host.host_ns(),
        SocketAddr::from((CLIENT_ADDR, 9000)),
        TIMEOUT
    )
    .is_err());

    let on_host_udp = common::serve_udp(host.host_ns(), SocketAddr::from((HOST_ADDR, 0)), "u");
    let reply = common::udp_request(host.client_ns(), on_host_udp.addr(), "ping", TIMEOUT);
    assert_eq!(reply.unwrap(), "u");
}

#[test]
fn gearnat_runs_in_the_host_namespace() {
    if !common::require_root() {
        return;
    }
    let host = TestHost::new("gnth-bin");
    let out = host.gearnat(["--help"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A process started that way is in the host namespace and sees its link.
    let mut ip = Command::new("ip");
    ip.args(["-o", "addr", "show", "dev", common::LINK_IF]);
    let out = common::output_in(host.host_ns(), ip);
    assert!(String::from_utf8_lossy(&out.stdout).contains("192.0.2.1/24"));

    // A namespace made by a process started that way outlives it (it would not under
    // `ip netns exec`, whose private mount namespace keeps the bind mount).
    let instance = format!("{}web-1", host.tag());
    let mut add = Command::new("ip");
    add.args(["netns", "add", &instance]);
    assert!(common::output_in(host.host_ns(), add).status.success());
    assert!(netns::exists_named(&instance));

    // A fresh namespace has an empty ruleset.
    assert_eq!(common::nft_list(host.host_ns()).trim(), "");
}

#[test]
fn drop_removes_instance_namespaces_by_tag() {
    if !common::require_root() {
        return;
    }
    let host = TestHost::new("gnth-drop");
    let (h, c) = (host.host_ns().to_string(), host.client_ns().to_string());
    let instance = format!("{}web-1", host.tag());
    assert!(host.host_ns().starts_with(host.tag()) && host.tag().ends_with('-'));
    netns::create_named(&instance).unwrap();
    drop(host);
    for name in [h, c, instance] {
        assert!(!netns::exists_named(&name), "{name} left behind");
        assert!(!netns::named_path(&name).exists(), "{name} left behind");
    }
}
