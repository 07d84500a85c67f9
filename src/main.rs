//! Thin entry point: parse the command line and hand over to the library.

use clap::Parser;

// jemalloc returns freed memory and fragments less than glibc's malloc under many small,
// short-lived allocations (one set per request): measured lower, flatter RSS in benches/soak.sh.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cliniko_gateway::cli::run(cliniko_gateway::cli::Cli::parse())
}
