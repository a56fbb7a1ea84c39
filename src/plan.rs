//! Planning: what the kernel must hold for a deployment (`desired`), and the changes that take
//! what it holds now (`Observed`) there (`diff`). Pure data in, pure data out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use serde::Serialize;

use crate::model::Proto;
use crate::resolve::Resolved;
use crate::ruleset::{ActualTable, Element, Ipv4Net, Layout, Owner, TableChange};

/// The interface name of an instance's end of its veth pair.
pub const INSTANCE_IF: &str = "eth0";

/// The network gearnat joins instances to: a bridge in the host namespace and a pool of
/// addresses whose first host address is the bridge's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub bridge: String,
    pub pool: Ipv4Net,
}

/// A network namespace gearnat manages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    Host,
    Instance(String),
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Namespace::Host => f.write_str("host"),
            Namespace::Instance(id) => f.write_str(id),
        }
    }
}

/// A sysctl gearnat sets in a namespace, by its /proc/sys path below `net/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Sysctl {
    pub key: String,
    pub value: String,
}

/// What one deployment needs in one instance's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDesired {
    pub id: String,
    pub address: Ipv4Addr,
    /// Link elements; empty: the instance needs no table.
    pub links: Vec<Element>,
    pub sysctls: Vec<Sysctl>,
    /// The container to run it in (docker runtime); None: the instance is a bare namespace.
    pub container: Option<ContainerSpec>,
}

/// What gearnat runs an instance's container from (docker runtime).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerSpec {
    pub image: String,
    /// `NAME=VALUE`, in file order.
    pub env: Vec<String>,
}

impl ContainerSpec {
    /// A label value that changes when image or environment change: 16 hex digits of a
    /// 64-bit FNV-1a hash, stable across runs and versions.
    pub fn hash(&self) -> String {
        let mut text = self.image.clone();
        for e in &self.env {
            text.push('\0');
            text.push_str(e);
        }
        format!("{:016x}", crate::link::fnv1a64(text.as_bytes()))
    }
}

/// Everything a deployment needs in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub deployment: String,
    pub host_layout: Layout,
    pub host_elements: Vec<Element>,
    pub host_sysctls: Vec<Sysctl>,
    pub instances: Vec<InstanceDesired>,
}

/// The sysctls that make loopback-sourced DNAT work through `ifname`.
///
/// route_localnet lets packets with a 127/8 source leave through the interface after DNAT
/// (Documentation/networking/ip-sysctl.rst); it is set on that one interface only, never on
/// `all`, and the guard chain drops 127/8 destinations arriving from outside (CVE-2020-8558).
fn route_localnet(ifname: &str) -> Sysctl {
    Sysctl {
        key: format!("net.ipv4.conf.{ifname}.route_localnet"),
        value: "1".into(),
    }
}

/// What the kernel must hold for `resolved`.
pub fn desired(resolved: &Resolved, net: &NetworkConfig) -> Desired {
    let deployment: Arc<str> = resolved.deployment.as_str().into();
    let mut host_elements = Vec::new();
    let mut instances = Vec::new();
    for inst in &resolved.instances {
        let owner = Owner {
            deployment: Arc::clone(&deployment),
            instance: inst.id.as_str().into(),
        };
        for m in &inst.mappings {
            host_elements.push(Element::Port {
                proto: m.proto,
                host_port: m.host_port,
                target: SocketAddrV4::new(inst.address, m.internal),
                owner: owner.clone(),
            });
        }
        let links: Vec<Element> = inst
            .links
            .iter()
            .map(|l| Element::Link {
                proto: l.proto,
                dial: l.dial,
                via: SocketAddrV4::new(resolved.gateway, l.host_port),
                owner: owner.clone(),
            })
            .collect();
        let sysctls = if links.is_empty() {
            vec![]
        } else {
            vec![route_localnet(INSTANCE_IF)]
        };
        instances.push(InstanceDesired {
            id: inst.id.clone(),
            address: inst.address,
            links,
            sysctls,
            container: None,
        });
    }
    Desired {
        deployment: resolved.deployment.clone(),
        host_layout: Layout::Host { pool: net.pool },
        host_elements,
        host_sysctls: host_sysctls(&net.bridge),
        instances,
    }
}

