//! The `l2d` binary: parse the command line, set up logging, run the command.

use clap::Parser;

/// mimalloc: per-thread heaps without the cross-thread lock traffic glibc's malloc showed in the
/// scheduler's profile (tokio moves tasks, and their allocations, between worker threads).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = l2d::cli::Cli::parse();
    // Logs go to stderr; RUST_LOG overrides the default level.
    let default_level = match cli.command {
        l2d::cli::Command::Ask(_)
        | l2d::cli::Command::Health(_)
        | l2d::cli::Command::Pool { .. }
        | l2d::cli::Command::Score(_)
        | l2d::cli::Command::ExpertsReport(_)
        | l2d::cli::Command::Label(_)
        | l2d::cli::Command::Train(_)
        | l2d::cli::Command::Cv(_)
        | l2d::cli::Command::Eval(_)
        | l2d::cli::Command::Demo(_)
        | l2d::cli::Command::Load(_)
        | l2d::cli::Command::Bench(_)
        | l2d::cli::Command::Simulate(_) => "warn",
        _ => "info",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // L2D_LOG_FORMAT=json: one flat JSON object per line (for log collectors), the fatal error
    // included; see l2d::logs.
    let json = l2d::logs::json_chosen();
    if json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(l2d::logs::FlatJson)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
    }
    match l2d::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if json => {
            eprintln!("{}", l2d::logs::error_line(&format!("{e:#}")));
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("l2d: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
