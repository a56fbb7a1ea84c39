//! The runtimes instances live in, and the network path they share.
//!
//! `netns`: each instance is its own named network namespace, `/run/netns/<instance id>`.
//! `docker`: each instance is a Docker container named by its id, created without Docker's
//! networking (see `crate::docker`). Either way the instance's namespace is joined to a bridge
//! in the host namespace by a veth pair, with the same tables and sysctls: [`Runtime`] only
//! answers where an instance's namespace is, and makes or removes what holds it.
//!
//! The bridge holds the pool's first host address (the instances' gateway); an instance's veth
//! is `gn<hash of its id>` on the host side and `eth0` inside. The apply path calls these; each
//! reports whether it changed anything, and `instance_in_place` answers `diff` without writing.

use std::net::Ipv4Addr;

use crate::docker::{self, Docker};
use crate::link;
use crate::netns::{self, Netns};
use crate::plan::{ContainerAction, ObservedContainer};
use crate::ruleset::Ipv4Net;

/// The instance's end of its veth pair.
pub const INNER_IF: &str = "eth0";

/// The bridge and address pool instances are wired to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Bridge in the host namespace (default `gearnat0`).
    pub bridge: String,
    /// Instances' addresses (default 10.211.0.0/16); the first host address is the gateway.
    pub pool: Ipv4Net,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            bridge: "gearnat0".to_string(),
            pool: Ipv4Net {
                addr: Ipv4Addr::new(10, 211, 0, 0),
                prefix: 16,
            },
        }
    }
}

impl Network {
    /// The bridge's address and the instances' default gateway: the pool's first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pool.network()).wrapping_add(1))
    }

    /// The gateway with the pool's prefix, as it is put on the bridge.
    pub fn gateway_net(&self) -> Ipv4Net {
        Ipv4Net {
            addr: self.gateway(),
            prefix: self.pool.prefix,
        }
    }
}

/// What [`ensure_instance`] did.
#[derive(Debug)]
pub struct Wired {
    /// The instance's namespace was created by this call.
    pub created_netns: bool,
    /// Anything changed (namespace, veth, address, route, link state).
    pub changed: bool,
    /// The instance's namespace, open.
    pub netns: Netns,
}

/// Where instances live.
#[derive(Debug)]
pub enum Runtime {
    Netns,
    Docker(Docker),
}

/// An instance as its runtime holds it: its namespace (when it has one now) and, for the
/// docker runtime, its container.
#[derive(Debug, Default)]
pub struct Found {
    pub netns: Option<Netns>,
    pub container: Option<ObservedContainer>,
}

