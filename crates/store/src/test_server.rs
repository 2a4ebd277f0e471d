//! A real S3-compatible server on loopback for tests: the `s3s-fs` binary (it checks request
//! signatures and presigned-URL expiry) over a temporary folder, one bucket made up front.
//! `tests/run.sh` installs it and names it in `VIDFARM_S3S_FS`.

use crate::{S3Options, StoreOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the `s3s-fs` binary.
pub const BINARY_ENV: &str = "VIDFARM_S3S_FS";
pub const ACCESS_KEY_ID: &str = "vidfarm-test";
pub const SECRET_ACCESS_KEY: &str = "vidfarm-test-secret";

pub struct S3TestServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    data: tempfile::TempDir,
    pub bucket: String,
}

impl S3TestServer {
    /// The binary, or `None` (with a note on stderr) when `VIDFARM_S3S_FS` is unset; a set
    /// variable naming no file is an error, so CI, which always sets it, never skips.
    pub fn binary() -> Option<PathBuf> {
        let Some(path) = std::env::var_os(BINARY_ENV) else {
            eprintln!("skipped: {BINARY_ENV} is unset (tests/run.sh installs s3s-fs and sets it)");
            return None;
        };
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{BINARY_ENV}={} is not a file", path.display());
        Some(path)
    }

    /// Starts a server with one empty bucket; `None` when the binary is not configured.
    pub fn start(bucket: &str) -> Option<Self> {
        let binary = Self::binary()?;
        let data = tempfile::tempdir().expect("a temporary folder for the S3 server");
        // A bucket is a folder of the data root.
        std::fs::create_dir(data.path().join(bucket)).expect("the bucket folder");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let mut server = Self { binary, child: None, port, data, bucket: bucket.to_string() };
        server.resume();
        Some(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the server keeps an object of the bucket.
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.data.path().join(&self.bucket).join(key)
    }

    /// Options that reach this server with its credentials.
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            s3: S3Options {
                endpoint: Some(self.endpoint()),
                region: Some("us-east-1".into()),
                access_key_id: Some(ACCESS_KEY_ID.into()),
                secret_access_key: Some(SECRET_ACCESS_KEY.into()),
                ..S3Options::default()
            },
            ..StoreOptions::default()
        }
    }

    /// Kills the server (an outage); the data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data, and waits until it accepts connections.
    pub fn resume(&mut self) {
        self.stop();
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY_ID, "--secret-key", SECRET_ACCESS_KEY])
            .arg(self.data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on port {} within 20 s", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}
