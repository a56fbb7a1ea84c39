//! The netns runtime's primitives: each instance gets its own named network namespace,
//! `/run/netns/<instance id>`, joined to a bridge in the host namespace by a veth pair.
//!
//! The bridge holds the pool's first host address (the instances' gateway); an instance's veth
//! is `gn<hash of its id>` on the host side and `eth0` inside. The apply path calls these; each
//! reports whether it changed anything, and `instance_in_place` answers `diff` without writing.

use std::net::Ipv4Addr;

use crate::link;
use crate::netns::{self, Netns};
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
    let host_if = link::host_ifname(id);
    let inner = Ipv4Net {
        addr: address,
        prefix: net.pool.prefix,
    };
    let wired = in_host(host, || {
        link::ensure_veth(
            &host_if,
            &net.bridge,
            &netns,
            INNER_IF,
            inner,
            net.gateway(),
        )
    })?
    .map_err(|source| Error::Wire {
        id: id.to_string(),
        bridge: net.bridge.clone(),
        source,
    })?;
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
    let netns = Netns::open_named(id).map_err(|source| Error::OpenNetns {
        id: id.to_string(),
        source,
    })?;
    let host_if = link::host_ifname(id);
    let inner = Ipv4Net {
        addr: address,
        prefix: net.pool.prefix,
    };
    in_host(host, || {
        link::veth_in_place(
            &host_if,
            &net.bridge,
            &netns,
            INNER_IF,
            inner,
            net.gateway(),
        )
    })?
    .map_err(|source| Error::Wire {
        id: id.to_string(),
        bridge: net.bridge.clone(),
        source,
    })
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
