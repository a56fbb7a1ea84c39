//! The reconciler: observe the kernel, plan, apply one batch per namespace, read back.
//!
//! The only module that strings the system-touching layers together; each step is a named
//! function so the apply path reads like its table of contents.

use std::collections::{BTreeMap, BTreeSet};

use crate::netfilter;
use crate::netns::{self, Netns};
use crate::plan::{
    self, Desired, NsPlan, Observed, ObservedInstance, Plan, Record, Sysctl, Wiring,
};
use crate::ruleset::ActualTable;
use crate::runtime::{self, Network};
use crate::state::DeploymentRecord;
use crate::{link, Error};

/// What an instance namespace holds, read from inside it.
fn observe_inside(
    ns: &Netns,
    sysctls: Vec<Sysctl>,
) -> Result<(Option<ActualTable>, BTreeMap<String, String>), Error> {
    let id = ns.name().to_string();
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
    let mut ids: Vec<(String, Option<&plan::InstanceDesired>)> = Vec::new();
    if let Some(d) = desired {
        ids.extend(d.instances.iter().map(|i| (i.id.clone(), Some(i))));
    }
    ids.extend(record.iter().map(|id| (id.clone(), None)));
    for (id, want) in ids {
        if observed.instances.contains_key(&id) {
            continue;
        }
        let mut seen = ObservedInstance::default();
        if netns::exists_named(&id) {
            let ns = Netns::open_named(&id)?;
            seen.netns_exists = true;
            let sysctls = want.map(|w| w.sysctls.clone()).unwrap_or_default();
            (seen.table, seen.sysctls) = observe_inside(&ns, sysctls)?;
            if let Some(w) = want {
                seen.wired = runtime::instance_in_place(host, net, &id, w.address)?;
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
    plan: &Plan,
    record: &mut DeploymentRecord,
    persist: impl Fn(&DeploymentRecord) -> Result<(), Error>,
) -> Result<(), Error> {
    if plan.create_bridge {
        runtime::ensure_bridge(host, net)?;
    }
    let joined = join_instances(host, net, plan, record);
    persist(record)?;
    joined?;
    commit_namespace(None, &plan.host)?;
    for (id, ns_plan) in &plan.instances {
        if matches!(
            plan.wiring.get(id),
            Some(Wiring::Remove { delete_netns: true })
        ) {
            continue;
        }
        commit_namespace(Some(id), ns_plan)?;
    }
    remove_instances(host, net, plan, record)
}

fn join_instances(
    host: &Netns,
    net: &Network,
    plan: &Plan,
    record: &mut DeploymentRecord,
) -> Result<(), Error> {
    for (id, w) in &plan.wiring {
        if let Wiring::Join { address, .. } = w {
            let wired = runtime::ensure_instance(host, net, id, *address)?;
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
    plan: &Plan,
    record: &mut DeploymentRecord,
) -> Result<(), Error> {
    for (id, w) in &plan.wiring {
        if let Wiring::Remove { delete_netns } = w {
            runtime::remove_instance(host, net, id, *delete_netns)?;
            if *delete_netns {
                record.created_netns.retain(|n| n != id);
            }
            log::info!("removed {id} from {}", net.bridge);
        }
    }
    Ok(())
}

/// One namespace's table change, as one atomic batch, then its sysctls.
fn commit_namespace(instance: Option<&String>, p: &NsPlan) -> Result<(), Error> {
    let Some(id) = instance else {
        return commit_here("host", p);
    };
    let ns = Netns::open_named(id)?;
    let (id, p) = (id.clone(), p.clone());
    netns::run_in(&ns, move || commit_here(&id, &p))?
}

fn commit_here(ns: &str, p: &NsPlan) -> Result<(), Error> {
    netfilter::commit(&p.table).map_err(|e| Error::Netfilter {
        ns: ns.to_string(),
        source: e,
    })?;
    for s in &p.sysctls {
        link::sysctl_set(&s.key, &s.to)?;
        log::info!("{ns}: set {} = {}", s.key, s.to);
    }
    Ok(())
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
    desired: &Desired,
    record: &DeploymentRecord,
) -> Result<Plan, Error> {
    let observed = observe(host, net, Some(desired), &record.instances)?;
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