/// The host's sysctls for instances on `bridge`.
pub fn host_sysctls(bridge: &str) -> Vec<Sysctl> {
    vec![
        // Instances are reached by forwarding from the host's interfaces.
        Sysctl {
            key: "net.ipv4.ip_forward".into(),
            value: "1".into(),
        },
        route_localnet(bridge),
    ]
}

/// What the kernel holds now, as far as one deployment is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub bridge_ready: bool,
    pub host_table: Option<ActualTable>,
    /// The host's ruleset generation `host_table` was read at.
    pub host_generation: Option<u32>,
    /// Current values of the sysctls in `Desired::host_sysctls`.
    pub host_sysctls: BTreeMap<String, String>,
    pub instances: BTreeMap<String, ObservedInstance>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedInstance {
    pub netns_exists: bool,
    /// Joined to the bridge with the right address and route.
    pub wired: bool,
    pub table: Option<ActualTable>,
    /// The namespace's ruleset generation `table` was read at.
    pub generation: Option<u32>,
    pub sysctls: BTreeMap<String, String>,
    /// The instance's container (docker runtime), if there is one.
    pub container: Option<ObservedContainer>,
}

/// A container as the docker runtime found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedContainer {
    pub image: Option<String>,
    /// Its `gearnat.spec` label (see [`ContainerSpec::hash`]).
    pub spec_hash: Option<String>,
    pub running: bool,
}

impl ObservedInstance {
    /// Whether there is anything of the instance left to remove.
    fn present(&self) -> bool {
        self.netns_exists || self.container.is_some()
    }
}

/// What happens to an instance's container (docker runtime). A new container has a new
/// network namespace, which is then wired and filled from nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ContainerAction {
    Create {
        spec: ContainerSpec,
    },
    /// Removed and created again from the new spec.
    Recreate {
        spec: ContainerSpec,
        reason: String,
    },
    /// Exists, stopped: started again.
    Start,
    /// Stopped and removed (the instance left the deployment, or `down`).
    Remove,
}

/// The changes in one namespace, applied as one atomic batch plus its link-layer steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsPlan {
    pub table: TableChange,
    pub sysctls: Vec<SysctlChange>,
    /// UDP elements the kernel holds and the change takes away: once the batch is in, the
    /// conntrack entries of flows that still lead where they sent them are deleted, so that a
    /// client that keeps its source port meets the new map at once. TCP connections keep
    /// their target until they close: deleting their entries would not move them, only cut
    /// them.
    pub stale_flows: Vec<Element>,
    /// The ruleset generation the table was read at: the batch is committed on condition that
    /// nothing changed the ruleset since (see `netfilter::commit_on`).
    pub generation: Option<u32>,
}

impl NsPlan {
    fn new(
        table: TableChange,
        sysctls: Vec<SysctlChange>,
        actual: Option<&ActualTable>,
        generation: Option<u32>,
    ) -> Self {
        let stale_flows = stale_flows(&table, actual);
        NsPlan {
            table,
            sysctls,
            generation,
            stale_flows,
        }
    }
}

/// The UDP elements of `actual` that `change` leaves out of the table.
fn stale_flows(change: &TableChange, actual: Option<&ActualTable>) -> Vec<Element> {
    let gone: Vec<&Element> = match actual {
        None => vec![],
        Some(actual) if change.delete_table => actual
            .elements
            .iter()
            .filter(|e| !change.add.contains(e))
            .collect(),
        Some(_) => change.remove.iter().collect(),
    };
    gone.into_iter()
        .filter(|e| e.proto() == Proto::Udp)
        .cloned()
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SysctlChange {
    pub key: String,
    pub from: Option<String>,
    pub to: String,
}

/// Link-layer work for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Wiring {
    /// Create (if missing) and join the namespace to the bridge with `address`.
    Join {
        create_netns: bool,
        address: Ipv4Addr,
    },
    /// The instance is gone from the deployment: unjoin it, and delete its namespace if
    /// gearnat created it.
    Remove { delete_netns: bool },
}

/// The whole plan for a deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub deployment: String,
    pub create_bridge: bool,
    pub host: NsPlan,
    pub wiring: BTreeMap<String, Wiring>,
    pub instances: BTreeMap<String, NsPlan>,
    pub containers: BTreeMap<String, ContainerAction>,
    /// The instances are containers (docker runtime), not bare namespaces.
    pub docker: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        !self.create_bridge
            && self.wiring.is_empty()
            && self.containers.is_empty()
            && ns_plan_is_empty(&self.host)
            && self.instances.values().all(ns_plan_is_empty)
    }
}

