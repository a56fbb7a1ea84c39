//! The reconciler: observe the kernel, plan, apply one batch per namespace, read back.
//!
//! The only module that strings the system-touching layers together; each step is a named
//! function so the apply path reads like its table of contents.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::netfilter;
use crate::netns::{self, Netns};
use crate::plan::{
    self, ContainerAction, Desired, NsPlan, Observed, ObservedInstance, Plan, Record, Sysctl,
    Wiring,
};
use crate::ruleset::{ActualTable, Element};
use crate::runtime::{self, Network, Runtime};
use crate::state::{DeploymentRecord, Probe};
use crate::table_cache::{self, TableCache};
use crate::timing::timed;
use crate::{link, parallel, report, Error};

/// Threads that observe bare namespaces: reading one is a few netlink round trips (about
/// 0.3 ms), so two threads taking them in turn beat a thread per instance, on two cores and on
/// more (at 10,000 mappings over 10 instances: a re-apply 12.3 -> 10.7 ms, 2 ms less CPU).
const OBSERVE_AT_ONCE: usize = 2;

/// What an instance namespace holds, read from inside it.
struct Inside {
    table: Option<ActualTable>,
    /// The ruleset generation `table` was read at.
    generation: u32,
    sysctls: BTreeMap<String, String>,
    /// Whether the inner end of the instance's veth pair is in place, when asked about.
    inner_wired: bool,
}

/// Reads instance `id`'s table and sysctls inside its namespace `ns`, and with `address`, also
/// whether the inner end of its veth pair is in place (the host end is checked from the host).
fn observe_inside(
    net: &Network,
    id: &str,
    ns: &Netns,
    sysctls: &[String],
    address: Option<Ipv4Addr>,
) -> Result<Inside, Error> {
    netns::run_in(ns, || -> Result<_, Error> {
        let (table, generation) = netfilter::snapshot().map_err(|e| Error::Netfilter {
            ns: id.to_string(),
            source: e,
        })?;
        let inner_wired = match address {
            Some(address) => runtime::inner_end_in_place(net, id, address, ns)?,
            None => false,
        };
        Ok(Inside {
            table,
            generation,
            sysctls: read_sysctls(sysctls),
            inner_wired,
        })
    })?
}

/// Current values of the sysctls `keys` in the calling thread's namespace; missing keys (an
/// interface that does not exist yet) are left out.
fn read_sysctls(keys: &[String]) -> BTreeMap<String, String> {
    keys.iter()
        .filter_map(|key| {
            link::sysctl_get(key)
                .ok()
                .map(|v| (key.clone(), v.trim().to_string()))
        })
        .collect()
}

fn keys(sysctls: &[Sysctl]) -> Vec<String> {
    sysctls.iter().map(|s| s.key.clone()).collect()
}

/// How instance `id` is observed when the deployment wants `want` of it (`None`: it is only
/// to be removed, so only its namespace and table matter).
fn probe(id: &str, want: Option<&plan::InstanceDesired>) -> Probe {
    Probe {
        id: id.to_string(),
        address: want.map(|w| w.address),
        sysctls: want.map(|w| keys(&w.sysctls)).unwrap_or_default(),
    }
}

/// How `desired`'s instances are observed, for the record (see [`observe_ahead`]).
pub fn probes(desired: &Desired) -> Vec<Probe> {
    (desired.instances.iter())
        .map(|i| probe(&i.id, Some(i)))
        .collect()
}

/// What an apply reads of the kernel before it has read its file: the host, and each instance
/// the way the last apply observed it ([`DeploymentRecord::probes`]). [`observe`] keeps what
/// the file turns out to ask for and reads the rest.
pub struct Ahead {
    host: Result<Observed, Error>,
    /// The host sysctls `host` read.
    host_sysctls: Vec<String>,
    instances: Result<BTreeMap<String, (Probe, ObservedInstance)>, Error>,
}

