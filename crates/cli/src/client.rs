//! The client commands: the RenderService over gRPC.

use crate::output::{clip_json, is_final, job_bar, job_json, job_line, state_name, update_bar, worker_json, worker_line};
use crate::spec_args::SpecArgs;
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use crate::settings::{ClientSettings, read_optional, read_pem_pair};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use vidfarm_api::pb::{self, render_service_client::RenderServiceClient};

pub type Client = RenderServiceClient<InterceptedService<Channel, BearerToken>>;

/// Adds `authorization: Bearer <token>` to every call, when a token is set.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Connects to the coordinator at `addr` (`host:port` means `http://`); `https://` speaks TLS,
/// trusting `client.tls_ca` (or the system's roots) and presenting `client.tls_cert` when set.
pub async fn connect(addr: &str, client: &ClientSettings) -> Result<Client> {
    let addr = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let mut endpoint = Endpoint::from_shared(addr.clone()).with_context(|| format!("coordinator address {addr:?}"))?;
    if addr.starts_with("https://") {
        let mut tls = match read_optional("client.tls_ca", &client.tls_ca)? {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some((cert, key)) = read_pem_pair("client", &client.tls_cert, &client.tls_key)? {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls).with_context(|| format!("TLS for {addr}"))?;
    } else if let Some(key) = [("client.tls_ca", &client.tls_ca), ("client.tls_cert", &client.tls_cert)]
        .into_iter()
        .find_map(|(key, value)| (!value.is_empty()).then_some(key))
    {
        // Not TLS after all would send the calls, and any token, in the clear.
        bail!("{key} is set, but the coordinator address {addr} is not https://: TLS is spoken only to https:// addresses");
    } else if !client.token.is_empty() && !vidfarm_store::is_loopback(&addr) {
        tracing::warn!(%addr, "sending the API token without TLS: use an https:// address");
    }
    // HTTP/2 pings while a call is open: a watch whose coordinator's node was lost (no reset
    // ever comes) ends, and watches again, instead of waiting for ever. Each connect try is
    // bounded too: an address that drops packets fails it in seconds, not minutes.
    endpoint = endpoint
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT);
    let token = match client.token.as_str() {
        "" => None,
        token => Some(format!("Bearer {token}").parse().map_err(|_| anyhow::anyhow!("client.token: not printable ASCII"))?),
    };
    // Connected at the first call: a coordinator still starting (or restarting) is waited for as
    // one answering UNAVAILABLE is.
    let channel = endpoint.connect_lazy();
    Ok(RenderServiceClient::with_interceptor(channel, BearerToken(token)))
}

const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn print(json: bool, value: serde_json::Value, text: String) {
    if json {
        crate::output::emit(value);
    } else {
        crate::output::emit(text);
    }
}

pub async fn submit(client: &mut Client, spec: &SpecArgs, key: Option<String>, wait: bool, json: bool) -> Result<()> {
    let (job, created) = submit_job(client, spec.to_pb(), key).await?;
    if !wait {
        let mut value = job_json(&job);
        value["created"] = created.into();
        print(json, value, job.job_id.clone());
        return Ok(());
    }
    watch(client, &job.job_id, json).await
}

/// Submits a job; returns it and whether this call created it, rather than finding it made
/// before under the same key.
async fn submit_job(client: &mut Client, spec: pb::JobSpec, key: Option<String>) -> Result<(pb::Job, bool)> {
    // A key of our own when none is given, so that a retried submit never makes a second job.
    let own_key = key.is_none();
    let key = key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let request = pb::SubmitJobRequest { spec: Some(spec), idempotency_key: key };
    let response = unary(client, async |c| c.submit_job(request.clone()).await).await?;
    let job = response.job.context("the server answered without a job")?;
    // A job under a fresh key of ours is this call's even when a repeat found it, the first
    // answer lost.
    Ok((job, response.created || own_key))
}

/// How long `watch` keeps trying to reach a coordinator that went away (a restart, or another
/// replica behind the same address taking over) before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(120);
const RECONNECT_WAIT: Duration = Duration::from_secs(1);

