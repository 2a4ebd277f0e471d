//! The S3 backend: a bucket (and key prefix) on AWS or any S3-compatible server, built from
//! explicit options over the standard `AWS_*` environment, and a start-up probe that says
//! plainly when the bucket is missing or the credentials are wrong.

use crate::{StoreError, StoreOptions};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use std::sync::Arc;
use std::time::Duration;

/// One bucket and the key prefix under it.
#[derive(Debug)]
pub(crate) struct S3Bucket {
    pub client: Arc<AmazonS3>,
    pub bucket: String,
    pub prefix: ObjectPath,
    /// As shown in errors: the configured endpoint, or AWS's for the region.
    pub endpoint: String,
    pub presign_expiry: Duration,
}

/// Parses `s3://bucket/prefix` and builds the client; no request is made.
pub(crate) fn open(url: &url::Url, options: &StoreOptions) -> Result<S3Bucket, StoreError> {
    let bad = |reason: String| StoreError::Url { url: url.to_string(), reason };
    let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| bad("no bucket: use s3://bucket/prefix".into()))?;
    let prefix = ObjectPath::parse(url.path().trim_matches('/')).map_err(|e| bad(format!("key prefix: {e}")))?;
    let (builder, endpoint) = configure(AmazonS3Builder::from_env(), bucket, options);
    let client = builder.build().map_err(|e| bad(e.to_string()))?;
    Ok(S3Bucket { client: Arc::new(client), bucket: bucket.to_string(), prefix, endpoint, presign_expiry: options.s3.presign_expiry })
}

