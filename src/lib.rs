//! gearnat: geard's deployment files compiled into nftables DNAT rules and network-namespace
//! settings, put into the kernel over netlink and kept there by a reconciler.

/// `println!` for the commands' output, except that a reader that went away
/// (`gearnat down | head -1`) does not stop the command half way: the rest of its output is
/// dropped, not the rest of its work.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// [`say!`] without the line break.
macro_rules! say_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// [`say!`] on stderr.
macro_rules! warn_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// [`say_part!`] on stderr.
macro_rules! warn_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

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
mod parallel;
pub mod plan;
pub mod reconcile;
mod release;
pub mod report;
pub mod resolve;
pub mod ruleset;
pub mod runtime;
pub mod state;
pub mod table_cache;
pub mod timing;
pub mod watch;

pub use error::Error;
