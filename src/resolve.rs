//! Resolution: a validated deployment plus the reservations becomes concrete instances with
//! addresses, host ports and link targets. Pure: the caller passes in the reservations and the
//! ports local sockets listen on, and saves what comes out.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::model::{Container, Deployment, InstanceNumber, Link, Proto, PublicPort};
use crate::ruleset::Ipv4Net;
use crate::state::{AddressHolder, HostPort, PortHolder, Reservations};

/// Host ports gearnat picks from when a public port has no `external` (geard's range).
pub const HOST_PORTS: RangeInclusive<u16> = 4000..=59999;

/// First virtual address a link target gets: loopback, or geard's NonLocal network.
const LOOPBACK_TARGET: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const NON_LOCAL_TARGET: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

/// A deployment with everything decided.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resolved {
    pub deployment: String,
    pub gateway: Ipv4Addr,
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Instance {
    pub id: String,
    /// The container this is an instance of.
    pub container: String,
    pub image: Option<String>,
    pub address: Ipv4Addr,
    pub mappings: Vec<Mapping>,
    pub links: Vec<LinkTarget>,
}

/// One public port of one instance, on its host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub proto: Proto,
    pub internal: u16,
    pub host_port: u16,
    /// The address linked instances dial to reach this port (geard's `Target`), if linked.
    pub target: Option<SocketAddrV4>,
}

/// What a source instance dials for one linked port, and where it really goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkTarget {
    pub proto: Proto,
    /// The virtual address dialled inside the source (127.0.0.1:27017).
    pub dial: SocketAddrV4,
    /// The host port the target's public port is on (reached at the gateway address).
    pub host_port: u16,
    pub target_instance: String,
    pub target_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "host port {proto}/{port} of {instance} is held by deployment {holder} ({holder_instance}); \
         choose another external port or run `gearnat down` for {holder}"
    )]
    PortHeld {
        proto: Proto,
        port: u16,
        instance: String,
        holder: String,
        holder_instance: String,
    },
    #[error("no free host port left in {}..{}", HOST_PORTS.start(), HOST_PORTS.end())]
    PortsExhausted,
    #[error(
        "instance id {instance} is already used by deployment {holder}; change the IdPrefix or \
         the container name"
    )]
    InstanceHeld { instance: String, holder: String },
    #[error("no free address left in {pool}; choose a larger --subnet")]
    AddressesExhausted { pool: Ipv4Net },
    #[error("no virtual address left for the link from {source_container} to {target}")]
    TargetsExhausted {
        source_container: String,
        target: String,
    },
}

/// The inputs resolution needs from outside.
pub struct Context<'a> {
    pub reservations: &'a Reservations,
    /// Ports local sockets listen on in the host namespace; never picked.
    pub listening: &'a BTreeSet<(Proto, u16)>,
    pub pool: Ipv4Net,
}

/// Resolves `d`; returns the instances, and the reservations as they must be saved when
/// resolving changed them (`None`: the saved ones still hold).
pub fn resolve(d: &Deployment, cx: &Context) -> Result<(Resolved, Option<Changed>), ResolveError> {
    let ids = instance_ids(d);
    let addresses = assign_addresses(d, cx)?;
    let previous = previous_ports(d, cx.reservations, &ids);
    let host_ports = assign_host_ports(d, cx, &ids, &previous)?;
    let reservations = updated_reservations(
        d,
        cx.reservations,
        &ids,
        &addresses,
        (&host_ports, &previous),
    );
    let targets = assign_targets(d)?;
    let gateway = gateway(cx.pool);

    let mut instances = Vec::new();
    for (container, c) in d.containers.iter().enumerate() {
        for n in 1..=c.count {
            let id = d.instance_id(c, n);
            let instance = InstanceNumber { container, n };
            let mappings = c
                .public_ports
                .iter()
                .map(|p| {
                    let key = (instance, p.proto, p.internal);
                    Mapping {
                        proto: p.proto,
                        internal: p.internal,
                        host_port: host_ports[&key],
                        target: targets.get(&key).copied(),
                    }
                })
                .collect();
            let links = link_targets(d, c, &host_ports, &targets);
            instances.push(Instance {
                address: addresses[&id],
                id,
                container: c.name.clone(),
                image: c.image.clone(),
                mappings,
                links,
            });
        }
    }
    Ok((
        Resolved {
            deployment: d.name.clone(),
            gateway,
            instances,
        },
        reservations,
    ))
}

