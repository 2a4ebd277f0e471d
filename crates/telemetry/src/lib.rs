//! Telemetry shared by every vidfarm process: structured logs on stderr, filtered by
//! `RUST_LOG` (default `info` for vidfarm, `warn` elsewhere), as text or JSON lines; and
//! Prometheus metrics ([`metrics`]).

pub mod metrics;

pub use metrics::metrics;

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber. A second call (tests) keeps the first.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("warn,vidfarm={default_level}")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
