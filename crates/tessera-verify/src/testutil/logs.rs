//! One global `tracing` subscriber for the whole test binary, capturing audit events'
//! fields and every event as formatted text (with its spans).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::audit::AUDIT_TARGET;

/// Audit events' fields, with the thread that emitted each.
pub(crate) type Captured = Arc<Mutex<Vec<(ThreadId, BTreeMap<String, String>)>>>;

/// Captures the fields of audit events.
#[derive(Default)]
struct Capture(Captured);

/// The audit events of every thread of this test binary, captured by a subscriber
/// installed once as the global default. (One scoped to the test's thread with
/// `with_default` lost, now and then, the race for the audit callsite's cached
/// interest against other tests emitting the same event with no subscriber, and
/// captured nothing; a global subscriber is interested whichever thread comes first.)
pub(crate) fn captured() -> &'static Captured {
    &installed().0
}

/// Every event of this test binary as `tracing-subscriber`'s text formatter writes
/// it (no colours), from the same global subscriber as [`captured`].
pub(crate) fn formatted() -> &'static Arc<Mutex<Vec<u8>>> {
    &installed().1
}

fn installed() -> &'static (Captured, Arc<Mutex<Vec<u8>>>) {
    static INSTALLED: OnceLock<(Captured, Arc<Mutex<Vec<u8>>>)> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let capture = Capture::default();
        let events = Arc::clone(&capture.0);
        let text = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&text);
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || TextSink(Arc::clone(&sink)));
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(capture).with(fmt),
        )
        .expect("no other test installs a global subscriber");
        (events, text)
    })
}

/// Appends formatted events to a shared buffer.
struct TextSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for TextSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == AUDIT_TARGET {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            let thread = std::thread::current().id();
            self.0.lock().unwrap().push((thread, fields));
        }
    }
}
