//! The errors a gearnat command ends with. Every one exits with status 2; the message is one
//! readable chain, outermost step first.

use std::path::PathBuf;

use crate::{deployment, link, netfilter, netns, resolve, runtime, state};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Deployment(#[from] deployment::DeploymentError),
    #[error("{file}: {source}")]
    Resolve {
        file: String,
        source: resolve::ResolveError,
    },
    #[error("{0}")]
    State(#[from] state::StateError),
    #[error("nftables in namespace {ns}: {source}")]
    Netfilter {
        ns: String,
        source: netfilter::Error,
    },
    #[error("{0}")]
    Netns(#[from] netns::Error),
    #[error("{0}")]
    Link(#[from] link::Error),
    #[error("{0}")]
    Runtime(#[from] runtime::Error),
    #[error(
        "`gearnat {command}` changes or reads the kernel's netfilter state and needs root \
         (CAP_NET_ADMIN and CAP_SYS_ADMIN); run it with sudo"
    )]
    NotPermitted { command: &'static str },
    #[error("no deployment named {name} is applied (see `gearnat status`)")]
    NotDeployed { name: String },
    #[error(
        "deployment {name} runs on the {runtime} runtime; `gearnat down` it before applying it \
         with another"
    )]
    RuntimeChanged { name: String, runtime: String },
    #[error("{0}")]
    Firewall(#[from] crate::firewall::Error),
    #[error("blocking SIGTERM and SIGINT for watch: {}", .0.desc())]
    Signals(nix::errno::Errno),
    #[error("{path}: {message}")]
    Usage { path: PathBuf, message: String },
    #[error("after applying, the kernel does not hold what was planned:\n{}", .0.join("\n"))]
    ReadBack(Vec<String>),
}
