use std::process::ExitCode;

use clap::Parser as _;
use profiler::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if !matches!(cli.command, Command::Serve(_)) {
        restore_sigpipe();
    }
    // `diff` keeps 1 for "regression found", so its errors exit with 2.
    let error_code = if matches!(cli.command, Command::Diff(_)) { 2 } else { 1 };
    match profiler::commands::run(cli.command, cli.verbose > 0) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("profiler: error: {error:#}");
            ExitCode::from(error_code)
        }
    }
}

/// Rust ignores SIGPIPE, so `profiler report | head -1` would see EPIPE as an error; with the
/// default back it ends quietly, as coreutils do. `serve` keeps it ignored: a scraper that hangs up
/// must not kill it.
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to its default, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}