/// Lays vidfarm's settings over `builder` (the standard `AWS_*` variables): the explicit ones,
/// where given, win; `allow_http` and `virtual_hosted_style` only switch on, so the variables'
/// own `AWS_ALLOW_HTTP` and the rest of the HTTP client's (`AWS_PROXY_URL`, `AWS_TIMEOUT`, ...)
/// stay. Returns the builder and the endpoint, as errors show it.
fn configure(mut builder: AmazonS3Builder, bucket: &str, options: &StoreOptions) -> (AmazonS3Builder, String) {
    let s3 = &options.s3;
    builder = builder.with_bucket_name(bucket);
    let given = |value: &Option<String>| value.as_deref().filter(|v| !v.is_empty()).map(str::to_string);
    if let Some(endpoint) = given(&s3.endpoint) {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = given(&s3.region) {
        builder = builder.with_region(region);
    }
    if let Some(key_id) = given(&s3.access_key_id) {
        builder = builder.with_access_key_id(key_id);
    }
    if let Some(secret) = given(&s3.secret_access_key) {
        builder = builder.with_secret_access_key(secret);
    }
    let endpoint = builder
        .get_config_value(&object_store::aws::AmazonS3ConfigKey::Endpoint)
        .unwrap_or_else(|| {
            let region = builder.get_config_value(&object_store::aws::AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
            format!("https://s3.{region}.amazonaws.com")
        });
    if s3.allow_http || is_loopback(&endpoint) {
        builder = builder.with_allow_http(true);
    }
    if s3.virtual_hosted_style {
        builder = builder.with_virtual_hosted_style_request(true);
    }
    let retry = RetryConfig {
        backoff: BackoffConfig { init_backoff: Duration::from_millis(200), max_backoff: Duration::from_secs(10), base: 2.0 },
        max_retries: s3.retry_max,
        retry_timeout: s3.retry_timeout,
    };
    (builder.with_retry(retry), endpoint)
}

impl S3Bucket {
    /// The object's full path in the bucket.
    pub fn full_path(&self, key: &str) -> ObjectPath {
        self.prefix.parts().chain(ObjectPath::from(key).parts()).collect()
    }

    pub async fn presign_get(&self, key: &str, expires_in: Duration) -> Result<String, object_store::Error> {
        let url = self.client.signed_url(reqwest::Method::GET, &self.full_path(key), expires_in).await?;
        Ok(url.to_string())
    }

    /// Lists the bucket (one page) once, through a presigned URL so the answer's status and S3 error code
    /// can be read: a missing bucket, refused credentials or an unreachable endpoint each get a
    /// clear error naming the bucket and endpoint. Refused, it lists under the key prefix, which
    /// is all the farm needs.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let fail = |reason: String| StoreError::Bucket { bucket: self.bucket.clone(), endpoint: self.endpoint.clone(), reason };
        let url = self
            .client
            .signed_url(reqwest::Method::GET, &ObjectPath::default(), Duration::from_secs(60))
            .await
            .map_err(|e| fail(format!("cannot sign a request: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| fail(format!("HTTP client: {e}")))?;
        let response = http.get(url.as_str()).send().await.map_err(|e| fail(format!("cannot reach the endpoint: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        let code = s3_error_code(&body).unwrap_or_default();
        // A least-privilege policy may allow listing only under the farm's prefix, which the
        // presigned URL cannot ask for without signing it: the client's own list does.
        if matches!(status.as_u16(), 401 | 403) && code != "NoSuchBucket" {
            match self.client.list_with_delimiter(Some(&self.prefix)).await {
                Ok(_) => return Ok(()),
                Err(error) => tracing::debug!(%error, "listing under the prefix was refused too"),
            }
        }
        let reason = match (status.as_u16(), code.as_str()) {
            (404, _) | (_, "NoSuchBucket") => "the bucket does not exist".to_string(),
            (401 | 403, _) => format!(
                "access denied ({code}): check the access key id and secret (s3.access_key_id, s3.secret_access_key or AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
            ),
            _ => format!("HTTP {status} {code}"),
        };
        Err(fail(reason))
    }
}

/// The `<Code>` of an S3 XML error body.
fn s3_error_code(body: &str) -> Option<String> {
    let start = body.find("<Code>")? + "<Code>".len();
    let end = body[start..].find("</Code>")? + start;
    Some(body[start..end].to_string())
}

/// Whether a `scheme://host:port` address is on this machine, where plain HTTP is fine.
pub fn is_loopback(endpoint: &str) -> bool {
    match url::Url::parse(endpoint).ok().and_then(|u| u.host().map(|h| h.to_owned())) {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_and_error_codes() {
        assert!(is_loopback("http://127.0.0.1:9000"));
        assert!(is_loopback("http://localhost:9000"));
        assert!(is_loopback("http://[::1]:9000"));
        assert!(!is_loopback("http://minio.internal:9000"));
        assert_eq!(s3_error_code("<Error><Code>NoSuchBucket</Code></Error>").as_deref(), Some("NoSuchBucket"));
        assert_eq!(s3_error_code("nothing"), None);
    }

    #[test]
    fn bucket_prefix_and_endpoint_come_from_the_url_and_options() {
        let mut options = StoreOptions::default();
        options.s3.endpoint = Some("http://127.0.0.1:1".into());
        let s3 = open(&url::Url::parse("s3://clips/farm/a").unwrap(), &options).unwrap();
        assert_eq!(s3.bucket, "clips");
        assert_eq!(s3.endpoint, "http://127.0.0.1:1");
        assert_eq!(s3.full_path("jobs/j/clip.mp4").as_ref(), "farm/a/jobs/j/clip.mp4");
        let err = open(&url::Url::parse("s3:///x").unwrap(), &options).unwrap_err();
        assert!(err.to_string().contains("no bucket"), "{err}");
    }

    /// A bucket whose policy lets the farm list only under its key prefix (403 for the whole
    /// bucket) passes the start-up probe; one that refuses that too is still access denied.
    #[tokio::test]
    async fn a_bucket_listable_only_under_the_prefix_passes_the_probe() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        // An S3 endpoint that answers a list under "farm/" with an empty page, all else with 403.
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let request_line = String::from_utf8_lossy(&request).lines().next().unwrap_or_default().to_string();
                    let (status, body) = if request_line.contains("prefix=farm") {
                        ("200 OK", "<ListBucketResult><Name>clips</Name><Prefix>farm/</Prefix><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>")
                    } else {
                        ("403 Forbidden", "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>")
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        let mut options = StoreOptions::default();
        options.s3.endpoint = Some(endpoint);
        options.s3.region = Some("us-east-1".into());
        options.s3.access_key_id = Some("farm".into());
        options.s3.secret_access_key = Some("secret".into());
        let farm = open(&url::Url::parse("s3://clips/farm").unwrap(), &options).unwrap();
        farm.probe().await.expect("listing under the prefix is allowed");
        let other = open(&url::Url::parse("s3://clips/other").unwrap(), &options).unwrap();
        let err = other.probe().await.unwrap_err().to_string();
        assert!(err.contains("\"clips\"") && err.contains("access denied (AccessDenied)"), "{err}");
    }

    /// The standard variables' HTTP client settings outlast vidfarm's: plain HTTP allowed by
    /// `AWS_ALLOW_HTTP` stays allowed, and a proxy stays set.
    #[test]
    fn the_aws_client_variables_are_kept() {
        use object_store::ClientConfigKey;
        use object_store::aws::AmazonS3ConfigKey;
        let mut options = StoreOptions::default();
        options.s3.endpoint = Some("http://minio.internal:9000".into());
        let from_env = AmazonS3Builder::new()
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp), "true")
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ProxyUrl), "http://proxy.internal:3128")
            .with_config(AmazonS3ConfigKey::VirtualHostedStyleRequest, "true");
        let (builder, endpoint) = configure(from_env, "clips", &options);
        assert_eq!(endpoint, "http://minio.internal:9000");
        let value = |key| builder.get_config_value(&key);
        assert_eq!(value(AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp)).as_deref(), Some("true"));
        assert_eq!(value(AmazonS3ConfigKey::Client(ClientConfigKey::ProxyUrl)).as_deref(), Some("http://proxy.internal:3128"));
        assert_eq!(value(AmazonS3ConfigKey::VirtualHostedStyleRequest).as_deref(), Some("true"));

        // Without the variable, a remote endpoint is HTTPS only unless the setting says otherwise.
        let (builder, _) = configure(AmazonS3Builder::new(), "clips", &options);
        assert_ne!(builder.get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp)).as_deref(), Some("true"));
        options.s3.allow_http = true;
        let (builder, _) = configure(AmazonS3Builder::new(), "clips", &options);
        assert_eq!(builder.get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp)).as_deref(), Some("true"));
    }
}
