//! Logging through `tracing`, human-readable or JSON, filtered by `RUST_LOG`-style directives.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Installs the global subscriber, writing to stderr. `filter` takes `RUST_LOG` syntax
/// (for example `info` or `info,instance_registrar=debug`). Human lines are coloured only on a
/// terminal (and not when `NO_COLOR` is set): a log file or a log pipeline gets plain text.
pub fn init(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)?;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Human => registry
            .with(
                fmt::layer()
                    .with_ansi(colour(std::io::stderr().is_terminal()))
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    Ok(())
}

/// Whether human log lines get colour codes: only on a terminal, unless `NO_COLOR` is set (to
/// anything but the empty string, as no-color.org has it).
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
