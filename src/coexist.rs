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

use crate::firewall::Chains;
use crate::netfilter::ForwardChain;
use crate::ruleset::Ipv4Net;

/// The rule gearnat asks other forward chains to hold before their drops: it lets through the
/// connections a mapping DNATed, in both directions, and nothing else.
const DNAT_ACCEPT: &str = "ct status dnat accept";

/// Every finding in the calling thread's network namespace, one sentence each.
pub fn findings(pool: Ipv4Net, bridge: &str, chains: &Chains) -> Vec<String> {
    let mut out = Vec::new();
    match chains {
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
    let chains = chains.as_deref().unwrap_or_default();
    out.extend(firewalld_here(chains).map(|seen| firewalld(&seen, bridge)));
    out
}

/// Where firewalld writes its pid while it runs (its FIREWALLD_PIDFILE, /var/run/firewalld.pid,
/// which is /run/firewalld.pid where /var/run links to /run).
const FIREWALLD_PID_FILES: [&str; 2] = ["/run/firewalld.pid", "/var/run/firewalld.pid"];

/// The table that holds all of firewalld's rules with its nftables backend
/// (`FirewallBackend=nftables`, the default of firewalld.conf since firewalld 0.6); its
/// `filter_FORWARD` chain is on the forward hook.
const FIREWALLD_TABLE: &str = "firewalld";

/// How firewalld is seen to manage this network namespace's firewall, told by reading only:
/// `table inet firewalld` among `chains` (this namespace's forward-hook chains), or a pid file
/// naming a firewalld process in this namespace. The table is what tells on most hosts:
/// firewalld's own systemd unit starts it with `--nofork --nopid` (firewalld.service, Fedora
/// and Debian alike), so there is no pid file. With the iptables backend and no pid file,
/// firewalld is not seen.
pub fn firewalld_here(chains: &[ForwardChain]) -> Option<String> {
    if chains
        .iter()
        .any(|c| c.family == "inet" && c.table == FIREWALLD_TABLE)
    {
        return Some(format!("table inet {FIREWALLD_TABLE}"));
    }
    firewalld_pid(&FIREWALLD_PID_FILES, Path::new("/proc")).map(|pid| format!("pid {pid}"))
}

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

/// firewalld's pid, from a pid file it keeps while it runs (a stale one names a dead or other
/// process, told by its `comm`) when that process is in this thread's network namespace: its
/// zones decide the traffic of the namespace it runs in, and only there.
fn firewalld_pid(pid_files: &[&str], proc: &Path) -> Option<String> {
    let pid = pid_files.iter().find_map(|p| fs::read_to_string(p).ok())?;
    let pid = pid.trim().to_string();
    let comm = fs::read_to_string(proc.join(&pid).join("comm")).ok()?;
    (comm.starts_with("firewall") && same_netns(proc, &pid)).then_some(pid)
}

/// What firewalld does to gearnat's traffic, as seen with firewalld 1.3 (tests/firewalld.rs):
/// its `filter_FORWARD` chain accepts what a DNAT rule sent (`ct status dnat accept`), so the
/// mappings and links pass; forwarded traffic of an interface in no zone falls to the default
/// zone (`public`), which rejects it (`reject with icmpx admin-prohibited`): the connections
/// instances open to other hosts, and to each other when bridged traffic passes netfilter.
fn firewalld(seen: &str, bridge: &str) -> String {
    format!(
        "firewalld is running ({seen}): {bridge} is in none of its zones, so it rejects the \
         connections gearnat's instances open to other hosts (mappings and links pass); let them \
         through with `firewall-cmd --zone=trusted --add-interface={bridge}` (with --permanent \
         to keep it)"
    )
}

/// Whether process `pid` shares this thread's network namespace (true when that cannot be
/// read).
fn same_netns(proc: &Path, pid: &str) -> bool {
    match (
        fs::read_link(proc.join("thread-self/ns/net")),
        fs::read_link(proc.join(pid).join("ns/net")),
    ) {
        (Ok(mine), Ok(its)) => mine == its,
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
    fn firewalld_only_when_its_pid_file_names_it_in_this_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("firewalld.pid");
        let proc = dir.path().join("proc");
        fs::create_dir_all(proc.join("42/ns")).unwrap();
        fs::create_dir_all(proc.join("thread-self/ns")).unwrap();
        let files = [pid_file.to_str().unwrap()];
        assert_eq!(firewalld_pid(&files, &proc), None);
        fs::write(&pid_file, "42\n").unwrap();
        fs::write(proc.join("42/comm"), "sshd\n").unwrap();
        assert_eq!(firewalld_pid(&files, &proc), None, "a stale pid file");
        fs::write(proc.join("42/comm"), "firewalld\n").unwrap();
        assert_eq!(firewalld_pid(&files, &proc).as_deref(), Some("42"));
        std::os::unix::fs::symlink("net:[1]", proc.join("thread-self/ns/net")).unwrap();
        std::os::unix::fs::symlink("net:[2]", proc.join("42/ns/net")).unwrap();
        assert_eq!(
            firewalld_pid(&files, &proc),
            None,
            "a firewalld in another network namespace"
        );
    }

    #[test]
    fn firewalld_is_seen_by_its_table() {
        let table = |family, table: &str| ForwardChain {
            family,
            table: table.into(),
            chain: "filter_FORWARD".into(),
            ..chain(false, vec![])
        };
        assert_eq!(
            firewalld_here(&[table("inet", "firewalld")]).as_deref(),
            Some("table inet firewalld")
        );
        let text = firewalld("table inet firewalld", "gearnat0");
        assert!(
            text.starts_with("firewalld is running (table inet firewalld): gearnat0"),
            "{text}"
        );
        assert!(
            text.contains("--zone=trusted --add-interface=gearnat0"),
            "{text}"
        );
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
