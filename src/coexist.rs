//! Other netfilter users on the host that will affect gearnat's traffic, found by reading only:
//! drop policies and drop rules on the forward hook in other nftables tables, an iptables-legacy
//! ruleset, a running firewalld. Each finding says what to do.
//!
//! Why it matters: netfilter runs every table's base chain on a hook, and a packet must pass
//! all of them; an `accept` in gearnat's table is final only for that table, so a `drop` in
//! Docker's `table ip filter` (policy drop on FORWARD) or firewalld's zones still wins
//! (nft(8), "VERDICT STATEMENT").

use std::fs;
use std::path::Path;

use crate::netfilter::{self, ForwardChain};
use crate::ruleset::Ipv4Net;

/// The rule gearnat asks other forward chains to hold before their drops: it lets through the
/// connections a mapping DNATed, in both directions, and nothing else.
const DNAT_ACCEPT: &str = "ct status dnat accept";

/// Every finding in the calling thread's network namespace, one sentence each.
pub fn findings(pool: Ipv4Net, bridge: &str) -> Vec<String> {
    let mut out = Vec::new();
    match netfilter::forward_chains() {
        Ok(chains) => out.extend(chains.iter().filter(|c| c.may_drop()).map(forward_drop)),
        Err(e) => out.push(format!(
            "could not read the other nftables tables ({e}); a drop on the forward hook there \
             would drop traffic to gearnat's instances"
        )),
    }
    out.extend(iptables_legacy(
        Path::new("/proc/self/net/ip_tables_names"),
        pool,
    ));
    out.extend(firewalld(&FIREWALLD_PID_FILES, Path::new("/proc"), bridge));
    out
}

/// Where firewalld writes its pid while it runs (its FIREWALLD_PIDFILE, /var/run/firewalld.pid,
/// which is /run/firewalld.pid where /var/run links to /run).
const FIREWALLD_PID_FILES: [&str; 2] = ["/run/firewalld.pid", "/var/run/firewalld.pid"];

fn forward_drop(c: &ForwardChain) -> String {
    let what = if c.drop_rules.is_empty() {
        "has policy drop".to_string()
    } else {
        let handles: Vec<String> = c.drop_rules.iter().map(u64::to_string).collect();
        let s = if handles.len() == 1 { "" } else { "s" };
        let policy = if c.policy_drop {
            "has policy drop and "
        } else {
            ""
        };
        format!(
            "{policy}drops or rejects in rule{s} (handle{s} {})",
            handles.join(", ")
        )
    };
    // iptables-nft's own table (Docker's, among others) takes the rule through iptables.
    let fix = if c.family == "ip" && c.table == "filter" && c.chain == "FORWARD" {
        "`iptables -I FORWARD -m conntrack --ctstate DNAT -j ACCEPT`".to_string()
    } else {
        format!(
            "`nft insert rule {} {} {} {DNAT_ACCEPT}`",
            c.family, c.table, c.chain
        )
    };
    format!(
        "table {} {} chain {} {what} on the forward hook: forwarded traffic to gearnat's \
         instances is dropped there whatever gearnat's table accepts; let it through with {fix}",
        c.family, c.table, c.chain
    )
}

/// iptables-legacy keeps its tables outside nftables, where nft cannot list them; the names of
/// the loaded ones are in /proc/net/ip_tables_names (the ip_tables module's proc file).
fn iptables_legacy(names: &Path, pool: Ipv4Net) -> Option<String> {
    let text = fs::read_to_string(names).ok()?;
    let tables: Vec<&str> = text.split_whitespace().collect();
    if tables.is_empty() {
        return None;
    }
    Some(format!(
        "an iptables-legacy ruleset is loaded (tables {}): it also sees gearnat's traffic and \
         nft cannot show it; if `iptables-legacy -S FORWARD` shows a DROP policy or rule, add \
         `iptables-legacy -I FORWARD -d {pool} -m conntrack --ctstate DNAT -j ACCEPT` and the \
         same with `-s {pool}`",
        tables.join(", ")
    ))
}