/// How long a one-shot command repeats a call answered UNAVAILABLE (a coordinator replica
/// restarting, Redis lost for a moment, a job record only a newer replica can read) before it
/// gives up.
const RETRY_UNAVAILABLE_FOR: Duration = Duration::from_secs(30);

/// Makes a unary call, and again every `RECONNECT_WAIT` while it is answered UNAVAILABLE, for
/// at most `RETRY_UNAVAILABLE_FOR`. Repeating is safe: a submit carries an idempotency key, the
/// other changes are idempotent or refused once done (cancelling a cancelled job, which
/// `control` takes as done), and the rest only read.
async fn unary<C, T>(client: &mut C, mut call: impl AsyncFnMut(&mut C) -> Result<tonic::Response<T>, tonic::Status>) -> Result<T> {
    let started = tokio::time::Instant::now();
    loop {
        match call(client).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if status.code() == tonic::Code::Unavailable && started.elapsed() < RETRY_UNAVAILABLE_FOR => {
                tracing::warn!(error = %status_error(status), "the coordinator is unavailable; trying again");
                tokio::time::sleep(RECONNECT_WAIT).await;
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                return Err(status_error(status).context(format!("the coordinator was unavailable for {} s", RETRY_UNAVAILABLE_FOR.as_secs())));
            }
            Err(status) => return Err(status_error(status)),
        }
    }
}

/// Whether a failed call may succeed against a coordinator that comes back.
fn transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled | Code::DeadlineExceeded)
}

/// Follows a job to its end with a progress bar; fails when the job does not succeed. When
/// the coordinator goes away, it watches again once one answers at the same address (the
/// stream starts with the job's current state, so nothing is missed).
pub async fn watch(client: &mut Client, job_id: &str, json: bool) -> Result<()> {
    let bar = job_bar(json);
    let mut last: Option<pb::Job> = None;
    let mut lost_since: Option<Instant> = None;
    let job = loop {
        let broken = match client.watch_job(pb::WatchJobRequest { job_id: job_id.to_string() }).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.next().await {
                        Some(Ok(event)) => {
                            lost_since = None;
                            if let Some(job) = event.job {
                                update_bar(&bar, &job);
                                last = Some(job);
                            }
                            if last.as_ref().is_some_and(|j| is_final(j.state)) {
                                break None;
                            }
                        }
                        Some(Err(status)) if transient(&status) => break Some(status_error(status)),
                        Some(Err(status)) => return Err(status_error(status)),
                        None => break Some(anyhow::anyhow!("the stream ended before the job did")),
                    }
                }
            }
            Err(status) if transient(&status) => Some(status_error(status)),
            Err(status) => return Err(status_error(status)),
        };
        let Some(error) = broken else {
            break last.take().context("the watch stream ended without an event")?;
        };
        let since = *lost_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= RECONNECT_FOR {
            return Err(error.context(format!("watching job {job_id}: no coordinator for {}s", RECONNECT_FOR.as_secs())));
        }
        tracing::warn!(%error, job_id, "lost the coordinator; watching again when it answers");
        tokio::time::sleep(RECONNECT_WAIT).await;
    };
    bar.finish_and_clear();
    print(json, job_json(&job), job_line(&job));
    if state_name(job.state) != "succeeded" {
        bail!("job {} ended {}", job.job_id, state_name(job.state));
    }
    Ok(())
}

pub async fn get(client: &mut Client, job_id: &str, json: bool) -> Result<()> {
    let job = unary(client, async |c| c.get_job(pb::GetJobRequest { job_id: job_id.to_string() }).await).await?;
    print(json, job_json(&job), job_line(&job));
    Ok(())
}

