//! The `cra` binary: parse the configuration, start telemetry, hand over to the library.
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cra::config::Cli::parse();
    cra::telemetry::init(cli.log_format);
    cra::cli::run(cli)
}
