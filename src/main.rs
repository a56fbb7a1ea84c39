use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use gearnat::cli::{Cli, Command, Status};
use gearnat::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