/// The bridge's own address: the pool's first host address.
pub fn gateway(pool: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pool.network()) + 1)
}

/// One public port of one instance: the instance, the protocol and the internal port.
type PortKey = (InstanceNumber, Proto, u16);

/// The id of each instance of `d`.
fn instance_ids(d: &Deployment) -> HashMap<InstanceNumber, String> {
    d.containers
        .iter()
        .enumerate()
        .flat_map(|(container, c)| {
            (1..=c.count).map(move |n| (InstanceNumber { container, n }, d.instance_id(c, n)))
        })
        .collect()
}

/// Addresses: an instance keeps the one it had; a new one gets the lowest free address.
fn assign_addresses(
    d: &Deployment,
    cx: &Context,
) -> Result<BTreeMap<String, Ipv4Addr>, ResolveError> {
    let wanted: Vec<String> = d.instance_ids();
    let wanted_set: HashSet<&String> = wanted.iter().collect();
    let reserved = &cx.reservations.addresses;
    // Instances this deployment no longer has give their addresses back.
    let mut used: HashSet<Ipv4Addr> = reserved
        .iter()
        .filter(|(id, h)| h.deployment != d.name || wanted_set.contains(id))
        .map(|(_, h)| h.address)
        .collect();
    let network = u32::from(cx.pool.network());
    let size = 1u64 << (32 - u32::from(cx.pool.prefix));
    // .0 is the network, .1 the gateway, the last the broadcast address.
    let mut candidates = (2..size.saturating_sub(1)).map(|i| Ipv4Addr::from(network + i as u32));

    let mut out = BTreeMap::new();
    for id in wanted {
        if let Some(h) = reserved.get(&id) {
            if h.deployment != d.name {
                return Err(ResolveError::InstanceHeld {
                    instance: id,
                    holder: h.deployment.clone(),
                });
            }
            if cx.pool.contains(h.address) {
                out.insert(id, h.address);
                continue;
            }
        }
        let address = candidates
            .find(|a| !used.contains(a))
            .ok_or(ResolveError::AddressesExhausted { pool: cx.pool })?;
        used.insert(address);
        out.insert(id, address);
    }
    Ok(out)
}

/// The host port each of `d`'s public ports held before, for its instances that are still in
/// the file. A map, not a scan: a deployment can have MAX_MAPPINGS of them.
fn previous_ports(
    d: &Deployment,
    reservations: &Reservations,
    ids: &HashMap<InstanceNumber, String>,
) -> HashMap<PortKey, u16> {
    let by_id: HashMap<&str, InstanceNumber> =
        ids.iter().map(|(i, id)| (id.as_str(), *i)).collect();
    // Every port of an instance shares its name: looked up once per instance, not per port.
    let mut last: Option<(&Arc<str>, Option<InstanceNumber>)> = None;
    let mut out = HashMap::default();
    for (k, h) in &reservations.ports {
        if *h.deployment != *d.name {
            continue;
        }
        let instance = match last {
            Some((name, n)) if Arc::ptr_eq(name, &h.instance) => n,
            _ => {
                let n = by_id.get(&*h.instance).copied();
                last = Some((&h.instance, n));
                n
            }
        };
        if let Some(instance) = instance {
            out.insert((instance, k.proto, h.internal), k.port);
        }
    }
    out
}

