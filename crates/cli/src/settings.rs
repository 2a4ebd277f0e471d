//! Settings: `config/vidfarm.toml`'s defaults (compiled in, documented there), then a config
//! file, then `VIDFARM_<SECTION>_<KEY>` environment variables; flags override all three.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vidfarm_coordinator::ServerSecurity;
use vidfarm_coordinator::auth::ApiTokens;
use vidfarm_coordinator::reload::WatchedFiles;
use vidfarm_coordinator::tls::ServerTls;
use vidfarm_queue::RedisTls;

/// The documented defaults: the repository's config file itself.
const DEFAULTS: &str = include_str!("../../../config/vidfarm.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub worker: WorkerSettings,
    pub client: ClientSettings,
    pub log: LogSettings,
    pub s3: S3Settings,
    pub redis: RedisSettings,
    pub metrics: MetricsSettings,
    pub traces: TracesSettings,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    pub store: String,
    pub model: PathBuf,
    pub tls_cert: String,
    pub tls_key: String,
    pub tls_client_ca: String,
    pub auth_tokens_file: String,
    pub retention_hours: u64,
}

impl ServerSettings {
    /// The API's TLS and tokens, read from the files the settings name; errors name the key.
    pub fn security(&self) -> Result<ServerSecurity> {
        let tls = match read_pem_pair("server", &self.tls_cert, &self.tls_key)? {
            None if !self.tls_client_ca.is_empty() => {
                bail!("server.tls_client_ca asks clients for certificates, which needs TLS: set server.tls_cert and server.tls_key")
            }
            None => None,
            Some((cert, key)) => {
                let ca = read_optional("server.tls_client_ca", &self.tls_client_ca)?;
                // Checked now, before the server announces its address.
                let tls = ServerTls::new(&cert, &key, ca.as_deref()).map_err(|e| {
                    anyhow::anyhow!("server.tls_cert, server.tls_key, server.tls_client_ca: not a usable PEM certificate chain, key and CA: {e}")
                })?;
                let mut files = vec![PathBuf::from(&self.tls_cert), PathBuf::from(&self.tls_key)];
                let mut contents = vec![cert, key];
                if let Some(ca) = ca {
                    files.push(PathBuf::from(&self.tls_client_ca));
                    contents.push(ca);
                }
                Some((tls, WatchedFiles::new(files, contents)))
            }
        };
        let tokens = match self.auth_tokens_file.as_str() {
            "" => None,
            path => {
                let text = std::fs::read_to_string(path).with_context(|| format!("server.auth_tokens_file: reading {path}"))?;
                let tokens = ApiTokens::parse(&text).with_context(|| format!("server.auth_tokens_file {path}"))?;
                Some((tokens, WatchedFiles::new(vec![PathBuf::from(path)], vec![text.into_bytes()])))
            }
        };
        Ok(ServerSecurity { tls, tokens })
    }

