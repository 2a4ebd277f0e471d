//! Telemetry shared by every vidfarm process: structured logs on stderr, filtered by
//! `RUST_LOG` (default `info` for vidfarm, `warn` elsewhere), as text or JSON lines; traces
//! exported by OTLP ([`traces`]); and Prometheus metrics ([`metrics`]).

pub mod metrics;
pub mod traces;

pub use metrics::metrics;
pub use traces::{TraceExport, TraceExportError, Traces};

use tracing_subscriber::{EnvFilter, Layer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber, exporting its spans when `export` is given (the returned
/// [`Traces`] must be shut down before exit). A second call (tests) keeps the first subscriber.
pub fn init(format: LogFormat, default_level: &str, export: Option<&TraceExport>) -> Result<Option<Traces>, TraceExportError> {
    let (text, json) = match format {
        LogFormat::Text => (Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(log_filter(default_level))), None),
        LogFormat::Json => (None, Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(log_filter(default_level)))),
    };
    let (traces, spans) = match export {
        Some(export) => {
            let (traces, tracer) = Traces::start(export)?;
            (Some(traces), Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(span_filter())))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry().with(text).with(json).with(spans).try_init();
    Ok(traces)
}

/// What is logged: `RUST_LOG`, or vidfarm's events at `default_level` and others' warnings.
fn log_filter(default_level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("warn,vidfarm={default_level}")))
}

/// What is exported: vidfarm's spans, at info, whatever the log level; quieter logs (a `warn`
/// level, or a render's progress bar) must not empty the traces.
fn span_filter() -> EnvFilter {
    EnvFilter::new(SPAN_FILTER)
}

const SPAN_FILTER: &str = "warn,vidfarm=info";