/// Host ports, in geard's order of precedence: an explicit `external`, then a port a geard
/// output file recorded, then the port the instance held before (`previous`), then the lowest
/// free one. The deployment's own reservations count as given back: only other deployments'
/// hold.
fn assign_host_ports(
    d: &Deployment,
    cx: &Context,
    ids: &HashMap<InstanceNumber, String>,
    previous: &HashMap<PortKey, u16>,
) -> Result<HashMap<PortKey, u16>, ResolveError> {
    let pinned: HashMap<PortKey, u16> = d
        .pinned
        .iter()
        .map(|pp| ((pp.instance, pp.proto, pp.internal), pp.external))
        .collect();

    let mut fixed: Vec<(PortKey, u16)> = Vec::new();
    let mut open: Vec<PortKey> = Vec::new();
    for (container, c) in d.containers.iter().enumerate() {
        for n in 1..=c.count {
            for p in &c.public_ports {
                let key = (InstanceNumber { container, n }, p.proto, p.internal);
                let pinned = pinned.get(&key).copied();
                match p.external.or(pinned) {
                    Some(port) => fixed.push((key, port)),
                    None => open.push(key),
                }
            }
        }
    }

    // Ports given out so far in this run, and to which instance.
    let mut taken: HashMap<HostPort, InstanceNumber> =
        HashMap::with_capacity_and_hasher(previous.len(), Default::default());
    let held_elsewhere = |proto, port| {
        (cx.reservations.port_holder(proto, port)).filter(|h| *h.deployment != *d.name)
    };
    let mut out = HashMap::with_capacity_and_hasher(previous.len(), Default::default());
    for (key, port) in &fixed {
        let at = HostPort {
            proto: key.1,
            port: *port,
        };
        let holder = match (held_elsewhere(key.1, *port), taken.get(&at)) {
            (Some(h), _) => Some((h.deployment.to_string(), h.instance.to_string())),
            (None, Some(i)) => Some((d.name.clone(), ids[i].clone())),
            (None, None) => None,
        };
        if let Some((holder, holder_instance)) = holder {
            return Err(ResolveError::PortHeld {
                proto: key.1,
                port: *port,
                instance: ids[&key.0].clone(),
                holder,
                holder_instance,
            });
        }
        taken.insert(at, key.0);
        out.insert(*key, *port);
    }
    let free = |taken: &HashMap<HostPort, InstanceNumber>, proto, port| {
        held_elsewhere(proto, port).is_none() && !taken.contains_key(&HostPort { proto, port })
    };
    // Keep what each open port held before, unless an explicit port took it meanwhile.
    let mut still_open = Vec::new();
    for key in open {
        let kept = previous.get(&key).copied();
        match kept.filter(|port| free(&taken, key.1, *port)) {
            Some(port) => {
                taken.insert(HostPort { proto: key.1, port }, key.0);
                out.insert(key, port);
            }
            None => still_open.push(key),
        }
    }
    // Ports are only ever taken here, so the search for the lowest free one goes on from
    // where the last one ended (one cursor per protocol), not from the start each time.
    let mut cursor: HashMap<Proto, u16> = HashMap::default();
    for key in still_open {
        let from = cursor.get(&key.1).copied().unwrap_or(*HOST_PORTS.start());
        let port = (from..=*HOST_PORTS.end())
            .find(|p| free(&taken, key.1, *p) && !cx.listening.contains(&(key.1, *p)))
            .ok_or(ResolveError::PortsExhausted)?;
        cursor.insert(key.1, port);
        taken.insert(HostPort { proto: key.1, port }, key.0);
        out.insert(key, port);
    }
    Ok(out)
}

/// Reservations a resolve changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub reservations: Reservations,
    /// Nothing is held that was not held before: the change only gives ports or addresses
    /// back (so it may be saved after the kernel stopped using them).
    pub releases_only: bool,
}