fn ns_plan_is_empty(p: &NsPlan) -> bool {
    p.table.is_empty() && p.sysctls.is_empty()
}

/// The instances gearnat recorded for the deployment and which of their namespaces it created.
pub struct Record<'a> {
    pub instances: &'a [String],
    pub created_netns: &'a BTreeSet<String>,
}

/// The plan that takes `observed` to `desired`, touching only what `desired.deployment` owns.
pub fn diff(desired: &Desired, observed: &Observed, record: &Record) -> Plan {
    let mut plan = Plan {
        deployment: desired.deployment.clone(),
        create_bridge: !observed.bridge_ready,
        host: NsPlan::new(
            shared_table_change(
                &desired.deployment,
                desired.host_layout,
                &desired.host_elements,
                observed.host_table.as_ref(),
            ),
            sysctl_changes(&desired.host_sysctls, &observed.host_sysctls),
            observed.host_table.as_ref(),
            observed.host_generation,
        ),
        docker: desired.instances.iter().any(|i| i.container.is_some()),
        ..Plan::default()
    };
    let empty = ObservedInstance::default();
    for inst in &desired.instances {
        let mut seen = observed.instances.get(&inst.id).unwrap_or(&empty);
        if let Some(action) = container_action(inst, seen) {
            plan.containers.insert(inst.id.clone(), action);
            seen = &empty;
        }
        if !seen.netns_exists || !seen.wired {
            let join = Wiring::Join {
                create_netns: !seen.netns_exists,
                address: inst.address,
            };
            plan.wiring.insert(inst.id.clone(), join);
        }
        let table = if inst.links.is_empty() {
            TableChange {
                delete_table: seen.table.is_some(),
                ..TableChange::default()
            }
        } else {
            shared_table_change(
                &desired.deployment,
                Layout::Instance,
                &inst.links,
                seen.table.as_ref(),
            )
        };
        let sysctls = sysctl_changes(&inst.sysctls, &seen.sysctls);
        let ns = NsPlan::new(table, sysctls, seen.table.as_ref(), seen.generation);
        if !ns_plan_is_empty(&ns) {
            plan.instances.insert(inst.id.clone(), ns);
        }
    }
    let wanted: BTreeSet<&str> = desired.instances.iter().map(|i| i.id.as_str()).collect();
    let gone = record
        .instances
        .iter()
        .filter(|id| !wanted.contains(id.as_str()));
    remove_instances(&mut plan, gone, observed, record);
    plan
}

/// What must happen to a desired instance's container, if anything.
fn container_action(inst: &InstanceDesired, seen: &ObservedInstance) -> Option<ContainerAction> {
    let spec = inst.container.as_ref()?;
    let Some(c) = &seen.container else {
        return Some(ContainerAction::Create { spec: spec.clone() });
    };
    if c.spec_hash.as_deref() != Some(spec.hash().as_str()) {
        let reason = if c.image.as_deref() != Some(spec.image.as_str()) {
            "image changed"
        } else {
            "environment changed"
        };
        return Some(ContainerAction::Recreate {
            spec: spec.clone(),
            reason: reason.into(),
        });
    }
    (!c.running).then_some(ContainerAction::Start)
}

/// Unwires an instance that goes; its container goes with it when gearnat made it.
fn remove_instance(plan: &mut Plan, id: &str, seen: &ObservedInstance, delete_netns: bool) {
    plan.wiring
        .insert(id.to_string(), Wiring::Remove { delete_netns });
    if seen.container.is_some() && delete_netns {
        plan.containers
            .insert(id.to_string(), ContainerAction::Remove);
    }
}

