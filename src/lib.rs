//! gearnat: geard's deployment files compiled into nftables DNAT rules and network-namespace
//! settings, put into the kernel over netlink and kept there by a reconciler.

pub mod deployment;
pub mod link;
pub mod model;
pub mod netfilter;
pub mod netns;
pub mod ruleset;
pub mod runtime;