pub async fn list(client: &mut Client, states: &[String], page_size: u32, page_token: Option<String>, json: bool) -> Result<()> {
    let mut codes = Vec::new();
    for s in states {
        let code = pb::JobState::from_str_name(&format!("JOB_STATE_{}", s.to_uppercase()))
            .with_context(|| format!("unknown state {s:?}: queued, running, paused, succeeded, failed or cancelled"))?;
        codes.push(code as i32);
    }
    let request = pb::ListJobsRequest { page_size, page_token: page_token.unwrap_or_default(), states: codes };
    let page = unary(client, async |c| c.list_jobs(request.clone()).await).await?;
    let value = serde_json::json!({
        "jobs": page.jobs.iter().map(job_json).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
    });
    let mut text: Vec<String> = page.jobs.iter().map(job_line).collect();
    if !page.next_page_token.is_empty() {
        text.push(format!("next page: --page-token {}", page.next_page_token));
    }
    print(json, value, text.join("\n"));
    Ok(())
}

#[derive(Clone, Copy)]
pub enum ControlVerb {
    Cancel,
    Pause,
    Resume,
    Delete,
}

pub async fn control(client: &mut Client, job_id: &str, verb: ControlVerb, json: bool) -> Result<()> {
    let job_id = job_id.to_string();
    let mut tries = 0;
    let job = unary(client, async |c| {
        tries += 1;
        let request_id = job_id.clone();
        let answer = match verb {
            ControlVerb::Cancel => c.cancel_job(pb::CancelJobRequest { job_id: request_id }).await,
            ControlVerb::Pause => c.pause_job(pb::PauseJobRequest { job_id: request_id }).await,
            ControlVerb::Resume => c.resume_job(pb::ResumeJobRequest { job_id: request_id }).await,
            ControlVerb::Delete => c.delete_job(pb::DeleteJobRequest { job_id: request_id }).await,
        };
        match answer {
            // A repeated cancel refused as done already: the first was applied, and only its
            // answer lost (the others repeat without error).
            Err(status) if tries > 1 && matches!(verb, ControlVerb::Cancel) && status.code() == tonic::Code::FailedPrecondition => {
                let job = c.get_job(pb::GetJobRequest { job_id: job_id.clone() }).await?;
                if job.get_ref().state == pb::JobState::Cancelled as i32 { Ok(job) } else { Err(status) }
            }
            answer => answer,
        }
    })
    .await?;
    print(json, job_json(&job), job_line(&job));
    Ok(())
}

pub async fn workers(client: &mut Client, json: bool) -> Result<()> {
    let workers = unary(client, async |c| c.list_workers(pb::ListWorkersRequest {}).await).await?.workers;
    let value = serde_json::json!({ "workers": workers.iter().map(worker_json).collect::<Vec<_>>() });
    let text = if workers.is_empty() { "no live workers".to_string() } else { workers.iter().map(worker_line).collect::<Vec<_>>().join("\n") };
    print(json, value, text);
    Ok(())
}

pub async fn drain(client: &mut Client, name: &str, json: bool) -> Result<()> {
    let worker = unary(client, async |c| c.drain_worker(pb::DrainWorkerRequest { name: name.to_string() }).await).await?;
    print(json, worker_json(&worker), worker_line(&worker));
    Ok(())
}

