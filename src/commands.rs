//! The commands: each reads like its steps.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use serde_json::json;

use crate::cli::{DeployArgs, DownArgs, NetworkArgs, Output, OutputArgs, Status};
use crate::model::{Deployment, Proto};
use crate::netns::Netns;
use crate::plan::{self, Desired, Record};
use crate::reconcile;
use crate::report;
use crate::resolve::{self, Resolved};
use crate::runtime::Network;
use crate::state::{DeploymentRecord, Reservations, StateDir};
use crate::{deployment, geard, link, netfilter, Error};

fn network(args: &NetworkArgs) -> Network {
    Network {
        bridge: args.bridge.clone(),
        pool: args.subnet,
    }
}

/// Fails plainly unless this process may change netfilter and enter namespaces.
fn require_admin(command: &'static str) -> Result<(), Error> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_NET_ADMIN) && has(CAP_SYS_ADMIN) {
        Ok(())
    } else {
        Err(Error::NotPermitted { command })
    }
}

fn load(args: &DeployArgs) -> Result<Deployment, Error> {
    Ok(deployment::load(&args.file, args.name.as_deref())?)
}

fn lock(state_dir: &Path) -> Result<StateDir, Error> {
    Ok(StateDir::lock(state_dir, |path| {
        eprintln!(
            "gearnat: another gearnat is running; waiting for its lock on {}",
            path.display()
        );
    })?)
}

/// Host ports local sockets listen on, which are never handed out.
fn listening() -> Result<BTreeSet<(Proto, u16)>, Error> {
    let mut out = BTreeSet::new();
    for proto in Proto::ALL {
        out.extend(
            link::listening_ports(proto)?
                .into_iter()
                .map(|p| (proto, p)),
        );
    }
    Ok(out)
}

/// Resolves `d` against the saved reservations.
fn resolve_with(
    d: &Deployment,
    file: &Path,
    reservations: &Reservations,
    listening: &BTreeSet<(Proto, u16)>,
    net: &Network,
) -> Result<(Resolved, Reservations), Error> {
    let cx = resolve::Context {
        reservations,
        listening,
        pool: net.pool,
    };
    resolve::resolve(d, &cx).map_err(|source| Error::Resolve {
        file: file.display().to_string(),
        source,
    })
}

fn plan_config(net: &Network) -> plan::NetworkConfig {
    plan::NetworkConfig {
        bridge: net.bridge.clone(),
        pool: net.pool,
    }
}

pub fn apply(state_dir: &Path, args: &DeployArgs) -> Result<Status, Error> {
    let d = load(args)?;
    require_admin("apply")?;
    let net = network(&args.network);
    let state = lock(state_dir)?;
    let (resolved, reservations) =
        resolve_with(&d, &args.file, &state.reservations()?, &listening()?, &net)?;
    let desired = plan::desired(&resolved, &plan_config(&net));
    let record = state
        .record(&d.name)?
        .unwrap_or_else(|| new_record(&d, args));
    let host = Netns::current()?;
    let plan = reconcile::plan_apply(&host, &net, &desired, &record)?;

    if plan.is_empty() {
        print_plan(args.output.output, &plan, &net, &resolved);
        save_resolved(&state, &d, &resolved, &reservations, record, args, &desired)?;
        return Ok(Status::Done);
    }
    print_plan(args.output.output, &plan, &net, &resolved);
    let mut record = reconcile::intent(record, Some(&desired), &plan);
    state.save_reservations(&reservations)?;
    state.save_record(&record)?;
    let started = Instant::now();
    let persist = |r: &DeploymentRecord| Ok(state.save_record(r)?);
    reconcile::execute(&host, &net, &plan, &mut record, persist)?;
    let applied = started.elapsed();
    read_back(&host, &net, &desired, &record)?;
    save_resolved(&state, &d, &resolved, &reservations, record, args, &desired)?;
    if args.output.output == Output::Text {
        println!("applied in {} ms; read back: in sync", applied.as_millis());
        print!("{}", report::mapping_lines(&resolved));
    }
    Ok(Status::Done)
}

