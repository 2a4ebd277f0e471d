//! The gRPC server: RenderService, the standard health service and server reflection.

use crate::auth::{Authenticate, TokenFile};
use crate::coordinator::Coordinator;
use crate::rpc_span::RpcSpans;
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

/// How often the token file is read again. The kubelet takes up to a minute or so to bring a
/// changed Secret into the pod; this adds at most a few seconds.
const TOKEN_FILE_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// Who may call and how: TLS (mutual when the config names a client CA) and API tokens.
/// The default serves plaintext to anyone, for a farm on a trusted network or the loopback.
#[derive(Clone, Debug, Default)]
pub struct ServerSecurity {
    pub tls: Option<ServerTlsConfig>,
    /// RenderService calls must carry one of the file's tokens; health checks and reflection
    /// need none.
    pub tokens: Option<TokenFile>,
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
    let authenticate = Authenticate(security.tokens.as_ref().map(|file| file.tokens.clone()));
    let reloading = security.tokens.map(|file| tokio::spawn(reload_tokens(file)));
    let served = server
        .add_service(health)
        .add_service(reflection)
        .add_service(RpcSpans(RenderServiceServer::with_interceptor(RenderApi::new(coordinator), authenticate)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    counting.abort();
    if let Some(reloading) = reloading {
        reloading.abort();
    }
    Ok(served?)
}

/// Reads the token file every few seconds; a changed file's tokens replace the old ones.
async fn reload_tokens(mut file: TokenFile) {
    let mut tick = tokio::time::interval(TOKEN_FILE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let path = file.path.display().to_string();
    // A read error (a volume gone) is reported once, like a bad text; the tokens in force stay.
    let mut unreadable = None;
    loop {
        tick.tick().await;
        let text = match tokio::fs::read_to_string(&file.path).await {
            Ok(text) => text,
            Err(error) => {
                let error = error.to_string();
                if unreadable.as_ref() != Some(&error) {
                    tracing::warn!(path, %error, "token file not readable; the tokens read before stay in force");
                }
                unreadable = Some(error);
                continue;
            }
        };
        unreadable = None;
        match file.reload(text) {
            Ok(None) => {}
            Ok(Some(tokens)) => tracing::info!(path, tokens, "API tokens reloaded"),
            Err(error) => tracing::warn!(path, %error, "token file not reloaded; the tokens read before stay in force"),
        }
    }
}
