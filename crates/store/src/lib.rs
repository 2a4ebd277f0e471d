//! Where a job's artifacts live: chunk latents (safetensors) and the finished clip (MP4),
//! under per-job keys in an object store. One code path above `object_store`'s backends.

use bytes::Bytes;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vidfarm_plan::Latents;

/// The tensor name under which latents are stored.
pub const LATENTS_TENSOR: &str = "latents";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("object {key}: {source}")]
    Object { key: String, source: object_store::Error },
    #[error("object {key} is not a valid latents file: {reason}")]
    Latents { key: String, reason: String },
    #[error("local file {path}: {source}")]
    Local { path: PathBuf, source: std::io::Error },
}

/// A stored clip's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub size_bytes: u64,
    pub sha256: String,
}

#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<dyn ObjectStore>,
    /// The root folder for `file://` stores, used to hand out local URLs.
    local_root: Option<PathBuf>,
    url: String,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore").field("url", &self.url).finish()
    }
}

impl ArtifactStore {
    /// Opens a store from a URL: `file:///absolute/path` (created if missing).
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::Url { url: url.to_string(), reason: reason.to_string() };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        match parsed.scheme() {
            "file" => {
                let root = parsed.to_file_path().map_err(|()| bad("not an absolute file path"))?;
                std::fs::create_dir_all(&root).map_err(|source| StoreError::Local { path: root.clone(), source })?;
                let fs = LocalFileSystem::new_with_prefix(&root).map_err(|e| bad(&e.to_string()))?;
                Ok(Self { inner: Arc::new(fs), local_root: Some(root), url: url.to_string() })
            }
            other => Err(bad(&format!("unsupported scheme {other:?}: use file:///path"))),
        }
    }

    /// A `file://` store rooted at a local folder.
    pub fn local(root: &Path) -> Result<Self, StoreError> {
        let root = std::path::absolute(root).map_err(|source| StoreError::Local { path: root.to_path_buf(), source })?;
        let url = url::Url::from_directory_path(&root)
            .map_err(|()| StoreError::Url { url: root.display().to_string(), reason: "not a folder path".into() })?;
        Self::from_url(url.as_str())
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn chunk_key(job_id: &str, chunk: u32) -> String {
        format!("jobs/{job_id}/chunks/{chunk:05}.safetensors")
    }

    pub fn clip_key(job_id: &str) -> String {
        format!("jobs/{job_id}/clip.mp4")
    }

    pub async fn put_latents(&self, key: &str, latents: &Latents) -> Result<(), StoreError> {
        let bytes = encode_latents(latents).map_err(|reason| StoreError::Latents { key: key.to_string(), reason })?;
        self.put(key, Bytes::from(bytes)).await
    }

    pub async fn get_latents(&self, key: &str) -> Result<Latents, StoreError> {
        let bytes = self.get(key).await?;
        decode_latents(&bytes).map_err(|reason| StoreError::Latents { key: key.to_string(), reason })
    }

    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.inner.head(&ObjectPath::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(StoreError::Object { key: key.to_string(), source }),
        }
    }

    /// Uploads a local file; the object appears whole or not at all.
    pub async fn put_file(&self, key: &str, file: &Path) -> Result<StoredObject, StoreError> {
        let data = tokio::fs::read(file).await.map_err(|source| StoreError::Local { path: file.to_path_buf(), source })?;
        let sha256 = hex::encode(Sha256::digest(&data));
        let size_bytes = data.len() as u64;
        self.put(key, Bytes::from(data)).await?;
        Ok(StoredObject { key: key.to_string(), size_bytes, sha256 })
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let wrap = |source| StoreError::Object { key: key.to_string(), source };
        self.inner.get(&ObjectPath::from(key)).await.map_err(wrap)?.bytes().await.map_err(wrap)
    }

    /// Where a client fetches an object: a `file://` URL for local stores.
    pub fn fetch_url(&self, key: &str) -> Result<String, StoreError> {
        match &self.local_root {
            Some(root) => url::Url::from_file_path(root.join(key)).map(|u| u.to_string()).map_err(|()| StoreError::Url {
                url: self.url.clone(),
                reason: format!("cannot make a file URL for {key}"),
            }),
            None => Err(StoreError::Url { url: self.url.clone(), reason: "no fetch URL for this store".into() }),
        }
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(&ObjectPath::from(key), bytes.into())
            .await
            .map(|_| ())
            .map_err(|source| StoreError::Object { key: key.to_string(), source })
    }
}

fn encode_latents(latents: &Latents) -> Result<Vec<u8>, String> {
    let bytes: Vec<u8> = latents.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, latents.shape.to_vec(), &bytes).map_err(|e| e.to_string())?;
    safetensors::serialize([(LATENTS_TENSOR, view)], None).map_err(|e| e.to_string())
}

fn decode_latents(bytes: &[u8]) -> Result<Latents, String> {
    let tensors = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let view = tensors.tensor(LATENTS_TENSOR).map_err(|e| e.to_string())?;
    if view.dtype() != Dtype::F32 {
        return Err(format!("tensor {LATENTS_TENSOR} is {:?}, expected F32", view.dtype()));
    }
    let shape: [usize; 4] =
        view.shape().try_into().map_err(|_| format!("tensor {LATENTS_TENSOR} has shape {:?}, expected 4 dims", view.shape()))?;
    let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Latents::new(shape, data).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn latents_and_files_round_trip_through_a_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(dir.path()).unwrap();
        let latents = Latents::new([2, 3, 1, 2], (0..12).map(|v| v as f32 * 0.5).collect()).unwrap();
        let key = ArtifactStore::chunk_key("j1", 3);
        assert!(!store.exists(&key).await.unwrap());
        store.put_latents(&key, &latents).await.unwrap();
        assert!(store.exists(&key).await.unwrap());
        assert_eq!(store.get_latents(&key).await.unwrap(), latents);

        let file = dir.path().join("clip-src.bin");
        std::fs::write(&file, b"hello").unwrap();
        let stored = store.put_file(&ArtifactStore::clip_key("j1"), &file).await.unwrap();
        assert_eq!(stored.size_bytes, 5);
        assert_eq!(stored.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        let url = store.fetch_url(&stored.key).unwrap();
        assert!(url.starts_with("file://") && url.ends_with("jobs/j1/clip.mp4"), "{url}");
        assert_eq!(std::fs::read(url::Url::parse(&url).unwrap().to_file_path().unwrap()).unwrap(), b"hello");
    }

    #[tokio::test]
    async fn bad_urls_and_objects_are_clear_errors() {
        assert!(matches!(ArtifactStore::from_url("gs://bucket"), Err(StoreError::Url { .. })));
        assert!(matches!(ArtifactStore::from_url("not a url"), Err(StoreError::Url { .. })));
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(dir.path()).unwrap();
        let err = store.get_latents("jobs/x/missing").await.unwrap_err();
        assert!(err.to_string().contains("jobs/x/missing"), "{err}");
        store.put("jobs/x/garbage", Bytes::from_static(b"not safetensors")).await.unwrap();
        assert!(matches!(store.get_latents("jobs/x/garbage").await, Err(StoreError::Latents { .. })));
    }
}
