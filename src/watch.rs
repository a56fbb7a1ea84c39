//! `gearnat watch`: the reconciler, triggered by events instead of a command.
//!
//! Three threads feed one channel: Docker's container events (start, restart, die, destroy
//! (Podman: remove) of containers labelled `gearnat.deployment`), nf_tables notifications of deletions in
//! gearnat's table in the host namespace (by anyone but gearnat, `nft flush ruleset`
//! included), and SIGTERM/SIGINT. The main thread gathers what arrives within a short
//! moment, then re-reconciles the deployments concerned from the state directory (the resolved
//! file `deployments/NAME.json` and the record's runtime), under the state lock, printing one
//! line per action. Every `--resync` seconds it re-reconciles all of them whatever happened,
//! which catches what no event announces (a deleted bridge or veth).
//!
//! A container that stopped is left stopped: `docker stop` is the user's to make; `apply`
//! starts it again. Its wiring comes back when Docker starts it (`docker start`, `restart`,
//! a restart policy).

use std::collections::BTreeSet;
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::{SigSet, Signal};

use crate::cli::{Output, Status, WatchArgs};
use crate::commands::{
    attach_containers, firewall_pass, lock, network, plan_config, record_for, require_admin,
    resolve_with, runtime_named,
};
use crate::docker::{Docker, LABEL_DEPLOYMENT};
use crate::netns::Netns;
use crate::plan::{self, ContainerAction, Plan};
use crate::runtime::Network;
use crate::{deployment, netfilter, reconcile, report, Error};

/// How long the event threads block before looking at the stop flag.
const TICK: Duration = Duration::from_millis(250);
/// Events arriving this close together are handled in one pass.
const GATHER: Duration = Duration::from_millis(150);

/// Why a pass runs.
#[derive(Debug)]
enum Trigger {
    Deployment { name: String, reason: String },
    All { reason: String },
    Stop(Signal),
}

pub fn watch(state_dir: &Path, args: &WatchArgs) -> Result<Status, Error> {
    require_admin("watch")?;
    let net = network(&args.network);
    // Blocked before any thread starts, so every thread inherits the mask and only the
    // signal thread's sigwait takes them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().map_err(Error::Signals)?;

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let mut threads = vec![spawn_signals(signals, tx.clone())];
    threads.push(spawn_nftables(stop.clone(), tx.clone()));
    threads.push(spawn_docker(stop.clone(), tx.clone()));
    drop(tx);

    say!("watch: watching the deployments in {}", state_dir.display());
    pass(state_dir, &net, None, "start of watch");
    let resync = (args.resync > 0).then(|| Duration::from_secs(args.resync));
    let signal = loop {
        let first = match rx.recv_timeout(resync.unwrap_or(Duration::from_secs(3600))) {
            Ok(t) => t,
            Err(RecvTimeoutError::Timeout) => {
                if resync.is_some() {
                    pass(state_dir, &net, None, "resync");
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break None,
        };
        let mut triggers = vec![first];
        while let Ok(t) = rx.recv_timeout(GATHER) {
            triggers.push(t);
        }
        if let Some(sig) = triggers.iter().find_map(|t| match t {
            Trigger::Stop(s) => Some(*s),
            _ => None,
        }) {
            break Some(sig);
        }
        run_triggers(state_dir, &net, triggers);
    };
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    match signal {
        Some(sig) => say!("watch: stopped ({sig})"),
        None => say!("watch: stopped"),
    }
    Ok(Status::Done)
}

/// One pass per deployment named, or over all of them when any trigger concerns all.
fn run_triggers(state_dir: &Path, net: &Network, triggers: Vec<Trigger>) {
    let mut names: Vec<(String, String)> = Vec::new();
    for t in triggers {
        match t {
            Trigger::All { reason } => return pass(state_dir, net, None, &reason),
            // The latest event names the state the pass finds (`start` after `die`).
            Trigger::Deployment { name, reason } => {
                match names.iter_mut().find(|(n, _)| *n == name) {
                    Some(entry) => entry.1 = reason,
                    None => names.push((name, reason)),
                }
            }
            Trigger::Stop(_) => {}
        }
    }
    for (name, reason) in names {
        pass(state_dir, net, Some(&name), &reason);
    }
}

/// Re-reconciles deployment `only` (or all), logging failures: watch keeps going.
fn pass(state_dir: &Path, net: &Network, only: Option<&str>, reason: &str) {
    let names = match only {
        Some(n) => vec![n.to_string()],
        None => match crate::state::StateDir::read_only(state_dir).deployments() {
            Ok(names) => names,
            Err(e) => {
                warn_line!("watch: {e}");
                return;
            }
        },
    };
    for name in names {
        if let Err(e) = reconcile_saved(state_dir, net, &name, reason) {
            warn_line!("watch: {name}: {e}");
        }
    }
}

/// Brings one applied deployment back to its saved form.
fn reconcile_saved(state_dir: &Path, net: &Network, name: &str, reason: &str) -> Result<(), Error> {
    let state = lock(state_dir)?;
    // Gone meanwhile (`gearnat down`): nothing to keep.
    let Some(record) = state.record(name)? else {
        return Ok(());
    };
    let file = state.resolved_path(name);
    if !file.exists() {
        log::info!("{name}: its first apply did not finish; left to `gearnat apply`");
        return Ok(());
    }
    let d = deployment::load(&file, Some(name))?;
    let (resolved, _) = resolve_with(&d, &file, &state.reservations()?, &BTreeSet::new(), net)?;
    let mut desired = plan::desired(&resolved, &plan_config(net));
    let rt = runtime_named(&record.runtime)?;
    attach_containers(&rt, &d, &resolved, &mut desired)?;
    let host = Netns::current()?;
    let mut plan = reconcile::plan_apply(&host, net, &rt, &desired, &record, None)?;
    for id in leave_stopped(&mut plan) {
        log::info!("{name}: container {id} is stopped; left so (`gearnat apply` starts it)");
    }
    if plan.is_empty() {
        // Gearnat's iptables rules live outside its table, so no notification announces
        // their removal: every pass checks them.
        return firewall_pass(net, Output::Text, &netfilter::forward_chains());
    }
    for line in report::plan_lines(&plan, &net.bridge) {
        say!("watch: {name}: {line} ({reason})");
    }
    let mut record = reconcile::intent(record, Some(&desired), &plan);
    reconcile::execute(&host, net, &rt, &plan, &mut record, |r| {
        Ok(state.save_record(r)?)
    })?;
    state.save_record(&record_for(&desired, &record))?;
    firewall_pass(net, Output::Text, &netfilter::forward_chains())
}

/// Drops from `plan` the instances whose container is stopped: nothing of theirs can be
/// wired until Docker starts them. Returns their ids.
fn leave_stopped(plan: &mut Plan) -> Vec<String> {
    let stopped: Vec<String> = plan
        .containers
        .iter()
        .filter(|(_, a)| matches!(a, ContainerAction::Start))
        .map(|(id, _)| id.clone())
        .collect();
    for id in &stopped {
        plan.containers.remove(id);
        plan.wiring.remove(id);
        plan.instances.remove(id);
    }
    stopped
}

fn spawn_signals(signals: SigSet, tx: Sender<Trigger>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            let _ = tx.send(Trigger::Stop(sig));
        }
    })
}