/// Downloads a job's clip (a `file://` URL or a presigned S3 URL) and checks its sha256
/// against the one the farm recorded; `out` appears only when the two agree.
pub async fn fetch(client: &mut Client, job_id: &str, out: &Path, json: bool) -> Result<()> {
    let clip = unary(client, async |c| c.get_clip(pb::GetClipRequest { job_id: job_id.to_string() }).await).await?;
    let url = url::Url::parse(&clip.url).with_context(|| format!("clip URL {:?}", clip.url))?;
    let partial = out.with_file_name(format!("{}.part", out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let sha256 = match download(&url, &partial).await {
        Ok(sha256) => sha256,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    if sha256 != clip.sha256 {
        let _ = tokio::fs::remove_file(&partial).await;
        bail!("clip of job {job_id} is corrupt: sha256 {sha256}, the farm recorded {}", clip.sha256);
    }
    tokio::fs::rename(&partial, out).await.with_context(|| format!("writing {}", out.display()))?;
    let mut value = clip_json(&clip);
    value["path"] = out.display().to_string().into();
    print(json, value, format!("{} ({} bytes, sha256 {})", out.display(), clip.size_bytes, clip.sha256));
    Ok(())
}

/// Copies the object at `url` to the file `to` as it arrives; returns its sha256.
async fn download(url: &url::Url, to: &Path) -> Result<String> {
    let mut file = tokio::fs::File::create(to).await.with_context(|| format!("creating {}", to.display()))?;
    let write_err = || format!("writing {}", to.display());
    let mut hasher = Sha256::new();
    // Presigned URLs carry their signature in the query; errors show the rest.
    let shown = &url[..url::Position::AfterPath];
    match url.scheme() {
        "file" => {
            let path = url.to_file_path().map_err(|()| anyhow::anyhow!("clip URL {url} is not a local path"))?;
            let mut source = tokio::fs::File::open(&path).await.with_context(|| format!("reading {}", path.display()))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = source.read(&mut buf).await.with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).await.with_context(write_err)?;
            }
        }
        "http" | "https" => {
            let mut response = reqwest::get(url.as_str()).await.with_context(|| format!("fetching {shown}"))?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                bail!("fetching {shown}: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") });
            }
            while let Some(chunk) = response.chunk().await.with_context(|| format!("fetching {shown}"))? {
                hasher.update(&chunk);
                file.write_all(&chunk).await.with_context(write_err)?;
            }
        }
        other => bail!("cannot fetch {other}:// URLs: {shown}"),
    }
    file.sync_all().await.with_context(write_err)?;
    Ok(hex::encode(hasher.finalize()))
}

