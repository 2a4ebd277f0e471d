//! Telemetry shared by every vidfarm process: structured logs on stderr, filtered by
//! `RUST_LOG` (default `info` for vidfarm, `warn` elsewhere), as text or JSON lines; traces
//! exported by OTLP ([`traces`]); and Prometheus metrics ([`metrics`]).

pub mod metrics;
pub mod traces;

pub use metrics::metrics;
pub use traces::{TraceExport, TraceExportError, Traces};

use tracing_subscriber::EnvFilter;
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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("warn,vidfarm={default_level}")));
    let text = (format == LogFormat::Text).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json = (format == LogFormat::Json).then(|| tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr));
    let (traces, spans) = match export {
        Some(export) => {
            let (traces, tracer) = Traces::start(export)?;
            (Some(traces), Some(tracing_opentelemetry::layer().with_tracer(tracer)))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry().with(filter).with(text).with(json).with(spans).try_init();
    Ok(traces)
}
