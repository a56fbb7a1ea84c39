//! gearnat's nftables table over netlink: commit changes in one batch, dump it back.
//!
//! Everything works in the calling thread's network namespace: run these on a thread that has
//! entered the namespace (see `netns`), never on a pooled async worker.
//!
//! - [`commit`] turns a [`TableChange`](crate::ruleset::TableChange) into one nf_tables batch
//!   (all or nothing) and sends it in one `sendmsg`; every message asks for an acknowledgement,
//!   so a failure names the object the kernel rejected, down to the element.
//! - [`dump`] reads the table, its maps and their elements back with nf_tables' own GET
//!   requests (the table and maps parsed by libnftnl, the elements straight from the messages);
//!   it never runs `nft`. [`snapshot`] also returns the ruleset generation it read at, on which
//!   [`commit_on`] makes a batch conditional.
//! - [`render`] writes the same table in nft syntax.

mod batch;
mod conntrack;
mod dump;
mod monitor;
mod netlink;
mod program;
mod render;
mod sys;
mod udata;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;

pub use batch::{commit, commit_on};
pub use conntrack::{delete_flows, Flow};
pub use dump::{dump, forward_chains, generation, next_generation, snapshot, ForwardChain};
pub use monitor::{Monitor, Removal};
pub use render::render;
pub use udata::COMMENT_MAX_LEN;

use crate::ruleset::Element;

/// An errno the kernel answered with, shown as its description ("File exists").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelError(pub i32);

impl KernelError {
    /// The errno, e.g. `libc::EEXIST`.
    pub fn raw(self) -> i32 {
        self.0
    }
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(nix::errno::Errno::from_raw(self.0).desc())
    }
}

impl std::error::Error for KernelError {}

/// What failed, on which object, and why. Each message holds its cause (the errno text), so
/// the error has no separate source to print again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a netfilter netlink socket: {0}")]
    Socket(io::Error),
    #[error("raising the netlink socket buffers for a batch of {bytes} bytes: {error}")]
    SocketBuffers { bytes: usize, error: io::Error },
    #[error("comment {comment:?} of element {element} is longer than {max} bytes or holds a NUL")]
    Comment {
        element: String,
        comment: String,
        max: usize,
    },
    #[error(
        "comment {0:?} of the table is longer than {max} bytes or holds a NUL",
        max = COMMENT_MAX_LEN
    )]
    TableComment(String),
    #[error("sending a batch of {bytes} bytes: {error}")]
    Send { bytes: usize, error: io::Error },
    #[error("receiving the kernel's answer: {0}")]
    Receive(io::Error),
    #[error("the kernel refused the batch: {0}")]
    Batch(KernelError),
    #[error("deleting table ip {table}: {errno}", table = crate::ruleset::TABLE)]
    DeleteTable { errno: KernelError },
    #[error("creating table ip {table}: {errno}", table = crate::ruleset::TABLE)]
    CreateTable { errno: KernelError },
    #[error("creating map {map}: {errno}")]
    CreateMap {
        map: &'static str,
        errno: KernelError,
    },
    #[error("creating chain {chain}: {errno}")]
    CreateChain {
        chain: &'static str,
        errno: KernelError,
    },
    #[error("adding rule {number} of chain {chain}: {errno}")]
    AddRule {
        chain: &'static str,
        number: usize,
        errno: KernelError,
    },
    /// `element` names the element when the kernel pointed at it, else the message's elements.
    #[error("removing element {element}: {errno}")]
    RemoveElement { element: String, errno: KernelError },
    #[error("adding element {element}: {errno}")]
    AddElement { element: String, errno: KernelError },
    #[error("the kernel answered {answered} of the batch's {sent} messages and reported no error")]
    Unanswered { sent: usize, answered: usize },
    #[error("reading the ruleset generation: {0}")]
    ReadGeneration(KernelError),
    #[error("reading table ip {table}: {0}", table = crate::ruleset::TABLE)]
    ReadTable(KernelError),
    #[error("listing the maps of table ip {table}: {0}", table = crate::ruleset::TABLE)]
    ListMaps(KernelError),
    #[error("reading the elements of map {map}: {errno}")]
    ReadElements { map: String, errno: KernelError },
    #[error("the kernel sent a {what} message libnftnl cannot parse")]
    Parse { what: &'static str },
    #[error("listing the chains of all tables: {0}")]
    ListChains(KernelError),
    #[error("listing the rules of all tables: {0}")]
    ListRules(KernelError),
    #[error("listing conntrack entries: {0}")]
    DumpFlows(KernelError),
    #[error("deleting conntrack entry {flow}: {errno}")]
    DeleteFlow { flow: String, errno: KernelError },
    #[error(
        "the ruleset kept changing while table ip {table} was read ({0} attempts)",
        table = crate::ruleset::TABLE
    )]
    Unstable(u32),
}

impl Error {
    /// The errno the kernel answered with, when it refused something (as opposed to a failure
    /// of the socket or of gearnat's own checks): e.g. ENOENT when the table vanished.
    pub fn kernel_error(&self) -> Option<KernelError> {
        match self {
            Error::Batch(errno)
            | Error::ReadGeneration(errno)
            | Error::ReadTable(errno)
            | Error::ListMaps(errno)
            | Error::DeleteTable { errno }
            | Error::CreateTable { errno }
            | Error::CreateMap { errno, .. }
            | Error::CreateChain { errno, .. }
            | Error::AddRule { errno, .. }
            | Error::RemoveElement { errno, .. }
            | Error::AddElement { errno, .. }
            | Error::ReadElements { errno, .. }
            | Error::ListChains(errno)
            | Error::ListRules(errno)
            | Error::DumpFlows(errno)
            | Error::DeleteFlow { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// How an element is named in errors: map, key and owner, in nft's notation.
pub(crate) fn describe(element: &Element) -> String {
    let key = match element {
        Element::Port { host_port, .. } => host_port.to_string(),
        Element::Link { dial, .. } => format!("{} . {}", dial.ip(), dial.port()),
    };
    format!(
        "{} {key} ({})",
        program::map_name(element),
        element.owner().comment()
    )
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::model::Proto;
    use crate::ruleset::Owner;

    #[test]
    fn generations_count_up_past_zero() {
        assert_eq!(next_generation(41), 42);
        assert_eq!(next_generation(u32::MAX), 1);
    }

    #[test]
    fn errors_name_the_element_and_the_errno() {
        let element = Element::Link {
            proto: Proto::Udp,
            dial: "127.0.0.2:53".parse().unwrap(),
            via: "10.211.0.1:4053".parse().unwrap(),
            owner: Owner {
                deployment: "seed".into(),
                instance: "dns-1".into(),
            },
        };
        let error = Error::AddElement {
            element: describe(&element),
            errno: KernelError(17),
        };
        assert_eq!(
            error.to_string(),
            "adding element udp_links 127.0.0.2 . 53 (gearnat:seed/dns-1): File exists"
        );
    }
}