    /// How long ended jobs are kept; `None` (0 hours) keeps them for ever.
    pub fn retention(&self) -> Option<Duration> {
        (self.retention_hours > 0).then(|| Duration::from_secs(self.retention_hours.saturating_mul(3600)))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub count: u32,
    pub lease_seconds: u64,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    pub addr: String,
    pub tls_ca: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub token: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: String,
    pub namespace: String,
    pub tls_ca: String,
    pub tls_cert: String,
    pub tls_key: String,
}

impl RedisSettings {
    /// The CA and client certificate for a rediss:// URL, read from the files the settings name.
    pub fn tls(&self) -> Result<RedisTls> {
        Ok(RedisTls { ca: read_optional("redis.tls_ca", &self.tls_ca)?, client_cert: read_pem_pair("redis", &self.tls_cert, &self.tls_key)? })
    }
}

/// The file a setting names, if it names one; errors name the setting.
pub fn read_optional(setting: &str, path: &str) -> Result<Option<Vec<u8>>> {
    match path {
        "" => Ok(None),
        path => std::fs::read(path).map(Some).with_context(|| format!("{setting}: reading {path}")),
    }
}

/// A certificate and its key, from `<section>.tls_cert` and `<section>.tls_key`: both or neither.
pub fn read_pem_pair(section: &str, cert: &str, key: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    if cert.is_empty() != key.is_empty() {
        bail!("{section}.tls_cert and {section}.tls_key go together: set both or neither");
    }
    let cert = read_optional(&format!("{section}.tls_cert"), cert)?;
    let key = read_optional(&format!("{section}.tls_key"), key)?;
    Ok(cert.zip(key))
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub allow_http: bool,
    pub virtual_hosted_style: bool,
    pub presign_expiry_seconds: u64,
    pub multipart_part_mib: u64,
    pub retry_max: u64,
    pub retry_timeout_seconds: u64,
}

/// S3's own limits: a presigned URL lives at most 7 days, and every part of a multipart upload
/// but the last holds 5 MiB to 5 GiB.
const LONGEST_PRESIGN_SECONDS: u64 = 7 * 24 * 3600;
const SMALLEST_PART_MIB: u64 = 5;
const LARGEST_PART_MIB: u64 = 5 * 1024;

impl S3Settings {
    /// Values S3 refuses only when a clip is stored or fetched are errors at start-up instead.
    fn check(&self) -> Result<()> {
        if !(1..=LONGEST_PRESIGN_SECONDS).contains(&self.presign_expiry_seconds) {
            bail!("s3.presign_expiry_seconds = {}: S3 takes 1 to {LONGEST_PRESIGN_SECONDS} (7 days)", self.presign_expiry_seconds);
        }
        if !(SMALLEST_PART_MIB..=LARGEST_PART_MIB).contains(&self.multipart_part_mib) {
            bail!("s3.multipart_part_mib = {}: S3 takes parts of {SMALLEST_PART_MIB} to {LARGEST_PART_MIB} MiB", self.multipart_part_mib);
        }
        Ok(())
    }

