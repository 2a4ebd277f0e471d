//! Traces: tracing's spans exported by OTLP over gRPC, and the W3C trace context
//! (`traceparent`) that carries one job's trace from the gRPC call, through the job record in
//! the job book (Redis in a distributed farm), to every worker that takes one of its tasks.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use tonic::transport::ClientTlsConfig;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Where and as what a process exports its spans.
#[derive(Clone, Debug)]
pub struct TraceExport {
    /// The OTLP/gRPC endpoint of a collector, `http://host:4317` (or `https://`, verified
    /// against the system's roots).
    pub endpoint: String,
    /// The `service.name` resource attribute: which kind of process made the spans.
    pub service_name: String,
}

#[derive(Debug, thiserror::Error)]
#[error("traces: OTLP endpoint {endpoint:?}: {reason}")]
pub struct TraceExportError {
    endpoint: String,
    reason: String,
}

/// The exporting tracer provider; [`Traces::shutdown`] sends the spans still buffered.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Builds the exporter and its provider. Needs a Tokio runtime (the gRPC client's); spans go
    /// out in batches from a background thread, every `OTEL_BSP_SCHEDULE_DELAY` ms (5000).
    pub(crate) fn start(export: &TraceExport) -> Result<(Self, opentelemetry_sdk::trace::Tracer), TraceExportError> {
        let error = |reason: String| TraceExportError { endpoint: export.endpoint.clone(), reason };
        let uri: axum::http::Uri = export.endpoint.parse().map_err(|e| error(format!("not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(error("expected http://host:port or https://host:port".into()));
        }
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(export.endpoint.clone());
        if uri.scheme_str() == Some("https") {
            // The system's roots, as the API client trusts: the exporter's default has none.
            exporter = exporter.with_tls_config(ClientTlsConfig::new().with_native_roots());
        }
        let exporter = exporter.build().map_err(|e| error(e.to_string()))?;
        let resource = Resource::builder().with_service_name(export.service_name.clone()).build();
        let provider = SdkTracerProvider::builder().with_resource(resource).with_batch_exporter(exporter).build();
        let tracer = provider.tracer("vidfarm");
        Ok((Self { provider }, tracer))
    }

    /// Exports what is buffered and stops; call before the process exits.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("traces: the last spans were not exported: {error}");
        }
    }
}

/// `span`'s trace context as a W3C `traceparent` value, to hand to another process; `None`
/// when spans are not exported (the span belongs to no trace).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` (not yet entered) a child of the span a `traceparent` names, so that its work
/// joins that trace. A malformed value, or spans not exported, leave `span` as it was.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        // Fails only without the exporting layer or on a span already started: nothing to join.
        let _ = span.set_parent(parent);
    }
}

/// Sets attributes on `span`'s exported span only: fixed facts a trace viewer filters on
/// (OpenTelemetry's `rpc.*`) that would only repeat on every human-readable log line.
pub fn set_attributes(span: &tracing::Span, attributes: &[(&'static str, &str)]) {
    for &(key, value) in attributes {
        span.set_attribute(key, value.to_string());
    }
}

/// The trace id in a `traceparent` value (32 hex digits), for showing where to look a job up.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_span_given_a_traceparent_joins_that_trace_as_a_child() {
        // A provider without an exporter: spans get real ids and go nowhere.
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("task");
            set_parent(&span, PARENT);
            let own = traceparent(&span).expect("an exported span has a trace context");
            assert_eq!(trace_id(&own), trace_id(PARENT));
            assert_ne!(own, PARENT, "a child has a span id of its own");
            let child = tracing::info_span!(parent: &span, "decode");
            assert_eq!(traceparent(&child).as_deref().and_then(trace_id), trace_id(PARENT));

            let fresh = tracing::info_span!("submit_job");
            set_parent(&fresh, "00-not-a-trace-01");
            let new_trace = traceparent(&fresh).unwrap();
            assert_ne!(trace_id(&new_trace), trace_id(PARENT), "a malformed parent starts a trace of its own");
        });
    }

    #[test]
    fn without_export_spans_carry_no_trace_context() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("task");
            set_parent(&span, PARENT);
            assert_eq!(traceparent(&span), None);
        });
    }

    #[test]
    fn trace_ids_are_read_from_well_formed_values_only() {
        assert_eq!(trace_id(PARENT), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id("00-4bf92f35-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id(""), None);
    }

    #[test]
    fn endpoints_that_are_not_urls_are_refused_by_name() {
        let export = |endpoint: &str| TraceExport { endpoint: endpoint.into(), service_name: "test".into() };
        let error = Traces::start(&export("collector:4317")).unwrap_err().to_string();
        assert!(error.contains("\"collector:4317\"") && error.contains("http://host:port"), "{error}");
        assert!(Traces::start(&export("not a url")).is_err());
    }

    /// An https:// collector is spoken to with TLS; the exporter refused it at start before,
    /// and the process with it. (No span is sent: the connection is made at the first export.)
    #[tokio::test]
    async fn an_https_endpoint_is_accepted() {
        let export = TraceExport { endpoint: "https://collector.invalid:4317".into(), service_name: "test".into() };
        let (traces, _tracer) = Traces::start(&export).expect("https");
        traces.shutdown();
    }
}
