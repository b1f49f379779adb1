//! Log lines as flat JSON objects (`L2D_LOG_FORMAT=json`), for log collectors.
//!
//! One object per line: `timestamp` (RFC 3339, UTC), `level`, `target`, `message`, then the
//! process's context — `pod` (`POD_NAME`, else `HOSTNAME`, else the kernel's host name),
//! `version`, and `policy_id` (a scheduler: the policy in force, following reloads) or `expert`
//! (an expert worker) — then the fields of the spans the event is in (outermost first), then the
//! event's own fields (such as a request's `request_id`). Every field is at the top level.
//! Numbers and booleans stay numbers and booleans; a field logged with `?` whose text is a JSON
//! array or object (see [`AsJson`]) is kept as that array or object, not as a string.

use arc_swap::ArcSwapOption;
use serde_json::{Map, Value};
use std::fmt;
use std::sync::{Arc, LazyLock};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// What every line of this process says about where it comes from.
struct Context {
    pod: String,
    policy_id: ArcSwapOption<String>,
    expert: ArcSwapOption<String>,
}

static CONTEXT: LazyLock<Context> = LazyLock::new(|| Context {
    pod: pod_name(),
    policy_id: ArcSwapOption::empty(),
    expert: ArcSwapOption::empty(),
});

fn pod_name() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_default()
}

/// `L2D_LOG_FORMAT=json`: every line is a JSON object (and nothing else goes to stderr).
pub fn json_chosen() -> bool {
    std::env::var("L2D_LOG_FORMAT").is_ok_and(|f| f == "json")
}

/// The policy now in force, for `policy_id` on every later line.
pub fn set_policy_id(id: &str) {
    CONTEXT.policy_id.store(Some(Arc::new(id.to_owned())));
}

/// This process serves expert `id`, for `expert` on every later line.
pub fn set_expert(id: &str) {
    CONTEXT.expert.store(Some(Arc::new(id.to_owned())));
}

/// Logs a value as JSON: with `field = ?AsJson(value)`, the JSON formatter keeps it as an array
/// or object (the text format shows the same JSON).
pub struct AsJson<T>(pub T);

impl<T: serde::Serialize> fmt::Debug for AsJson<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(&self.0).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

/// The event formatter: see the module documentation. Span fields must be recorded with
/// [`JsonFields`], which keeps them as a JSON object.
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let line = render(event, |out| {
            if let Some(scope) = ctx.event_scope() {
                for span in scope.from_root() {
                    let extensions = span.extensions();
                    let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                        continue;
                    };
                    if let Ok(Value::Object(fields)) = serde_json::from_str(&fields.fields) {
                        out.extend(fields);
                    }
                }
            }
        });
        writeln!(writer, "{line}")
    }
}

/// One line: the event's metadata, the process's context, what `spans` adds, the event's fields.
fn render(event: &Event<'_>, spans: impl FnOnce(&mut Map<String, Value>)) -> String {
    let meta = event.metadata();
    let mut out = head(meta.level().as_str(), meta.target());
    spans(&mut out);
    event.record(&mut Fields(&mut out));
    Value::Object(out).to_string()
}

/// What every line starts with: the time, the level, the target and the process's context.
fn head(level: &str, target: &str) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert(
        "timestamp".into(),
        humantime::format_rfc3339_micros(std::time::SystemTime::now())
            .to_string()
            .into(),
    );
    out.insert("level".into(), level.into());
    out.insert("target".into(), target.into());
    let context = &*CONTEXT;
    out.insert("pod".into(), context.pod.as_str().into());
    out.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    if let Some(id) = context.policy_id.load().as_deref() {
        out.insert("policy_id".into(), id.as_str().into());
    }
    if let Some(id) = context.expert.load().as_deref() {
        out.insert("expert".into(), id.as_str().into());
    }
    out
}

/// A line that is not an event (the fatal error before exit), in the same shape.
pub fn error_line(message: &str) -> String {
    let mut out = head("ERROR", "l2d");
    out.insert("message".into(), message.into());
    Value::Object(out).to_string()
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // Not finite: not a JSON number, so its text.
        let value = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.0.insert(field.name().into(), value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        let structured = matches!(text.as_bytes().first(), Some(b'[' | b'{'))
            .then(|| serde_json::from_str::<Value>(&text).ok())
            .flatten();
        let value = structured.unwrap_or(Value::String(text));
        self.0.insert(field.name().into(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;
    use tracing_subscriber::fmt::MakeWriter;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn every_field_is_at_the_top_level_with_its_type() {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(lines.clone())
            .finish();
        set_policy_id("policy-1");
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("ask", request_id = "abc-1", attempt = 2u64);
            let _entered = span.enter();
            let removed = vec!["lr".to_owned(), "bert \"large\"".to_owned()];
            tracing::warn!(
                expert = "lr",
                micros = 120u64,
                ok = false,
                share = 0.25,
                removed = ?removed,
                scores = ?AsJson([("lr", Some(0.5)), ("typed", None)]),
                code = ?tonic::Code::NotFound,
                "the pool changed"
            );
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "the pool changed");
        assert_eq!(line["request_id"], "abc-1");
        assert_eq!(line["attempt"], 2);
        assert_eq!(line["expert"], "lr");
        assert_eq!(line["micros"], 120);
        assert_eq!(line["ok"], false);
        assert_eq!(line["share"], 0.25);
        assert_eq!(line["removed"], serde_json::json!(["lr", "bert \"large\""]));
        assert_eq!(
            line["scores"],
            serde_json::json!([["lr", 0.5], ["typed", null]])
        );
        assert_eq!(line["code"], "NotFound");
        assert_eq!(line["policy_id"], "policy-1");
        assert_eq!(line["version"], env!("CARGO_PKG_VERSION"));
        assert!(line["pod"].is_string());
        assert!(
            humantime::parse_rfc3339(line["timestamp"].as_str().unwrap()).is_ok(),
            "{line}"
        );
        // Nothing nested but the arrays logged as such.
        assert!(
            line.get("fields").is_none() && line.get("span").is_none(),
            "{line}"
        );
    }

    #[test]
    fn the_fatal_error_is_a_line_of_the_same_shape() {
        let line: Value =
            serde_json::from_str(&error_line("cannot listen on 127.0.0.1:1: \"denied\"\n"))
                .unwrap();
        assert_eq!(line["level"], "ERROR");
        assert_eq!(
            line["message"],
            "cannot listen on 127.0.0.1:1: \"denied\"\n"
        );
        assert_eq!(line["version"], env!("CARGO_PKG_VERSION"));
    }
}