/// Observes the host and `probes` (see [`Ahead`]), the way [`observe`] does.
pub fn observe_ahead(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    probes: &[Probe],
    cache: &TableCache,
) -> Ahead {
    let host_sysctls = keys(&plan::host_sysctls(&net.bridge));
    let (host_seen, instances) =
        observe_side_by_side(host, net, rt, probes, &host_sysctls, Some(cache), None);
    Ahead {
        host: host_seen,
        host_sysctls,
        instances: instances.map(|mut seen| {
            (probes.iter())
                .filter_map(|p| Some((p.id.clone(), (p.clone(), seen.remove(&p.id)?))))
                .collect()
        }),
    }
}

/// The host (unless `known` already holds what was read of it) and the instances of `probes`,
/// side by side: the host's dump (10,000 elements: about 12 ms, mostly the kernel's) overlaps
/// the instances' reads. The scoped thread starts in the calling thread's namespace, the host.
fn observe_side_by_side(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    probes: &[Probe],
    host_sysctls: &[String],
    cache: Option<&TableCache>,
    known: Option<Observed>,
) -> (
    Result<Observed, Error>,
    Result<BTreeMap<String, ObservedInstance>, Error>,
) {
    std::thread::scope(|scope| {
        let instances = scope.spawn(|| observe_instances(host, net, rt, probes));
        let host_seen = match known {
            Some(known) => Ok(known),
            None => {
                let mut observed = Observed::default();
                observe_host(host, net, host_sysctls, cache, &mut observed).map(|()| observed)
            }
        };
        let instances = instances
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (host_seen, instances)
    })
}

impl Ahead {
    /// The host as read ahead, when it read all of `sysctls`; narrowed to them.
    fn host(&mut self, sysctls: &[String]) -> Option<Observed> {
        if !sysctls.iter().all(|k| self.host_sysctls.contains(k)) {
            return None;
        }
        let mut host = std::mem::replace(&mut self.host, Ok(Observed::default())).ok()?;
        host.host_sysctls.retain(|k, _| sysctls.contains(k));
        Some(host)
    }

    /// Instance `want.id` as read ahead, when that read all `want` reads; narrowed to it.
    fn instance(&mut self, want: &Probe) -> Option<ObservedInstance> {
        let instances = self.instances.as_mut().ok()?;
        let (had, mut seen) = instances.remove(&want.id)?;
        if !had.covers(want) {
            return None;
        }
        if want.address.is_none() {
            seen.wired = false;
        }
        seen.sysctls.retain(|k, _| want.sysctls.contains(k));
        Some(seen)
    }
}

/// Reads everything the plan depends on: the host's table and sysctls, and for every instance
/// the deployment has or had, its namespace, wiring, table and sysctls.
///
/// With `cache`, the host's table is taken from it when the ruleset has not moved since it was
/// written (see [`table_cache`]), and dumped otherwise. With `ahead`, what it read and still
/// holds is not read again.
pub fn observe(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    desired: Option<&Desired>,
    record: &[String],
    cache: Option<&TableCache>,
    ahead: Option<Ahead>,
) -> Result<Observed, Error> {
    let mut wanted: Vec<Probe> = Vec::new();
    if let Some(d) = desired {
        wanted.extend(d.instances.iter().map(|i| probe(&i.id, Some(i))));
    }
    wanted.extend(record.iter().map(|id| probe(id, None)));
    let mut unique = BTreeSet::new();
    wanted.retain(|p| unique.insert(p.id.clone()));
    let host_sysctls = desired.map(|d| keys(&d.host_sysctls)).unwrap_or_default();

    let mut known = BTreeMap::new();
    let mut host_known = None;
    if let Some(mut ahead) = ahead {
        host_known = ahead.host(&host_sysctls);
        wanted.retain(|p| match ahead.instance(p) {
            Some(seen) => {
                known.insert(p.id.clone(), seen);
                false
            }
            None => true,
        });
    }
    let (host_seen, instances) =
        observe_side_by_side(host, net, rt, &wanted, &host_sysctls, cache, host_known);
    let mut observed = host_seen?;
    known.extend(instances?);
    observed.instances = known;
    if let Some(unowned) = observed
        .host_table
        .as_ref()
        .map(|t| t.unowned)
        .filter(|n| *n > 0)
    {
        log::warn!(
            "the host's table ip gearnat holds {unowned} map elements without an owner comment \
             (written by hand?); gearnat leaves them alone"
        );
    }
    Ok(observed)
}

