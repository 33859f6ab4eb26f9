use std::process::ExitCode;

use clap::Parser;
use mqdb::app::{self, AppError};
use mqdb::cli::{Cli, Command, DlqCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    mqdb::logging::init(cli.log_format, cli.verbose, cli.quiet);
    // One process-wide TLS provider, chosen here so no dependency picks another.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let config = match mqdb::config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result: Result<(), AppError> = runtime.block_on(async {
        match cli.command {
            Command::Run => app::run(config).await,
            Command::Check => app::check(config).await,
            Command::Dlq { command } => match command {
                DlqCommand::List { route, json } => app::dlq_list(config, route, json).await,
                DlqCommand::Show { id } => app::dlq_show(config, id).await,
            },
        }
    });
    // Sink threads may still be blocked in a driver call; they hold nothing to flush.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
