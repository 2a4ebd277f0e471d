//! The gRPC server: RenderService, the standard health service and server reflection.

use crate::auth::{ApiTokens, Authenticate};
use crate::coordinator::Coordinator;
use crate::service::RenderApi;
use std::future::Future;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::ServerTlsConfig;
use vidfarm_api::pb::{self, render_service_server::RenderServiceServer};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How often a coordinator counts the tasks queued or leased, for `vidfarm_queue_depth`.
const QUEUE_DEPTH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Who may call and how: TLS (mutual when the config names a client CA) and API tokens.
/// The default serves plaintext to anyone, for a farm on a trusted network or the loopback.
#[derive(Clone, Debug, Default)]
pub struct ServerSecurity {
    pub tls: Option<ServerTlsConfig>,
    /// RenderService calls must carry one of these; health checks and reflection need none.
    pub tokens: Option<ApiTokens>,
}

/// Serves on a bound listener until `shutdown` completes.
pub async fn serve(
    coordinator: Coordinator,
    listener: TcpListener,
    security: ServerSecurity,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<RenderServiceServer<RenderApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = security.tls {
        server = server.tls_config(tls)?;
    }
    // The queue's depth for the metrics endpoint, while serving.
    let queue = coordinator.clone();
    let counting = tokio::spawn(async move {
        let mut tick = tokio::time::interval(QUEUE_DEPTH_EVERY);
        loop {
            tick.tick().await;
            match queue.queue_depth().await {
                Ok(depth) => vidfarm_telemetry::metrics().queue_depth(depth),
                Err(error) => tracing::warn!(%error, "queue depth not counted"),
            }
        }
    });
    let served = server
        .add_service(health)
        .add_service(reflection)
        .add_service(RenderServiceServer::with_interceptor(RenderApi::new(coordinator), Authenticate(security.tokens)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    counting.abort();
    Ok(served?)
}
