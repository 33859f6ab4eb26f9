use std::process::ExitCode;

use clap::Parser;
use mqdb::app::{self, AppError};
use mqdb::cli::{Cli, Command, DlqCommand};
use mqdb::dlq_commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo tells its own story on stdout; its logs are for when something goes wrong.
    let quiet_demo = matches!(cli.command, Command::Demo { .. }) && cli.verbose == 0;
    mqdb::logging::init(cli.log_format, cli.verbose, cli.quiet, quiet_demo);
    // One process-wide TLS provider, chosen here so no dependency picks another.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Command::Demo { dir } = &cli.command {
        return finish(block_on(mqdb::demo::run(dir.clone())));
    }

    let config = match mqdb::config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    finish(block_on(async {
        match cli.command {
            Command::Demo { .. } => unreachable!("handled above"),
            Command::Run => app::run(config).await,
            Command::Health => mqdb::http::probe(&config).await,
            Command::Status { json } => mqdb::status::status(config, json).await,
            Command::Position { command } => mqdb::position_commands::run(config, command).await,
            Command::Check => app::check(config).await,
            Command::Dlq { command } => match command {
                DlqCommand::List {
                    route,
                    since,
                    error_kind,
                    json,
                } => dlq_commands::list(config, route, since, error_kind, json).await,
                DlqCommand::Show { id } => dlq_commands::show(config, id).await,
                DlqCommand::Replay {
                    selection,
                    error_kind,
                    dry_run,
                } => dlq_commands::replay(config, selection, error_kind, dry_run).await,
                DlqCommand::Purge {
                    selection,
                    before,
                    yes,
                } => dlq_commands::purge(config, selection, before, yes).await,
            },
        }
    }))
}

fn block_on(work: impl std::future::Future<Output = Result<(), AppError>>) -> Result<(), AppError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads())
        .enable_all()
        .build()
        .map_err(|e| AppError::Runtime(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(work);
    // Sink threads may still be blocked in a driver call; they hold nothing to flush.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Threads for the async work (sources, routes, publishers): `MQDB_WORKER_THREADS`, or half
/// the cores. The database calls have threads of their own, and the broker and database
/// often share the host: on 2 cores one worker moved 20% more MQTT messages per second than
/// two, which spent their time waking each other.
fn worker_threads() -> usize {
    std::env::var("MQDB_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() / 2)
                .unwrap_or(1)
                .max(1)
        })
}

fn finish(result: Result<(), AppError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