/// The reservations with `d`'s replaced by `addresses` and `host_ports`; `None` when that
/// changes nothing (an unchanged re-apply). `previous` is what `d`'s ports held before (see
/// [`previous_ports`]): only the ports that changed are written into the copy, so one more
/// mapping at 10,000 is one insertion, not 10,000.
fn updated_reservations(
    d: &Deployment,
    saved: &Reservations,
    ids: &HashMap<InstanceNumber, String>,
    addresses: &BTreeMap<String, Ipv4Addr>,
    (host_ports, previous): (&HashMap<PortKey, u16>, &HashMap<PortKey, u16>),
) -> Option<Changed> {
    // Every port `d` held, also those of instances no longer in the file.
    let held = (saved.ports.values())
        .filter(|h| *h.deployment == *d.name)
        .count();
    let ports_same = held == host_ports.len() && previous == host_ports;
    // Every address wanted is one `d` holds already.
    let addresses_held = addresses.iter().all(|(id, address)| {
        saved
            .addresses
            .get(id)
            .is_some_and(|h| h.deployment == d.name && h.address == *address)
    });
    let addresses_same = addresses_held
        && (saved.addresses.values())
            .filter(|h| h.deployment == d.name)
            .count()
            == addresses.len();
    if ports_same && addresses_same {
        return None;
    }
    let mut updated = saved.clone();
    let mut holds_more = !addresses_held;
    if !ports_same {
        let at = |key: &PortKey, port: u16| HostPort { proto: key.1, port };
        let wanted: HashSet<HostPort> = (host_ports.iter())
            .map(|(key, port)| at(key, *port))
            .collect();
        (updated.ports).retain(|at, h| *h.deployment != *d.name || wanted.contains(at));
        let deployment: Arc<str> = d.name.as_str().into();
        let instances: HashMap<InstanceNumber, Arc<str>> = (ids.iter())
            .map(|(n, id)| (*n, id.as_str().into()))
            .collect();
        for (key, port) in host_ports {
            if previous.get(key) != Some(port) {
                holds_more = true;
                let holder = PortHolder {
                    deployment: Arc::clone(&deployment),
                    instance: Arc::clone(&instances[&key.0]),
                    internal: key.2,
                };
                updated.ports.insert(at(key, *port), holder);
            }
        }
    }
    if !addresses_same {
        updated.addresses.retain(|_, h| h.deployment != d.name);
        for (id, address) in addresses {
            let holder = AddressHolder {
                deployment: d.name.clone(),
                address: *address,
            };
            updated.addresses.insert(id.clone(), holder);
        }
    }
    Some(Changed {
        reservations: updated,
        releases_only: !holds_more,
    })
}

/// Link targets as geard gave them: every linked port of every target instance gets one virtual
/// address that all sources dial. The first link to a port decides its style; a clash counts the
/// port up (27017, 27018, ...), or with MatchPort the address (127.0.0.1, 127.0.0.2, ...).
fn assign_targets(d: &Deployment) -> Result<HashMap<PortKey, SocketAddrV4>, ResolveError> {
    let mut targets: HashMap<PortKey, SocketAddrV4> = HashMap::default();
    let mut taken: HashSet<(Proto, SocketAddrV4)> = HashSet::default();
    // Where each sequence of candidates (one style, protocol and first address) goes on from:
    // addresses are only ever taken, so the ones before the last found stay taken. Without it,
    // a link to 10,000 instances tries 50 million addresses.
    let mut cursors: HashMap<Sequence, u32> = HashMap::default();
    for source in &d.containers {
        for (link, target, key, port) in linked_target_ports(d, source) {
            if targets.contains_key(&key) {
                continue;
            }
            let addr = free_target(link, port, &taken, &mut cursors).ok_or_else(|| {
                ResolveError::TargetsExhausted {
                    source_container: source.name.clone(),
                    target: target.name.clone(),
                }
            })?;
            taken.insert((port.proto, addr));
            targets.insert(key, addr);
        }
    }
    Ok(targets)
}

/// A sequence of candidate link targets: protocol, first address, and whether it counts the
/// address (MatchPort) or the port up.
type Sequence = (Proto, SocketAddrV4, bool);