/// The change to a table that several owners may share: only `deployment`'s elements move. A
/// table of another layout (an older gearnat, another pool) is replaced as a whole in the same
/// batch, carrying the other deployments' elements over.
fn shared_table_change(
    deployment: &str,
    layout: Layout,
    want: &[Element],
    actual: Option<&ActualTable>,
) -> TableChange {
    let Some(actual) = actual else {
        return TableChange {
            create: Some(layout),
            add: want.to_vec(),
            ..TableChange::default()
        };
    };
    if actual.comment.as_deref() != Some(layout.comment().as_str()) {
        let mut add: Vec<Element> = actual
            .elements
            .iter()
            .filter(|e| *e.owner().deployment != *deployment && fits(layout, e))
            .cloned()
            .collect();
        add.extend(want.iter().cloned());
        return TableChange {
            delete_table: true,
            create: Some(layout),
            add,
            remove: vec![],
        };
    }
    let want_set: BTreeSet<&Element> = want.iter().collect();
    let ours: BTreeSet<&Element> = actual
        .elements
        .iter()
        .filter(|e| *e.owner().deployment == *deployment)
        .collect();
    TableChange {
        delete_table: false,
        create: None,
        remove: ours.difference(&want_set).map(|e| (*e).clone()).collect(),
        add: want_set.difference(&ours).map(|e| (*e).clone()).collect(),
    }
}

/// Whether an element belongs in a table of `layout` (port maps on the host, link maps in
/// instances).
fn fits(layout: Layout, e: &Element) -> bool {
    matches!(
        (layout, e),
        (Layout::Host { .. }, Element::Port { .. }) | (Layout::Instance, Element::Link { .. })
    )
}

fn sysctl_changes(want: &[Sysctl], seen: &BTreeMap<String, String>) -> Vec<SysctlChange> {
    want.iter()
        .filter(|s| seen.get(&s.key).map(|v| v.trim()) != Some(s.value.as_str()))
        .map(|s| SysctlChange {
            key: s.key.clone(),
            from: seen.get(&s.key).cloned(),
            to: s.value.clone(),
        })
        .collect()
}

/// The plan that removes everything `deployment` owns. `last` says whether no other
/// deployment remains, so the host table goes too.
pub fn teardown(deployment: &str, observed: &Observed, record: &Record, last: bool) -> Plan {
    let mut plan = Plan {
        deployment: deployment.to_string(),
        docker: observed.instances.values().any(|i| i.container.is_some()),
        ..Plan::default()
    };
    if let Some(table) = &observed.host_table {
        let change = if last {
            TableChange {
                delete_table: true,
                ..TableChange::default()
            }
        } else {
            TableChange {
                remove: table
                    .elements
                    .iter()
                    .filter(|e| *e.owner().deployment == *deployment)
                    .cloned()
                    .collect(),
                ..TableChange::default()
            }
        };
        plan.host = NsPlan::new(change, vec![], Some(table), observed.host_generation);
    }
    remove_instances(&mut plan, record.instances.iter(), observed, record);
    plan
}

