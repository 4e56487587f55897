//! The `cra` binary: parse the configuration, hand over to the library (which starts the logs:
//! `cra serve` inside its runtime, where the trace exporter lives).
use clap::Parser;

/// mimalloc, as text-embeddings-inference does: a call allocates and frees many small
/// buffers across the runtime's threads, where glibc's allocator spent 5-8% of the server's
/// CPU consolidating and unlinking chunks (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    cra::cli::run(cra::config::Cli::parse())
}