fn free_target(
    link: &Link,
    port: &PublicPort,
    taken: &HashSet<(Proto, SocketAddrV4)>,
    cursors: &mut HashMap<Sequence, u32>,
) -> Option<SocketAddrV4> {
    let base_ip = if link.non_local {
        NON_LOCAL_TARGET
    } else {
        LOOPBACK_TARGET
    };
    let base_port = link
        .alias_ports
        .iter()
        .find(|(internal, _)| *internal == port.internal)
        .map_or(port.internal, |(_, alias)| *alias);
    let sequence = (
        port.proto,
        SocketAddrV4::new(base_ip, base_port),
        link.match_port,
    );
    let from = cursors.get(&sequence).copied().unwrap_or(0);
    let (step, addr) = (from..=65535)
        .map_while(|step| {
            if link.match_port {
                let ip = u32::from(base_ip).checked_add(step)?;
                // Stay inside the /8 (loopback) or /24 (NonLocal) network geard counted in.
                let limit = if link.non_local { 254 } else { 0x00ff_fffe };
                (ip & !u32::from(net_mask(link)) <= limit)
                    .then(|| SocketAddrV4::new(Ipv4Addr::from(ip), base_port))
            } else {
                let p = u16::try_from(u32::from(base_port) + step).ok()?;
                Some(SocketAddrV4::new(base_ip, p))
            }
            .map(|a| (step, a))
        })
        .find(|(_, a)| !taken.contains(&(port.proto, *a)))?;
    cursors.insert(sequence, step);
    Some(addr)
}

fn net_mask(link: &Link) -> Ipv4Addr {
    if link.non_local {
        Ipv4Addr::new(255, 255, 255, 0)
    } else {
        Ipv4Addr::new(255, 0, 0, 0)
    }
}

/// The target's public ports a link selects: those named in `ports`, else all.
fn linked_ports<'a>(link: &'a Link, target: &'a Container) -> impl Iterator<Item = &'a PublicPort> {
    target
        .public_ports
        .iter()
        .filter(move |p| link.ports.is_empty() || link.ports.contains(&p.internal))
}

fn link_targets(
    d: &Deployment,
    source: &Container,
    host_ports: &HashMap<PortKey, u16>,
    targets: &HashMap<PortKey, SocketAddrV4>,
) -> Vec<LinkTarget> {
    let mut out: Vec<LinkTarget> = Vec::new();
    for (_, target, key, port) in linked_target_ports(d, source) {
        let (Some(dial), Some(host_port)) = (targets.get(&key), host_ports.get(&key)) else {
            continue;
        };
        if out.iter().any(|l| l.proto == port.proto && l.dial == *dial) {
            continue;
        }
        out.push(LinkTarget {
            proto: port.proto,
            dial: *dial,
            host_port: *host_port,
            target_instance: d.instance_id(target, key.0.n),
            target_port: port.internal,
        });
    }
    out
}

