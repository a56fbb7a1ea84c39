//! The command line: arguments, and the exit status each outcome maps to.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::ruleset::Ipv4Net;

/// Exit status: 0 done or in sync, 1 changes pending (`diff`), 2 error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Done,
    Pending,
    Failed,
}

impl From<Status> for ExitCode {
    fn from(s: Status) -> ExitCode {
        ExitCode::from(match s {
            Status::Done => 0,
            Status::Pending => 1,
            Status::Failed => 2,
        })
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "gearnat",
    version,
    about = "geard deployment files compiled into nftables DNAT rules, reconciled over netlink"
)]
pub struct Cli {
    /// Log more to stderr (-v: decisions, -vv: details).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Where host ports, addresses and applied deployments are kept.
    #[arg(long, global = true, value_name = "DIR", default_value = crate::state::DEFAULT_DIR)]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make the kernel match the deployment file: plan, apply one atomic batch per namespace,
    /// read back.
    Apply(DeployArgs),
    /// Show the plan `apply` would carry out; exit 0 in sync, 1 changes pending, 2 error.
    Diff(DeployArgs),
    /// Remove everything a deployment owns, and nothing else.
    Down(DownArgs),
    /// What is installed, per deployment, read from the kernel and the state directory.
    Status(StatusArgs),
    /// Print the rulesets `apply` would load, in nft syntax, one block per namespace (no root
    /// needed).
    Compile(DeployArgs),
    /// Keep applied deployments in place: follow Docker's container events and nftables
    /// changes, and re-reconcile the affected deployments (runs until SIGTERM or SIGINT).
    Watch(WatchArgs),
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The deployment file (geard's JSON format).
    pub file: PathBuf,
    /// The deployment's name; default: the file's stem.
    #[arg(long)]
    pub name: Option<String>,
    /// How instances are run: `docker` runs each one as a Docker container named by its id
    /// (DOCKER_HOST honoured; Podman's compatible socket works), `netns` makes each one a
    /// network namespace /run/netns/<id>, `auto` picks docker when a Docker API answers, else
    /// netns (a deployment applied before keeps its runtime).
    #[arg(long, value_enum, env = "GEARNAT_RUNTIME", default_value_t = Runtime::Auto)]
    pub runtime: Runtime,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// The deployment file whose deployment to remove (or give --name).
    #[arg(required_unless_present = "name")]
    pub file: Option<PathBuf>,
    #[arg(long)]
    pub name: Option<String>,
    /// Docker runtime: leave the deployment's containers running (only their wiring and
    /// tables go).
    #[arg(long)]
    pub keep_containers: bool,
    #[command(flatten)]
    pub network: NetworkArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Also re-reconcile every deployment this often, whatever happened (0: only on events).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub resync: u64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// The bridge instances are joined to in the host namespace.
    #[arg(long, default_value = "gearnat0")]
    pub bridge: String,
    /// The instances' address pool; the bridge takes its first address. The default clashes
    /// with neither Docker (172.17.0.0/16) nor Podman (10.88.0.0/16).
    #[arg(long, default_value = "10.211.0.0/16")]
    pub subnet: Ipv4Net,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// `text` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    Auto,
    Docker,
    Netns,
}
