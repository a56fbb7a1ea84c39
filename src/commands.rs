//! The commands: each reads like its steps.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use serde_json::json;

use crate::cli::{self, DeployArgs, DownArgs, NetworkArgs, Output, OutputArgs, Status};
use crate::docker::{self, Docker};
use crate::model::{Deployment, Proto};
use crate::netns::Netns;
use crate::plan::ContainerSpec;
use crate::plan::{self, Desired, Record};
use crate::reconcile;
use crate::report;
use crate::resolve::{self, Resolved};
use crate::runtime::{self, Network, Runtime};
use crate::state::{DeploymentRecord, Prepared, Reservations, StateDir, StateError};
use crate::table_cache::TableCache;
use crate::timing::timed;
use crate::{deployment, firewall, geard, link, netfilter, parallel, Error};

pub(crate) fn network(args: &NetworkArgs) -> Network {
    Network {
        bridge: args.bridge.clone(),
        pool: args.subnet,
    }
}

/// Fails plainly unless this process may change netfilter and enter namespaces.
pub(crate) fn require_admin(command: &'static str) -> Result<(), Error> {
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

/// The runtime for a deployment: the one its record names when it was applied before (a
/// different explicit choice is refused), else the one asked for, `auto` meaning docker when a
/// Docker API answers.
fn pick_runtime(choice: cli::Runtime, record: Option<&DeploymentRecord>) -> Result<Runtime, Error> {
    if let Some(r) = record {
        let asked = match choice {
            cli::Runtime::Auto => None,
            cli::Runtime::Docker => Some("docker"),
            cli::Runtime::Netns => Some("netns"),
        };
        if asked.is_some_and(|a| a != r.runtime) {
            return Err(Error::RuntimeChanged {
                name: r.name.clone(),
                runtime: r.runtime.clone(),
            });
        }
        return runtime_named(&r.runtime);
    }
    match choice {
        cli::Runtime::Netns => Ok(Runtime::Netns),
        cli::Runtime::Docker => Ok(Runtime::Docker(connect_docker()?)),
        cli::Runtime::Auto => match Docker::connect() {
            Ok(d) => {
                warn_line!(
                    "gearnat: runtime docker (a Docker API {} answers at {})",
                    d.api_version(),
                    d.host()
                );
                Ok(Runtime::Docker(d))
            }
            Err(e) => {
                warn_line!("gearnat: runtime netns (no Docker API: {e})");
                Ok(Runtime::Netns)
            }
        },
    }
}

/// The runtime a deployment record names.
pub(crate) fn runtime_named(name: &str) -> Result<Runtime, Error> {
    match name {
        "docker" => Ok(Runtime::Docker(connect_docker()?)),
        _ => Ok(Runtime::Netns),
    }
}

fn connect_docker() -> Result<Docker, Error> {
    let d = Docker::connect().map_err(runtime::Error::from)?;
    log::info!("Docker API {} at {}", d.api_version(), d.host());
    Ok(d)
}

/// Docker runtime: what each instance's container runs, from its container's image and
/// environment.
pub(crate) fn attach_containers(
    rt: &Runtime,
    d: &Deployment,
    resolved: &Resolved,
    desired: &mut Desired,
) -> Result<(), Error> {
    if rt.docker().is_none() {
        return Ok(());
    }
    for want in &mut desired.instances {
        let Some(inst) = resolved.instances.iter().find(|i| i.id == want.id) else {
            continue;
        };
        let container = d.container(&inst.container);
        let image = inst.image.clone().ok_or_else(|| {
            runtime::Error::from(docker::Error::NoImage {
                id: inst.id.clone(),
            })
        })?;
        let env = container
            .map(|c| {
                c.environment
                    .iter()
                    .map(|e| format!("{}={}", e.name, e.value))
                    .collect()
            })
            .unwrap_or_default();
        want.container = Some(ContainerSpec { image, env });
    }
    Ok(())
}

fn load(args: &DeployArgs) -> Result<Deployment, Error> {
    Ok(deployment::load(&args.file, args.name.as_deref())?)
}

pub(crate) fn lock(state_dir: &Path) -> Result<StateDir, Error> {
    Ok(StateDir::lock(state_dir, |path| {
        warn_line!(
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

/// Resolves `d` against the saved reservations; the new reservations when they changed.
pub(crate) fn resolve_with(
    d: &Deployment,
    file: &Path,
    reservations: &Reservations,
    listening: &BTreeSet<(Proto, u16)>,
    net: &Network,
) -> Result<(Resolved, Option<resolve::Changed>), Error> {
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

pub(crate) fn plan_config(net: &Network) -> plan::NetworkConfig {
    plan::NetworkConfig {
        bridge: net.bridge.clone(),
        pool: net.pool,
    }
}

pub fn apply(state_dir: &Path, args: &DeployArgs) -> Result<Status, Error> {
    let net = network(&args.network);
    // Where the state directory is there and free, what the last apply left is read while the
    // file is parsed: the reservations, the record, and the kernel as the record says the last
    // apply observed it (10,000 mappings: about 5 ms beside about 4).
    let early = StateDir::lock_if_free(state_dir);
    // One cache for the whole run: it remembers the entry it read, so that an unchanged table
    // is not written back.
    let cache = TableCache::new(state_dir);
    let (d, ahead) = std::thread::scope(|scope| {
        let ahead =
            (early.as_ref()).map(|state| scope.spawn(|| read_ahead(state, args, &net, &cache)));
        let d = timed("load file", || load(args));
        (d, timed("wait for read ahead", || ahead.map(joined)))
    });
    let d = d?;
    require_admin("apply")?;
    let locked;
    let state = match &early {
        Some(state) => state,
        None => {
            locked = lock(state_dir)?;
            &locked
        }
    };
    let (saved_reservations, saved, observed_ahead) = match ahead {
        Some(a) => (a.reservations?, a.record?, a.observed),
        None => (
            timed("read state", || state.reservations())?,
            timed("read state", || state.record(&d.name))?,
            None,
        ),
    };
    let (resolved, reservations) = timed("resolve", || {
        let listening = timed("listening sockets", listening)?;
        resolve_with(&d, &args.file, &saved_reservations, &listening, &net)
    })?;
    let mut desired = timed("plan desired", || {
        plan::desired(&resolved, &plan_config(&net))
    });
    let (rt, observed_ahead) = match observed_ahead {
        Some((rt, observed)) => (rt, Some(observed)),
        None => (pick_runtime(args.runtime, saved.as_ref())?, None),
    };
    attach_containers(&rt, &d, &resolved, &mut desired)?;
    let record = saved.unwrap_or_else(|| new_record(&d, args, &rt));
    std::thread::scope(|scope| {
        // The files this apply may write are written beside their places while the kernel is
        // read and changed, and renamed into place once it is: the reservations only when
        // resolving changed them (10,000 ports: 140 KB), geard's output file only when it
        // differs from the last one (0.96 MB).
        // They run at the least priority, so that reading the kernel and planning, until the
        // batch, come first; all but reservations that hold a new port, which the batch waits
        // for (below). The disk takes the reservations first, too: their fsync would otherwise
        // wait behind the output file's megabyte. The output file is written once this
        // channel's sender is gone.
        let (reservations_synced, wait_for_reservations) = std::sync::mpsc::channel::<()>();
        let mut reservations_synced = Some(reservations_synced);
        let mut reservations_file = reservations.as_ref().map(|changed| {
            let synced = reservations_synced.take();
            scope.spawn(move || {
                if changed.releases_only {
                    parallel::yield_to_others();
                }
                let file = state.prepare_reservations(&changed.reservations);
                drop(synced);
                file
            })
        });
        drop(reservations_synced);
        let written = record.resolved_digest.clone();
        let (d, resolved) = (&d, &resolved);
        let output_file = scope.spawn(move || {
            parallel::yield_to_others();
            prepare_output(state, d, resolved, written.as_deref(), || {
                // Err once the sender is gone: the only message there is.
                let _ = wait_for_reservations.recv();
            })
        });
        // What a successful apply ends by printing: one line per mapping (10,000: 380 KB).
        let text = args.output.output == Output::Text;
        let mappings = scope.spawn(move || {
            parallel::yield_to_others();
            text.then(|| report::mapping_lines(resolved))
        });
        let host = Netns::current()?;
        let (mut observed, plan) = timed("observe", || {
            reconcile::observe_and_plan(
                &host,
                &net,
                &rt,
                &desired,
                &record,
                Some(&cache),
                observed_ahead,
            )
        })?;

        // Read before any batch: a netfilter socket closed after a batch that removed
        // something waits for the kernel to free it (see `crate::release`).
        let chains = timed("other tables", netfilter::forward_chains);
        timed("print plan", || {
            print_plan(args.output.output, &plan, &net, resolved)
        });
        if plan.is_empty() {
            reconcile::remember_host_table(&cache, &observed);
            timed("firewalls", || {
                firewall_pass(&net, args.output.output, &chains)
            })?;
            timed("coexistence", || report_coexistence(&net, &chains));
            timed("save state", || -> Result<(), Error> {
                commit_prepared(reservations_file)?;
                save_resolved(state, record, args, &desired, joined(output_file)?)
            })?;
            return Ok(Status::Done);
        }
        // A new hold on a port is on disk before the kernel uses the port. Reservations that
        // only give ports back may follow the batch (holding a port a little longer harms
        // nothing), so a removal does not wait for their fsync.
        if reservations.as_ref().is_some_and(|c| c.releases_only) {
            log::debug!("the reservations only give ports back: renamed after the batch");
        } else {
            timed("save state", || commit_prepared(reservations_file.take()))?;
        }
        let mut record = reconcile::intent(record, Some(&desired), &plan);
        timed("save state", || Ok::<_, Error>(state.save_record(&record)?))?;
        let started = Instant::now();
        let persist = |r: &DeploymentRecord| timed("save state", || Ok(state.save_record(r)?));
        let committed = reconcile::execute(&host, &net, &rt, &plan, &mut record, persist)?;
        let applied = started.elapsed();
        timed("read back", || {
            read_back(
                &host,
                &net,
                &rt,
                &desired,
                &record,
                &mut observed,
                (&plan, &committed),
            )
        })?;
        // The cache is written meanwhile: at 10,000 mappings it takes a few milliseconds.
        std::thread::scope(|scope| {
            scope.spawn(|| reconcile::remember_host_table(&cache, &observed));
            timed("save state", || {
                commit_prepared(reservations_file)?;
                save_resolved(state, record, args, &desired, joined(output_file)?)
            })
        })?;
        timed("firewalls", || {
            firewall_pass(&net, args.output.output, &chains)
        })?;
        timed("coexistence", || report_coexistence(&net, &chains));
        if args.output.output == Output::Text {
            say!("applied in {} ms; read back: in sync", applied.as_millis());
            say_part!("{}", joined(mappings).unwrap_or_default());
        }
        Ok(Status::Done)
    })
}

/// What [`apply`] read while it parsed its file (see [`read_ahead`]).
struct ReadAhead {
    reservations: Result<Reservations, Error>,
    record: Result<Option<DeploymentRecord>, Error>,
    /// The record's runtime and what it observed, when there is a record that says how.
    observed: Option<(Runtime, reconcile::Ahead)>,
}

/// Reads the reservations, the deployment's record and (see [`reconcile::observe_ahead`]) the
/// kernel as the record's probes say the last apply observed it.
fn read_ahead(state: &StateDir, args: &DeployArgs, net: &Network, cache: &TableCache) -> ReadAhead {
    let name = (args.name.clone()).unwrap_or_else(|| deployment::name_from_path(&args.file));
    std::thread::scope(|scope| {
        let reservations = scope.spawn(|| timed("read state ahead", || state.reservations()));
        // A name the file's checks will refuse is not looked up.
        let record = match deployment::check_deployment_name(&name) {
            Ok(()) => timed("read state ahead", || state.record(&name)).map_err(Error::from),
            Err(_) => Ok(None),
        };
        let observed = match &record {
            Ok(Some(r)) if !r.probes.is_empty() => (pick_runtime(args.runtime, Some(r)).ok())
                .zip(Netns::current().ok())
                .map(|(rt, host)| {
                    let seen = timed("observe ahead", || {
                        reconcile::observe_ahead(&host, net, &rt, &r.probes, cache)
                    });
                    (rt, seen)
                }),
            _ => None,
        };
        ReadAhead {
            reservations: joined(reservations).map_err(Error::from),
            record,
            observed,
        }
    })
}

/// Renames into place the state file a scoped thread prepared, if there is one.
fn commit_prepared(
    file: Option<std::thread::ScopedJoinHandle<'_, Result<Prepared, StateError>>>,
) -> Result<(), Error> {
    match file {
        Some(file) => Ok(joined(file)?.commit()?),
        None => Ok(()),
    }
}

/// The result of a scoped thread; its panic is passed on.
fn joined<T>(thread: std::thread::ScopedJoinHandle<'_, T>) -> T {
    thread
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Other netfilter users that will affect gearnat's traffic, one warning each on stderr. What
/// gearnat itself let through (Docker's FORWARD policy through DOCKER-USER, firewalld's trusted
/// zone) is not reported.
fn report_coexistence(net: &Network, chains: &firewall::Chains) {
    let findings = crate::coexist::findings(net.pool, &net.bridge, chains);
    if findings.is_empty() {
        return;
    }
    let passes = firewall::passes(&net.bridge, chains);
    for finding in findings {
        let handled = (passes.iptables_forward
            && finding.starts_with("table ip filter chain FORWARD "))
            || (passes.firewalld && finding.starts_with("firewalld is running"));
        if !handled {
            warn_line!("gearnat: warning: {finding}");
        }
    }
}

/// Lets the bridge's forwarded traffic through the host's other firewalls, saying what it did.
pub(crate) fn firewall_pass(
    net: &Network,
    output: Output,
    chains: &firewall::Chains,
) -> Result<(), Error> {
    for line in firewall::ensure(&net.bridge, chains)? {
        match output {
            Output::Text => say!("{line}"),
            Output::Json => log::warn!("{line}"),
        }
    }
    Ok(())
}

/// Undoes [`firewall_pass`] once no deployment is left on the bridge.
fn firewall_undo(net: &Network) -> Result<(), Error> {
    for line in firewall::remove(&net.bridge)? {
        say!("{line}");
    }
    Ok(())
}

fn new_record(d: &Deployment, args: &DeployArgs, rt: &Runtime) -> DeploymentRecord {
    DeploymentRecord {
        name: d.name.clone(),
        source: std::fs::canonicalize(&args.file).ok(),
        runtime: rt.name().into(),
        ..DeploymentRecord::default()
    }
}

/// After a batch, the kernel must hold exactly what was planned (the namespaces the plan
/// changed are read again; see [`reconcile::read_back`]).
fn read_back(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    desired: &Desired,
    record: &DeploymentRecord,
    observed: &mut plan::Observed,
    (plan, committed): (&plan::Plan, &reconcile::Committed),
) -> Result<(), Error> {
    let record = record_for(desired, record);
    let left = reconcile::read_back(host, net, rt, desired, &record, observed, plan, committed)?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(Error::ReadBack(report::plan_lines(&left, &net.bridge)))
    }
}

/// The record as it stands once `desired` is in place: only its instances remain.
pub(crate) fn record_for(desired: &Desired, record: &DeploymentRecord) -> DeploymentRecord {
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

/// geard's output file for `resolved`, written beside its place when it differs from the one
/// the record's digest (`written`) says was written last: its digest, and the file to commit.
/// It is rendered, then written once `disk_free` returns.
fn prepare_output(
    state: &StateDir,
    d: &Deployment,
    resolved: &Resolved,
    written: Option<&str>,
    disk_free: impl FnOnce(),
) -> Result<(String, Option<Prepared>), Error> {
    let digest = resolved_digest(d, resolved);
    if written == Some(digest.as_str()) && state.resolved_path(&d.name).exists() {
        return Ok((digest, None));
    }
    let rendered = timed("render output file", || {
        state.render_resolved(&d.name, &geard::output_file(d, resolved))
    })?;
    disk_free();
    Ok((
        digest,
        Some(timed("write output file", || rendered.prepare())?),
    ))
}

/// Puts geard's output file in place, when it changed, and saves the record as `desired`
/// leaves it.
fn save_resolved(
    state: &StateDir,
    record: DeploymentRecord,
    args: &DeployArgs,
    desired: &Desired,
    (digest, output_file): (String, Option<Prepared>),
) -> Result<(), Error> {
    let mut record = record_for(desired, &record);
    record.source = std::fs::canonicalize(&args.file).ok().or(record.source);
    record.probes = reconcile::probes(desired);
    if let Some(file) = output_file {
        file.commit()?;
    }
    record.resolved_digest = Some(digest);
    state.save_record(&record)?;
    Ok(())
}

/// What geard's output file is made of, hashed: `d` and how it resolved.
fn resolved_digest(d: &Deployment, resolved: &Resolved) -> String {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the same inputs hash the same in every run of this build.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (d, resolved).hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn print_plan(output: Output, plan: &plan::Plan, net: &Network, resolved: &Resolved) {
    match output {
        Output::Json => {
            let mut v = report::plan_json(plan);
            v["mappings"] = geard::output_file_instances(resolved);
            say!("{v:#}");
        }
        Output::Text if plan.is_empty() => {
            say!("deployment {}: in sync; nothing to change", plan.deployment);
        }
        Output::Text => {
            say_part!("{}", plan_text(&plan.deployment, "plan", plan, net));
        }
    }
}

/// A plan under its heading, as one string: stdout is line-buffered, and a plan of 10,000
/// mappings printed line by line costs 10,000 write calls.
fn plan_text(deployment: &str, heading: &str, plan: &plan::Plan, net: &Network) -> String {
    let mut text = format!("deployment {deployment}: {heading}\n");
    for line in report::plan_lines(plan, &net.bridge) {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

pub fn diff(state_dir: &Path, args: &DeployArgs) -> Result<Status, Error> {
    let d = load(args)?;
    require_admin("diff")?;
    let net = network(&args.network);
    let state = StateDir::read_only(state_dir);
    let (resolved, _) = resolve_with(&d, &args.file, &state.reservations()?, &listening()?, &net)?;
    let mut desired = plan::desired(&resolved, &plan_config(&net));
    let saved = state.record(&d.name)?;
    let rt = pick_runtime(args.runtime, saved.as_ref())?;
    attach_containers(&rt, &d, &resolved, &mut desired)?;
    let record = saved.unwrap_or_else(|| new_record(&d, args, &rt));
    let cache = TableCache::new(state_dir);
    let host = Netns::current()?;
    let plan = reconcile::plan_apply(&host, &net, &rt, &desired, &record, Some(&cache))?;
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
    let rt = runtime_named(&record.runtime)?;
    let cache = TableCache::new(state_dir);
    let observed = timed("observe", || {
        reconcile::observe(
            &host,
            &net,
            &rt,
            None,
            &record.instances,
            Some(&cache),
            None,
        )
    })?;
    let created: BTreeSet<String> = if args.keep_containers && rt.docker().is_some() {
        BTreeSet::new()
    } else {
        record.created_netns.iter().cloned().collect()
    };
    let plan = plan::teardown(
        &name,
        &observed,
        &Record {
            instances: &record.instances,
            created_netns: &created,
        },
        others == 0,
    );
    say_part!("{}", plan_text(&name, "down", &plan, &net));
    // The next run reads the table afresh.
    cache.forget();
    reconcile::execute(&host, &net, &rt, &plan, &mut record, |_| Ok(()))?;
    if others == 0 {
        firewall_undo(&net)?;
        timed("unwire bridge", || {
            crate::runtime::remove_bridge(&host, &net)
        })?;
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
    say_part!("{}", compile_text(&desired));
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
    let cache = TableCache::new(state_dir);
    let host = Netns::current()?;
    report_coexistence(&net, &netfilter::forward_chains());
    let (host_table, _) = reconcile::host_table(Some(&cache)).map_err(|e| Error::Netfilter {
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
        // A record without its resolved file: the first apply failed before the end.
        if !file.exists() {
            match args.output {
                Output::Text => {
                    say!("{name}: apply did not finish (run gearnat apply again, or gearnat down)")
                }
                Output::Json => all.push(json!({
                    "deployment": name,
                    "source": record.source,
                    "in_sync": false,
                    "unfinished": true,
                })),
            }
            continue;
        }
        let d = deployment::load(&file, Some(&name))?;
        let (resolved, _) = resolve_with(&d, &file, &reservations, &BTreeSet::new(), &net)?;
        let mut desired = plan::desired(&resolved, &plan_config(&net));
        let rt = runtime_named(&record.runtime)?;
        attach_containers(&rt, &d, &resolved, &mut desired)?;
        let plan = reconcile::plan_apply(&host, &net, &rt, &desired, &record, Some(&cache))?;
        let paths = report::paths(&resolved, &installed);
        match args.output {
            Output::Text => {
                let sync = if plan.is_empty() {
                    "in sync"
                } else {
                    "drifted (run gearnat apply)"
                };
                say!("{name}: {} instances, {sync}", resolved.instances.len());
                for p in &paths {
                    say!("  {p}");
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
        say!("{:#}", serde_json::Value::Array(all));
    }
    Ok(Status::Done)
}