/// Instances observed at once, a few at a time (see [`parallel`]), each from inside its
/// namespace; then the host ends of their veth pairs, all over one netlink connection.
fn observe_instances(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    probes: &[Probe],
) -> Result<BTreeMap<String, ObservedInstance>, Error> {
    if probes.is_empty() {
        return Ok(BTreeMap::new());
    }
    // Finding a container is a Docker API request of its own: those go side by side.
    let workers = match rt.docker() {
        Some(_) => parallel::AT_ONCE,
        None => OBSERVE_AT_ONCE,
    };
    let seen = parallel::map_own(probes, workers, |p, own| observe_instance(net, rt, p, own));
    let mut seen: Vec<(ObservedInstance, Option<Netns>)> =
        seen.into_iter().collect::<Result<_, _>>()?;
    let check: Vec<(usize, (&str, Ipv4Addr, &Netns))> = (probes.iter().zip(&seen).enumerate())
        .filter_map(|(i, (p, (observed, ns)))| {
            let (address, ns) = (p.address?, ns.as_ref()?);
            observed.wired.then_some((i, (p.id.as_str(), address, ns)))
        })
        .collect();
    let host_ends = if check.is_empty() {
        Vec::new()
    } else {
        let instances: Vec<_> = check.iter().map(|(_, c)| *c).collect();
        runtime::host_ends_in_place(host, net, &instances)?
    };
    let host_ok: BTreeSet<usize> = (check.iter().zip(host_ends))
        .filter_map(|((i, _), ok)| ok.then_some(*i))
        .collect();
    for (i, (observed, _)) in seen.iter_mut().enumerate() {
        observed.wired &= host_ok.contains(&i);
    }
    Ok(probes
        .iter()
        .zip(seen)
        .map(|(p, (observed, _))| (p.id.clone(), observed))
        .collect())
}

/// The bridge, gearnat's table and the sysctls in the host namespace.
fn observe_host(
    host: &Netns,
    net: &Network,
    host_sysctls: &[String],
    cache: Option<&TableCache>,
    observed: &mut Observed,
) -> Result<(), Error> {
    observed.bridge_ready = runtime::bridge_in_place(host, net)?;
    let (table, generation) = host_table(cache).map_err(|e| Error::Netfilter {
        ns: "host".into(),
        source: e,
    })?;
    observed.host_table = table;
    observed.host_generation = Some(generation);
    observed.host_sysctls = read_sysctls(host_sysctls);
    Ok(())
}

/// The host's table and the generation it is true at: from `cache` when it holds the current
/// generation, else dumped.
pub fn host_table(
    cache: Option<&TableCache>,
) -> Result<(Option<ActualTable>, u32), netfilter::Error> {
    if let Some(cache) = cache {
        let generation = netfilter::generation()?;
        let cached = table_cache::Key::here(generation)
            .and_then(|key| timed("read cached host table", || cache.load(&key)));
        if let Some(table) = cached {
            return Ok((table, generation));
        }
    }
    timed("dump host table", netfilter::snapshot)
}

/// Writes what `observed` knows of the host's table into `cache`, when it knows the
/// generation the table is true at.
pub fn remember_host_table(cache: &TableCache, observed: &Observed) {
    match observed.host_generation.and_then(table_cache::Key::here) {
        Some(key) => timed("write cached host table", || {
            cache.store(&key, observed.host_table.as_ref())
        }),
        None => cache.forget(),
    }
}

/// One instance's namespace: whether it exists, its table and sysctls, and (when the probe has
/// an address) whether the inner end of its veth pair is in place; with the namespace, for
/// checking the host end.
fn observe_instance(
    net: &Network,
    rt: &Runtime,
    probe: &Probe,
    own: &parallel::OwnThread,
) -> Result<(ObservedInstance, Option<Netns>), Error> {
    let id = probe.id.as_str();
    let found = rt.find(id)?;
    let mut seen = ObservedInstance {
        container: found.container,
        ..ObservedInstance::default()
    };
    if let Some(ns) = &found.netns {
        seen.netns_exists = true;
        // Found from the host; read from inside, on this thread, which ends with this instance.
        own.enter(ns)?;
        let inside = observe_inside(net, id, ns, &probe.sysctls, probe.address)?;
        seen.table = inside.table;
        seen.generation = Some(inside.generation);
        seen.sysctls = inside.sysctls;
        seen.wired = inside.inner_wired;
    }
    Ok((seen, found.netns))
}