impl Runtime {
    /// The name recorded in the deployment record and shown to the user.
    pub fn name(&self) -> &'static str {
        match self {
            Runtime::Netns => "netns",
            Runtime::Docker(_) => "docker",
        }
    }

    pub fn docker(&self) -> Option<&Docker> {
        match self {
            Runtime::Netns => None,
            Runtime::Docker(d) => Some(d),
        }
    }

    /// Where instance `id` is now. Read only.
    pub fn find(&self, id: &str) -> Result<Found, Error> {
        match self {
            Runtime::Netns if netns::exists_named(id) => Ok(Found {
                netns: Some(open_named(id)?),
                container: None,
            }),
            Runtime::Netns => Ok(Found::default()),
            Runtime::Docker(d) => {
                let Some(seen) = d.inspect(id)? else {
                    return Ok(Found::default());
                };
                Ok(Found {
                    netns: seen.netns,
                    container: Some(ObservedContainer {
                        image: seen.image,
                        spec_hash: seen.spec_hash,
                        running: seen.running,
                    }),
                })
            }
        }
    }

    /// Instance `id`'s namespace; an error when it has none now.
    pub fn netns(&self, id: &str) -> Result<Netns, Error> {
        self.find(id)?.netns.ok_or_else(|| Error::NoNamespace {
            id: id.to_string(),
            runtime: self.name(),
        })
    }

    /// Carries out a container action (docker runtime; the netns runtime has none).
    pub fn container(
        &self,
        deployment: &str,
        id: &str,
        action: &ContainerAction,
    ) -> Result<(), Error> {
        let Runtime::Docker(d) = self else {
            return Ok(());
        };
        match action {
            ContainerAction::Create { spec } => d.create_and_start(deployment, id, spec)?,
            ContainerAction::Recreate { spec, reason } => {
                log::info!("recreating container {id} ({reason})");
                d.remove(id)?;
                d.create_and_start(deployment, id, spec)?;
            }
            ContainerAction::Start => d.start(id)?,
            ContainerAction::Remove => {
                d.remove(id)?;
            }
        }
        Ok(())
    }

    /// Ensures instance `id` exists (netns: its namespace is created if missing; docker: its
    /// container must be running) and is wired to the bridge in `host` with `address`.
    pub fn ensure_instance(
        &self,
        host: &Netns,
        net: &Network,
        id: &str,
        address: Ipv4Addr,
    ) -> Result<Wired, Error> {
        match self {
            Runtime::Netns => ensure_instance(host, net, id, address),
            Runtime::Docker(_) => {
                check_address(net, id, address)?;
                let netns = self.netns(id)?;
                let changed = wire(host, net, id, address, &netns)?;
                Ok(Wired {
                    created_netns: false,
                    changed,
                    netns,
                })
            }
        }
    }

    /// Unwires the instances that go; for those marked `true`, also removes what holds them
    /// (netns: the namespace; docker: the container, all stopping side by side).
    pub fn remove_instances(
        &self,
        host: &Netns,
        net: &Network,
        gone: &[(&str, bool)],
    ) -> Result<(), Error> {
        let docker = self.docker();
        // Side by side: deleting a veth pair waits for the kernel to let go of the device,
        // and ten of them at once take about a quarter of the time they take in turn.
        let removed = crate::parallel::map(gone, |(id, delete)| {
            remove_instance(host, net, id, *delete && docker.is_none())
        });
        removed.into_iter().collect::<Result<(), Error>>()?;
        if let Some(d) = docker {
            let ids: Vec<&str> = gone.iter().filter(|g| g.1).map(|g| g.0).collect();
            for id in d.remove_many(&ids)? {
                log::info!("removed container {id}");
            }
        }
        Ok(())
    }
}

fn open_named(id: &str) -> Result<Netns, Error> {
    Netns::open_named(id).map_err(|source| Error::OpenNetns {
        id: id.to_string(),
        source,
    })
}

