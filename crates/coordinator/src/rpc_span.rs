//! One span per RenderService call, named after its method (`GetJob`, `WatchJob`), a child of
//! the caller's span when the call carries a W3C `traceparent`. SubmitJob's span is the root of
//! the job's trace: the coordinator stores its context in the job record for the workers.

use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::NamedService;
use tracing::Instrument;

/// Wraps a gRPC service (the token check included, so refused calls are traced too).
#[derive(Clone, Debug)]
pub struct RpcSpans<S>(pub S);

impl<S: NamedService> NamedService for RpcSpans<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for RpcSpans<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>> + NamedService,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_string();
        let span = tracing::info_span!(
            "rpc",
            otel.name = %method,
            job_id = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        vidfarm_telemetry::traces::set_attributes(&span, &[("rpc.system", "grpc"), ("rpc.service", S::NAME), ("rpc.method", &method)]);
        if let Some(parent) = request.headers().get("traceparent").and_then(|v| v.to_str().ok()) {
            vidfarm_telemetry::traces::set_parent(&span, parent);
        }
        let response = span.in_scope(|| self.0.call(request));
        let finished = span.clone();
        Box::pin(
            async move {
                let response = response.await?;
                // An error answer comes with its status in the headers ("trailers only"); a
                // stream's final status comes after the call has returned, outside this span.
                let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<i64>().ok()).unwrap_or(0);
                finished.record("rpc.grpc.status_code", code);
                if code != 0 {
                    finished.record("otel.status_code", "ERROR");
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// Names the job a call is about on its span, so a job's calls can be found by `job_id`. A
/// value no job id is that long (a client's 20 KB, say) is shown by its start.
pub fn record_job_id(job_id: &str) {
    if job_id.len() <= 64 {
        tracing::Span::current().record("job_id", job_id);
    } else {
        tracing::Span::current().record("job_id", vidfarm_api::quoted(job_id));
    }
}
