//! The `cra` binary: parse the configuration, hand over to the library (which starts the logs:
//! `cra serve` inside its runtime, where the trace exporter lives).
use clap::Parser;

fn main() -> anyhow::Result<()> {
    cra::cli::run(cra::config::Cli::parse())
}