/// firewalld keeps a pid file while it runs (a stale one names a dead or other process, told by
/// its `comm`). Its zones decide forwarded traffic in the initial network namespace only, so
/// elsewhere (a test's private namespace) it is no finding.
fn firewalld(pid_files: &[&str], proc: &Path, bridge: &str) -> Option<String> {
    let pid = pid_files.iter().find_map(|p| fs::read_to_string(p).ok())?;
    let pid = pid.trim();
    let comm = fs::read_to_string(proc.join(pid).join("comm")).ok()?;
    if !comm.starts_with("firewall") || !in_initial_netns(proc) {
        return None;
    }
    Some(format!(
        "firewalld is running (pid {pid}): unless a zone accepts forwarded traffic to \
         {bridge}, it rejects connections to gearnat's instances; e.g. `firewall-cmd --zone=trusted \
         --add-interface={bridge}` and `firewall-cmd --zone=public --add-forward` (with \
         --permanent to keep them)"
    ))
}

/// Whether this process shares PID 1's network namespace (true when that cannot be read).
fn in_initial_netns(proc: &Path) -> bool {
    match (
        fs::read_link(proc.join("self/ns/net")),
        fs::read_link(proc.join("1/ns/net")),
    ) {
        (Ok(mine), Ok(init)) => mine == init,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(policy_drop: bool, drop_rules: Vec<u64>) -> ForwardChain {
        ForwardChain {
            family: "ip",
            table: "filter".into(),
            chain: "FORWARD".into(),
            policy_drop,
            drop_rules,
            accepts_dnat_first: false,
        }
    }

    #[test]
    fn a_forward_drop_says_where_and_what_to_do() {
        let text = forward_drop(&chain(true, vec![]));
        assert!(
            text.starts_with("table ip filter chain FORWARD has policy drop on the forward hook"),
            "{text}"
        );
        assert!(text.ends_with("`iptables -I FORWARD -m conntrack --ctstate DNAT -j ACCEPT`"));
        let other = ForwardChain {
            table: "docker".into(),
            ..chain(true, vec![])
        };
        let text = forward_drop(&other);
        assert!(text.ends_with("`nft insert rule ip docker FORWARD ct status dnat accept`"));
        let text = forward_drop(&chain(false, vec![7, 9]));
        assert!(
            text.contains("drops or rejects in rules (handles 7, 9)"),
            "{text}"
        );
    }

    #[test]
    fn firewalld_only_when_its_pid_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("firewalld.pid");
        let proc = dir.path().join("proc");
        fs::create_dir_all(proc.join("42")).unwrap();
        let files = [pid_file.to_str().unwrap()];
        assert_eq!(firewalld(&files, &proc, "gearnat0"), None);
        fs::write(&pid_file, "42\n").unwrap();
        fs::write(proc.join("42/comm"), "sshd\n").unwrap();
        assert_eq!(
            firewalld(&files, &proc, "gearnat0"),
            None,
            "a stale pid file"
        );
        fs::write(proc.join("42/comm"), "firewalld\n").unwrap();
        let text = firewalld(&files, &proc, "gearnat0").unwrap();
        assert!(text.starts_with("firewalld is running (pid 42)"), "{text}");
        assert!(text.contains("--add-interface=gearnat0"), "{text}");
    }

    #[test]
    fn iptables_legacy_only_when_tables_are_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let names = dir.path().join("ip_tables_names");
        let pool = "10.211.0.0/16".parse().unwrap();
        assert_eq!(iptables_legacy(&names, pool), None);
        fs::write(&names, "").unwrap();
        assert_eq!(iptables_legacy(&names, pool), None);
        fs::write(&names, "nat\nfilter\n").unwrap();
        let text = iptables_legacy(&names, pool).unwrap();
        assert!(text.contains("(tables nat, filter)"), "{text}");
        assert!(text.contains("-d 10.211.0.0/16 -m conntrack --ctstate DNAT -j ACCEPT"));
    }
}
