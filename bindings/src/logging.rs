//! Rust logs for the app: [`set_logger`] installs an [`EngineLogger`] the app implements (Logcat on
//! Android, `os_log` / `Logger` on Apple platforms; see the README) and receives the engine's
//! `tracing` events at `min_level` and above.
//!
//! Contract: the engine's own events (targets `communesync*`) are forwarded from `min_level`;
//! its dependencies' (HTTP, TLS) only from `Warn`. Records go through a bounded queue (1024) to
//! one thread that calls the logger, so a slow logger never slows a sync: when the queue is full,
//! records are dropped and the next delivered record is preceded by a warning saying how many.
//! Spans are not forwarded. No secret is logged: the engine never logs tokens, codes or keys,
//! and a field whose name says it is one (`token`, `key`, `secret`, `password`, `authorization`,
//! `credential`, `enrollment_code`, or ending in `_token`, `_key`...) is replaced by
//! `<redacted>` here as a second guard.

use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// How many records wait for the logger at most.
const QUEUE: usize = 1024;

/// Severity of a log record, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, uniffi::Enum)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something unexpected that the engine handled (a refused record, a retry).
    Warn,
    /// A milestone (sync done, store opened, key rotated).
    Info,
    /// Details for diagnosing (each retry, each request).
    Debug,
    /// Everything.
    Trace,
}

