//! Runs a parsed command line. Errors here carry context for the operator (anyhow).
use anyhow::Result;

use crate::config::{Cli, Command};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => anyhow::bail!("generate is not implemented yet: {args:?}"),
        Command::Train(args) => anyhow::bail!("train is not implemented yet: {args:?}"),
        Command::Serve(cfg) => crate::server::serve(cfg),
        Command::Bench(args) => crate::bench::run(args),
        Command::Migrate(args) => crate::audit::run_migrate_command(&args),
    }
}