    pub fn store_options(&self) -> vidfarm_store::StoreOptions {
        let given = |value: &str| (!value.is_empty()).then(|| value.to_string());
        vidfarm_store::StoreOptions {
            part_size: usize::try_from(self.multipart_part_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
            s3: vidfarm_store::S3Options {
                endpoint: given(&self.endpoint),
                region: given(&self.region),
                access_key_id: given(&self.access_key_id),
                secret_access_key: given(&self.secret_access_key),
                allow_http: self.allow_http,
                virtual_hosted_style: self.virtual_hosted_style,
                presign_expiry: std::time::Duration::from_secs(self.presign_expiry_seconds),
                retry_max: usize::try_from(self.retry_max).unwrap_or(usize::MAX),
                retry_timeout: std::time::Duration::from_secs(self.retry_timeout_seconds),
            },
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub listen: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesSettings {
    pub otlp_endpoint: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: String,
    pub level: String,
}

impl LogSettings {
    /// A format or level that would be read as another (`JSON` as text) is an error instead.
    fn check(&self) -> Result<()> {
        if !["text", "json"].contains(&self.format.as_str()) {
            bail!("log.format = {:?}: expected \"text\" or \"json\"", self.format);
        }
        // Read as tracing reads a level: in any case.
        if !["trace", "debug", "info", "warn", "error", "off"].contains(&self.level.to_ascii_lowercase().as_str()) {
            bail!("log.level = {:?}: expected trace, debug, info, warn, error or off", self.level);
        }
        Ok(())
    }
}

impl Settings {
    /// Loads the settings; `file` (or `VIDFARM_CONFIG`) names a TOML file layered over the defaults.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        Self::load_from(file, |name| std::env::var(name).ok())
    }

    fn load_from(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut table: toml::Table = DEFAULTS.parse().context("the built-in defaults")?;
        let file = file.map(Path::to_path_buf).or_else(|| env("VIDFARM_CONFIG").map(PathBuf::from));
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading config file {}", path.display()))?;
            let overlay: toml::Table = text.parse().with_context(|| format!("config file {} is not valid TOML", path.display()))?;
            merge(&mut table, overlay, &path)?;
        }
        for (section, values) in table.iter_mut() {
            let Some(values) = values.as_table_mut() else { continue };
            for (key, value) in values.iter_mut() {
                let name = format!("VIDFARM_{}_{}", section.to_uppercase(), key.to_uppercase());
                if let Some(raw) = env(&name) {
                    *value = parse_like(value, &raw).with_context(|| format!("environment variable {name}={raw:?}"))?;
                }
            }
        }
        let settings: Settings = toml::Value::Table(table).try_into().context("settings")?;
        settings.s3.check()?;
        settings.log.check()?;
        Ok(settings)
    }
}

/// Layers `overlay` over `base`; a section or key the defaults lack is a mistake worth naming.
fn merge(base: &mut toml::Table, overlay: toml::Table, path: &Path) -> Result<()> {
    for (section, values) in overlay {
        let Some(base_section) = base.get_mut(&section).and_then(|v| v.as_table_mut()) else {
            bail!("config file {}: unknown section [{section}]", path.display());
        };
        let toml::Value::Table(values) = values else {
            bail!("config file {}: [{section}] must be a table", path.display());
        };
        for (key, value) in values {
            match base_section.get(&key) {
                Some(old) if old.type_str() == value.type_str() => {
                    base_section.insert(key, value);
                }
                Some(old) => bail!("config file {}: {section}.{key} must be a {}", path.display(), old.type_str()),
                None => bail!("config file {}: unknown key {section}.{key}", path.display()),
            }
        }
    }
    Ok(())
}

/// Parses an environment value as the type the default has.
fn parse_like(default: &toml::Value, raw: &str) -> Result<toml::Value> {
    Ok(match default {
        toml::Value::Integer(_) => toml::Value::Integer(raw.trim().parse().context("expected an integer")?),
        toml::Value::Float(_) => toml::Value::Float(raw.trim().parse().context("expected a number")?),
        toml::Value::Boolean(_) => toml::Value::Boolean(raw.trim().parse().context("expected true or false")?),
        _ => toml::Value::String(raw.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_file_and_environment_layer_in_order() {
        let dir = std::env::temp_dir().join(format!("vidfarm-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("farm.toml");
        std::fs::write(&file, "[server]\nlisten = \"0.0.0.0:9000\"\n[worker]\ncount = 4\n").unwrap();
        let env = |name: &str| match name {
            "VIDFARM_WORKER_COUNT" => Some("8".to_string()),
            "VIDFARM_CLIENT_ADDR" => Some("http://farm:7700".to_string()),
            _ => None,
        };
        let s = Settings::load_from(Some(&file), env).unwrap();
        assert_eq!(s.server.listen, "0.0.0.0:9000");
        assert_eq!(s.worker.count, 8);
        assert_eq!(s.client.addr, "http://farm:7700");
        assert_eq!(s.worker.lease_seconds, 15);

        std::fs::write(&file, "[server]\nlisten = 5\n").unwrap();
        let err = format!("{:#}", Settings::load_from(Some(&file), |_| None).unwrap_err());
        assert!(err.contains("server.listen must be a string"), "{err}");
        std::fs::write(&file, "[server]\nlsten = \"x\"\n").unwrap();
        let err = format!("{:#}", Settings::load_from(Some(&file), |_| None).unwrap_err());
        assert!(err.contains("unknown key server.lsten"), "{err}");
        let err = format!("{:#}", Settings::load_from(None, |n| (n == "VIDFARM_WORKER_COUNT").then(|| "many".into())).unwrap_err());
        assert!(err.contains("VIDFARM_WORKER_COUNT"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jobs_are_kept_for_ever_unless_a_retention_is_set() {
        assert_eq!(Settings::load_from(None, |_| None).unwrap().server.retention(), None);
        let env = |name: &str| (name == "VIDFARM_SERVER_RETENTION_HOURS").then(|| "48".to_string());
        assert_eq!(Settings::load_from(None, env).unwrap().server.retention(), Some(Duration::from_secs(48 * 3600)));
    }

    /// Half-set TLS (the API's or Redis's) and unreadable or bad token files are errors naming
    /// the keys; nothing set serves plaintext to anyone.
    #[test]
    fn security_settings_that_cannot_work_are_errors_naming_the_key() {
        let server = |pairs: &[(&str, &str)]| {
            let mut server = Settings::load_from(None, |_| None).unwrap().server;
            for &(key, value) in pairs {
                let field = match key {
                    "tls_cert" => &mut server.tls_cert,
                    "tls_key" => &mut server.tls_key,
                    "tls_client_ca" => &mut server.tls_client_ca,
                    _ => &mut server.auth_tokens_file,
                };
                *field = value.to_string();
            }
            server.security().map(|_| ()).map_err(|e| format!("{e:#}"))
        };
        assert_eq!(server(&[]), Ok(()));
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "too-short\n").unwrap();
        let tokens = tokens.display().to_string();
        for (pairs, says) in [
            (vec![("tls_cert", "/x/tls.crt")], "server.tls_cert and server.tls_key go together"),
            (vec![("tls_client_ca", "/x/ca.crt")], "server.tls_client_ca asks clients for certificates"),
            (vec![("tls_cert", "/x/tls.crt"), ("tls_key", "/x/tls.key")], "server.tls_cert: reading /x/tls.crt"),
            (vec![("auth_tokens_file", "/x/tokens")], "server.auth_tokens_file: reading /x/tokens"),
            (vec![("auth_tokens_file", tokens.as_str())], "line 1: a token must be at least 32 characters"),
        ] {
            let error = server(&pairs).unwrap_err();
            assert!(error.contains(says), "{pairs:?}: {error}");
        }

        let mut redis = Settings::load_from(None, |_| None).unwrap().redis;
        assert!(redis.tls().unwrap().ca.is_none());
        redis.tls_cert = "/x/client.crt".into();
        assert!(format!("{:#}", redis.tls().err().unwrap()).contains("redis.tls_cert and redis.tls_key go together"));
        redis.tls_key = "/x/client.key".into();
        assert!(format!("{:#}", redis.tls().err().unwrap()).contains("redis.tls_cert: reading /x/client.crt"));
    }

    #[test]
    fn s3_settings_become_store_options_leaving_empty_values_to_the_aws_environment() {
        let env = |name: &str| match name {
            "VIDFARM_S3_ENDPOINT" => Some("http://minio:9000".to_string()),
            "VIDFARM_S3_MULTIPART_PART_MIB" => Some("16".to_string()),
            _ => None,
        };
        let options = Settings::load_from(None, env).unwrap().s3.store_options();
        assert_eq!(options.s3.endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!((options.s3.region, options.s3.access_key_id), (None, None));
        assert_eq!(options.part_size, 16 << 20);
        assert!(!options.s3.virtual_hosted_style && !options.s3.allow_http);
        assert_eq!(options.s3.presign_expiry, std::time::Duration::from_secs(3600));
    }

    /// The error of loading the settings with one environment variable set.
    fn error_with(name: &str, value: &str) -> String {
        Settings::load_from(None, |n: &str| (n == name).then(|| value.to_string())).err().expect(name).to_string()
    }

    /// A presign expiry or part size S3 refuses is an error when the settings load, naming the key.
    #[test]
    fn s3_limits_are_checked_when_the_settings_load() {
        for (name, value, says) in [
            ("VIDFARM_S3_PRESIGN_EXPIRY_SECONDS", "1209600", "s3.presign_expiry_seconds = 1209600"),
            ("VIDFARM_S3_PRESIGN_EXPIRY_SECONDS", "0", "s3.presign_expiry_seconds = 0"),
            ("VIDFARM_S3_MULTIPART_PART_MIB", "4", "s3.multipart_part_mib = 4"),
        ] {
            let error = error_with(name, value);
            assert!(error.starts_with(says), "{error}");
        }
        let week = |n: &str| (n == "VIDFARM_S3_PRESIGN_EXPIRY_SECONDS").then(|| "604800".to_string());
        assert!(Settings::load_from(None, week).is_ok(), "7 days is S3's longest");
    }

    /// A part size past S3's 5 GiB, or a log format or level read as another, is an error when
    /// the settings load, naming the key (the part size panicked at the first clip before).
    #[test]
    fn part_size_and_log_settings_are_checked_when_the_settings_load() {
        for (name, value, says) in [
            ("VIDFARM_S3_MULTIPART_PART_MIB", "5121", "s3.multipart_part_mib = 5121"),
            ("VIDFARM_S3_MULTIPART_PART_MIB", "9223372036854775807", "s3.multipart_part_mib = 9223372036854775807"),
            ("VIDFARM_LOG_FORMAT", "JSON", "log.format = \"JSON\""),
            ("VIDFARM_LOG_LEVEL", "loud", "log.level = \"loud\""),
        ] {
            let error = error_with(name, value);
            assert!(error.starts_with(says), "{error}");
        }
        let largest = |n: &str| (n == "VIDFARM_S3_MULTIPART_PART_MIB").then(|| "5120".to_string());
        assert!(Settings::load_from(None, largest).is_ok(), "5 GiB is S3's largest part");
        let upper_case = |n: &str| (n == "VIDFARM_LOG_LEVEL").then(|| "INFO".to_string());
        assert!(Settings::load_from(None, upper_case).is_ok(), "a level in any case, as tracing reads it");
    }
}