/// What is left to do after `plan` was carried out: the namespaces it changed are read again,
/// and the rest is taken from `before`, read just before the plan was made and not touched
/// since. At 10,000 mappings over 10 instances, a change of one mapping then reads back one
/// table instead of eleven tables and ten instances' wiring.
///
/// A table whose batch the kernel took on condition of the generation it was read at (see
/// [`Committed`]) is not read again: it is the table read then, changed by the batch. A change
/// of one mapping at 10,000 then reads nothing back.
#[allow(clippy::too_many_arguments)]
pub fn read_back(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    desired: &Desired,
    record: &DeploymentRecord,
    before: &mut Observed,
    plan: &Plan,
    committed: &Committed,
) -> Result<Plan, Error> {
    if plan.create_bridge {
        before.bridge_ready = runtime::bridge_in_place(host, net)?;
    }
    if !plan.host.sysctls.is_empty() {
        before.host_sysctls = read_sysctls(&keys(&desired.host_sysctls));
    }
    if let Some(generation) = committed.host {
        before.host_table = ActualTable::after(before.host_table.as_ref(), &plan.host.table);
        before.host_generation = Some(generation);
    } else if !plan.host.table.is_empty() {
        let (table, generation) =
            timed("dump host table", netfilter::snapshot).map_err(|e| Error::Netfilter {
                ns: "host".into(),
                source: e,
            })?;
        before.host_table = table;
        before.host_generation = Some(generation);
    }
    let mut changed: Vec<Probe> = Vec::new();
    for inst in &desired.instances {
        let ns_plan = plan.instances.get(&inst.id);
        let table_only = ns_plan.is_some_and(|p| p.sysctls.is_empty());
        if !plan.wiring.contains_key(&inst.id)
            && table_only
            && committed.instances.contains(&inst.id)
        {
            if let (Some(seen), Some(p)) = (before.instances.get_mut(&inst.id), ns_plan) {
                seen.table = ActualTable::after(seen.table.as_ref(), &p.table);
            }
        } else if plan.wiring.contains_key(&inst.id) || ns_plan.is_some() {
            changed.push(probe(&inst.id, Some(inst)));
        }
    }
    before
        .instances
        .extend(observe_instances(host, net, rt, &changed)?);
    Ok(diff_against(desired, before, record))
}

/// The namespaces whose batch the kernel took on condition that their ruleset had not moved
/// since it was read (`netfilter::commit_on`), and in which nothing has been committed since:
/// their table is known without reading it again.
#[derive(Debug, Default)]
pub struct Committed {
    /// The host's generation after its batch.
    pub host: Option<u32>,
    pub instances: BTreeSet<String>,
}

