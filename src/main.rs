//! Thin entry point: parse the command line and hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    cliniko_gateway::cli::run(cliniko_gateway::cli::Cli::parse())
}