/// Deletions in gearnat's host table by others: every deployment may have lost something.
fn spawn_nftables(stop: Arc<AtomicBool>, tx: Sender<Trigger>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut monitor = match netfilter::Monitor::open() {
            Ok(m) => m,
            Err(e) => {
                warn_line!("watch: cannot follow nftables changes: {e}");
                return;
            }
        };
        while !stop.load(Ordering::SeqCst) {
            match monitor.next(TICK) {
                Ok(removals) => {
                    // The table itself when it went, else whatever went first.
                    let table = removals.iter().find(|r| r.what == "table");
                    if let Some(r) = table.or(removals.first()) {
                        let by = r.by.as_deref().unwrap_or("unknown");
                        let reason = format!("{} deleted from table ip gearnat by {by}", r.what);
                        let _ = tx.send(Trigger::All { reason });
                    }
                }
                Err(e) => {
                    warn_line!("watch: reading nftables notifications: {e}");
                    thread::sleep(Duration::from_secs(1));
                }
            }
        }
    })
}

/// Docker's events of gearnat's containers; reconnects when the daemon goes away.
fn spawn_docker(stop: Arc<AtomicBool>, tx: Sender<Trigger>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut said = false;
        while !stop.load(Ordering::SeqCst) {
            match Docker::connect() {
                Ok(docker) => {
                    say!(
                        "watch: following Docker events (API {} at {})",
                        docker.api_version(),
                        docker.host()
                    );
                    said = false;
                    follow(&docker, &stop, &tx);
                    // The daemon came back (or never went): anything may have changed.
                    if !stop.load(Ordering::SeqCst) {
                        let reason = "Docker event stream reconnected".to_string();
                        let _ = tx.send(Trigger::All { reason });
                    }
                }
                Err(e) if !said => {
                    log::info!("no Docker API, container events not followed: {e}");
                    said = true;
                }
                Err(_) => {}
            }
            for _ in 0..8 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                thread::sleep(TICK);
            }
        }
    })
}

/// Forwards events until the stream ends or `stop` is set.
fn follow(docker: &Docker, stop: &AtomicBool, tx: &Sender<Trigger>) {
    let mut events = pin!(docker.events());
    while !stop.load(Ordering::SeqCst) {
        let next = docker.block_on(async { tokio::time::timeout(TICK, events.next()).await });
        let event = match next {
            Err(_) => continue,
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                warn_line!("watch: Docker events: {e}");
                return;
            }
            Ok(Some(Ok(event))) => event,
        };
        let action = event.action.unwrap_or_default();
        // Podman's compatible API names Docker's `destroy` `remove`.
        if !matches!(
            action.as_str(),
            "start" | "restart" | "die" | "destroy" | "remove"
        ) {
            continue;
        }
        let attributes = event.actor.and_then(|a| a.attributes).unwrap_or_default();
        let Some(name) = attributes.get(LABEL_DEPLOYMENT).cloned() else {
            continue;
        };
        let container = attributes.get("name").cloned().unwrap_or_default();
        let reason = format!("container {container} {action}");
        let _ = tx.send(Trigger::Deployment { name, reason });
    }
}