/// A failing step of the netns runtime, with the instance or bridge it failed on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("address {address} of instance {id} is outside the pool {pool} or its gateway")]
    AddressOutsidePool {
        id: String,
        address: Ipv4Addr,
        pool: Ipv4Net,
    },
    #[error("creating the network namespace of instance {id}: {source}")]
    CreateNetns { id: String, source: netns::Error },
    #[error("opening the network namespace of instance {id}: {source}")]
    OpenNetns { id: String, source: netns::Error },
    #[error("deleting the network namespace of instance {id}: {source}")]
    DeleteNetns { id: String, source: netns::Error },
    #[error("entering the host namespace {host}: {source}")]
    EnterHost { host: String, source: netns::Error },
    #[error("setting up bridge {bridge}: {source}")]
    Bridge { bridge: String, source: link::Error },
    #[error("wiring instance {id} to bridge {bridge}: {source}")]
    Wire {
        id: String,
        bridge: String,
        source: link::Error,
    },
    #[error("unwiring instance {id}: {source}")]
    Unwire { id: String, source: link::Error },
    #[error("instance {id} has no network namespace now ({runtime} runtime: not running?)")]
    NoNamespace { id: String, runtime: &'static str },
    #[error(transparent)]
    Docker(#[from] docker::Error),
}

/// Ensures bridge `net.bridge` exists in `host`, up, with the gateway address.
/// Returns whether anything changed.
pub fn ensure_bridge(host: &Netns, net: &Network) -> Result<bool, Error> {
    in_host(host, || link::ensure_bridge(&net.bridge, net.gateway_net()))?.map_err(|source| {
        Error::Bridge {
            bridge: net.bridge.clone(),
            source,
        }
    })
}

/// Removes the bridge (once no deployment is left on it). A missing bridge is no error.
pub fn remove_bridge(host: &Netns, net: &Network) -> Result<bool, Error> {
    in_host(host, || link::delete_link(&net.bridge))?.map_err(|source| Error::Bridge {
        bridge: net.bridge.clone(),
        source,
    })
}

/// Is the bridge in place (true: [`ensure_bridge`] would change nothing)? Only reads.
pub fn bridge_in_place(host: &Netns, net: &Network) -> Result<bool, Error> {
    in_host(host, || {
        link::bridge_in_place(&net.bridge, net.gateway_net())
    })?
    .map_err(|source| Error::Bridge {
        bridge: net.bridge.clone(),
        source,
    })
}

/// Ensures instance `id`'s namespace `/run/netns/<id>` exists (created if missing) and is wired
/// to the bridge in `host` with `address`. The bridge must exist (see [`ensure_bridge`]).
pub fn ensure_instance(
    host: &Netns,
    net: &Network,
    id: &str,
    address: Ipv4Addr,
) -> Result<Wired, Error> {
    check_address(net, id, address)?;
    let (netns, created_netns) = if netns::exists_named(id) {
        let ns = Netns::open_named(id).map_err(|source| Error::OpenNetns {
            id: id.to_string(),
            source,
        })?;
        (ns, false)
    } else {
        log::info!("creating network namespace {id}");
        let ns = netns::create_named(id).map_err(|source| Error::CreateNetns {
            id: id.to_string(),
            source,
        })?;
        (ns, true)
    };
    let wired = wire(host, net, id, address, &netns)?;
    Ok(Wired {
        created_netns,
        changed: created_netns || wired,
        netns,
    })
}

/// Is the instance in place (true: [`ensure_instance`] would change nothing)? Only reads; a
/// missing namespace, veth or bridge is reported as false.
pub fn instance_in_place(
    host: &Netns,
    net: &Network,
    id: &str,
    address: Ipv4Addr,
) -> Result<bool, Error> {
    check_address(net, id, address)?;
    if !netns::exists_named(id) {
        return Ok(false);
    }
    wired_in_place(host, net, id, address, &open_named(id)?)
}

/// Instance `id`'s veth: its host end's name, and the address (with the pool's prefix) of its
/// end inside the instance.
fn veth_ends(net: &Network, id: &str, address: Ipv4Addr) -> (String, Ipv4Net) {
    let inner = Ipv4Net {
        addr: address,
        prefix: net.pool.prefix,
    };
    (link::host_ifname(id), inner)
}

/// Joins `netns` to the bridge in `host` by instance `id`'s veth pair, with `address`.
fn wire(
    host: &Netns,
    net: &Network,
    id: &str,
    address: Ipv4Addr,
    netns: &Netns,
) -> Result<bool, Error> {
    let (host_if, inner) = veth_ends(net, id, address);
    let wire_err = |source| Error::Wire {
        id: id.to_string(),
        bridge: net.bridge.clone(),
        source,
    };
    in_host(host, || {
        let changed =
            link::ensure_veth(&host_if, &net.bridge, netns, INNER_IF, inner, net.gateway())?;
        // A new veth has a new MAC behind the instance's address (see forget_neighbour).
        if changed {
            link::forget_neighbour(address)?;
        }
        Ok(changed)
    })?
    .map_err(wire_err)
}

fn wired_in_place(
    host: &Netns,
    net: &Network,
    id: &str,
    address: Ipv4Addr,
    netns: &Netns,
) -> Result<bool, Error> {
    let (host_if, inner) = veth_ends(net, id, address);
    in_host(host, || {
        link::veth_in_place(&host_if, &net.bridge, netns, INNER_IF, inner, net.gateway())
    })?
    .map_err(|source| Error::Wire {
        id: id.to_string(),
        bridge: net.bridge.clone(),
        source,
    })
}

/// Which of `instances` (id, address, namespace) have the host end of their veth pair as
/// [`Runtime::ensure_instance`] leaves it, all read over one netlink connection of the host.
/// The inner ends are checked from inside each instance ([`inner_end_in_place`]).
pub fn host_ends_in_place(
    host: &Netns,
    net: &Network,
    instances: &[(&str, Ipv4Addr, &Netns)],
) -> Result<Vec<bool>, Error> {
    let mut ends = Vec::with_capacity(instances.len());
    for (id, address, _) in instances {
        check_address(net, id, *address)?;
        ends.push(veth_ends(net, id, *address));
    }
    let veths: Vec<link::Veth> = (instances.iter().zip(&ends))
        .map(|((_, _, ns), (host_if, inner))| veth_pair(net, host_if, ns, *inner))
        .collect();
    in_host(host, || link::veth_host_ends_in_place(&veths))?.map_err(|source| Error::Wire {
        id: instances.iter().map(|i| i.0).collect::<Vec<_>>().join(", "),
        bridge: net.bridge.clone(),
        source,
    })
}

/// Is the inner end of instance `id`'s veth pair (in `ns`, with `address`) as
/// [`Runtime::ensure_instance`] leaves it? Call on a thread inside `ns`.
pub fn inner_end_in_place(
    net: &Network,
    id: &str,
    address: Ipv4Addr,
    ns: &Netns,
) -> Result<bool, Error> {
    check_address(net, id, address)?;
    let (host_if, inner) = veth_ends(net, id, address);
    veth_pair(net, &host_if, ns, inner)
        .inner_in_place()
        .map_err(|source| Error::Wire {
            id: id.to_string(),
            bridge: net.bridge.clone(),
            source,
        })
}

/// The veth pair whose ends are `host_if` and `inner` ([`veth_ends`]), into `ns`.
fn veth_pair<'a>(
    net: &'a Network,
    host_if: &'a str,
    ns: &'a Netns,
    inner: Ipv4Net,
) -> link::Veth<'a> {
    link::Veth {
        host_if,
        bridge: &net.bridge,
        instance: ns,
        inner_if: INNER_IF,
        address: inner,
        gateway: net.gateway(),
    }
}

