//! What gearnat's table holds in one network namespace, as plain data.
//!
//! The planner produces these, the netfilter layer writes and dumps them, and `compile` renders
//! them in nft syntax. Each namespace has one table, `ip gearnat`, whose fixed part (maps,
//! chains, rules) is described by a [`Layout`] and whose variable part is a set of map
//! [`Element`]s, each carrying its [`Owner`] in its comment.

use rustc_hash::FxHashSet as HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use crate::model::Proto;

/// Name of gearnat's table in every namespace it manages (family `ip`).
pub const TABLE: &str = "gearnat";

/// The fixed part of gearnat's table in one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// The host: public ports looked up in `tcp_ports` / `udp_ports` maps
    /// (`inet_service : ipv4_addr . inet_service`), DNAT in prerouting and output for local
    /// destinations, masquerade of loopback-sourced and hairpin traffic within `pool`, and a
    /// forward filter that lets only DNATed traffic from outside into `pool`.
    Host { pool: Ipv4Net },
    /// An instance with links: `tcp_links` / `udp_links` maps
    /// (`ipv4_addr . inet_service : ipv4_addr . inet_service`), DNAT in output, masquerade of
    /// loopback-sourced traffic that leaves through another interface.
    Instance,
}

impl Layout {
    /// Revision of the table's shape; bumped whenever chains, rules or maps change, so that an
    /// older table is replaced as a whole (atomically, in the same batch).
    pub const REVISION: u32 = 4;

    /// The table comment that identifies this layout in the kernel.
    pub fn comment(&self) -> String {
        match self {
            Layout::Host { pool } => format!("gearnat r{} host pool {pool}", Self::REVISION),
            Layout::Instance => format!("gearnat r{} instance", Self::REVISION),
        }
    }

    /// The map holding this layout's elements for `proto`.
    pub fn map_name(&self, proto: Proto) -> &'static str {
        match (self, proto) {
            (Layout::Host { .. }, Proto::Tcp) => "tcp_ports",
            (Layout::Host { .. }, Proto::Udp) => "udp_ports",
            (Layout::Instance, Proto::Tcp) => "tcp_links",
            (Layout::Instance, Proto::Udp) => "udp_links",
        }
    }
}

/// An IPv4 network, such as the instances' address pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0),
        )
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.mask()))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.mask()) == u32::from(self.network())
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl std::str::FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} has no /prefix"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is no IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{prefix:?} is no prefix length (0..32)"))?;
        Ok(Ipv4Net { addr, prefix })
    }
}

/// Who an element belongs to: a deployment and one of its instances.
///
/// Written into the element's comment as `gearnat:<deployment>/<instance>`; deployment names and
/// instance ids never contain `/`, so the comment parses back unambiguously. The names are
/// shared: all the elements of one instance (up to thousands) point at the same two strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    pub deployment: Arc<str>,
    pub instance: Arc<str>,
}

impl Owner {
    const PREFIX: &'static str = "gearnat:";

    pub fn new(deployment: &str, instance: &str) -> Owner {
        Owner {
            deployment: deployment.into(),
            instance: instance.into(),
        }
    }

    pub fn comment(&self) -> String {
        format!("{}{}/{}", Self::PREFIX, self.deployment, self.instance)
    }

    /// Reads an element comment back; `None` for comments gearnat did not write.
    pub fn from_comment(comment: &str) -> Option<Owner> {
        let rest = comment.strip_prefix(Self::PREFIX)?;
        let (deployment, instance) = rest.split_once('/')?;
        if deployment.is_empty() || instance.is_empty() || instance.contains('/') {
            return None;
        }
        Some(Owner::new(deployment, instance))
    }
}

/// One map element in gearnat's table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// Host: `proto dport host_port` is DNATed to `target` (an instance's address and port).
    Port {
        proto: Proto,
        host_port: u16,
        target: SocketAddrV4,
        owner: Owner,
    },
    /// Instance: traffic to `dial` (e.g. 127.0.0.1:27017) is DNATed to `via` (host:4000).
    Link {
        proto: Proto,
        dial: SocketAddrV4,
        via: SocketAddrV4,
        owner: Owner,
    },
}

impl Element {
    pub fn owner(&self) -> &Owner {
        match self {
            Element::Port { owner, .. } | Element::Link { owner, .. } => owner,
        }
    }

    pub fn proto(&self) -> Proto {
        match self {
            Element::Port { proto, .. } | Element::Link { proto, .. } => *proto,
        }
    }
}

/// gearnat's table in one namespace as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActualTable {
    /// The table's comment (identifies the [`Layout`]); `None` when it has none.
    pub comment: Option<String>,
    /// Elements of gearnat's maps whose comment names an owner.
    pub elements: Vec<Element>,
    /// Elements of gearnat's maps without an owner comment (written by hand); reported, and
    /// removed only when the table is replaced.
    pub unowned: usize,
}

impl ActualTable {
    /// The table `before` becomes when `change` is committed on it as planned.
    pub fn after(before: Option<&ActualTable>, change: &TableChange) -> Option<ActualTable> {
        let mut table = before.filter(|_| !change.delete_table).cloned();
        if let Some(layout) = &change.create {
            table = Some(ActualTable {
                comment: Some(layout.comment()),
                ..ActualTable::default()
            });
        }
        let mut table = table?;
        let removed: HashSet<&Element> = change.remove.iter().collect();
        table.elements.retain(|e| !removed.contains(e));
        table.elements.extend(change.add.iter().cloned());
        table.elements.sort();
        Some(table)
    }
}

/// What one atomic batch does to gearnat's table in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableChange {
    /// Delete the whole table first (a stale layout, or `down` of its last owner).
    pub delete_table: bool,
    /// Create the table with this layout (after a delete, or where none exists).
    pub create: Option<Layout>,
    pub remove: Vec<Element>,
    pub add: Vec<Element>,
}

impl TableChange {
    pub fn is_empty(&self) -> bool {
        !self.delete_table && self.create.is_none() && self.remove.is_empty() && self.add.is_empty()
    }
}
