//! Log set-up: text or JSON lines on stderr, level from -v/-q or `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// `only_errors` keeps everything but errors out (the demo's default).
pub fn init(format: LogFormat, verbose: u8, quiet: bool, only_errors: bool) {
    let level = match (only_errors, quiet, verbose) {
        (true, _, _) => "error",
        (false, true, _) => "warn",
        (false, false, 0) => "info",
        (false, false, 1) => "debug",
        (false, false, _) => "trace",
    };
    // Library chatter (sqlx statements, rumqttc internals) only when asked for by name.
    // odbc-api logs every driver diagnostic as a warning, and lapin logs returned messages
    // with their payload; mqdb reports what matters itself.
    // The demo's embedded broker reports its clients' goodbyes as errors.
    let others = if only_errors {
        "error,rumqttd=off"
    } else {
        "warn"
    };
    let default = format!("{others},odbc_api=error,lapin=off,mqdb={level}");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a person at a terminal; log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
