//! Other netfilter users: `apply` and `status` report a forward drop in another table (and say
//! what to do), and following the advice makes the mapping work; an iptables-legacy ruleset is
//! reported too. gearnat only reads those tables.

mod common;

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::Duration;

use common::{exec, require_root, serve_tcp, tcp_request, TestHost};

const TIMEOUT: Duration = Duration::from_secs(1);

fn deployment(tag: &str) -> String {
    format!(
        r#"{{ "IdPrefix": "{tag}", "Containers": [
  {{ "Name": "web", "Count": 1, "PublicPorts": [{{"Internal": 80, "External": 6060}}] }} ] }}"#
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nft {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn reaches(ns: &str, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    (0..5).any(|_| {
        let ok = tcp_request(ns, to, TIMEOUT).is_ok();
        if !ok {
            sleep(Duration::from_millis(100));
        }
        ok
    })
}

#[test]
fn a_forward_drop_in_another_table_is_reported_with_its_fix() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gc01");
    let h = host.host_ns();
    // What Docker leaves on a host: iptables-nft's filter table with FORWARD policy drop.
    let out = exec(h, &["iptables-nft", "-P", "FORWARD", "DROP"]);
    assert!(out.status.success(), "iptables-nft: {}", stderr(&out));
    let before = nft(h, &["list", "table", "ip", "filter"], None);

    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("web.json");
    fs::write(&file, deployment(host.tag())).unwrap();
    let out = host.run(&["apply", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = stderr(&out);
    assert!(
        text.contains(
            "warning: table ip filter chain FORWARD has policy drop on the forward hook: \
             forwarded traffic to gearnat's instances is dropped there"
        ),
        "{text}"
    );
    let fix = "iptables -I FORWARD -m conntrack --ctstate DNAT -j ACCEPT";
    assert!(text.contains(fix), "{text}");
    assert_eq!(nft(h, &["list", "table", "ip", "filter"], None), before);

    // The report is right: the mapping does not work, gearnat's own accept notwithstanding.
    let web = format!("{}web-1", host.tag());
    let _server = serve_tcp(&web, "0.0.0.0:80".parse().unwrap(), "web");
    assert!(
        !reaches(host.client_ns(), "192.0.2.1:6060"),
        "the drop is real"
    );

    // Following the advice makes it work, and the warning goes away.
    // As printed, but with iptables-nft by name: plain `iptables` may be the legacy one.
    let mut fix_args: Vec<&str> = fix.split(' ').collect();
    fix_args[0] = "iptables-nft";
    let out = exec(h, &fix_args);
    assert!(out.status.success(), "{fix}: {}", stderr(&out));
    assert!(reaches(host.client_ns(), "192.0.2.1:6060"));
    let out = host.run(&["status"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));

    // A drop rule (not a policy) in another table is reported by status too.
    let other = "table inet other {\n\tchain screen {\n\t\ttype filter hook forward priority 10; \
                 policy accept;\n\t\tip daddr 10.211.0.0/16 drop\n\t}\n}\n";
    nft(h, &["-f", "-"], Some(other));
    let out = host.run(&["status"]);
    let text = stderr(&out);
    assert!(
        text.contains("warning: table inet other chain screen drops or rejects in rule (handle "),
        "{text}"
    );
    let fix = "nft insert rule inet other screen ct status dnat accept";
    assert!(text.contains(fix), "{text}");
    assert!(!text.contains("ip filter"), "{text}");
    let fix_args: Vec<&str> = fix.split(' ').skip(1).collect();
    nft(h, &fix_args, None);
    let out = host.run(&["status"]);
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    assert!(reaches(host.client_ns(), "192.0.2.1:6060"));
}

#[test]
fn an_iptables_legacy_ruleset_is_reported() {
    if !require_root() {
        return;
    }
    let host = TestHost::new("gc02");
    let h = host.host_ns();
    let out = exec(h, &["iptables-legacy", "-P", "FORWARD", "DROP"]);
    if !out.status.success() {
        eprintln!(
            "skipped: iptables-legacy does not run here: {}",
            stderr(&out)
        );
        return;
    }
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("web.json");
    fs::write(&file, deployment(host.tag())).unwrap();
    let out = host.run(&["apply", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = stderr(&out);
    assert!(
        text.contains("warning: an iptables-legacy ruleset is loaded (tables filter)"),
        "{text}"
    );
}
