//! Logging through `tracing`, human-readable or JSON, filtered by `RUST_LOG`-style directives.
//! The SSH library's own lines are capped at debug level whatever the filter says: at trace level
//! it follows each packet of a session, and a session carries the install script with the
//! credentials the agent registers with.

use std::io::IsTerminal;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{FilterFn, filter_fn};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One human-readable line per event.
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Installs the global subscriber, writing to stderr. `filter` takes `RUST_LOG` syntax
/// (for example `info` or `info,instance_registrar=debug`). Human lines are coloured only on a
/// terminal (and not when `NO_COLOR` is set): a log file or a log pipeline gets plain text.
/// Whatever `filter` says, the SSH library logs at debug level at most ([`below_ssh_trace`]).
pub(crate) fn init(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)?;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Human => registry
            .with(
                fmt::layer()
                    .with_ansi(colour(std::io::stderr().is_terminal()))
                    .with_writer(std::io::stderr)
                    .with_filter(below_ssh_trace()),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_filter(below_ssh_trace()),
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

/// Lets through every line but the SSH library's trace lines (russh and its own crates, whose
/// targets start with `russh`), which follow a session packet by packet.
pub(crate) fn below_ssh_trace() -> FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    filter_fn(|meta: &Metadata<'_>| !(*meta.level() == Level::TRACE && ssh_library(meta.target())))
}

/// Whether `target` is the SSH library's (russh, russh_cryptovec, russh_util, ...).
fn ssh_library(target: &str) -> bool {
    target == "russh" || target.starts_with("russh::") || target.starts_with("russh_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_ssh_library_logs_at_debug_at_most_whatever_the_filter_says() {
        for directives in ["trace", "russh=trace", "info,russh::client=trace"] {
            let buffer = Buffer::default();
            let writer = buffer.clone();
            let subscriber = tracing_subscriber::registry()
                .with(EnvFilter::try_new(directives).unwrap())
                .with(
                    fmt::layer()
                        .with_ansi(false)
                        .with_writer(move || writer.clone())
                        .with_filter(below_ssh_trace()),
                );
            tracing::subscriber::with_default(subscriber, || {
                tracing::trace!(target: "russh::client", "packet with the-secret-key");
                tracing::trace!(target: "russh_cryptovec", "buffer with the-secret-key");
                tracing::debug!(target: "russh::client", "a debug line");
                tracing::trace!(target: "russhfoo", "not the ssh library");
            });
            let logged = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
            assert!(!logged.contains("the-secret-key"), "{directives}: {logged}");
            assert!(logged.contains("a debug line"), "{directives}: {logged}");
        }
        assert!(ssh_library("russh") && ssh_library("russh::keys") && ssh_library("russh_util"));
        assert!(!ssh_library("russhfoo") && !ssh_library("instance_registrar::ssh"));
    }
}