impl From<&Level> for LogLevel {
    fn from(level: &Level) -> Self {
        match *level {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            Level::INFO => LogLevel::Info,
            Level::DEBUG => LogLevel::Debug,
            Level::TRACE => LogLevel::Trace,
        }
    }
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct LogRecord {
    /// Its severity.
    pub level: LogLevel,
    /// Where it comes from (a Rust module path, `communesync_core::sync::client`).
    pub target: String,
    /// The message, then its fields as `name=value`.
    pub message: String,
    /// When it was emitted.
    pub at: SystemTime,
}

/// Implemented by the app to receive the engine's logs (called on a thread of the engine's).
#[uniffi::export(with_foreign)]
pub trait EngineLogger: Send + Sync {
    /// Writes one record (to Logcat, `os_log`, a file...). Must not block for long.
    fn log(&self, record: LogRecord);
}

/// Sends the engine's logs at `min_level` and above to `logger` from now on (`None`: stop).
/// One logger per process; a later call replaces it.
#[uniffi::export]
pub fn set_logger(logger: Option<Arc<dyn EngineLogger>>, min_level: LogLevel) {
    let sink = logger.and_then(|logger| Sink::start(logger, min_level));
    *SINK.write().unwrap_or_else(PoisonError::into_inner) = sink;
    // Once per process; fails only if a host program installed its own (a Rust test harness):
    // then logs go there and the foreign logger gets none.
    INSTALLED.get_or_init(|| tracing::subscriber::set_global_default(ForeignSubscriber).is_ok());
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);
static INSTALLED: OnceLock<bool> = OnceLock::new();

struct Sink {
    min_level: LogLevel,
    queue: SyncSender<LogRecord>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    fn start(logger: Arc<dyn EngineLogger>, min_level: LogLevel) -> Option<Sink> {
        let (queue, records) = sync_channel::<LogRecord>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        std::thread::Builder::new()
            .name("communesync-log".into())
            .spawn(move || {
                // Ends when the sink is replaced or removed (its sender dropped).
                for record in records {
                    let missed = lost.swap(0, Ordering::Relaxed);
                    if missed > 0 {
                        let warning = LogRecord {
                            level: LogLevel::Warn,
                            target: "communesync_ffi::logging".into(),
                            message: format!("{missed} log records dropped: the logger is slow"),
                            at: SystemTime::now(),
                        };
                        let _ = catch_unwind(AssertUnwindSafe(|| logger.log(warning)));
                    }
                    // A logger that throws loses its record, not the next ones.
                    let _ = catch_unwind(AssertUnwindSafe(|| logger.log(record)));
                }
            })
            .ok()?;
        Some(Sink {
            min_level,
            queue,
            dropped,
        })
    }
}

/// Whether a record from `target` at `level` goes to the logger whose minimum is `min_level`.
fn wanted(target: &str, level: LogLevel, min_level: LogLevel) -> bool {
    level <= min_level && (target.starts_with("communesync") || level <= LogLevel::Warn)
}

/// Whether a field's name says it holds a secret (`token`, `auth_token`, `store_key`,
/// `enrollment_code`...). A refusal `code` (`not_yours`) is not one: it stays readable.
fn secret_field(name: &str) -> bool {
    const SECRET: [&str; 8] = [
        "token",
        "key",
        "secret",
        "password",
        "passphrase",
        "authorization",
        "credential",
        "enrollment_code",
    ];
    let name = name.to_ascii_lowercase();
    SECRET
        .iter()
        .any(|s| name == *s || name.ends_with(&format!("_{s}")))
}

/// The `tracing` subscriber that feeds the installed [`Sink`].
struct ForeignSubscriber;

impl Subscriber for ForeignSubscriber {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        // The logger and its level change at run time: ask each time, except for spans.
        if metadata.is_span() {
            Interest::never()
        } else {
            Interest::sometimes()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event()
            && SINK
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|sink| {
                    wanted(metadata.target(), metadata.level().into(), sink.min_level)
                })
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let mut text = Text::default();
        event.record(&mut text);
        let record = LogRecord {
            level: metadata.level().into(),
            target: metadata.target().to_owned(),
            message: text.finish(),
            at: SystemTime::now(),
        };
        if let Some(sink) = SINK.read().unwrap_or_else(PoisonError::into_inner).as_ref()
            && let Err(TrySendError::Full(_)) = sink.queue.try_send(record)
        {
            sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// An event's message and fields as one line.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn field(&mut self, field: &Field, value: std::fmt::Arguments<'_>) {
        if field.name() == "message" {
            let _ = self.message.write_fmt(value);
        } else if secret_field(field.name()) {
            let _ = write!(self.fields, " {}=<redacted>", field.name());
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn finish(self) -> String {
        if self.message.is_empty() {
            self.fields.trim_start().to_owned()
        } else {
            self.message + &self.fields
        }
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.field(field, format_args!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc::{Sender, channel};
    use std::time::Duration;

    use super::*;

    struct Collect(Mutex<Sender<LogRecord>>);

    impl EngineLogger for Collect {
        fn log(&self, record: LogRecord) {
            let _ = self.0.lock().unwrap().send(record);
        }
    }

    #[test]
    fn secret_fields_are_recognised_by_name() {
        for name in [
            "token",
            "auth_token",
            "store_key",
            "KEY",
            "enrollment_code",
            "password",
        ] {
            assert!(secret_field(name), "{name}");
        }
        for name in ["code", "message", "id", "monkey", "rounds", "keyboard"] {
            assert!(!secret_field(name), "{name}");
        }
    }

    #[test]
    fn filtering_by_level_and_target() {
        assert!(wanted(
            "communesync_core::sync",
            LogLevel::Info,
            LogLevel::Info
        ));
        assert!(!wanted(
            "communesync_core::sync",
            LogLevel::Debug,
            LogLevel::Info
        ));
        assert!(!wanted("hyper::proto", LogLevel::Info, LogLevel::Trace));
        assert!(wanted("rustls::client", LogLevel::Warn, LogLevel::Debug));
        assert!(!wanted("rustls::client", LogLevel::Warn, LogLevel::Error));
    }

    /// One test for the whole process-wide logger (tests run in parallel threads).
    #[test]
    fn the_logger_gets_the_engines_events_without_secrets() {
        let (tx, rx) = channel();
        set_logger(Some(Arc::new(Collect(Mutex::new(tx)))), LogLevel::Info);
        tracing::debug!(target: "communesync_core::test", "too detailed");
        tracing::info!(target: "hyper::test", "a dependency's detail");
        tracing::info!(target: "communesync_core::test", token = "s3cr3t", code = "not_yours", "sync done");
        // Other tests of this process log too: skip their records (at most 1000).
        let mine = |record: &LogRecord| record.target.ends_with("::test");
        let record = (0..1000)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .find(mine)
            .unwrap();
        assert_eq!(record.level, LogLevel::Info);
        assert_eq!(record.target, "communesync_core::test");
        assert_eq!(record.message, "sync done token=<redacted> code=not_yours");
        assert!(!record.message.contains("s3cr3t"));

        // Removed: nothing more arrives (the channel closes with the logger's thread).
        set_logger(None, LogLevel::Trace);
        tracing::error!(target: "communesync_core::test", "after removal");
        let later: Vec<LogRecord> = rx.iter().take(1000).collect();
        assert!(!later.iter().any(mine), "{later:?}");
    }
}
