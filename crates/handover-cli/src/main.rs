//! The `handover` command.

mod control;
mod duration;

use clap::Parser;

/// Zero-downtime restarts for servers in any language.
#[derive(Parser)]
#[command(name = "handover", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