/// Unwires instances the deployment no longer has: their namespace is deleted if gearnat
/// created it, else only gearnat's table in it goes.
fn remove_instances<'a>(
    plan: &mut Plan,
    ids: impl Iterator<Item = &'a String>,
    observed: &Observed,
    record: &Record,
) {
    for id in ids {
        let Some(seen) = observed.instances.get(id).filter(|s| s.present()) else {
            continue;
        };
        let delete_netns = record.created_netns.contains(id);
        remove_instance(plan, id, seen, delete_netns);
        if seen.table.is_some() && !delete_netns {
            let table = TableChange {
                delete_table: true,
                ..TableChange::default()
            };
            let ns = NsPlan::new(table, vec![], seen.table.as_ref(), seen.generation);
            plan.instances.insert(id.clone(), ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::{Instance, LinkTarget, Mapping};

    fn net() -> NetworkConfig {
        NetworkConfig {
            bridge: "gearnat0".into(),
            pool: "10.211.0.0/16".parse().unwrap(),
        }
    }

    fn resolved() -> Resolved {
        Resolved {
            deployment: "seed".into(),
            gateway: Ipv4Addr::new(10, 211, 0, 1),
            instances: vec![
                Instance {
                    id: "rockmongo-1".into(),
                    container: "rockmongo".into(),
                    image: None,
                    address: Ipv4Addr::new(10, 211, 0, 2),
                    mappings: vec![Mapping {
                        proto: Proto::Tcp,
                        internal: 80,
                        host_port: 6060,
                        target: None,
                    }],
                    links: vec![LinkTarget {
                        proto: Proto::Tcp,
                        dial: "127.0.0.1:27017".parse().unwrap(),
                        host_port: 4000,
                        target_instance: "mongodb-1".into(),
                        target_port: 27017,
                    }],
                },
                Instance {
                    id: "mongodb-1".into(),
                    container: "mongodb".into(),
                    image: None,
                    address: Ipv4Addr::new(10, 211, 0, 3),
                    mappings: vec![Mapping {
                        proto: Proto::Tcp,
                        internal: 27017,
                        host_port: 4000,
                        target: Some("127.0.0.1:27017".parse().unwrap()),
                    }],
                    links: vec![],
                },
            ],
        }
    }

    fn owner(d: &str, i: &str) -> Owner {
        Owner {
            deployment: d.into(),
            instance: i.into(),
        }
    }

    /// What the kernel holds right after `desired` was applied.
    fn applied(d: &Desired) -> Observed {
        let table = |comment: String, elements: Vec<Element>| ActualTable {
            comment: Some(comment),
            elements,
            unowned: 0,
        };
        let sysctls = |s: &[Sysctl]| s.iter().map(|s| (s.key.clone(), s.value.clone())).collect();
        Observed {
            bridge_ready: true,
            host_table: Some(table(d.host_layout.comment(), d.host_elements.clone())),
            host_generation: None,
            host_sysctls: sysctls(&d.host_sysctls),
            instances: d
                .instances
                .iter()
                .map(|i| {
                    let t = (!i.links.is_empty())
                        .then(|| table(Layout::Instance.comment(), i.links.clone()));
                    let seen = ObservedInstance {
                        netns_exists: true,
                        wired: true,
                        table: t,
                        generation: None,
                        sysctls: sysctls(&i.sysctls),
                        container: None,
                    };
                    (i.id.clone(), seen)
                })
                .collect(),
        }
    }

    fn no_record() -> (Vec<String>, BTreeSet<String>) {
        (vec![], BTreeSet::new())
    }

    #[test]
    fn desired_state_of_the_seed() {
        let d = desired(&resolved(), &net());
        assert_eq!(
            d.host_elements,
            vec![
                Element::Port {
                    proto: Proto::Tcp,
                    host_port: 6060,
                    target: "10.211.0.2:80".parse().unwrap(),
                    owner: owner("seed", "rockmongo-1"),
                },
                Element::Port {
                    proto: Proto::Tcp,
                    host_port: 4000,
                    target: "10.211.0.3:27017".parse().unwrap(),
                    owner: owner("seed", "mongodb-1"),
                },
            ]
        );
        assert_eq!(
            d.instances[0].links,
            vec![Element::Link {
                proto: Proto::Tcp,
                dial: "127.0.0.1:27017".parse().unwrap(),
                via: "10.211.0.1:4000".parse().unwrap(),
                owner: owner("seed", "rockmongo-1"),
            }]
        );
        assert!(d.instances[1].links.is_empty() && d.instances[1].sysctls.is_empty());
        assert_eq!(
            d.instances[0].sysctls[0].key,
            "net.ipv4.conf.eth0.route_localnet"
        );
    }

    #[test]
    fn a_fresh_kernel_needs_everything() {
        let d = desired(&resolved(), &net());
        let (instances, created) = no_record();
        let plan = diff(
            &d,
            &Observed::default(),
            &Record {
                instances: &instances,
                created_netns: &created,
            },
        );
        assert!(plan.create_bridge);
        assert_eq!(plan.host.table.create, Some(d.host_layout));
        assert_eq!(plan.host.table.add, d.host_elements);
        assert_eq!(plan.host.sysctls.len(), 2);
        assert_eq!(plan.wiring.len(), 2);
        assert_eq!(plan.instances["rockmongo-1"].table.add.len(), 1);
        assert!(!plan.instances.contains_key("mongodb-1"));
    }

    #[test]
    fn an_applied_deployment_is_in_sync() {
        let d = desired(&resolved(), &net());
        let (instances, created) = no_record();
        let plan = diff(
            &d,
            &applied(&d),
            &Record {
                instances: &instances,
                created_netns: &created,
            },
        );
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn only_the_deployments_own_elements_move() {
        let d = desired(&resolved(), &net());
        let mut seen = applied(&d);
        let foreign = Element::Port {
            proto: Proto::Tcp,
            host_port: 7000,
            target: "10.211.0.9:80".parse().unwrap(),
            owner: owner("other", "web-1"),
        };
        let stale = Element::Port {
            proto: Proto::Tcp,
            host_port: 6061,
            target: "10.211.0.4:80".parse().unwrap(),
            owner: owner("seed", "rockmongo-2"),
        };
        let table = seen.host_table.as_mut().unwrap();
        table.elements.push(foreign);
        table.elements.push(stale.clone());
        let (instances, created) = no_record();
        let plan = diff(
            &d,
            &seen,
            &Record {
                instances: &instances,
                created_netns: &created,
            },
        );
        assert_eq!(plan.host.table.remove, vec![stale]);
        assert!(plan.host.table.add.is_empty() && !plan.host.table.delete_table);
    }

    #[test]
    fn a_table_of_another_layout_is_replaced_keeping_other_deployments() {
        let d = desired(&resolved(), &net());
        let mut seen = applied(&d);
        let foreign = Element::Port {
            proto: Proto::Udp,
            host_port: 5353,
            target: "10.211.0.9:53".parse().unwrap(),
            owner: owner("other", "dns-1"),
        };
        let table = seen.host_table.as_mut().unwrap();
        table.comment = Some("gearnat r0 host pool 10.99.0.0/16".into());
        table.elements.push(foreign.clone());
        let (instances, created) = no_record();
        let plan = diff(
            &d,
            &seen,
            &Record {
                instances: &instances,
                created_netns: &created,
            },
        );
        assert!(plan.host.table.delete_table);
        assert_eq!(plan.host.table.create, Some(d.host_layout));
        assert!(plan.host.table.add.contains(&foreign));
        assert_eq!(plan.host.table.add.len(), 3);
    }

    #[test]
    fn instances_dropped_from_the_file_are_removed() {
        let d = desired(&resolved(), &net());
        let mut seen = applied(&d);
        let old = ObservedInstance {
            netns_exists: true,
            wired: true,
            ..Default::default()
        };
        seen.instances.insert("mongodb-2".into(), old.clone());
        seen.instances.insert(
            "found-1".into(),
            ObservedInstance {
                table: Some(ActualTable::default()),
                ..old
            },
        );
        let instances = vec!["mongodb-2".to_string(), "found-1".to_string()];
        let created = BTreeSet::from(["mongodb-2".to_string()]);
        let plan = diff(
            &d,
            &seen,
            &Record {
                instances: &instances,
                created_netns: &created,
            },
        );
        assert_eq!(
            plan.wiring["mongodb-2"],
            Wiring::Remove { delete_netns: true }
        );
        assert_eq!(
            plan.wiring["found-1"],
            Wiring::Remove {
                delete_netns: false
            }
        );
        assert!(plan.instances["found-1"].table.delete_table);
    }

    #[test]
    fn a_moved_udp_port_leaves_its_old_flows_to_delete() {
        let mut r = resolved();
        r.instances[1].mappings.push(Mapping {
            proto: Proto::Udp,
            internal: 53,
            host_port: 5353,
            target: None,
        });
        let d = desired(&r, &net());
        let seen = applied(&d);
        let old = d.host_elements[2].clone();
        // The UDP port moves to rockmongo-1; the TCP port 4000 goes away.
        r.instances[1].mappings.clear();
        r.instances[0].mappings.push(Mapping {
            proto: Proto::Udp,
            internal: 53,
            host_port: 5353,
            target: None,
        });
        let d = desired(&r, &net());
        let (instances, created) = no_record();
        let record = Record {
            instances: &instances,
            created_netns: &created,
        };
        let plan = diff(&d, &seen, &record);
        assert_eq!(plan.host.table.remove.len(), 2);
        assert_eq!(plan.host.stale_flows, vec![old.clone()]);
        // A table replaced whole loses its old elements too.
        let mut stale_layout = seen.clone();
        stale_layout.host_table.as_mut().unwrap().comment = Some("gearnat r0".into());
        let plan = diff(&d, &stale_layout, &record);
        assert_eq!(plan.host.stale_flows, vec![old.clone()]);
        let plan = teardown("seed", &seen, &record, true);
        assert_eq!(plan.host.stale_flows, vec![old]);
    }

    #[test]
    fn sysctls_are_set_only_when_they_differ() {
        let d = desired(&resolved(), &net());
        let mut seen = applied(&d);
        seen.host_sysctls
            .insert("net.ipv4.ip_forward".into(), "0\n".into());
        let (instances, created) = no_record();
        let plan = diff(
            &d,
            &seen,
            &Record {
                instances: &instances,
                created_netns: &created,
            },
        );
        assert_eq!(
            plan.host.sysctls,
            vec![SysctlChange {
                key: "net.ipv4.ip_forward".into(),
                from: Some("0\n".into()),
                to: "1".into()
            }]
        );
    }

    #[test]
    fn teardown_removes_only_the_deployments_elements_unless_last() {
        let d = desired(&resolved(), &net());
        let seen = applied(&d);
        let instances = vec!["rockmongo-1".to_string(), "mongodb-1".to_string()];
        let created = BTreeSet::from(["rockmongo-1".to_string(), "mongodb-1".to_string()]);
        let record = Record {
            instances: &instances,
            created_netns: &created,
        };
        let plan = teardown("seed", &seen, &record, false);
        assert_eq!(plan.host.table.remove.len(), 2);
        assert!(!plan.host.table.delete_table);
        assert_eq!(plan.wiring.len(), 2);
        let plan = teardown("seed", &seen, &record, true);
        assert!(plan.host.table.delete_table);
    }

    /// `desired` for the docker runtime, and the kernel and Docker as right after applying it.
    fn docker_applied() -> (Desired, Observed) {
        let mut d = desired(&resolved(), &net());
        for (n, i) in d.instances.iter_mut().enumerate() {
            i.container = Some(ContainerSpec {
                image: format!("img{n}:1"),
                env: vec!["A=1".into()],
            });
        }
        let mut seen = applied(&d);
        for i in &d.instances {
            let spec = i.container.as_ref().unwrap();
            seen.instances.get_mut(&i.id).unwrap().container = Some(ObservedContainer {
                image: Some(spec.image.clone()),
                spec_hash: Some(spec.hash()),
                running: true,
            });
        }
        (d, seen)
    }

    #[test]
    fn containers_change_only_where_their_spec_or_state_changed() {
        let (mut d, mut seen) = docker_applied();
        let (instances, created) = no_record();
        let record = Record {
            instances: &instances,
            created_netns: &created,
        };
        assert!(diff(&d, &seen, &record).is_empty());

        d.instances[0].container.as_mut().unwrap().image = "img0:2".into();
        d.instances[1].container.as_mut().unwrap().env = vec!["A=2".into()];
        let plan = diff(&d, &seen, &record);
        assert_eq!(plan.containers.len(), 2);
        assert!(matches!(
            &plan.containers["rockmongo-1"],
            ContainerAction::Recreate { reason, .. } if reason == "image changed"
        ));
        assert!(matches!(
            &plan.containers["mongodb-1"],
            ContainerAction::Recreate { reason, .. } if reason == "environment changed"
        ));
        // A new container has a new namespace: wired and filled from nothing.
        assert!(matches!(plan.wiring["rockmongo-1"], Wiring::Join { .. }));
        assert!(plan.instances["rockmongo-1"].table.create.is_some());

        let (d, _) = docker_applied();
        seen.instances.get_mut("mongodb-1").unwrap().container = Some(ObservedContainer {
            running: false,
            ..seen.instances["mongodb-1"].container.clone().unwrap()
        });
        seen.instances.remove("rockmongo-1");
        let plan = diff(&d, &seen, &record);
        assert_eq!(plan.containers["mongodb-1"], ContainerAction::Start);
        assert!(matches!(
            plan.containers["rockmongo-1"],
            ContainerAction::Create { .. }
        ));
    }

    #[test]
    fn stopped_containers_of_dropped_instances_are_removed() {
        let (d, mut seen) = docker_applied();
        seen.instances.insert(
            "mongodb-2".into(),
            ObservedInstance {
                container: Some(ObservedContainer::default()),
                ..Default::default()
            },
        );
        let instances = vec!["mongodb-2".to_string()];
        let created = BTreeSet::from(["mongodb-2".to_string()]);
        let record = Record {
            instances: &instances,
            created_netns: &created,
        };
        let plan = diff(&d, &seen, &record);
        assert_eq!(plan.containers["mongodb-2"], ContainerAction::Remove);
        let kept = BTreeSet::new();
        let plan = teardown(
            "seed",
            &seen,
            &Record {
                instances: &instances,
                created_netns: &kept,
            },
            false,
        );
        assert!(plan.containers.is_empty(), "--keep-containers keeps them");
        assert_eq!(
            plan.wiring["mongodb-2"],
            Wiring::Remove {
                delete_netns: false
            }
        );
    }
}