/// Carries out `plan`. Namespaces created on the way are added to `record.created_netns`, and
/// the record is handed to `persist` as soon as they exist, so that a run that fails later
/// still knows which namespaces are gearnat's to remove.
pub fn execute(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    plan: &Plan,
    record: &mut DeploymentRecord,
    persist: impl Fn(&DeploymentRecord) -> Result<(), Error>,
) -> Result<Committed, Error> {
    if plan.create_bridge {
        timed("wire bridge", || runtime::ensure_bridge(host, net))?;
    }
    let commit_host = || timed("commit host", || commit_namespace(rt, None, &plan.host));
    let join = |record: &mut DeploymentRecord| {
        timed("run containers", || run_containers(rt, plan, record)).and_then(|()| {
            timed("wire instances", || {
                join_instances(host, net, rt, plan, record)
            })
        })
    };
    // The host's batch needs nothing of the instances' wiring, so it goes in while they are
    // wired (a cold apply of 10,000 mappings over 10 new instances: about 10 ms each). Not
    // while containers are made: an image that cannot be had is the likeliest failure of an
    // apply, and it leaves the host's table as it was.
    let (joined, host_committed) = if plan.containers.is_empty() {
        std::thread::scope(|scope| {
            // Scoped threads start in the calling thread's namespace, the host.
            let host_batch = scope.spawn(commit_host);
            let joined = join(record);
            let committed = host_batch
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (joined, Some(committed))
        })
    } else {
        (join(record), None)
    };
    persist(record)?;
    joined?;
    let mut committed = Committed {
        host: host_committed.unwrap_or_else(commit_host)?,
        ..Committed::default()
    };
    timed("commit instances", || -> Result<(), Error> {
        for (id, ns_plan) in &plan.instances {
            if matches!(
                plan.wiring.get(id),
                Some(Wiring::Remove { delete_netns: true })
            ) {
                continue;
            }
            if commit_namespace(rt, Some(id), ns_plan)?.is_some() {
                committed.instances.insert(id.clone());
            }
        }
        Ok(())
    })?;
    timed("unwire instances", || {
        remove_instances(host, net, rt, plan, record)
    })?;
    Ok(committed)
}

/// Creates, recreates and starts the plan's containers (docker runtime), recording each
/// one gearnat made. Removals happen with their instance's unwiring.
fn run_containers(rt: &Runtime, plan: &Plan, record: &mut DeploymentRecord) -> Result<(), Error> {
    for (id, action) in &plan.containers {
        if matches!(action, ContainerAction::Remove) {
            continue;
        }
        rt.container(&plan.deployment, id, action)?;
        if !record.created_netns.contains(id) {
            record.created_netns.push(id.clone());
        }
        log::info!("{}", report::container_line(id, action));
    }
    Ok(())
}

