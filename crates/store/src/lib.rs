//! Where a job's artifacts live: chunk latents (safetensors) and the finished clip (MP4),
//! under per-job keys in an object store: local files or an S3 bucket, one code path above
//! `object_store`'s backends.

mod s3;
pub use s3::is_loopback;
#[cfg(any(test, feature = "test-server"))]
pub mod test_server;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{Attribute, Attributes, MultipartUpload, ObjectStore, PutMultipartOptions, PutPayload};
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use vidfarm_plan::Latents;

/// The tensor name under which latents are stored.
pub const LATENTS_TENSOR: &str = "latents";

/// Parts of a multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

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
    #[error("S3 bucket {bucket:?} at {endpoint}: {reason}")]
    Bucket { bucket: String, endpoint: String, reason: String },
}

impl StoreError {
    /// Whether the object asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::Object { source: object_store::Error::NotFound { .. }, .. })
    }

    /// Whether the error may pass by itself (the server unreachable or failing after the
    /// client's retries), rather than needing a person (S3 refusing access, a bad URL or
    /// object, a local folder that cannot be written).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Object { source: source @ object_store::Error::Generic { .. }, .. } => !needs_a_person(source),
            StoreError::Object { source: object_store::Error::JoinError { .. }, .. } => true,
            _ => false,
        }
    }
}

/// Whether a local file error under `error` is one that waiting will not mend: object_store
/// reports local errors as `Generic`, as it does a network's, so only the I/O error's kind tells.
fn needs_a_person(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return matches!(io.kind(), PermissionDenied | ReadOnlyFilesystem | NotADirectory | IsADirectory | StorageFull | QuotaExceeded);
        }
        cause = error.source();
    }
    false
}

/// How to reach and write a store; all but `part_size` concern S3 only.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Size of each part of a multipart upload (S3 wants at least 5 MiB for all but the last).
    pub part_size: usize,
    pub s3: S3Options,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { part_size: 8 << 20, s3: S3Options::default() }
    }
}

/// S3 connection settings; `None` or empty leaves a value to the `AWS_*` environment.
#[derive(Clone, Debug)]
pub struct S3Options {
    /// `http(s)://host:port` of an S3-compatible server; AWS when unset.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Plain HTTP to a non-loopback endpoint (loopback is always allowed).
    pub allow_http: bool,
    /// `bucket.host/key` instead of `host/bucket/key`.
    pub virtual_hosted_style: bool,
    /// How long a presigned fetch URL stays valid.
    pub presign_expiry: Duration,
    /// Retries of one request (connection refused, 5xx, throttling) with exponential backoff ...
    pub retry_max: usize,
    /// ... for at most this long, after which the error reaches the worker (which retries the task).
    pub retry_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            virtual_hosted_style: false,
            presign_expiry: Duration::from_secs(3600),
            retry_max: 15,
            retry_timeout: Duration::from_secs(120),
        }
    }
}

/// A stored clip's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub size_bytes: u64,
    pub sha256: String,
}

/// Which frames of a sync-mode chunk an object holds ([`ArtifactStore::sync_key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPart {
    Whole,
    Head,
    Tail,
}

#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<dyn ObjectStore>,
    backend: Arc<Backend>,
    part_size: usize,
    url: String,
}

#[derive(Debug)]
enum Backend {
    /// The root folder, used to hand out `file://` URLs.
    Local(PathBuf),
    S3(s3::S3Bucket),
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore").field("url", &self.url).finish()
    }
}

