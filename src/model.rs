//! The validated deployment: what the rest of gearnat works from.
//!
//! Everything here has passed validation (see `deployment`), so nothing past parsing checks the
//! input again: names are unique, ports are in range, links point at ports that exist.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A transport protocol a public port or a link carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const ALL: [Proto; 2] = [Proto::Tcp, Proto::Udp];

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The IP protocol number, as carried in the IPv4 header.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One deployment file, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Deployment {
    /// The deployment's name: the file's stem, or `--name`.
    pub name: String,
    /// Put in front of every instance id (geard's `IdPrefix`).
    pub id_prefix: String,
    pub containers: Vec<Container>,
    /// Host ports a geard output file (its `Instances`) already gave to instances; they are kept.
    pub pinned: Vec<PinnedPort>,
}

/// A container description: `count` instances of one image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Container {
    pub name: String,
    pub image: Option<String>,
    pub count: u32,
    pub public_ports: Vec<PublicPort>,
    pub links: Vec<Link>,
    pub environment: Vec<EnvVar>,
}

/// A port an instance listens on (`internal`) published on a host port (`external`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicPort {
    pub internal: u16,
    /// `None`: the host picks a port from 4000..59999.
    pub external: Option<u16>,
    pub proto: Proto,
}

/// A link from every instance of one container to the public ports of another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Link {
    /// The target container's name.
    pub to: String,
    /// Which of the target's public ports (by internal port) are linked; empty: all of them.
    pub ports: Vec<u16>,
    /// Target internal port -> the port the source dials instead of it.
    pub alias_ports: Vec<(u16, u16)>,
    /// Keep the port and count the address up on a clash (127.0.0.1, 127.0.0.2, ...).
    pub match_port: bool,
    /// Dial 192.168.1.x instead of a loopback address.
    pub non_local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// A host port that geard's output file recorded for one instance's public port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PinnedPort {
    pub instance: InstanceNumber,
    pub internal: u16,
    pub proto: Proto,
    pub external: u16,
}

/// Index of an instance: container index in the file and 1-based instance number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceNumber {
    pub container: usize,
    pub n: u32,
}

impl Deployment {
    /// The instance id geard gave: `IdPrefix + Name + "-" + N`.
    pub fn instance_id(&self, container: &Container, n: u32) -> String {
        format!("{}{}-{}", self.id_prefix, container.name, n)
    }

    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Every instance id of the deployment, in file order.
    pub fn instance_ids(&self) -> Vec<String> {
        self.containers
            .iter()
            .flat_map(|c| (1..=c.count).map(move |n| self.instance_id(c, n)))
            .collect()
    }
}
