//! Living beside other firewalls: Docker's FORWARD policy DROP, and firewalld.
//!
//! An `accept` in gearnat's nftables table does not override a `drop` in another table on the
//! same hook (nft(8), "VERDICT STATEMENT": accept ends evaluation of the current base chain
//! only). Docker sets the iptables FORWARD policy to DROP, which then drops every packet
//! forwarded to and from gearnat's bridge. Docker's documented way for other traffic to pass
//! is a rule in its `DOCKER-USER` chain, which FORWARD jumps to before its own rules; gearnat
//! adds two there (`-i BRIDGE` and `-o BRIDGE`, `-j ACCEPT`, comment `gearnat`), and removes
//! them when the last deployment goes down. A FORWARD drop that is not Docker's (no DOCKER-USER
//! chain) belongs to someone else's policy: gearnat reports it with the rule to add (see
//! `coexist`) and does not edit it.
//!
//! These rules are made with the `iptables` command, not over netlink: the `filter` table is
//! iptables' (legacy or iptables-nft), and only its own tool writes rules that iptables,
//! Docker and the user's `iptables -S` read back as ordinary rules (iptables-nft marks its
//! rules with xtables-compat expressions and userdata that gearnat's nftables layer does not
//! produce). Without an `iptables` command there is no iptables FORWARD policy to pass.
//!
//! firewalld (Fedora) rejects the forwarded traffic of an interface in no zone unless a DNAT
//! rule sent it: such an interface falls to the default zone, `public`, whose forward chain
//! ends in `reject with icmpx admin-prohibited` (firewalld 1.3). That is the connections
//! instances open to other hosts, and to each other when bridged traffic passes netfilter; the
//! mappings and links pass (firewalld's `filter_FORWARD` accepts `ct status dnat` first). The
//! bridge is added to the `trusted` zone for the running firewall (not permanently:
//! `firewall-cmd --reload` drops it, and every apply and `watch` pass re-adds it) and removed
//! on the last `down`. A bridge bound to another zone is left there, by apply and by `down`:
//! firewalld refuses a second zone (ZONE_CONFLICT), and that zone was someone's choice.
//! gearnat asks only a firewalld it sees in its own network namespace
//! (`coexist::firewalld_here`): firewall-cmd reaches firewalld over the system D-Bus, which is
//! not per namespace.

use std::io;
use std::process::{Command, Output};

use crate::coexist;
use crate::netfilter::ForwardChain;

/// The comment on every iptables rule gearnat adds.
pub const COMMENT: &str = "gearnat";
const DOCKER_USER: &str = "DOCKER-USER";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("running {command}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// What the host's firewalls do to forwarded traffic, as far as gearnat is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// iptables' FORWARD chain drops what no rule accepts.
    pub forward_drop: bool,
    /// Docker's DOCKER-USER chain exists.
    pub docker_user: bool,
    /// firewalld is running.
    pub firewalld: bool,
}

/// The other tables' forward-hook chains, read once by a command (`netfilter::forward_chains`)
/// and handed to everything here that decides from them.
pub type Chains = Result<Vec<ForwardChain>, crate::netfilter::Error>;

/// Looks at iptables' FORWARD chain and firewalld (`chains`: see [`Chains`]). A missing tool
/// means that firewall is absent.
pub fn detect(chains: &Chains) -> Found {
    let forward = run_quiet("iptables", &["-w", "-S", "FORWARD"]);
    let forward_drop = forward
        .as_ref()
        .is_some_and(|o| o.status.success() && policy_drops(&String::from_utf8_lossy(&o.stdout)));
    let docker_user =
        run_quiet("iptables", &["-w", "-S", DOCKER_USER]).is_some_and(|o| o.status.success());
    let firewalld = firewalld_here(chains)
        && run_quiet("firewall-cmd", &["--state"]).is_some_and(|o| o.status.success());
    Found {
        forward_drop,
        docker_user,
        firewalld,
    }
}