/// A gRPC status as an error a person can read, with the causes of a transport failure
/// (connection refused, a certificate not trusted), which only its sources name.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut cause = std::error::Error::source(&status);
    while let Some(error) = cause {
        let said = error.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = error.source();
    }
    anyhow::anyhow!(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused<T>(status: tonic::Status) -> Result<tonic::Response<T>, tonic::Status> {
        Err(status)
    }

    /// A cancel applied but answered UNAVAILABLE (the book's answer lost) is repeated, refused
    /// as done already, and reported done: the job is cancelled.
    #[tokio::test]
    async fn a_cancel_whose_answer_was_lost_is_reported_done() {
        use std::sync::Arc;
        use vidfarm_queue::flaky::FlakyBook;
        use vidfarm_queue::{Control, FarmState, JobBook, JobChange, JobState, MemoryQueue, MemoryWorkerRegistry};
        let book = Arc::new(FlakyBook::new());
        book.lose_answers(1, |change| matches!(change, JobChange::Control(Control::Cancel)));
        let (record, _) = book.insert(vidfarm_queue::conformance::sample_record("job-answer-lost", None)).await.unwrap();
        let farm = FarmState { queue: Arc::new(MemoryQueue::new()), book: book.clone(), registry: Arc::new(MemoryWorkerRegistry::new()) };
        let store_dir = tempfile::tempdir().unwrap();
        let coordinator = vidfarm_coordinator::Coordinator::new(farm, vidfarm_store::ArtifactStore::local(store_dir.path()).unwrap(), Vec::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(vidfarm_coordinator::server::serve(coordinator, listener, Default::default(), std::future::pending()));
        let settings = ClientSettings { addr: addr.clone(), tls_ca: String::new(), tls_cert: String::new(), tls_key: String::new(), token: String::new() };
        let mut client = connect(&addr, &settings).await.unwrap();
        control(&mut client, &record.id, ControlVerb::Cancel, true).await.expect("reported done");
        assert_eq!(book.get(&record.id).await.unwrap().unwrap().state, JobState::Cancelled);
        // A job cancelled by someone else before is still refused.
        let error = control(&mut client, &record.id, ControlVerb::Cancel, true).await.unwrap_err().to_string();
        assert!(error.starts_with("FailedPrecondition"), "{error}");
    }

    /// A submit applied but answered UNAVAILABLE (the book's answer lost) is repeated, finds the
    /// job under the key it sent, and reports it created: one job, this command's.
    #[tokio::test]
    async fn a_submit_whose_answer_was_lost_reports_its_job_created() {
        use std::sync::Arc;
        use vidfarm_queue::flaky::FlakyBook;
        use vidfarm_queue::{FarmState, JobBook, MemoryQueue, MemoryWorkerRegistry};
        let book = Arc::new(FlakyBook::new());
        let farm = FarmState { queue: Arc::new(MemoryQueue::new()), book: book.clone(), registry: Arc::new(MemoryWorkerRegistry::new()) };
        let store_dir = tempfile::tempdir().unwrap();
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/vidfarm-tiny");
        let profile = vidfarm_api::profile::ModelProfile::load(&model).unwrap();
        let coordinator = vidfarm_coordinator::Coordinator::new(farm, vidfarm_store::ArtifactStore::local(store_dir.path()).unwrap(), vec![profile]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(vidfarm_coordinator::server::serve(coordinator, listener, Default::default(), std::future::pending()));
        let settings = ClientSettings { addr: addr.clone(), tls_ca: String::new(), tls_cert: String::new(), tls_key: String::new(), token: String::new() };
        let mut client = connect(&addr, &settings).await.unwrap();
        let spec = || pb::JobSpec { prompt: "a red circle moving to the right on a white background".into(), ..Default::default() };

        book.lose_insert_answers(1);
        let (job, created) = submit_job(&mut client, spec(), None).await.unwrap();
        assert!(created, "the command made job {}", job.job_id);
        let page = book.list(&[], None, 10).await.unwrap();
        assert_eq!(page.jobs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [job.job_id.as_str()], "one job");
        // A key given by the user may name a job made before, by another command.
        let (first, created) = submit_job(&mut client, spec(), Some("key-1".into())).await.unwrap();
        assert!(created);
        let (again, created) = submit_job(&mut client, spec(), Some("key-1".into())).await.unwrap();
        assert_eq!((again.job_id, created), (first.job_id, false));
    }

    /// TLS settings with a plain-HTTP address are refused, naming the setting, rather than
    /// ignored; no connection is tried.
    #[tokio::test]
    async fn tls_settings_need_an_https_address() {
        let settings = |ca: &str, cert: &str| ClientSettings {
            addr: String::new(),
            tls_ca: ca.into(),
            tls_cert: cert.into(),
            tls_key: String::new(),
            token: String::new(),
        };
        for (addr, settings, key) in [
            ("127.0.0.1:7700", settings("ca.pem", ""), "client.tls_ca"),
            ("http://farm.internal:7700", settings("", "cert.pem"), "client.tls_cert"),
        ] {
            let error = connect(addr, &settings).await.err().expect("refused").to_string();
            assert!(error.starts_with(key) && error.contains("not https://"), "{error}");
        }
    }

    /// A call answered UNAVAILABLE is made again until it is answered otherwise; another code
    /// ends it at once, and UNAVAILABLE ends it after `RETRY_UNAVAILABLE_FOR`.
    #[tokio::test(start_paused = true)]
    async fn unary_calls_are_repeated_while_the_coordinator_is_unavailable() {
        let mut calls = 0u32;
        let answer = unary(&mut calls, async |calls| {
            *calls += 1;
            if *calls < 3 { refused(tonic::Status::unavailable("restarting")) } else { Ok(tonic::Response::new(*calls)) }
        })
        .await
        .unwrap();
        assert_eq!(answer, 3, "answered at the third call");

        let mut calls = 0u32;
        let error = unary(&mut calls, async |calls| {
            *calls += 1;
            refused::<()>(tonic::Status::not_found("job x"))
        })
        .await
        .unwrap_err();
        assert_eq!((calls, error.to_string()), (1, "NotFound: job x".to_string()));

        let started = tokio::time::Instant::now();
        let mut calls = 0u64;
        let error = unary(&mut calls, async |calls| {
            *calls += 1;
            refused::<()>(tonic::Status::unavailable("down"))
        })
        .await
        .unwrap_err();
        assert_eq!(format!("{error:#}"), "the coordinator was unavailable for 30 s: Unavailable: down");
        assert!(started.elapsed() >= RETRY_UNAVAILABLE_FOR, "{:?}", started.elapsed());
        assert_eq!(calls, RETRY_UNAVAILABLE_FOR.as_secs() / RECONNECT_WAIT.as_secs() + 1);
    }
}
