//! Logging: pretty on a terminal, JSON for machines. Keys, tokens and bodies are never logged;
//! request spans carry the matched route, not the raw path.

use std::io::{BufWriter, IsTerminal};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.filter`.
/// Calling it twice (as tests may) keeps the first subscriber.
///
/// Lines are written to stdout by a thread of their own, in batches, so that no request waits
/// for a write to a slow terminal, pipe or disk (a profile under load had a quarter of the
/// gateway's time in one `write` per access-log line). None is dropped while the process runs:
/// a full queue makes loggers wait. The returned guard, dropped as `serve` returns,
/// lets the writer drain for up to a second (tracing-appender's limit); a line logged after that
/// (a task that outlived the shutdown grace period) or still queued when the process is killed
/// outright is lost.
/// Lines waiting for the writer thread at most. The queue is allocated whole up front (32
/// bytes a line): tracing-appender's default of 128k lines was 4 MB of the gateway's memory.
const QUEUED_LINES: usize = 16 * 1024;

#[must_use = "dropping the guard stops the log writer"]
pub fn init(settings: &LogSettings) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .finish(BufWriter::new(std::io::stdout()));
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_target(true);
    let installed = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    // An error here only means a subscriber is already installed (a second init in tests).
    drop(installed);
    guard
}
