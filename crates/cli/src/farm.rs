//! The embedded farm: coordinator, in-memory queue and job book, local store and workers in
//! one process, the same parts a distributed farm runs apart.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vidfarm_api::ModelProfile;
use vidfarm_coordinator::Coordinator;
use vidfarm_model::pipeline::{DefaultBackend, Pipeline};
use vidfarm_queue::{FarmState, MemoryJobBook, MemoryQueue, MemoryWorkerRegistry};
use vidfarm_store::ArtifactStore;
use vidfarm_worker::{Worker, WorkerConfig};

use crate::settings::Settings;

pub struct Farm {
    pub coordinator: Coordinator,
    pub pipeline: Arc<Pipeline<DefaultBackend>>,
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

/// Opens a store from a URL (`file:///abs`, `s3://bucket/prefix` with the `[s3]` settings) or
/// a plain local path, and checks it can be used (for S3: the bucket exists, the credentials work).
pub async fn open_store(spec: &str, settings: &Settings) -> Result<ArtifactStore> {
    let store = if spec.contains("://") {
        ArtifactStore::open(spec, &settings.s3.store_options())
    } else {
        ArtifactStore::local(Path::new(spec))
    };
    let store = store.with_context(|| format!("opening store {spec}"))?;
    store.check().await.with_context(|| format!("opening store {spec}"))?;
    Ok(store)
}

/// The model folder: as given, or, for the default relative path, the copy in the source
/// tree this binary was built from (so `vidfarm` works from any directory of a checkout).
pub fn resolve_model_dir(dir: &Path) -> PathBuf {
    if dir.exists() || dir.is_absolute() {
        return dir.to_path_buf();
    }
    let in_source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(dir);
    if in_source.exists() { in_source } else { dir.to_path_buf() }
}

/// Loads a model folder's profile and weights.
pub async fn load_model(dir: &Path) -> Result<(ModelProfile, Arc<Pipeline<DefaultBackend>>)> {
    let dir = resolve_model_dir(dir);
    let profile = ModelProfile::load(&dir)?;
    let load_dir = dir.clone();
    let pipeline = tokio::task::spawn_blocking(move || Pipeline::<DefaultBackend>::load(&load_dir, &Default::default()))
        .await?
        .with_context(|| format!("loading model {}", dir.display()))?;
    let info = pipeline.info();
    let pixels_per_token = info.pixels_per_token() as u32;
    anyhow::ensure!(
        profile.temporal_factor == info.temporal_factor as u32 && profile.spatial_factor == pixels_per_token,
        "model {}: vidfarm.toml says temporal_factor {} and spatial_factor {}, the weights say {} and {}",
        dir.display(),
        profile.temporal_factor,
        profile.spatial_factor,
        info.temporal_factor,
        pixels_per_token
    );
    Ok((profile, Arc::new(pipeline)))
}

/// A worker's settings, the same for embedded and distributed workers.
pub fn worker_config(settings: &Settings, name: String) -> WorkerConfig {
    WorkerConfig {
        name,
        lease: Duration::from_secs(settings.worker.lease_seconds.max(1)),
        max_attempts: settings.worker.max_attempts.max(1),
        retry_base: Duration::from_millis(settings.worker.retry_base_ms),
    }
}

impl Farm {
    pub async fn start(settings: &Settings, model_dir: &Path, store: &str) -> Result<Self> {
        let (profile, pipeline) = load_model(model_dir).await?;
        let store = open_store(store, settings).await?;
        let farm = FarmState {
            queue: Arc::new(MemoryQueue::new()),
            book: Arc::new(MemoryJobBook::new()),
            registry: Arc::new(MemoryWorkerRegistry::new()),
        };
        let coordinator = Coordinator::new(farm.clone(), store.clone(), vec![profile]);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let workers = (0..settings.worker.count.max(1))
            .map(|i| {
                let config = worker_config(settings, format!("embedded-{i}"));
                let worker = Worker::new(config, farm.clone(), store.clone(), pipeline.clone());
                let rx = shutdown_rx.clone();
                tokio::spawn(async move {
                    if let Err(e) = worker.run_with_restarts(rx).await {
                        tracing::error!(error = %e, "worker stopped on an error");
                    }
                })
            })
            .collect();
        Ok(Self { coordinator, pipeline, shutdown, workers })
    }

    /// Lets each worker finish its task, then stops them.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for w in self.workers {
            let _ = w.await;
        }
    }
}
