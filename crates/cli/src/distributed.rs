//! The distributed farm: `vidfarm coordinator` (gRPC API and job state, no rendering) and
//! `vidfarm worker` (renders tasks), any number of each, meeting only in Redis and the store.

use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use vidfarm_api::ModelProfile;
use vidfarm_coordinator::Coordinator;
use vidfarm_queue::{FarmState, RedisJobBook, RedisNamespace, RedisQueue, RedisWorkerRegistry};
use vidfarm_worker::Worker;

use crate::farm::{load_model, open_store, resolve_model_dir, worker_config};
use crate::settings::Settings;

/// Connection attempts before giving up on an unreachable Redis; the waits between them double
/// from half a second to ten, about a minute in all.
const CONNECT_ATTEMPTS: u32 = 9;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct RedisArgs {
    /// The Redis that holds the farm's queue and jobs [settings: redis.url].
    #[arg(long)]
    redis: Option<String>,
    /// Key namespace: farms on one Redis with different namespaces never see each other
    /// [settings: redis.namespace].
    #[arg(long)]
    redis_namespace: Option<String>,
}

/// Connects to Redis, waiting with backoff while it is unreachable (it may be starting too).
async fn connect(settings: &Settings, args: &RedisArgs) -> Result<FarmState> {
    let url = args.redis.as_deref().unwrap_or(&settings.redis.url);
    let namespace = args.redis_namespace.as_deref().unwrap_or(&settings.redis.namespace);
    let tls = settings.redis.tls()?;
    let (mut attempt, mut backoff) = (1, FIRST_BACKOFF);
    loop {
        match RedisNamespace::connect_with_tls(url, namespace, &tls).await {
            Ok(ns) => {
                return Ok(FarmState {
                    queue: Arc::new(RedisQueue::new(ns.clone())),
                    book: Arc::new(RedisJobBook::new(ns.clone())),
                    registry: Arc::new(RedisWorkerRegistry::new(ns)),
                });
            }
            Err(e) if attempt < CONNECT_ATTEMPTS => {
                tracing::warn!(error = %e, retry_in = ?backoff, "Redis not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            Err(e) => return Err(e).with_context(|| format!("gave up after {attempt} attempts")),
        }
    }
}

/// Serves the gRPC API over the Redis queue and job book. Needs only the model's profile
/// (its limits and defaults), not its weights.
pub async fn coordinator(settings: &Settings, redis: &RedisArgs, listen: &str, store: &str, model: &Path) -> Result<()> {
    let model_dir = resolve_model_dir(model);
    let profile = ModelProfile::load(&model_dir).with_context(|| format!("model {}", model_dir.display()))?;
    let security = settings.server.security()?;
    crate::start_metrics(settings).await?;
    let store = open_store(store, settings).await?;
    let farm = connect(settings, redis).await?;
    let coordinator = Coordinator::new(farm, store, vec![profile]);
    // From here a signal is a graceful shutdown's: the sweeps run.
    let signal = crate::shutdown_signal();
    vidfarm_coordinator::spawn_sweeps(coordinator.clone(), settings.server.retention());
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    // Scripts and tests read the bound address (the port may have been 0) from this line.
    crate::output::emit(format!("listening on {local}"));
    tracing::info!(%local, "coordinator serving");
    vidfarm_coordinator::serve(coordinator, listener, security, signal).await?;
    Ok(())
}

/// Runs one worker until SIGTERM, Ctrl-C or a drain request (`vidfarm drain`), which let it
/// finish the task in hand and take no more. A failing Redis (the farm's state unreachable) pauses the worker, it does not end it.
pub async fn worker(settings: &Settings, redis: &RedisArgs, store: &str, model: &Path, name: Option<String>) -> Result<()> {
    let name = name.unwrap_or_else(default_worker_name);
    // Before the model loads: the farm's keys for the worker are made of its name.
    vidfarm_api::check_worker_name("--name", &name)?;
    let (_, pipeline) = load_model(model).await?;
    crate::start_metrics(settings).await?;
    let store = open_store(store, settings).await?;
    let farm = connect(settings, redis).await?;
    let worker = Worker::new(worker_config(settings, name.clone()), farm, store, pipeline);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let signal = crate::shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down: finishing the task in hand");
        let _ = shutdown.send(true);
    });
    crate::output::emit(format!("worker {name} started"));
    Ok(worker.run_with_restarts(shutdown_rx).await?)
}

/// The host name (under Kubernetes, the pod's), else `worker`, with the process id unless it is 1.
fn default_worker_name() -> String {
    worker_name(std::env::var("HOSTNAME").ok(), std::process::id())
}

/// `host-pid`, so that workers sharing a host differ; a container's only process (PID 1)
/// is named by its host alone: in a pod, the pod's name, which `vidfarm drain` is given.
fn worker_name(host: Option<String>, pid: u32) -> String {
    let host = host.filter(|h| !h.is_empty()).unwrap_or_else(|| "worker".to_string());
    if pid == 1 { host } else { format!("{host}-{pid}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_worker_is_named_after_its_pod() {
        assert_eq!(worker_name(Some("vidfarm-worker-7d9f-x2x".into()), 1), "vidfarm-worker-7d9f-x2x");
        assert_eq!(worker_name(Some("gpu-node-3".into()), 4242), "gpu-node-3-4242");
        assert_eq!(worker_name(None, 7), "worker-7");
        assert_eq!(worker_name(Some(String::new()), 1), "worker");
    }
}