/// Whether a firewall gearnat must pass may be there, told without running a program: an
/// iptables-nft FORWARD chain with policy drop (read over netlink), a loaded iptables-legacy
/// table, or firewalld's table or pid file. Running `iptables` costs milliseconds and
/// `firewall-cmd` (Python) a few hundred, on every apply; most hosts without Docker or
/// firewalld need none of it.
fn may_need_passing(chains: &Chains) -> bool {
    let forward_drop = chains.as_ref().map_or(true, |chains| {
        chains
            .iter()
            .any(|c| is_iptables_forward(c) && c.policy_drop)
    });
    forward_drop || iptables_legacy_loaded() || firewalld_here(chains)
}

/// iptables-nft's FORWARD chain (`table ip filter`), where gearnat's iptables rules go.
fn is_iptables_forward(c: &ForwardChain) -> bool {
    c.family == "ip" && c.table == "filter" && c.chain == "FORWARD"
}

/// Whether iptables-legacy has a table loaded (its rules are not visible over nf_tables).
fn iptables_legacy_loaded() -> bool {
    std::fs::read_to_string("/proc/self/net/ip_tables_names")
        .is_ok_and(|names| !names.trim().is_empty())
}

/// Whether a firewalld is seen in this network namespace (see `coexist::firewalld_here`).
fn firewalld_here(chains: &Chains) -> bool {
    coexist::firewalld_here(chains.as_deref().unwrap_or_default()).is_some()
}

/// `-P FORWARD DROP` in `iptables -S FORWARD` output.
fn policy_drops(listing: &str) -> bool {
    listing
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["-P", "FORWARD", "DROP"])
}

/// The rules that let `bridge`'s forwarded traffic pass, as iptables arguments after the chain.
fn rules(bridge: &str) -> [Vec<String>; 2] {
    let rule = |dir: &str| {
        [
            dir,
            bridge,
            "-m",
            "comment",
            "--comment",
            COMMENT,
            "-j",
            "ACCEPT",
        ]
        .map(String::from)
        .to_vec()
    };
    [rule("-i"), rule("-o")]
}

/// Makes `bridge`'s forwarded traffic pass the host's firewalls. Returns one line per thing
/// done, for the user; nothing when all was in place already.
pub fn ensure(bridge: &str, chains: &Chains) -> Result<Vec<String>, Error> {
    if !may_need_passing(chains) {
        return Ok(Vec::new());
    }
    let found = detect(chains);
    let mut done = Vec::new();
    if found.forward_drop && found.docker_user {
        let chain = DOCKER_USER;
        let mut added = 0;
        for rule in rules(bridge) {
            if !iptables_has(chain, &rule) {
                iptables(&[&["-w", "-I", chain, "1"], &as_str(&rule)[..]].concat())?;
                added += 1;
            }
        }
        if added > 0 {
            done.push(format!(
                "firewall: iptables FORWARD policy is DROP (Docker); accepted traffic to and \
                 from {bridge} in chain {chain} (comment {COMMENT})"
            ));
        }
    }
    if found.firewalld {
        match firewalld_zone(bridge).as_deref() {
            None => {
                firewall_cmd(&["--zone=trusted", &format!("--add-interface={bridge}")])?;
                done.push(format!(
                    "firewall: firewalld is running; added {bridge} to zone trusted (runtime only)"
                ));
            }
            Some("trusted") => {}
            Some(zone) => log::info!("{bridge} is in firewalld zone {zone}; left there"),
        }
    }
    Ok(done)
}

/// What gearnat's own rules already let through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Passes {
    /// Both of gearnat's rules are in DOCKER-USER.
    pub iptables_forward: bool,
    /// The bridge is in one of firewalld's zones (gearnat's trusted, or one the user chose).
    pub firewalld: bool,
}

pub fn passes(bridge: &str, chains: &Chains) -> Passes {
    Passes {
        iptables_forward: rules(bridge)
            .iter()
            .all(|rule| iptables_has(DOCKER_USER, rule)),
        firewalld: firewalld_here(chains) && firewalld_zone(bridge).is_some(),
    }
}

