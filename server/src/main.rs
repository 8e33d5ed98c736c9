//! `communesync`: the provincial server and operator CLI.
//!
//! `communesync demo` runs the offline-intake demo on a local encrypted store.

mod demo;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "communesync",
    version,
    about = "communesync: offline-first records for commune public administration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Offline intake on two tablets, queries, search, a concurrent edit and its resolution.
    Demo(demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(&args),
    }
}