/// Joins the plan's instances to the bridge, a few at a time (see [`parallel`]). Every
/// namespace made is recorded as gearnat's, also when another instance failed.
fn join_instances(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    plan: &Plan,
    record: &mut DeploymentRecord,
) -> Result<(), Error> {
    let joins: Vec<(&String, Ipv4Addr)> = (plan.wiring.iter())
        .filter_map(|(id, w)| match w {
            Wiring::Join { address, .. } => Some((id, *address)),
            Wiring::Remove { .. } => None,
        })
        .collect();
    let joined = parallel::map(&joins, |(id, address)| {
        rt.ensure_instance(host, net, id, *address)
    });
    let mut first_error = None;
    for ((id, address), joined) in joins.iter().zip(joined) {
        match joined {
            Ok(wired) => {
                if wired.created_netns && !record.created_netns.contains(id) {
                    record.created_netns.push((*id).clone());
                }
                log::info!("joined {id} to {} as {address}", net.bridge);
            }
            Err(e) => {
                first_error.get_or_insert(Error::from(e));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn remove_instances(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    plan: &Plan,
    record: &mut DeploymentRecord,
) -> Result<(), Error> {
    let gone: Vec<(&str, bool)> = plan
        .wiring
        .iter()
        .filter_map(|(id, w)| match w {
            Wiring::Remove { delete_netns } => Some((id.as_str(), *delete_netns)),
            Wiring::Join { .. } => None,
        })
        .collect();
    rt.remove_instances(host, net, &gone)?;
    for (id, deleted) in gone {
        if deleted {
            record.created_netns.retain(|n| n != id);
        }
        log::info!("removed {id} from {}", net.bridge);
    }
    Ok(())
}

/// One namespace's table change, as one atomic batch, then its sysctls. Returns the
/// generation the batch left when it went in on the generation the plan was made at and
/// nothing was committed after it.
fn commit_namespace(
    rt: &Runtime,
    instance: Option<&String>,
    p: &NsPlan,
) -> Result<Option<u32>, Error> {
    let Some(id) = instance else {
        return commit_here("host", p);
    };
    let ns = rt.netns(id)?;
    let (id, p) = (id.clone(), p.clone());
    netns::run_in(&ns, move || commit_here(&id, &p))?
}

fn commit_here(ns: &str, p: &NsPlan) -> Result<Option<u32>, Error> {
    let known = match p.generation {
        _ if p.table.is_empty() => Ok(None),
        Some(generation) => netfilter::commit_on(&p.table, generation),
        None => netfilter::commit(&p.table).map(|()| None),
    }
    .map_err(|e| Error::Netfilter {
        ns: ns.to_string(),
        source: e,
    })?;
    delete_stale_flows(ns, &p.stale_flows);
    for s in &p.sysctls {
        link::sysctl_set(&s.key, &s.to)?;
        log::info!("{ns}: set {} = {}", s.key, s.to);
    }
    Ok(known)
}

/// Deletes the conntrack entries that still lead where `stale` sent them. A failure leaves the
/// table right but those flows on their old target until their entries time out (30 s of
/// silence for UDP, 120 s once replies were seen), so it is a warning, not an error.
fn delete_stale_flows(ns: &str, stale: &[Element]) {
    if stale.is_empty() {
        return;
    }
    match netfilter::delete_flows(stale) {
        Ok(n) => {
            let what: Vec<String> = stale.iter().map(report::element_text).collect();
            log::info!(
                "{ns}: deleted {n} conntrack entries leading to {}",
                what.join(", ")
            );
        }
        Err(e) => log::warn!(
            "{ns}: {e}; UDP flows of moved or removed mappings keep their old target until \
             their conntrack entries time out"
        ),
    }
}

/// The record for a deployment, with `instances` covering the old and the new instances, so
/// that a run that dies half way leaves the next one everything to clean up; and with the
/// namespaces `plan` is about to create already counted as gearnat's. Were they recorded only
/// once created, a run killed between creating a namespace and saving the record would leave
/// one that every later run takes for someone else's, and `down` would never remove it.
pub fn intent(
    mut record: DeploymentRecord,
    desired: Option<&Desired>,
    plan: &Plan,
) -> DeploymentRecord {
    let mut all: BTreeSet<String> = record.instances.iter().cloned().collect();
    if let Some(d) = desired {
        all.extend(d.instances.iter().map(|i| i.id.clone()));
    }
    record.instances = all.into_iter().collect();
    for (id, w) in &plan.wiring {
        let creates = matches!(
            w,
            Wiring::Join {
                create_netns: true,
                ..
            }
        );
        if creates && !record.created_netns.contains(id) {
            record.created_netns.push(id.clone());
        }
    }
    record
}

/// The plan for `desired` against the kernel as it is now.
pub fn plan_apply(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    desired: &Desired,
    record: &DeploymentRecord,
    cache: Option<&TableCache>,
) -> Result<Plan, Error> {
    Ok(observe_and_plan(host, net, rt, desired, record, cache, None)?.1)
}

/// [`plan_apply`], also returning what was observed (for [`read_back`]).
pub fn observe_and_plan(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    desired: &Desired,
    record: &DeploymentRecord,
    cache: Option<&TableCache>,
    ahead: Option<Ahead>,
) -> Result<(Observed, Plan), Error> {
    let observed = observe(
        host,
        net,
        rt,
        Some(desired),
        &record.instances,
        cache,
        ahead,
    )?;
    let plan = diff_against(desired, &observed, record);
    Ok((observed, plan))
}

fn diff_against(desired: &Desired, observed: &Observed, record: &DeploymentRecord) -> Plan {
    let created: BTreeSet<String> = record.created_netns.iter().cloned().collect();
    plan::diff(
        desired,
        observed,
        &Record {
            instances: &record.instances,
            created_netns: &created,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_intent_counts_namespaces_about_to_be_created_as_gearnats() {
        let record = DeploymentRecord {
            name: "d".into(),
            instances: vec!["old-1".into()],
            created_netns: vec!["old-1".into()],
            ..DeploymentRecord::default()
        };
        let mut plan = Plan::default();
        let join = |create_netns| Wiring::Join {
            create_netns,
            address: "10.211.0.2".parse().unwrap(),
        };
        plan.wiring.insert("new-1".into(), join(true));
        plan.wiring.insert("found-1".into(), join(false));
        let intent = intent(record, None, &plan);
        assert_eq!(intent.instances, ["old-1"]);
        assert_eq!(intent.created_netns, ["old-1", "new-1"]);
    }
}
