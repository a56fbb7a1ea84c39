//! gearnat: geard's deployment files compiled into nftables DNAT rules and network-namespace
//! settings, put into the kernel over netlink and kept there by a reconciler.

pub mod cli;
pub mod coexist;
pub mod commands;
pub mod deployment;
pub mod docker;
mod error;
pub mod firewall;
pub mod geard;
pub mod link;
pub mod model;
pub mod netfilter;
pub mod netns;
pub mod plan;
pub mod reconcile;
pub mod report;
pub mod resolve;
pub mod ruleset;
pub mod runtime;
pub mod state;
pub mod timing;
pub mod watch;

pub use error::Error;
