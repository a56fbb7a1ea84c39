use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use gearnat::cli::{Cli, Command, Status};
use gearnat::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Watch(_)) {
        tune_malloc_for_one_run();
    }
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format_timestamp(None)
        .init();
    let result = match &cli.command {
        Command::Apply(args) => commands::apply(&cli.state_dir, args),
        Command::Diff(args) => commands::diff(&cli.state_dir, args),
        Command::Down(args) => commands::down(&cli.state_dir, args),
        Command::Status(args) => commands::status(&cli.state_dir, &args.output, &args.network),
        Command::Compile(args) => commands::compile(&cli.state_dir, args),
        Command::Watch(args) => gearnat::watch::watch(&cli.state_dir, args),
    };
    match result {
        Ok(status) => status.into(),
        Err(e) => {
            // Not eprintln!: a closed stderr must not turn an error into a panic.
            let _ = writeln!(std::io::stderr(), "gearnat: {e}");
            Status::Failed.into()
        }
    }
}

/// A command that runs once builds and drops structures of tens of thousands of entries (the
/// file's tree, the reservations, the tables) and buffers of megabytes (geard's output file,
/// the batch). glibc's defaults give each large buffer pages of its own and hand freed memory
/// back at once, so the next structure faults in fresh pages again: at 10,000 mappings about
/// 2 ms of an apply's 25 ms of CPU. Here large buffers come from the heap, which grows in
/// steps of 16 MiB and keeps what was freed until the process exits. Peak memory stays what
/// was used (pages are counted once touched). Not for `watch`, which runs for days.
fn tune_malloc_for_one_run() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets the allocator's parameters, before any other thread exists;
    // a value glibc refuses leaves its default.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