fn new_record(d: &Deployment, args: &DeployArgs) -> DeploymentRecord {
    DeploymentRecord {
        name: d.name.clone(),
        source: std::fs::canonicalize(&args.file).ok(),
        runtime: "netns".into(),
        ..DeploymentRecord::default()
    }
}

/// After a batch, the kernel must hold exactly what was planned.
fn read_back(
    host: &Netns,
    net: &Network,
    desired: &Desired,
    record: &DeploymentRecord,
) -> Result<(), Error> {
    let left = reconcile::plan_apply(host, net, desired, &record_for(desired, record))?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(Error::ReadBack(report::plan_lines(&left, &net.bridge)))
    }
}

/// The record as it stands once `desired` is in place: only its instances remain.
fn record_for(desired: &Desired, record: &DeploymentRecord) -> DeploymentRecord {
    let instances: Vec<String> = desired.instances.iter().map(|i| i.id.clone()).collect();
    let created_netns = record
        .created_netns
        .iter()
        .filter(|n| instances.contains(n))
        .cloned()
        .collect();
    DeploymentRecord {
        instances,
        created_netns,
        ..record.clone()
    }
}

fn save_resolved(
    state: &StateDir,
    d: &Deployment,
    resolved: &Resolved,
    reservations: &Reservations,
    record: DeploymentRecord,
    args: &DeployArgs,
    desired: &Desired,
) -> Result<(), Error> {
    let mut record = record_for(desired, &record);
    record.source = std::fs::canonicalize(&args.file).ok().or(record.source);
    state.save_reservations(reservations)?;
    state.save_resolved(&d.name, &geard::output_file(d, resolved))?;
    state.save_record(&record)?;
    Ok(())
}

fn print_plan(output: Output, plan: &plan::Plan, net: &Network, resolved: &Resolved) {
    match output {
        Output::Json => {
            let mut v = report::plan_json(plan);
            v["mappings"] = geard::output_file_instances(resolved);
            println!("{v:#}");
        }
        Output::Text if plan.is_empty() => {
            println!("deployment {}: in sync; nothing to change", plan.deployment);
        }
        Output::Text => {
            println!("deployment {}: plan", plan.deployment);
            for line in report::plan_lines(plan, &net.bridge) {
                println!("{line}");
            }
        }
    }
}

pub fn diff(state_dir: &Path, args: &DeployArgs) -> Result<Status, Error> {
    let d = load(args)?;
    require_admin("diff")?;
    let net = network(&args.network);
    let state = StateDir::read_only(state_dir);
    let (resolved, _) = resolve_with(&d, &args.file, &state.reservations()?, &listening()?, &net)?;
    let desired = plan::desired(&resolved, &plan_config(&net));
    let record = state
        .record(&d.name)?
        .unwrap_or_else(|| new_record(&d, args));
    let plan = reconcile::plan_apply(&Netns::current()?, &net, &desired, &record)?;
    print_plan(args.output.output, &plan, &net, &resolved);
    Ok(if plan.is_empty() {
        Status::Done
    } else {
        Status::Pending
    })
}

pub fn down(state_dir: &Path, args: &DownArgs) -> Result<Status, Error> {
    let name = match (&args.name, &args.file) {
        (Some(name), _) => {
            deployment::check_deployment_name(name).map_err(|message| Error::Usage {
                path: "--name".into(),
                message,
            })?;
            name.clone()
        }
        (None, Some(file)) => deployment::name_from_path(file),
        (None, None) => unreachable!("clap requires a file or --name"),
    };
    require_admin("down")?;
    let net = network(&args.network);
    let state = lock(state_dir)?;
    let Some(mut record) = state.record(&name)? else {
        return Err(Error::NotDeployed { name });
    };
    let others = state
        .deployments()?
        .into_iter()
        .filter(|n| *n != name)
        .count();
    let host = Netns::current()?;
    let observed = reconcile::observe(&host, &net, None, &record.instances)?;
    let created: BTreeSet<String> = record.created_netns.iter().cloned().collect();
    let plan = plan::teardown(
        &name,
        &observed,
        &Record {
            instances: &record.instances,
            created_netns: &created,
        },
        others == 0,
    );
    println!("deployment {name}: down");
    for line in report::plan_lines(&plan, &net.bridge) {
        println!("{line}");
    }
    reconcile::execute(&host, &net, &plan, &mut record, |_| Ok(()))?;
    if others == 0 {
        crate::runtime::remove_bridge(&host, &net)?;
    }
    let mut reservations = state.reservations()?;
    reservations.release(&name);
    state.save_reservations(&reservations)?;
    state.remove_deployment(&name)?;
    Ok(Status::Done)
}