impl ArtifactStore {
    /// Opens a store with default options; see [`ArtifactStore::open`].
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        Self::open(url, &StoreOptions::default())
    }

    /// Opens a store from a URL: `file:///absolute/path` (created if missing) or
    /// `s3://bucket/prefix`. Makes no request; [`ArtifactStore::check`] does.
    pub fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::Url { url: url.to_string(), reason: reason.to_string() };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let (inner, backend): (Arc<dyn ObjectStore>, Backend) = match parsed.scheme() {
            "file" => {
                let root = parsed.to_file_path().map_err(|()| bad("not an absolute file path"))?;
                std::fs::create_dir_all(&root).map_err(|source| StoreError::Local { path: root.clone(), source })?;
                // Deleting a job's last object removes its folders too: a sync job leaves one per step.
                let fs = LocalFileSystem::new_with_prefix(&root).map_err(|e| bad(&e.to_string()))?.with_automatic_cleanup(true);
                (Arc::new(fs), Backend::Local(root))
            }
            "s3" => {
                let bucket = s3::open(&parsed, options)?;
                let client: Arc<dyn ObjectStore> = bucket.client.clone();
                (Arc::new(PrefixStore::new(client, bucket.prefix.clone())), Backend::S3(bucket))
            }
            other => return Err(bad(&format!("unsupported scheme {other:?}: use file:///path or s3://bucket/prefix"))),
        };
        Ok(Self { inner, backend: Arc::new(backend), part_size: options.part_size.max(1), url: url.to_string() })
    }

    /// A `file://` store rooted at a local folder.
    pub fn local(root: &Path) -> Result<Self, StoreError> {
        let root = std::path::absolute(root).map_err(|source| StoreError::Local { path: root.to_path_buf(), source })?;
        let url = url::Url::from_directory_path(&root)
            .map_err(|()| StoreError::Url { url: root.display().to_string(), reason: "not a folder path".into() })?;
        Self::from_url(url.as_str())
    }

    /// Checks at start-up that the store can be used: for S3, that the bucket exists and the
    /// credentials are accepted, with an error naming the bucket and endpoint if not.
    pub async fn check(&self) -> Result<(), StoreError> {
        match self.backend.as_ref() {
            Backend::Local(_) => Ok(()),
            Backend::S3(bucket) => bucket.probe().await,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn chunk_key(job_id: &str, chunk: u32) -> String {
        format!("jobs/{job_id}/chunks/{chunk:05}.safetensors")
    }

    /// Sync mode: a chunk's latents after `steps` denoising steps, whole or only the frames it
    /// shares with earlier (`Head`) or later (`Tail`) chunks, which its neighbours read. Grouped
    /// by step ([`ArtifactStore::sync_step_prefix`]), so a step's objects go once every chunk
    /// has taken the next; under the chunks folder, so any left go with the other intermediates.
    pub fn sync_key(job_id: &str, chunk: u32, steps: u32, part: SyncPart) -> String {
        let part = match part {
            SyncPart::Whole => "whole",
            SyncPart::Head => "head",
            SyncPart::Tail => "tail",
        };
        format!("{}/{chunk:05}-{part}.safetensors", Self::sync_step_prefix(job_id, steps))
    }

    /// The folder of every chunk's sync-mode latents after `steps` steps.
    pub fn sync_step_prefix(job_id: &str, steps: u32) -> String {
        format!("jobs/{job_id}/chunks/sync/{steps:04}")
    }

    pub fn clip_key(job_id: &str) -> String {
        format!("jobs/{job_id}/clip.mp4")
    }

    /// The folder of all of a job's objects.
    pub fn job_prefix(job_id: &str) -> String {
        format!("jobs/{job_id}")
    }

    /// The folder of a job's chunk latents, the intermediates removed once its clip is stored.
    pub fn chunks_prefix(job_id: &str) -> String {
        format!("jobs/{job_id}/chunks")
    }

    /// Deletes every object under a key prefix (a folder); returns how many this call deleted.
    /// Objects that another deleter removed meanwhile are not an error.
    pub async fn delete_under(&self, prefix: &str) -> Result<usize, StoreError> {
        let listed = self.inner.list(Some(&ObjectPath::from(prefix))).map_ok(|meta| meta.location).boxed();
        let mut results = self.inner.delete_stream(listed);
        let mut deleted = 0;
        while let Some(result) = results.next().await {
            match result {
                Ok(_) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(StoreError::Object { key: prefix.to_string(), source }),
            }
        }
        Ok(deleted)
    }

    /// Deletes one object; one already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StoreError::Object { key: key.to_string(), source }),
        }
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

    /// Streams a local file up as a multipart upload, hashing it on the way; the object
    /// appears whole when the upload completes, or not at all: any failure, of a read, a part
    /// or the completion, aborts the upload, so no parts are left in the bucket.
    pub async fn put_file(&self, key: &str, file: &Path, content_type: &str) -> Result<StoredObject, StoreError> {
        let object_err = |source| StoreError::Object { key: key.to_string(), source };
        let mut reader = tokio::fs::File::open(file).await.map_err(|source| StoreError::Local { path: file.to_path_buf(), source })?;
        let mut attributes = Attributes::new();
        // Local files carry no attributes (the backend refuses them).
        if matches!(self.backend.as_ref(), Backend::S3(_)) {
            attributes.insert(Attribute::ContentType, content_type.to_string().into());
        }
        let options = PutMultipartOptions { attributes, ..Default::default() };
        let mut upload = self.inner.put_multipart_opts(&ObjectPath::from(key), options).await.map_err(object_err)?;
        let sent = match send_parts(upload.as_mut(), &mut reader, self.part_size).await {
            Ok(sent) => upload.complete().await.map(|_| sent).map_err(object_err),
            Err(PartError::Read(source)) => Err(StoreError::Local { path: file.to_path_buf(), source }),
            Err(PartError::Upload(source)) => Err(object_err(source)),
        };
        match sent {
            Ok((size_bytes, sha256)) => Ok(StoredObject { key: key.to_string(), size_bytes, sha256 }),
            Err(error) => {
                if let Err(abort_error) = upload.abort().await {
                    tracing::warn!(key, error = %abort_error, "could not abort a multipart upload; the bucket's lifecycle rules must remove its parts");
                }
                Err(error)
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let wrap = |source| StoreError::Object { key: key.to_string(), source };
        self.inner.get(&ObjectPath::from(key)).await.map_err(wrap)?.bytes().await.map_err(wrap)
    }

    /// Where a client fetches an object: a `file://` URL for local stores, a presigned GET
    /// URL (valid for the configured expiry) for S3.
    pub async fn fetch_url(&self, key: &str) -> Result<String, StoreError> {
        match self.backend.as_ref() {
            Backend::Local(_) => self.local_url(key).ok_or_else(|| StoreError::Url {
                url: self.url.clone(),
                reason: format!("cannot make a file URL for {key}"),
            }),
            Backend::S3(bucket) => bucket
                .presign_get(key, bucket.presign_expiry)
                .await
                .map_err(|source| StoreError::Object { key: key.to_string(), source }),
        }
    }

    /// The `file://` URL of an object of a local store; `None` for S3.
    pub fn local_url(&self, key: &str) -> Option<String> {
        match self.backend.as_ref() {
            Backend::Local(root) => url::Url::from_file_path(root.join(key)).ok().map(|u| u.to_string()),
            Backend::S3(_) => None,
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

enum PartError {
    Read(std::io::Error),
    Upload(object_store::Error),
}

/// Sends what `reader` holds as parts of `part_size` bytes (the last one shorter), up to
/// `PARTS_IN_FLIGHT` at once; returns its size and sha256 once every part is up. Stops at the
/// first failure, with the parts still in flight stopped.
async fn send_parts(upload: &mut dyn MultipartUpload, reader: &mut tokio::fs::File, part_size: usize) -> Result<(u64, String), PartError> {
    let mut in_flight = tokio::task::JoinSet::new();
    let sent: Result<_, PartError> = async {
        let mut hasher = Sha256::new();
        let mut size_bytes = 0u64;
        loop {
            let mut part = Vec::with_capacity(part_size);
            (&mut *reader).take(part_size as u64).read_to_end(&mut part).await.map_err(PartError::Read)?;
            if part.is_empty() {
                break;
            }
            while in_flight.len() >= PARTS_IN_FLIGHT {
                part_sent(in_flight.join_next().await)?;
            }
            hasher.update(&part);
            size_bytes += part.len() as u64;
            let last = part.len() < part_size;
            in_flight.spawn(upload.put_part(PutPayload::from(part)));
            if last {
                break;
            }
        }
        while let Some(joined) = in_flight.join_next().await {
            part_sent(Some(joined))?;
        }
        Ok((size_bytes, hex::encode(hasher.finalize())))
    }
    .await;
    if sent.is_err() {
        // Ended before the upload is aborted, which must not race a part still going up.
        in_flight.shutdown().await;
    }
    sent
}

fn part_sent(joined: Option<Result<object_store::Result<()>, tokio::task::JoinError>>) -> Result<(), PartError> {
    match joined {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(error))) => Err(PartError::Upload(error)),
        Some(Err(join_error)) => Err(PartError::Upload(object_store::Error::JoinError { source: join_error })),
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
        let stored = store.put_file(&ArtifactStore::clip_key("j1"), &file, "video/mp4").await.unwrap();
        assert_eq!(stored.size_bytes, 5);
        assert_eq!(stored.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        let url = store.fetch_url(&stored.key).await.unwrap();
        assert!(url.starts_with("file://") && url.ends_with("jobs/j1/clip.mp4"), "{url}");
        assert_eq!(std::fs::read(url::Url::parse(&url).unwrap().to_file_path().unwrap()).unwrap(), b"hello");

        assert_eq!(store.delete_under(&ArtifactStore::chunks_prefix("j1")).await.unwrap(), 1);
        assert!(!store.exists(&key).await.unwrap());
        assert!(store.exists(&stored.key).await.unwrap(), "only the chunks go");
        assert_eq!(store.delete_under(&ArtifactStore::chunks_prefix("j1")).await.unwrap(), 0);
    }

    /// One sync step's objects go together, leaving the other steps' and the chunks'; deleting
    /// them again (a second worker past the same barrier) finds none and is no error. So does
    /// one object deleted twice.
    async fn sync_steps_are_deleted_one_at_a_time(store: &ArtifactStore) {
        let latents = Latents::new([1, 1, 1, 2], vec![0.5, -0.5]).unwrap();
        for steps in [1, 2] {
            for chunk in [0, 1] {
                for part in [SyncPart::Whole, SyncPart::Tail] {
                    store.put_latents(&ArtifactStore::sync_key("j3", chunk, steps, part), &latents).await.unwrap();
                }
            }
        }
        store.put_latents(&ArtifactStore::chunk_key("j3", 0), &latents).await.unwrap();
        assert_eq!(store.delete_under(&ArtifactStore::sync_step_prefix("j3", 1)).await.unwrap(), 4);
        assert_eq!(store.delete_under(&ArtifactStore::sync_step_prefix("j3", 1)).await.unwrap(), 0);
        let gone = store.get_latents(&ArtifactStore::sync_key("j3", 1, 1, SyncPart::Tail)).await.unwrap_err();
        assert!(gone.is_not_found(), "{gone}");
        assert_eq!(store.get_latents(&ArtifactStore::sync_key("j3", 1, 2, SyncPart::Tail)).await.unwrap(), latents);
        assert!(store.exists(&ArtifactStore::chunk_key("j3", 0)).await.unwrap());
        assert_eq!(store.delete_under(&ArtifactStore::chunks_prefix("j3")).await.unwrap(), 5);
        // One object alone, twice: the second finds it gone, which is no error.
        store.put_latents(&ArtifactStore::chunk_key("j3", 1), &latents).await.unwrap();
        for _ in 0..2 {
            store.delete(&ArtifactStore::chunk_key("j3", 1)).await.unwrap();
            assert!(!store.exists(&ArtifactStore::chunk_key("j3", 1)).await.unwrap());
        }
    }

    #[tokio::test]
    async fn sync_steps_are_deleted_one_at_a_time_in_a_local_store() {
        let dir = tempfile::tempdir().unwrap();
        sync_steps_are_deleted_one_at_a_time(&ArtifactStore::local(dir.path()).unwrap()).await;
    }

    /// A local store removes the folders its deletes leave empty (a sync job's hold one per
    /// step), up to its root and no further.
    #[tokio::test]
    async fn a_local_store_removes_emptied_folders() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(dir.path()).unwrap();
        let latents = Latents::new([1, 1, 1, 2], vec![0.5, -0.5]).unwrap();
        store.put_latents(&ArtifactStore::sync_key("j4", 0, 1, SyncPart::Whole), &latents).await.unwrap();
        store.put_latents(&ArtifactStore::chunk_key("j4", 0), &latents).await.unwrap();
        assert_eq!(store.delete_under(&ArtifactStore::sync_step_prefix("j4", 1)).await.unwrap(), 1);
        let chunk_folder = dir.path().join(ArtifactStore::chunk_key("j4", 0)).parent().unwrap().to_path_buf();
        assert_eq!(std::fs::read_dir(&chunk_folder).unwrap().count(), 1, "only the chunk is left in {}", chunk_folder.display());
        store.delete(&ArtifactStore::chunk_key("j4", 0)).await.unwrap();
        assert!(!dir.path().join("jobs").exists(), "the job's folders are gone");
        assert!(dir.path().exists(), "the root stays");
        store.put_latents(&ArtifactStore::chunk_key("j4", 1), &latents).await.unwrap();
        assert!(store.exists(&ArtifactStore::chunk_key("j4", 1)).await.unwrap(), "and takes new objects");
    }

    /// A local store whose multipart uploads fail at one part, and which counts their aborts:
    /// the failures S3 gives and a local disk does not.
    #[derive(Debug)]
    struct FailingPart {
        inner: LocalFileSystem,
        /// Which part of each upload fails, from 1; 0 for none.
        failing_part: usize,
        aborts: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[derive(Debug)]
    struct FailingUpload {
        inner: Box<dyn MultipartUpload>,
        parts: usize,
        failing_part: usize,
        aborts: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl std::fmt::Display for FailingPart {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "FailingPart({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl MultipartUpload for FailingUpload {
        fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
            self.parts += 1;
            if self.parts == self.failing_part {
                let source = format!("part {} refused (injected)", self.parts).into();
                return Box::pin(async move { Err(object_store::Error::Generic { store: "FailingPart", source }) });
            }
            self.inner.put_part(data)
        }
        async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
            self.inner.complete().await
        }
        async fn abort(&mut self) -> object_store::Result<()> {
            self.aborts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.abort().await
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for FailingPart {
        async fn put_opts(&self, location: &ObjectPath, payload: PutPayload, opts: object_store::PutOptions) -> object_store::Result<object_store::PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(&self, location: &ObjectPath, opts: PutMultipartOptions) -> object_store::Result<Box<dyn MultipartUpload>> {
            let inner = self.inner.put_multipart_opts(location, opts).await?;
            Ok(Box::new(FailingUpload { inner, parts: 0, failing_part: self.failing_part, aborts: self.aborts.clone() }))
        }
        async fn get_opts(&self, location: &ObjectPath, options: object_store::GetOptions) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }
        async fn delete(&self, location: &ObjectPath) -> object_store::Result<()> {
            self.inner.delete(location).await
        }
        fn list(&self, prefix: Option<&ObjectPath>) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&ObjectPath>) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    /// An upload whose part fails, the last one included, is aborted, and no object appears;
    /// one whose parts all go up is whole, its parts in order.
    #[tokio::test]
    async fn an_upload_with_a_failed_part_is_aborted() {
        let source_dir = tempfile::tempdir().unwrap();
        let file = source_dir.path().join("clip.mp4");
        let data: Vec<u8> = (0..2500u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&file, &data).unwrap();
        let key = ArtifactStore::clip_key("j5");
        // Three parts: 1000, 1000 and 500 bytes.
        for failing_part in [0, 1, 2, 3] {
            let root = tempfile::tempdir().unwrap();
            let aborts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let inner = FailingPart { inner: LocalFileSystem::new_with_prefix(root.path()).unwrap(), failing_part, aborts: aborts.clone() };
            let store = ArtifactStore {
                inner: Arc::new(inner),
                backend: Arc::new(Backend::Local(root.path().to_path_buf())),
                part_size: 1000,
                url: "test".into(),
            };
            let put = store.put_file(&key, &file, "video/mp4").await;
            let aborted = aborts.load(std::sync::atomic::Ordering::SeqCst);
            if failing_part == 0 {
                let stored = put.unwrap();
                assert_eq!((stored.size_bytes, aborted), (2500, 0));
                assert_eq!(stored.sha256, hex::encode(Sha256::digest(&data)));
                assert_eq!(store.get(&key).await.unwrap(), data);
            } else {
                let error = put.unwrap_err().to_string();
                assert!(error.contains(&key) && error.contains(&format!("part {failing_part} refused")), "{error}");
                assert_eq!(aborted, 1, "part {failing_part} failed: the upload is aborted");
                assert!(!store.exists(&key).await.unwrap(), "part {failing_part} failed: no object");
            }
        }
    }

    /// A local write that cannot succeed (a file where the job's folder must go) is no transient
    /// error, unlike a store that is out of reach.
    #[tokio::test]
    async fn a_local_store_that_cannot_be_written_is_not_transient() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(dir.path()).unwrap();
        std::fs::write(dir.path().join("jobs"), b"not a folder").unwrap();
        let latents = Latents::new([1, 1, 1, 1], vec![1.0]).unwrap();
        let error = store.put_latents(&ArtifactStore::chunk_key("j6", 0), &latents).await.unwrap_err();
        assert!(!error.is_transient(), "{error:?}");
        let unreachable = StoreError::Object {
            key: "k".into(),
            source: object_store::Error::Generic { store: "S3", source: "error sending request: connection refused".into() },
        };
        assert!(unreachable.is_transient());
    }

    #[tokio::test]
    async fn bad_urls_and_objects_are_clear_errors() {
        assert!(matches!(ArtifactStore::from_url("gs://bucket"), Err(StoreError::Url { .. })));
        assert!(matches!(ArtifactStore::from_url("not a url"), Err(StoreError::Url { .. })));
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(dir.path()).unwrap();
        let err = store.get_latents("jobs/x/missing").await.unwrap_err();
        assert!(err.to_string().contains("jobs/x/missing"), "{err}");
        assert!(err.is_not_found());
        store.put("jobs/x/garbage", Bytes::from_static(b"not safetensors")).await.unwrap();
        let err = store.get_latents("jobs/x/garbage").await.unwrap_err();
        assert!(matches!(err, StoreError::Latents { .. }) && !err.is_not_found(), "{err}");
    }

    mod s3 {
        use super::*;
        use crate::test_server::S3TestServer;

        /// A deterministic, incompressible-looking payload.
        fn payload(len: usize) -> Vec<u8> {
            let mut state = 0x2545_f491_4f6c_dd1du64;
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        }

        async fn open(server: &S3TestServer, prefix: &str, options: &StoreOptions) -> ArtifactStore {
            let store = ArtifactStore::open(&format!("s3://{}/{prefix}", server.bucket), options).unwrap();
            store.check().await.unwrap();
            store
        }

        #[tokio::test]
        async fn a_clip_larger_than_a_part_goes_up_in_parts_and_reads_back_identical() {
            let Some(server) = S3TestServer::start("clips") else { return };
            let options = StoreOptions { part_size: 5 << 20, ..server.options() };
            let store = open(&server, "farm", &options).await;
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("clip.mp4");
            let data = payload(12 << 20);
            std::fs::write(&file, &data).unwrap();
            let key = ArtifactStore::clip_key("j1");
            let stored = store.put_file(&key, &file, "video/mp4").await.unwrap();
            assert_eq!(stored.size_bytes, data.len() as u64);
            assert_eq!(stored.sha256, hex::encode(Sha256::digest(&data)));
            // A multipart object's ETag ends with its number of parts.
            let meta = store.inner.head(&ObjectPath::from(key.as_str())).await.unwrap();
            assert!(meta.e_tag.as_deref().unwrap_or_default().trim_matches('"').ends_with("-3"), "{:?}", meta.e_tag);
            let got = store.inner.get(&ObjectPath::from(key.as_str())).await.unwrap();
            assert_eq!(got.attributes.get(&Attribute::ContentType).map(|v| v.as_ref()), Some("video/mp4"));
            assert_eq!(got.bytes().await.unwrap(), data);
            // The key prefix is a folder in the bucket.
            assert_eq!(std::fs::read(server.object_file("farm/jobs/j1/clip.mp4")).unwrap(), data);

            let latents = Latents::new([1, 2, 1, 2], vec![1.0, -2.0, 3.5, 0.25]).unwrap();
            let chunk = ArtifactStore::chunk_key("j1", 0);
            assert!(!store.exists(&chunk).await.unwrap());
            store.put_latents(&chunk, &latents).await.unwrap();
            assert!(store.exists(&chunk).await.unwrap());
            assert_eq!(store.get_latents(&chunk).await.unwrap(), latents);

            store.put_latents(&ArtifactStore::chunk_key("j1", 1), &latents).await.unwrap();
            assert_eq!(store.delete_under(&ArtifactStore::chunks_prefix("j1")).await.unwrap(), 2);
            assert!(!store.exists(&chunk).await.unwrap());
            assert!(store.exists(&key).await.unwrap(), "only the chunks go");
        }

        #[tokio::test]
        async fn sync_steps_are_deleted_one_at_a_time_in_s3() {
            let Some(server) = S3TestServer::start("steps") else { return };
            sync_steps_are_deleted_one_at_a_time(&open(&server, "farm", &server.options()).await).await;
        }

        #[tokio::test]
        async fn presigned_urls_fetch_the_clip_until_they_expire() {
            let Some(server) = S3TestServer::start("clips") else { return };
            let mut options = server.options();
            // The signature's date has whole seconds, so a URL can lapse up to a second early: 3 s of
            // validity leaves room for the first fetch, and the second comes after it surely lapsed.
            options.s3.presign_expiry = Duration::from_secs(3);
            let store = open(&server, "", &options).await;
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("clip.mp4");
            std::fs::write(&file, b"not really an mp4").unwrap();
            let stored = store.put_file(&ArtifactStore::clip_key("j2"), &file, "video/mp4").await.unwrap();
            let url = store.fetch_url(&stored.key).await.unwrap();
            assert!(url.starts_with(&format!("{}/clips/jobs/j2/clip.mp4?", server.endpoint())), "{url}");
            let response = reqwest::get(&url).await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.bytes().await.unwrap().as_ref(), b"not really an mp4");
            tokio::time::sleep(Duration::from_secs(4)).await;
            let expired = reqwest::get(&url).await.unwrap();
            assert_eq!(expired.status(), 403, "{}", expired.text().await.unwrap_or_default());
        }

        #[tokio::test]
        async fn an_outage_delays_a_write_instead_of_failing_it() {
            let Some(mut server) = S3TestServer::start("clips") else { return };
            let store = open(&server, "p", &server.options()).await;
            server.stop();
            let latents = Latents::new([1, 1, 1, 1], vec![7.0]).unwrap();
            let key = ArtifactStore::chunk_key("j3", 1);
            let write = {
                let store = store.clone();
                let (key, latents) = (key.clone(), latents.clone());
                tokio::spawn(async move { store.put_latents(&key, &latents).await })
            };
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(!write.is_finished(), "the write gave up during the outage: {:?}", write.await);
            server.resume();
            tokio::time::timeout(Duration::from_secs(60), write).await.unwrap().unwrap().unwrap();
            assert_eq!(store.get_latents(&key).await.unwrap(), latents);
        }

        #[tokio::test]
        async fn a_missing_bucket_or_wrong_credentials_is_a_clear_start_up_error() {
            let Some(server) = S3TestServer::start("clips") else { return };
            let missing = ArtifactStore::open("s3://no-such-bucket/x", &server.options()).unwrap();
            let err = missing.check().await.unwrap_err().to_string();
            assert!(err.contains("no-such-bucket") && err.contains(&server.endpoint()) && err.contains("does not exist"), "{err}");

            let mut wrong = server.options();
            wrong.s3.secret_access_key = Some("not-the-secret".into());
            let err = ArtifactStore::open("s3://clips/x", &wrong).unwrap().check().await.unwrap_err().to_string();
            assert!(err.contains("\"clips\"") && err.contains(&server.endpoint()) && err.contains("access denied"), "{err}");

            let mut unreachable = server.options();
            unreachable.s3.endpoint = Some("http://127.0.0.1:1".into());
            let err = ArtifactStore::open("s3://clips/x", &unreachable).unwrap().check().await.unwrap_err().to_string();
            assert!(err.contains("127.0.0.1:1") && err.contains("cannot reach"), "{err}");
        }
    }
}