/// Undoes [`ensure`]: removes gearnat's rules for `bridge` wherever they are, and the bridge
/// from firewalld's trusted zone. Returns one line per thing done.
pub fn remove(bridge: &str) -> Result<Vec<String>, Error> {
    let chains = crate::netfilter::forward_chains();
    // gearnat's iptables rules can only be where an iptables FORWARD chain is, in iptables-nft's
    // table or iptables-legacy's; without either, no iptables is run.
    let iptables_forward = chains
        .as_ref()
        .map_or(true, |chains| chains.iter().any(is_iptables_forward))
        || iptables_legacy_loaded();
    let firewalld = firewalld_here(&chains);
    let mut done = Vec::new();
    let chains_to_clean: &[&str] = if iptables_forward {
        &[DOCKER_USER, "FORWARD"]
    } else {
        &[]
    };
    for &chain in chains_to_clean {
        for rule in rules(bridge) {
            let mut removed = false;
            // A rule added twice (two gearnats racing before the lock existed) goes entirely.
            while iptables_has(chain, &rule) {
                iptables(&[&["-w", "-D", chain], &as_str(&rule)[..]].concat())?;
                removed = true;
            }
            if removed {
                done.push(format!(
                    "firewall: removed gearnat's rule {} {bridge} from iptables chain {chain}",
                    rule[0]
                ));
            }
        }
    }
    // A binding to trusted that is also in firewalld's permanent configuration is the user's
    // (gearnat binds for the runtime only): it stays.
    if firewalld
        && firewalld_zone(bridge).as_deref() == Some("trusted")
        && firewalld_permanent_zone(bridge).as_deref() != Some("trusted")
    {
        firewall_cmd(&["--zone=trusted", &format!("--remove-interface={bridge}")])?;
        done.push(format!(
            "firewall: removed {bridge} from firewalld zone trusted"
        ));
    }
    Ok(done)
}

fn as_str(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn iptables_has(chain: &str, rule: &[String]) -> bool {
    run_quiet(
        "iptables",
        &[&["-w", "-C", chain], &as_str(rule)[..]].concat(),
    )
    .is_some_and(|o| o.status.success())
}

/// The firewalld zone `bridge` is bound to; None when it is in none (firewall-cmd prints `no
/// zone` and exits 2) or firewall-cmd does not answer.
fn firewalld_zone(bridge: &str) -> Option<String> {
    let out = run_quiet(
        "firewall-cmd",
        &[&format!("--get-zone-of-interface={bridge}")],
    )?;
    let zone = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !zone.is_empty()).then_some(zone)
}

/// The zone `bridge` is bound to in firewalld's permanent configuration, if any.
fn firewalld_permanent_zone(bridge: &str) -> Option<String> {
    let out = run_quiet(
        "firewall-cmd",
        &["--permanent", &format!("--get-zone-of-interface={bridge}")],
    )?;
    let zone = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !zone.is_empty()).then_some(zone)
}

fn iptables(args: &[&str]) -> Result<(), Error> {
    checked("iptables", args)
}

fn firewall_cmd(args: &[&str]) -> Result<(), Error> {
    checked("firewall-cmd", args)
}

fn checked(tool: &str, args: &[&str]) -> Result<(), Error> {
    let command = format!("{tool} {}", args.join(" "));
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        log::info!("{command}");
        Ok(())
    } else {
        Err(Error::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs a probe; None when the tool is not installed.
fn run_quiet(tool: &str, args: &[&str]) -> Option<Output> {
    Command::new(tool).args(args).output().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_policy_is_read_from_the_listing() {
        assert!(policy_drops("-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n"));
        assert!(!policy_drops("-P FORWARD ACCEPT\n"));
        assert!(!policy_drops(
            "-A FORWARD -m comment --comment \"-P FORWARD DROP\"\n"
        ));
    }

    #[test]
    fn rules_name_the_bridge_both_ways() {
        let [i, o] = rules("gearnat0");
        assert_eq!(
            i.join(" "),
            "-i gearnat0 -m comment --comment gearnat -j ACCEPT"
        );
        assert_eq!(o[..2], ["-o", "gearnat0"]);
    }
}