pub fn compile(state_dir: &Path, args: &DeployArgs) -> Result<Status, Error> {
    let d = load(args)?;
    let net = network(&args.network);
    // Without root the state directory may be unreadable: compile then shows the ports and
    // addresses a first apply would pick.
    let reservations = StateDir::read_only(state_dir)
        .reservations()
        .unwrap_or_default();
    let (resolved, _) = resolve_with(&d, &args.file, &reservations, &BTreeSet::new(), &net)?;
    let desired = plan::desired(&resolved, &plan_config(&net));
    print!("{}", compile_text(&desired));
    Ok(Status::Done)
}

/// The rulesets of `desired` in nft syntax: a block per namespace, each headed by a comment
/// naming the namespace and the sysctls gearnat sets there.
pub fn compile_text(desired: &Desired) -> String {
    let mut out = format!("# gearnat compile: deployment {}\n", desired.deployment);
    let block = |out: &mut String, ns: &str, sysctls: &[plan::Sysctl], text: String| {
        out.push_str(&format!("\n# namespace {ns}\n"));
        for s in sysctls {
            out.push_str(&format!("# sysctl {} = {}\n", s.key, s.value));
        }
        out.push_str(&text);
    };
    let host = netfilter::render(&desired.host_layout, &desired.host_elements);
    block(&mut out, "host", &desired.host_sysctls, host);
    for inst in desired.instances.iter().filter(|i| !i.links.is_empty()) {
        let text = netfilter::render(&crate::ruleset::Layout::Instance, &inst.links);
        block(&mut out, &inst.id, &inst.sysctls, text);
    }
    out
}

pub fn status(
    state_dir: &Path,
    args: &OutputArgs,
    net_args: &NetworkArgs,
) -> Result<Status, Error> {
    require_admin("status")?;
    let net = network(net_args);
    let state = StateDir::read_only(state_dir);
    let host = Netns::current()?;
    let host_table = netfilter::dump().map_err(|e| Error::Netfilter {
        ns: "host".into(),
        source: e,
    })?;
    let installed: BTreeSet<_> = host_table
        .iter()
        .flat_map(|t| t.elements.iter().cloned())
        .collect();
    let reservations = state.reservations()?;
    let mut all = Vec::new();
    for name in state.deployments()? {
        let Some(record) = state.record(&name)? else {
            continue;
        };
        let file = state.resolved_path(&name);
        let d = deployment::load(&file, Some(&name))?;
        let (resolved, _) = resolve_with(&d, &file, &reservations, &BTreeSet::new(), &net)?;
        let desired = plan::desired(&resolved, &plan_config(&net));
        let plan = reconcile::plan_apply(&host, &net, &desired, &record)?;
        let paths = report::paths(&resolved, &installed);
        match args.output {
            Output::Text => {
                let sync = if plan.is_empty() {
                    "in sync"
                } else {
                    "drifted (run gearnat apply)"
                };
                println!("{name}: {} instances, {sync}", resolved.instances.len());
                for p in &paths {
                    println!("  {p}");
                }
            }
            Output::Json => all.push(json!({
                "deployment": name,
                "source": record.source,
                "in_sync": plan.is_empty(),
                "paths": paths,
                "drift": report::plan_json(&plan),
            })),
        }
    }
    if args.output == Output::Json {
        println!("{:#}", serde_json::Value::Array(all));
    }
    Ok(Status::Done)
}
