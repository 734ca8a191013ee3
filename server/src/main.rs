//! `rounds`: the Rounds server binary — the sync server (`serve`), onboarding (`import`),
//! billing a data file (`bill`), the nurse's worklist (`worklist`) and the rule set (`rules`).
//! A thin shell over the `rounds_server` library: logging, then `cli::run`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use rounds_server::cli;

/// jemalloc instead of glibc's malloc: a reconnect storm allocates and frees documents on many
/// blocking threads, and glibc's per-thread arenas kept a third more memory resident for it
/// (BENCHMARKS.md, "Sync at scale").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = cli::config::parse_args(std::env::args_os().collect());
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("ROUNDS_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
    };
    match args.log_format() {
        cli::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init(),
        cli::LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