/// Every (link, target container, target instance port, public port) that `source`'s links
/// reach, in file order.
fn linked_target_ports<'a>(
    d: &'a Deployment,
    source: &'a Container,
) -> impl Iterator<Item = (&'a Link, &'a Container, PortKey, &'a PublicPort)> {
    source.links.iter().flat_map(move |link| {
        let target = d
            .containers
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == link.to);
        target.into_iter().flat_map(move |(container, target)| {
            (1..=target.count).flat_map(move |n| {
                let instance = InstanceNumber { container, n };
                linked_ports(link, target)
                    .map(move |port| (link, target, (instance, port.proto, port.internal), port))
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EnvVar, PinnedPort};

    fn port(internal: u16, external: Option<u16>) -> PublicPort {
        PublicPort {
            internal,
            external,
            proto: Proto::Tcp,
        }
    }

    fn link(to: &str) -> Link {
        Link {
            to: to.into(),
            ports: vec![],
            alias_ports: vec![],
            match_port: false,
            non_local: false,
        }
    }

    fn container(name: &str, count: u32, ports: Vec<PublicPort>, links: Vec<Link>) -> Container {
        Container {
            name: name.into(),
            image: Some(format!("{name}:latest")),
            count,
            public_ports: ports,
            links,
            environment: Vec::<EnvVar>::new(),
        }
    }

    /// The seed's deployment: rockmongo (80 on 6060) linked to mongodb (27017, host picks).
    fn seed() -> Deployment {
        Deployment {
            name: "seed".into(),
            id_prefix: String::new(),
            containers: vec![
                container(
                    "rockmongo",
                    1,
                    vec![port(80, Some(6060))],
                    vec![link("mongodb")],
                ),
                container("mongodb", 1, vec![port(27017, None)], vec![]),
            ],
            pinned: vec![],
        }
    }

    fn pool() -> Ipv4Net {
        "10.211.0.0/16".parse().unwrap()
    }

    /// Resolves `d` against `r`; the reservations as they are saved afterwards.
    fn run(d: &Deployment, r: &Reservations) -> Result<(Resolved, Reservations), ResolveError> {
        let listening = BTreeSet::new();
        let cx = Context {
            reservations: r,
            listening: &listening,
            pool: pool(),
        };
        let (resolved, changed) = resolve(d, &cx)?;
        // Whether the change only gives back is what a comparison of the two says.
        if let Some(c) = &changed {
            assert_eq!(c.releases_only, c.reservations.within(r), "{d:?}");
        }
        Ok((
            resolved,
            changed.map_or_else(|| r.clone(), |c| c.reservations),
        ))
    }

    /// The reservations as `resolved` leaves them, made the long way: every one of the
    /// deployment's dropped, then all of `resolved`'s added.
    fn rebuilt(saved: &Reservations, resolved: &Resolved) -> Reservations {
        let mut r = saved.clone();
        r.release(&resolved.deployment);
        for inst in &resolved.instances {
            for m in &inst.mappings {
                let holder = PortHolder {
                    deployment: resolved.deployment.as_str().into(),
                    instance: inst.id.as_str().into(),
                    internal: m.internal,
                };
                let at = HostPort {
                    proto: m.proto,
                    port: m.host_port,
                };
                r.ports.insert(at, holder);
            }
            let holder = AddressHolder {
                deployment: resolved.deployment.clone(),
                address: inst.address,
            };
            r.addresses.insert(inst.id.clone(), holder);
        }
        r
    }

    #[test]
    fn changed_reservations_are_the_ones_rebuilt_whole() {
        let web = |ports: Vec<PublicPort>, count, api: Vec<PublicPort>| Deployment {
            name: "web".into(),
            id_prefix: String::new(),
            containers: vec![
                container("web", count, ports, vec![]),
                container("api", 1, api, vec![]),
            ],
            pinned: vec![],
        };
        let other = Deployment {
            name: "other".into(),
            id_prefix: String::new(),
            containers: vec![container("ssh", 1, vec![port(22, None)], vec![])],
            pinned: vec![],
        };
        let (_, mut saved) = run(&other, &Reservations::default()).unwrap();
        let steps = [
            web(
                vec![port(80, None), port(443, None)],
                2,
                vec![port(8080, Some(6060))],
            ),
            // One port more, one gone, one moved to another host port.
            web(
                vec![port(80, None), port(9090, None)],
                2,
                vec![port(8080, Some(6061))],
            ),
            // An instance gone: its ports and address go with it.
            web(
                vec![port(80, None), port(9090, None)],
                1,
                vec![port(8080, Some(6061))],
            ),
            // Two public ports that trade places in the file keep their host ports.
            web(
                vec![port(9090, None), port(80, None)],
                1,
                vec![port(8080, Some(6061))],
            ),
            // An explicit port taking the host port another public port held.
            web(vec![port(9090, None)], 1, vec![port(8080, Some(4001))]),
        ];
        for d in steps {
            let (resolved, updated) = run(&d, &saved).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(updated, rebuilt(&saved, &resolved), "{:?}", d.containers);
            assert!(updated
                .port_holder(Proto::Tcp, 4000)
                .is_some_and(|h| &*h.deployment == "other"));
            saved = updated;
        }
    }

    #[test]
    fn reservations_are_new_only_when_they_change() {
        let listening = BTreeSet::new();
        let resolve_on = |d: &Deployment, r: &Reservations| {
            let cx = Context {
                reservations: r,
                listening: &listening,
                pool: pool(),
            };
            resolve(d, &cx).unwrap().1.map(|c| c.reservations)
        };
        let first = resolve_on(&seed(), &Reservations::default()).expect("new reservations");
        assert_eq!(resolve_on(&seed(), &first), None, "nothing changed");
        let mut grown = seed();
        grown.containers[1].count = 2;
        let second = resolve_on(&grown, &first).expect("a new instance");
        assert_eq!(second.addresses.len(), 3);
        // Shrinking back gives the new instance's port and address back.
        assert_eq!(resolve_on(&seed(), &second), Some(first));
    }

    #[test]
    fn seed_resolves_as_geard_did() {
        let (resolved, reservations) = run(&seed(), &Reservations::default()).unwrap();
        assert_eq!(resolved.gateway, Ipv4Addr::new(10, 211, 0, 1));
        let [rock, mongo] = &resolved.instances[..] else {
            panic!("two instances")
        };
        assert_eq!(
            (rock.id.as_str(), rock.address),
            ("rockmongo-1", Ipv4Addr::new(10, 211, 0, 2))
        );
        assert_eq!(rock.mappings[0].host_port, 6060);
        assert_eq!(mongo.mappings[0].host_port, 4000);
        assert_eq!(
            mongo.mappings[0].target,
            Some("127.0.0.1:27017".parse().unwrap())
        );
        assert_eq!(
            rock.links,
            vec![LinkTarget {
                proto: Proto::Tcp,
                dial: "127.0.0.1:27017".parse().unwrap(),
                host_port: 4000,
                target_instance: "mongodb-1".into(),
                target_port: 27017,
            }]
        );
        assert_eq!(reservations.ports.len(), 2);
        assert_eq!(reservations.addresses.len(), 2);
    }

    #[test]
    fn ports_and_addresses_are_stable_across_runs() {
        let (first, r1) = run(&seed(), &Reservations::default()).unwrap();
        let (second, r2) = run(&seed(), &r1).unwrap();
        assert_eq!(first, second);
        assert_eq!(r1, r2);
    }

    #[test]
    fn host_ports_skip_reserved_and_listening_ports() {
        let mut r = Reservations::default();
        let other = PortHolder {
            deployment: "other".into(),
            instance: "x-1".into(),
            internal: 1,
        };
        let port = HostPort {
            proto: Proto::Tcp,
            port: 4000,
        };
        r.ports.insert(port, other);
        let listening = BTreeSet::from([(Proto::Tcp, 4001)]);
        let cx = Context {
            reservations: &r,
            listening: &listening,
            pool: pool(),
        };
        let (resolved, _) = resolve(&seed(), &cx).unwrap();
        assert_eq!(resolved.instances[1].mappings[0].host_port, 4002);
    }

    #[test]
    fn an_explicit_port_held_elsewhere_is_refused() {
        let (_, r) = run(&seed(), &Reservations::default()).unwrap();
        let mut other = seed();
        other.name = "other".into();
        other.id_prefix = "o".into();
        let err = run(&other, &r).unwrap_err();
        assert!(
            matches!(err, ResolveError::PortHeld { port: 6060, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("held by deployment seed"));
    }

    #[test]
    fn an_instance_id_held_elsewhere_is_refused() {
        let (_, r) = run(&seed(), &Reservations::default()).unwrap();
        let mut other = seed();
        other.name = "other".into();
        other.containers[0].public_ports[0].external = Some(7070);
        let err = run(&other, &r).unwrap_err();
        assert!(matches!(err, ResolveError::InstanceHeld { .. }), "{err}");
    }

    #[test]
    fn lowering_the_count_releases_ports_and_addresses() {
        let mut d = seed();
        d.containers[1].count = 2;
        let (_, r) = run(&d, &Reservations::default()).unwrap();
        assert!(r.addresses.contains_key("mongodb-2"));
        d.containers[1].count = 1;
        let (resolved, r) = run(&d, &r).unwrap();
        assert!(!r.addresses.contains_key("mongodb-2"));
        assert_eq!(r.ports.len(), 2);
        assert_eq!(resolved.instances.len(), 2);
    }

    #[test]
    fn clashing_targets_count_the_port_up() {
        let mut d = seed();
        d.containers[1].count = 2;
        let (resolved, _) = run(&d, &Reservations::default()).unwrap();
        let dials: Vec<String> = resolved.instances[0]
            .links
            .iter()
            .map(|l| l.dial.to_string())
            .collect();
        assert_eq!(dials, ["127.0.0.1:27017", "127.0.0.1:27018"]);
        let hosts: Vec<u16> = resolved.instances[0]
            .links
            .iter()
            .map(|l| l.host_port)
            .collect();
        assert_eq!(hosts, [4000, 4001]);
    }

    #[test]
    fn match_port_counts_the_address_up_and_non_local_uses_192_168_1() {
        let mut d = seed();
        d.containers[1].count = 2;
        d.containers[0].links[0].match_port = true;
        let (resolved, _) = run(&d, &Reservations::default()).unwrap();
        let dials: Vec<String> = resolved.instances[0]
            .links
            .iter()
            .map(|l| l.dial.to_string())
            .collect();
        assert_eq!(dials, ["127.0.0.1:27017", "127.0.0.2:27017"]);

        d.containers[0].links[0].non_local = true;
        let (resolved, _) = run(&d, &Reservations::default()).unwrap();
        let dials: Vec<String> = resolved.instances[0]
            .links
            .iter()
            .map(|l| l.dial.to_string())
            .collect();
        assert_eq!(dials, ["192.168.1.1:27017", "192.168.1.2:27017"]);
    }

    /// geard's cluster form: every db instance dials every db instance (itself included).
    #[test]
    fn a_self_link_reaches_every_instance_of_the_container() {
        let mut db = container("db", 3, vec![port(27017, None)], vec![link("db")]);
        db.links[0].non_local = true;
        db.links[0].match_port = true;
        let d = Deployment {
            name: "cluster".into(),
            id_prefix: String::new(),
            containers: vec![db],
            pinned: vec![],
        };
        let (resolved, _) = run(&d, &Reservations::default()).unwrap();
        for inst in &resolved.instances {
            let dials: Vec<String> = inst.links.iter().map(|l| l.dial.to_string()).collect();
            assert_eq!(
                dials,
                [
                    "192.168.1.1:27017",
                    "192.168.1.2:27017",
                    "192.168.1.3:27017"
                ]
            );
            let hosts: Vec<u16> = inst.links.iter().map(|l| l.host_port).collect();
            assert_eq!(hosts, [4000, 4001, 4002]);
        }
    }

    #[test]
    fn alias_ports_choose_the_dialled_port() {
        let mut d = seed();
        d.containers[0].links[0].alias_ports = vec![(27017, 1234)];
        let (resolved, _) = run(&d, &Reservations::default()).unwrap();
        assert_eq!(
            resolved.instances[0].links[0].dial.to_string(),
            "127.0.0.1:1234"
        );
    }

    #[test]
    fn pinned_ports_from_a_geard_output_file_are_kept() {
        let mut d = seed();
        d.pinned = vec![PinnedPort {
            instance: InstanceNumber { container: 1, n: 1 },
            internal: 27017,
            proto: Proto::Tcp,
            external: 4321,
        }];
        let (resolved, _) = run(&d, &Reservations::default()).unwrap();
        assert_eq!(resolved.instances[1].mappings[0].host_port, 4321);
    }

    #[test]
    fn an_explicit_port_takes_precedence_over_an_earlier_pick() {
        let (_, r) = run(&seed(), &Reservations::default()).unwrap();
        // rockmongo now wants 4000, which mongodb-1 was given before: mongodb-1 moves.
        let mut d = seed();
        d.containers[0].public_ports[0].external = Some(4000);
        let (resolved, _) = run(&d, &r).unwrap();
        assert_eq!(resolved.instances[0].mappings[0].host_port, 4000);
        assert_eq!(resolved.instances[1].mappings[0].host_port, 4001);
    }
}
