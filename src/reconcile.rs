//! The reconciler: observe the kernel, plan, apply one batch per namespace, read back.
//!
//! The only module that strings the system-touching layers together; each step is a named
//! function so the apply path reads like its table of contents.

use std::collections::{BTreeMap, BTreeSet};

use crate::netfilter;
use crate::netns::{self, Netns};
use crate::plan::{
    self, ContainerAction, Desired, NsPlan, Observed, ObservedInstance, Plan, Record, Sysctl,
    Wiring,
};
use crate::ruleset::{ActualTable, Element};
use crate::runtime::{self, Network, Runtime};
use crate::state::DeploymentRecord;
use crate::{link, report, Error};

/// What an instance namespace holds, read from inside it.
fn observe_inside(
    id: &str,
    ns: &Netns,
    sysctls: Vec<Sysctl>,
) -> Result<(Option<ActualTable>, BTreeMap<String, String>), Error> {
    let id = id.to_string();
    netns::run_in(ns, move || -> Result<_, Error> {
        let table = netfilter::dump().map_err(|e| Error::Netfilter {
            ns: id.clone(),
            source: e,
        })?;
        Ok((table, read_sysctls(&sysctls)))
    })?
}

/// Current values of `want`'s keys in the calling thread's namespace; missing keys (an
/// interface that does not exist yet) are left out.
fn read_sysctls(want: &[Sysctl]) -> BTreeMap<String, String> {
    want.iter()
        .filter_map(|s| {
            link::sysctl_get(&s.key)
                .ok()
                .map(|v| (s.key.clone(), v.trim().to_string()))
        })
        .collect()
}

/// Reads everything the plan depends on: the host's table and sysctls, and for every instance
/// the deployment has or had, its namespace, wiring, table and sysctls.
pub fn observe(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    desired: Option<&Desired>,
    record: &[String],
) -> Result<Observed, Error> {
    let host_sysctls = desired.map(|d| d.host_sysctls.clone()).unwrap_or_default();
    let mut observed = Observed {
        bridge_ready: runtime::bridge_in_place(host, net)?,
        host_table: netfilter::dump().map_err(|e| Error::Netfilter {
            ns: "host".into(),
            source: e,
        })?,
        host_sysctls: read_sysctls(&host_sysctls),
        instances: BTreeMap::new(),
    };
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
    let mut ids: Vec<(String, Option<&plan::InstanceDesired>)> = Vec::new();
    if let Some(d) = desired {
        ids.extend(d.instances.iter().map(|i| (i.id.clone(), Some(i))));
    }
    ids.extend(record.iter().map(|id| (id.clone(), None)));
    for (id, want) in ids {
        if observed.instances.contains_key(&id) {
            continue;
        }
        let found = rt.find(&id)?;
        let mut seen = ObservedInstance {
            container: found.container,
            ..ObservedInstance::default()
        };
        if let Some(ns) = found.netns {
            seen.netns_exists = true;
            let sysctls = want.map(|w| w.sysctls.clone()).unwrap_or_default();
            (seen.table, seen.sysctls) = observe_inside(&id, &ns, sysctls)?;
            if let Some(w) = want {
                seen.wired = rt.instance_in_place(host, net, &id, w.address, &ns)?;
            }
        }
        observed.instances.insert(id, seen);
    }
    Ok(observed)
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
) -> Result<(), Error> {
    if plan.create_bridge {
        runtime::ensure_bridge(host, net)?;
    }
    let joined =
        run_containers(rt, plan, record).and_then(|()| join_instances(host, net, rt, plan, record));
    persist(record)?;
    joined?;
    commit_namespace(rt, None, &plan.host)?;
    for (id, ns_plan) in &plan.instances {
        if matches!(
            plan.wiring.get(id),
            Some(Wiring::Remove { delete_netns: true })
        ) {
            continue;
        }
        commit_namespace(rt, Some(id), ns_plan)?;
    }
    remove_instances(host, net, rt, plan, record)
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

fn join_instances(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    plan: &Plan,
    record: &mut DeploymentRecord,
) -> Result<(), Error> {
    for (id, w) in &plan.wiring {
        if let Wiring::Join { address, .. } = w {
            let wired = rt.ensure_instance(host, net, id, *address)?;
            if wired.created_netns && !record.created_netns.contains(id) {
                record.created_netns.push(id.clone());
            }
            log::info!("joined {id} to {} as {address}", net.bridge);
        }
    }
    Ok(())
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

/// One namespace's table change, as one atomic batch, then its sysctls.
fn commit_namespace(rt: &Runtime, instance: Option<&String>, p: &NsPlan) -> Result<(), Error> {
    let Some(id) = instance else {
        return commit_here("host", p);
    };
    let ns = rt.netns(id)?;
    let (id, p) = (id.clone(), p.clone());
    netns::run_in(&ns, move || commit_here(&id, &p))?
}

fn commit_here(ns: &str, p: &NsPlan) -> Result<(), Error> {
    netfilter::commit(&p.table).map_err(|e| Error::Netfilter {
        ns: ns.to_string(),
        source: e,
    })?;
    delete_stale_flows(ns, &p.stale_flows);
    for s in &p.sysctls {
        link::sysctl_set(&s.key, &s.to)?;
        log::info!("{ns}: set {} = {}", s.key, s.to);
    }
    Ok(())
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
/// that a run that dies half way leaves the next one everything to clean up.
pub fn intent(mut record: DeploymentRecord, desired: Option<&Desired>) -> DeploymentRecord {
    let mut all: BTreeSet<String> = record.instances.iter().cloned().collect();
    if let Some(d) = desired {
        all.extend(d.instances.iter().map(|i| i.id.clone()));
    }
    record.instances = all.into_iter().collect();
    record
}

/// The plan for `desired` against the kernel as it is now.
pub fn plan_apply(
    host: &Netns,
    net: &Network,
    rt: &Runtime,
    desired: &Desired,
    record: &DeploymentRecord,
) -> Result<Plan, Error> {
    let observed = observe(host, net, rt, Some(desired), &record.instances)?;
    let created: BTreeSet<String> = record.created_netns.iter().cloned().collect();
    Ok(plan::diff(
        desired,
        &observed,
        &Record {
            instances: &record.instances,
            created_netns: &created,
        },
    ))
}
