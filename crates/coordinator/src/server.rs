//! The gRPC server: RenderService, the standard health service and server reflection.

use crate::auth::{ApiTokens, Authenticate};
use crate::coordinator::Coordinator;
use crate::reload::{WatchedFiles, follow};
use crate::rpc_span::RpcSpans;
use crate::service::RenderApi;
use crate::tls::ServerTls;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
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

/// Who may call and how: TLS (mutual when the config names a client CA) and API tokens, each
/// with the files it was read from, which are read again while serving.
/// The default serves plaintext to anyone, for a farm on a trusted network or the loopback.
#[derive(Clone, Debug, Default)]
pub struct ServerSecurity {
    /// With its certificate, key and (for mutual TLS) client CA files, in that order.
    pub tls: Option<(ServerTls, WatchedFiles)>,
    /// RenderService calls must carry one of these; health checks and reflection need none.
    /// With the token file.
    pub tokens: Option<(ApiTokens, WatchedFiles)>,
}

/// Serves on a bound listener until `shutdown` completes.
pub async fn serve(
    coordinator: Coordinator,
    listener: TcpListener,
    security: ServerSecurity,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (mut health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<RenderServiceServer<RenderApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // The queue's depth for the metrics endpoint, while serving.
    let queue = coordinator.clone();
    let mut background: Vec<JoinHandle<()>> = vec![tokio::spawn(async move {
        let mut tick = crate::sweeps::steady_interval(QUEUE_DEPTH_EVERY);
        loop {
            tick.tick().await;
            match queue.queue_depth().await {
                Ok(depth) => vidfarm_telemetry::metrics().queue_depth(depth),
                Err(error) => tracing::warn!(%error, "queue depth not counted"),
            }
        }
    })];
    // Watch streams end when shutdown begins, or the graceful shutdown would wait on them:
    // RenderService's, and health watches (a load balancer's), which hear NOT_SERVING first.
    let (begin_stopping, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = begin_stopping.send(true);
        let services = ["", <RenderServiceServer<RenderApi> as tonic::server::NamedService>::NAME];
        for service in services {
            health_reporter.set_service_status(service, tonic_health::ServingStatus::NotServing).await;
        }
        for service in services {
            health_reporter.clear_service_status(service).await;
        }
    };
    let authenticate = Authenticate(security.tokens.as_ref().map(|(tokens, _)| tokens.clone()));
    if let Some((tokens, files)) = security.tokens {
        background.push(tokio::spawn(follow("API tokens", files, move |contents| {
            let text = String::from_utf8_lossy(&contents[0]);
            tokens.replace(&text).map(|count| format!("{count} API tokens in force")).map_err(|e| e.to_string())
        })));
    }
    // HTTP/2 pings on open connections: a client gone without a word (its node lost) is let go
    // within a minute, with the watch streams and Redis subscriptions it held.
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health)
        .add_service(reflection)
        .add_service(RpcSpans(RenderServiceServer::with_interceptor(RenderApi::new(coordinator, stopping), authenticate)));
    let served = match security.tls {
        None => router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown).await,
        Some((tls, files)) => {
            let incoming = tls.incoming(listener);
            background.push(tokio::spawn(follow("TLS certificate, key and client CA", files, move |contents| {
                let client_ca = contents.get(2).map(Vec::as_slice);
                tls.replace(&contents[0], &contents[1], client_ca).map(|()| "renewed TLS files in force".into()).map_err(|e| e.to_string())
            })));
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
    };
    for task in background {
        task.abort();
    }
    Ok(served?)
}