/// Removes the host end of instance `id`'s veth (the kernel removes the inner end with it), and
/// deletes its namespace only if `delete_netns`. Missing pieces are no error.
pub fn remove_instance(
    host: &Netns,
    net: &Network,
    id: &str,
    delete_netns: bool,
) -> Result<(), Error> {
    let host_if = link::host_ifname(id);
    let removed =
        in_host(host, || link::delete_link(&host_if))?.map_err(|source| Error::Unwire {
            id: id.to_string(),
            source,
        })?;
    if removed {
        log::info!(
            "unwired instance {id} from bridge {} ({host_if})",
            net.bridge
        );
    }
    if delete_netns
        && netns::delete_named(id).map_err(|source| Error::DeleteNetns {
            id: id.to_string(),
            source,
        })?
    {
        log::info!("deleted network namespace {id}");
    }
    Ok(())
}

fn in_host<T: Send>(host: &Netns, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    netns::run_in(host, f).map_err(|source| Error::EnterHost {
        host: host.name().to_string(),
        source,
    })
}

/// The allocator hands out pool addresses; one outside the pool, or the gateway itself, would
/// leave the instance unreachable without any error from the kernel.
fn check_address(net: &Network, id: &str, address: Ipv4Addr) -> Result<(), Error> {
    if net.pool.contains(address) && address != net.gateway() {
        return Ok(());
    }
    Err(Error::AddressOutsidePool {
        id: id.to_string(),
        address,
        pool: net.pool,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_network_and_gateway() {
        let net = Network::default();
        assert_eq!(net.bridge, "gearnat0");
        assert_eq!(net.pool.to_string(), "10.211.0.0/16");
        assert_eq!(net.gateway(), Ipv4Addr::new(10, 211, 0, 1));
        assert_eq!(net.gateway_net(), "10.211.0.1/16".parse().unwrap());
        let odd = Network {
            pool: "192.168.7.77/24".parse().unwrap(),
            ..Network::default()
        };
        assert_eq!(odd.gateway(), Ipv4Addr::new(192, 168, 7, 1));
    }

    #[test]
    fn addresses_must_be_in_the_pool_and_not_the_gateway() {
        let net = Network::default();
        assert!(check_address(&net, "a-1", Ipv4Addr::new(10, 211, 3, 4)).is_ok());
        assert!(check_address(&net, "a-1", Ipv4Addr::new(10, 211, 0, 1)).is_err());
        assert!(check_address(&net, "a-1", Ipv4Addr::new(10, 212, 0, 2)).is_err());
    }
}
