//! The `cra` binary: parse the configuration, hand over to the library (which starts the logs:
//! `cra serve` inside its runtime, where the trace exporter lives).
use clap::Parser;

/// mimalloc, as text-embeddings-inference does: a call allocates and frees many small
/// buffers across the runtime's threads, and glibc's malloc and free took about a tenth of the
/// server's CPU in its profiles (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    cra::cli::run(cra::config::Cli::parse())
}
