//! End to end: the `vidfarm` binary started as a server on a loopback port and driven over
//! TCP by the generated tonic client and by the CLI's own client commands.

use futures::StreamExt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;
use vidfarm_api::pb::{self, render_service_client::RenderServiceClient};
use vidfarm_store::test_server::S3TestServer;

const BIN: &str = env!("CARGO_BIN_EXE_vidfarm");
const PROMPT: &str = "a red circle moving to the right on a white background";

/// A `vidfarm serve` process on an ephemeral port, killed on drop.
struct Server {
    child: Child,
    addr: String,
    _store: Option<tempfile::TempDir>,
}

impl Server {
    fn start(workers: u32) -> Self {
        let store = tempfile::tempdir().unwrap();
        let mut server = Self::start_with_store(workers, &store.path().display().to_string(), &[]);
        server._store = Some(store);
        server
    }

    /// A server over any store URL, with extra environment (settings) for it.
    fn start_with_store(workers: u32, store: &str, env: &[(String, String)]) -> Self {
        Self::start_on("127.0.0.1:0", workers, store, env)
    }

    fn start_on(listen: &str, workers: u32, store: &str, env: &[(String, String)]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", listen, "--workers", &workers.to_string(), "--store", store])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("vidfarm serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self { child, addr: format!("http://{addr}"), _store: None }
    }

    async fn client(&self) -> RenderServiceClient<Channel> {
        RenderServiceClient::connect(self.addr.clone()).await.unwrap()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN).args(args).args(["--addr", &self.addr]).output().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spec(seconds: f64) -> pb::JobSpec {
    pb::JobSpec {
        prompt: PROMPT.into(),
        length: Some(pb::job_spec::Length::Seconds(seconds)),
        seed: Some(7),
        steps: Some(4),
        ..Default::default()
    }
}

async fn submit(client: &mut RenderServiceClient<Channel>, spec: pb::JobSpec, key: &str) -> pb::SubmitJobResponse {
    client
        .submit_job(pb::SubmitJobRequest { spec: Some(spec), idempotency_key: key.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Follows a job's stream to its end; returns every event.
async fn watch_to_end(client: &mut RenderServiceClient<Channel>, job_id: &str) -> Vec<pb::JobEvent> {
    let mut stream = client.watch_job(pb::WatchJobRequest { job_id: job_id.into() }).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(120), stream.next()).await.expect("events keep coming") {
        events.push(event.unwrap());
    }
    events
}

fn final_state(events: &[pb::JobEvent]) -> pb::JobState {
    let job = events.last().and_then(|e| e.job.as_ref()).expect("a last event with the job");
    pb::JobState::try_from(job.state).unwrap()
}

fn json(output: &std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "command failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

fn probe(path: &Path) -> vidfarm_video::ProbeInfo {
    vidfarm_video::probe(path).unwrap()
}

#[tokio::test]
async fn submit_watch_get_and_fetch_over_tcp() {
    let server = Server::start(1);
    let channel = Channel::from_shared(server.addr.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "vidfarm.v1.RenderService".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let mut client = server.client().await;
    let twelve_steps = pb::JobSpec { steps: Some(12), ..spec(2.0) };
    let first = submit(&mut client, twelve_steps.clone(), "e2e-key").await;
    assert!(first.created);
    let job = first.job.unwrap();

    let events = watch_to_end(&mut client, &job.job_id).await;
    assert_eq!(final_state(&events), pb::JobState::Succeeded);
    let steps = events.iter().filter(|e| matches!(e.detail, Some(pb::job_event::Detail::Step(_)))).count();
    let chunks = events.iter().filter(|e| matches!(e.detail, Some(pb::job_event::Detail::ChunkFinished(_)))).count();
    // The watch starts a moment after the submit; the first step or two may precede it.
    assert!(steps >= 8, "per-step progress is streamed ({steps} step events of 12)");
    assert_eq!(chunks, job.chunks.len(), "every chunk's completion is streamed");
    let again = submit(&mut client, twelve_steps, "e2e-key").await;
    assert!(!again.created, "the same idempotency key returns the same job");
    assert_eq!(again.job.unwrap().job_id, job.job_id);
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence), "sequence numbers increase");

    let got = client.get_job(pb::GetJobRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.progress.unwrap().fraction, 1.0);
    let clip = client.get_clip(pb::GetClipRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!((clip.frames, clip.fps, clip.width, clip.height), (17, 8, 64, 64));
    assert_eq!(clip.seam_ratio, None, "one chunk, no seams");
    assert_eq!(clip.sha256.len(), 64);
    assert!(clip.url.starts_with("file://"));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fetched.mp4");
    let fetched = json(&server.cli(&["fetch", &job.job_id, "-o", out.to_str().unwrap(), "--json"]));
    assert_eq!(fetched["sha256"], clip.sha256.as_str());
    let info = probe(&out);
    assert_eq!((info.codec.as_str(), info.pix_fmt.as_str()), ("h264", "yuv420p"));
    assert_eq!((info.width, info.height, info.frames, info.fps), (64, 64, 17, 8.0));
    assert!((info.duration_seconds - 17.0 / 8.0).abs() < 0.01);
    assert!(info.faststart);
}

#[tokio::test]
async fn cancel_stops_a_running_job_between_steps() {
    let server = Server::start(1);
    let mut client = server.client().await;
    let long = pb::JobSpec { steps: Some(200), ..spec(8.0) };
    let job = submit(&mut client, long, "").await.job.unwrap();
    let mut stream = client.watch_job(pb::WatchJobRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    // Wait until denoising is under way.
    while let Some(event) = stream.next().await {
        if matches!(event.unwrap().detail, Some(pb::job_event::Detail::Step(_))) {
            break;
        }
    }
    let cancelled = client.cancel_job(pb::CancelJobRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
    let steps_at_cancel = cancelled.progress.unwrap().steps_done;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = client.get_job(pb::GetJobRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    let steps_later = later.progress.unwrap().steps_done;
    assert!(steps_later <= steps_at_cancel + 1, "the chunk stopped at its next step ({steps_at_cancel} -> {steps_later})");
    assert!(later.clip.is_none());
    let again = client.cancel_job(pb::CancelJobRequest { job_id: job.job_id.clone() }).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
}

#[tokio::test]
async fn pause_holds_a_job_and_resume_finishes_it() {
    let server = Server::start(1);
    let mut client = server.client().await;
    let job = submit(&mut client, pb::JobSpec { steps: Some(40), ..spec(2.0) }, "").await.job.unwrap();
    let paused = client.pause_job(pb::PauseJobRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!(paused.state, pb::JobState::Paused as i32);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = client.get_job(pb::GetJobRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = client.get_job(pb::GetJobRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!(after.state, pb::JobState::Paused as i32);
    assert_eq!(before.progress.unwrap().steps_done, after.progress.unwrap().steps_done, "a paused job makes no progress");
    client.resume_job(pb::ResumeJobRequest { job_id: job.job_id.clone() }).await.unwrap();
    assert_eq!(final_state(&watch_to_end(&mut client, &job.job_id).await), pb::JobState::Succeeded);
}

/// A huge bad value gets INVALID_ARGUMENT naming its field, quoted by its start: echoed whole,
/// the answer's `grpc-message` header was too big for the client, which saw a protocol error.
#[tokio::test]
async fn a_huge_bad_value_is_named_not_echoed() {
    let server = Server::start(1);
    let mut client = server.client().await;
    let huge = "x".repeat(20_000);
    let short_and_named = |status: tonic::Status, field: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field) && status.message().len() < 300, "{field}: {}", status.message());
    };
    short_and_named(client.get_job(pb::GetJobRequest { job_id: huge.clone() }).await.unwrap_err(), "job_id");
    let submitted = client.submit_job(pb::SubmitJobRequest { spec: Some(pb::JobSpec { model: huge.clone(), ..spec(1.0) }), idempotency_key: String::new() }).await;
    short_and_named(submitted.unwrap_err(), "spec.model");
    short_and_named(client.drain_worker(pb::DrainWorkerRequest { name: huge }).await.unwrap_err(), "name");
    // A name reaching into another key (`worker:<name>:drain`) is no worker's.
    short_and_named(client.drain_worker(pb::DrainWorkerRequest { name: "w1:drain".into() }).await.unwrap_err(), "name");
}

#[tokio::test]
async fn bad_requests_get_the_right_status_naming_the_field() {
    let server = Server::start(1);
    let mut client = server.client().await;
    let cases: Vec<(&str, pb::JobSpec)> = vec![
        ("spec.prompt", pb::JobSpec { prompt: String::new(), ..spec(1.0) }),
        ("spec.prompt", pb::JobSpec { prompt: "x".repeat(5000), ..spec(1.0) }),
        ("spec.seconds", spec(0.0)),
        ("spec.seconds", spec(-3.0)),
        ("spec.seconds", spec(1e9)),
        ("spec.frames", pb::JobSpec { length: Some(pb::job_spec::Length::Frames(0)), ..spec(1.0) }),
        ("spec.frames", pb::JobSpec { length: Some(pb::job_spec::Length::Frames(10_000_000)), ..spec(1.0) }),
        ("spec.fps", pb::JobSpec { fps: Some(0), ..spec(1.0) }),
        ("spec.fps", pb::JobSpec { fps: Some(100_000), ..spec(1.0) }),
        ("spec.width", pb::JobSpec { width: Some(65), ..spec(1.0) }),
        ("spec.height", pb::JobSpec { height: Some(100_000), ..spec(1.0) }),
        ("spec.steps", pb::JobSpec { steps: Some(0), ..spec(1.0) }),
        ("spec.steps", pb::JobSpec { steps: Some(5000), ..spec(1.0) }),
        ("spec.sampler", pb::JobSpec { sampler: "ddpm".into(), ..spec(1.0) }),
        ("spec.model", pb::JobSpec { model: "sora".into(), ..spec(1.0) }),
        ("spec.overlap_latent_frames", pb::JobSpec { chunk_latent_frames: Some(3), overlap_latent_frames: Some(3), ..spec(1.0) }),
        ("spec.guidance_scale", pb::JobSpec { guidance_scale: Some(f32::NAN), ..spec(1.0) }),
        ("spec.guidance_min_sigma", pb::JobSpec { guidance_min_sigma: Some(1.5), ..spec(1.0) }),
    ];
    for (field, bad) in cases {
        let status = client
            .submit_job(pb::SubmitJobRequest { spec: Some(bad), idempotency_key: String::new() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let missing = client.submit_job(pb::SubmitJobRequest::default()).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().starts_with("spec"));

    let unknown = "job-0000000000000-00000000".to_string();
    let e = client.get_job(pb::GetJobRequest { job_id: unknown.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = client.cancel_job(pb::CancelJobRequest { job_id: unknown.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = client.get_job(pb::GetJobRequest { job_id: String::new() }).await.unwrap_err();
    assert_eq!((e.code(), e.message().starts_with("job_id")), (Code::InvalidArgument, true));
    let e = client.get_clip(pb::GetClipRequest { job_id: "../../etc/passwd".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = client.list_jobs(pb::ListJobsRequest { page_size: 5000, ..Default::default() }).await.unwrap_err();
    assert_eq!((e.code(), e.message().starts_with("page_size")), (Code::InvalidArgument, true));
    let e = client.list_jobs(pb::ListJobsRequest { states: vec![42], ..Default::default() }).await.unwrap_err();
    assert_eq!((e.code(), e.message().starts_with("states")), (Code::InvalidArgument, true));

    // A job not yet finished has no clip; a finished one cannot be cancelled.
    let job = submit(&mut client, spec(1.0), "").await.job.unwrap();
    let e = client.get_clip(pb::GetClipRequest { job_id: job.job_id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(final_state(&watch_to_end(&mut client, &job.job_id).await), pb::JobState::Succeeded);
    let e = client.cancel_job(pb::CancelJobRequest { job_id: job.job_id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = client.pause_job(pb::PauseJobRequest { job_id: job.job_id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn cli_client_commands_speak_json() {
    let server = Server::start(1);
    let submitted = json(&server.cli(&["submit", PROMPT, "--seconds", "1", "--steps", "2", "--json"]));
    let job_id = submitted["job_id"].as_str().expect("submit prints job_id").to_string();
    let watched = json(&server.cli(&["watch", &job_id, "--json"]));
    assert_eq!(watched["state"], "succeeded");
    let got = json(&server.cli(&["get", &job_id, "--json"]));
    assert_eq!(got["job_id"], job_id.as_str());
    assert_eq!(got["clip"]["frames"], 9);
    assert_eq!((got["spec"]["stitch_mode"].as_str(), got["spec"]["blend_curve"].as_str()), (Some("blend"), Some("linear")));
    let waited = json(&server.cli(&[
        "submit", PROMPT, "--frames", "5", "--steps", "2", "--priority", "high", "--stitch", "sync", "--blend-curve", "cosine",
        "--keep-intermediates", "--wait", "--json",
    ]));
    assert_eq!(waited["state"], "succeeded");
    let spec = &waited["spec"];
    assert_eq!((spec["stitch_mode"].as_str(), spec["blend_curve"].as_str()), (Some("sync"), Some("cosine")), "{spec}");
    assert_eq!((spec["priority"].as_str(), spec["keep_intermediates"].as_bool()), (Some("high"), Some(true)), "{spec}");
    let listed = json(&server.cli(&["list", "--state", "succeeded", "--page-size", "1", "--json"]));
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
    let token = listed["next_page_token"].as_str().unwrap();
    assert!(!token.is_empty(), "a second page exists");
    let second = json(&server.cli(&["list", "--state", "succeeded", "--page-size", "1", "--page-token", token, "--json"]));
    assert_eq!(second["jobs"].as_array().unwrap().len(), 1);
    assert_ne!(second["jobs"][0]["job_id"], listed["jobs"][0]["job_id"]);
    let workers = json(&server.cli(&["workers", "--json"]));
    assert_eq!(workers["workers"][0]["name"], "embedded-0", "{workers}");
    // Two one-chunk jobs, each denoised and assembled; the last task may end just after its job.
    assert!(workers["workers"][0]["tasks_done"].as_u64().unwrap() >= 3, "{workers}");
    let bad = server.cli(&["submit", PROMPT, "--fps", "0", "--json"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("spec.fps"), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// A client command started before its coordinator waits for it, as for one answering
/// UNAVAILABLE, rather than failing at once.
#[test]
fn client_commands_wait_for_a_coordinator_that_is_starting() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let list = Command::new(BIN).args(["list", "--json", "--addr", &listen]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let store = tempfile::tempdir().unwrap();
    let _server = Server::start_on(&listen, 1, &store.path().display().to_string(), &[]);
    let listed = list.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(listed.status.success(), "{stderr}");
    assert_eq!(json(&listed)["jobs"], serde_json::json!([]));
    assert!(stderr.contains("unavailable; trying again"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "the transport error's cause is shown: {stderr}");
}

#[test]
fn render_writes_the_asked_clip_on_the_embedded_farm() {
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().join("clip.mp4");
    let output = Command::new(BIN)
        .args(["render", "a red circle moving to the right on a blue zebra background", "--seconds", "4", "--steps", "4", "-o"])
        .arg(&out)
        .arg("--json")
        .output()
        .unwrap();
    let value = json(&output);
    assert_eq!(value["state"], "succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("zebra"), "unknown words are named: {stderr}");
    let info = probe(&out);
    assert_eq!((info.width, info.height, info.frames, info.fps), (64, 64, 33, 8.0));
    assert_eq!(info.codec, "h264");

    let missing = Command::new(BIN).args(["render", PROMPT, "--model", "/nonexistent/model", "-o"]).arg(&out).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/model"));
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let server = Server::start(1);
    let channel = Channel::from_shared(server.addr.clone()).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut responses = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"vidfarm.v1.RenderService".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
}

/// `vidfarm model forward` on a diffusers checkpoint reproduces the reference's output, so anyone
/// can check a checkpoint; `--repeat` times it.
#[test]
fn model_forward_matches_the_reference_fixture() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/dit_a");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let output = Command::new(BIN)
        .args(["model", "forward", "--component", "dit", "--repeat", "2", "--checkpoint"])
        .arg(fixture.join("transformer"))
        .arg("--inputs")
        .arg(fixture.join("io.safetensors"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let timing = json(&output);
    assert!(timing["load_s"].as_f64().unwrap() >= 0.0);
    assert!(timing["run_s"].as_array().unwrap().len() >= 2);

    let f32s = |view: safetensors::tensor::TensorView<'_>| -> Vec<f32> {
        view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    let ours = std::fs::read(&out).unwrap();
    let reference = std::fs::read(fixture.join("io.safetensors")).unwrap();
    let ours = f32s(safetensors::SafeTensors::deserialize(&ours).unwrap().tensor("sample").unwrap());
    let reference = f32s(safetensors::SafeTensors::deserialize(&reference).unwrap().tensor("sample").unwrap());
    assert_eq!(ours.len(), reference.len());
    let max_error = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_error <= 1e-4, "max abs error {max_error}");

    let info = json(&Command::new(BIN).args(["model", "info"]).arg(fixture.join("transformer")).output().unwrap());
    assert!(info.to_string().contains("parameters"), "{info}");
    let missing = Command::new(BIN)
        .args(["model", "forward", "--component", "dit", "--checkpoint", "/nonexistent/transformer", "--inputs"])
        .arg(fixture.join("io.safetensors"))
        .args(["--out", "/y"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/transformer"));
}

/// The `[s3]` settings, as environment, that reach a test S3 server.
fn s3_env(s3: &S3TestServer, secret: &str) -> Vec<(String, String)> {
    [
        ("VIDFARM_S3_ENDPOINT", s3.endpoint()),
        ("VIDFARM_S3_REGION", "us-east-1".into()),
        ("VIDFARM_S3_ACCESS_KEY_ID", vidfarm_store::test_server::ACCESS_KEY_ID.into()),
        ("VIDFARM_S3_SECRET_ACCESS_KEY", secret.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test]
async fn clips_land_in_s3_survive_an_outage_and_are_fetched_by_presigned_url() {
    let Some(mut s3) = S3TestServer::start("clips") else { return };
    let server = Server::start_with_store(1, "s3://clips/farm", &s3_env(&s3, vidfarm_store::test_server::SECRET_ACCESS_KEY));
    let mut client = server.client().await;

    // S3 goes down as the job is submitted: its first storage request meets the outage.
    s3.stop();
    let job = submit(&mut client, spec(1.0), "").await.job.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = client.get_job(pb::GetJobRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    let state = pb::JobState::try_from(during.state).unwrap();
    assert!(matches!(state, pb::JobState::Queued | pb::JobState::Running), "the outage must only delay the job: {state:?}");
    s3.resume();
    let events = watch_to_end(&mut client, &job.job_id).await;
    assert_eq!(final_state(&events), pb::JobState::Succeeded);

    let clip = client.get_clip(pb::GetClipRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    let key = format!("farm/jobs/{}/clip.mp4", job.job_id);
    assert!(clip.url.starts_with(&format!("{}/clips/{key}?", s3.endpoint())), "a presigned URL: {}", clip.url);
    assert_eq!(sha256_file(&s3.object_file(&key)), clip.sha256, "the bucket holds the clip");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fetched.mp4");
    let fetched = json(&server.cli(&["fetch", &job.job_id, "-o", out.to_str().unwrap(), "--json"]));
    assert_eq!(fetched["sha256"], clip.sha256.as_str());
    assert_eq!(sha256_file(&out), clip.sha256);
    assert_eq!(probe(&out).frames, clip.frames);

    // The chunk latents go once the clip is stored, unless the job asks to keep them.
    let chunks_of = |job_id: &str| s3.object_file(&format!("farm/jobs/{job_id}/chunks"));
    assert_eq!(files_under(&chunks_of(&job.job_id)), 0);
    let kept = submit(&mut client, pb::JobSpec { keep_intermediates: true, ..spec(1.0) }, "").await.job.unwrap();
    assert_eq!(final_state(&watch_to_end(&mut client, &kept.job_id).await), pb::JobState::Succeeded);
    assert_eq!(files_under(&chunks_of(&kept.job_id)), kept.chunks.len());

    // DeleteJob removes a finished job's objects; the job stays, without its clip.
    let in_flight = submit(&mut client, spec(1.0), "").await.job.unwrap();
    let refused = client.delete_job(pb::DeleteJobRequest { job_id: in_flight.job_id.clone() }).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let deleted = client.delete_job(pb::DeleteJobRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    assert!(deleted.clip.is_none());
    let deleted_by_cli = json(&server.cli(&["delete", &kept.job_id, "--json"]));
    assert!(deleted_by_cli.get("clip").is_none_or(|c| c.is_null()), "{deleted_by_cli}");
    for job_id in [&job.job_id, &kept.job_id] {
        assert_eq!(files_under(&s3.object_file(&format!("farm/jobs/{job_id}"))), 0, "{job_id}'s objects are gone");
        let no_clip = client.get_clip(pb::GetClipRequest { job_id: job_id.clone() }).await.unwrap_err();
        assert_eq!(no_clip.code(), Code::FailedPrecondition);
    }
}

/// Files in a folder and its subfolders; 0 when it does not exist.
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 }).sum()
}

#[test]
fn a_missing_bucket_or_wrong_credentials_stop_the_server_at_start_up() {
    let Some(s3) = S3TestServer::start("clips") else { return };
    let secret = vidfarm_store::test_server::SECRET_ACCESS_KEY;
    for (store, secret, expected) in
        [("s3://no-such-bucket/farm", secret, "the bucket does not exist"), ("s3://clips/farm", "wrong-secret", "access denied")]
    {
        let output = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--store", store])
            .envs(s3_env(&s3, secret))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let bucket = store.trim_start_matches("s3://").split('/').next().unwrap();
        assert!(!output.status.success(), "{store}: the server must not start");
        assert!(stderr.contains(bucket) && stderr.contains(&s3.endpoint()) && stderr.contains(expected), "{store}: {stderr}");
    }
}

#[tokio::test]
async fn a_chain_job_denoises_its_chunks_in_order_each_continuing_from_the_last() {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let store = tempfile::tempdir().unwrap();
    let env = [("VIDFARM_METRICS_LISTEN".to_string(), metrics.to_string())];
    let mut server = Server::start_with_store(2, &store.path().display().to_string(), &env);
    server._store = Some(store);
    let mut client = server.client().await;
    // 12 s: 25 latent frames in six chunks of 6 overlapping by 2.
    let chain = pb::JobSpec {
        stitch_mode: pb::StitchMode::Chain as i32,
        keep_intermediates: true,
        steps: Some(2),
        ..spec(12.0)
    };
    let job = submit(&mut client, chain, "").await.job.unwrap();
    let events = watch_to_end(&mut client, &job.job_id).await;
    assert_eq!(final_state(&events), pb::JobState::Succeeded);
    let finished: Vec<u32> = events
        .iter()
        .filter_map(|e| match e.detail {
            Some(pb::job_event::Detail::ChunkFinished(c)) => Some(c),
            _ => None,
        })
        .collect();
    // The watch may start after the first chunk is done.
    let first = *finished.first().expect("chunks finished while watched");
    assert!(first <= 1 && finished == (first..6).collect::<Vec<_>>(), "chunks finish in order: {finished:?}");
    let stepped: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.detail {
            Some(pb::job_event::Detail::Step(step)) => Some(step.chunk_index),
            _ => None,
        })
        .collect();
    assert!(stepped.windows(2).all(|w| w[0] <= w[1]), "two workers, yet one chunk at a time: {stepped:?}");

    let clip = events.last().and_then(|e| e.job.as_ref()).and_then(|j| j.clip.as_ref()).expect("a clip");
    let seams = clip.seam_ratio.expect("a six-chunk clip reports its seam ratio");
    assert!(seams.is_finite() && seams > 0.0, "{seams}");
    // The same figure as a metric, on the server's /metrics.
    let scrape = || async { reqwest::get(format!("http://{metrics}/metrics")).await.unwrap().text().await.unwrap() };
    let text = scrape().await;
    let line = |name: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{name}{{stitch_mode=\"chain\"}} "))).map(str::to_string);
    assert_eq!(line("vidfarm_clip_seam_ratio_count").as_deref(), Some("1"), "{text}");
    let sum: f64 = line("vidfarm_clip_seam_ratio_sum").expect("a seam ratio sum").parse().unwrap();
    assert!((sum - seams).abs() <= 1e-9 * seams, "metric {sum} against GetJob's {seams}");
    assert!(text.contains(r#"vidfarm_tasks_total{kind="denoise",outcome="done"} 6"#), "{text}");
    // The worker counts the job's end just after the change that watchers see: allow it a moment.
    let ended = r#"vidfarm_jobs_ended_total{state="succeeded"} 1"#;
    let mut text = text;
    for _ in 0..50 {
        if text.lines().any(|l| l == ended) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = scrape().await;
    }
    // Six chunks of two steps each; the queue, counted since the start, is empty by now or soon.
    for line in ["vidfarm_jobs_accepted_total 1", ended, r#"vidfarm_job_seconds_count{state="succeeded"} 1"#, "vidfarm_step_seconds_count 12"] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("vidfarm_queue_depth ")), "{text}");

    // Each chunk's first two latent frames are exactly the previous chunk's last two.
    let store = vidfarm_store::ArtifactStore::local(server._store.as_ref().unwrap().path()).unwrap();
    let mut previous: Option<vidfarm_plan::Latents> = None;
    for chunk in 0..6 {
        let latents = store.get_latents(&vidfarm_store::ArtifactStore::chunk_key(&job.job_id, chunk)).await.unwrap();
        if let Some(before) = &previous {
            for c in 0..latents.shape[0] {
                for k in 0..2 {
                    assert_eq!(latents.plane(c, k), before.plane(c, before.frames() - 2 + k), "chunk {chunk}, channel {c}, frame {k}");
                }
            }
        }
        previous = Some(latents);
    }

    // Sync mode exchanges latents between steps: a sampler with state across steps is refused.
    let sync = pb::JobSpec { stitch_mode: pb::StitchMode::Sync as i32, sampler: "unipc".into(), ..spec(1.0) };
    let refused = client.submit_job(pb::SubmitJobRequest { spec: Some(sync), idempotency_key: String::new() }).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().starts_with("spec.sampler"), "{}", refused.message());
}

/// TLS and API tokens: a client that trusts the server's certificate and sends a listed token
/// gets in; no token or a wrong one is UNAUTHENTICATED, plaintext gets nothing, health checks
/// stay open for probes, the CLI takes its CA and token from its settings, and an unusable
/// certificate stops the server before it listens, naming the keys.
#[tokio::test]
async fn over_tls_only_callers_with_a_listed_token_get_in() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    const TOKEN: &str = "e2e-token-0123456789abcdef0123456789";
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let (cert_file, key_file) = (write("tls.crt", &cert.pem()), write("tls.key", &signing_key.serialize_pem()));
    let tokens = write("tokens", &format!("# e2e callers\n{TOKEN}\n"));
    let settings = |cert: &str| {
        [("VIDFARM_SERVER_TLS_CERT", cert), ("VIDFARM_SERVER_TLS_KEY", key_file.as_str()), ("VIDFARM_SERVER_AUTH_TOKENS_FILE", tokens.as_str())]
            .map(|(k, v)| (k.to_string(), v.to_string()))
    };
    let store = dir.path().join("store").display().to_string();
    let server = Server::start_with_store(1, &store, &settings(&cert_file));
    let addr = server.addr.replace("http://", "https://");

    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(cert.pem()));
    let channel = Endpoint::from_shared(addr.clone()).unwrap().tls_config(tls).unwrap().connect().await.expect("a TLS connection");
    let mut client = RenderServiceClient::new(channel.clone());
    let refused = client.list_jobs(pb::ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let with_token = |token: &str| {
        let mut request = tonic::Request::new(pb::ListJobsRequest::default());
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let wrong = client.list_jobs(with_token(&TOKEN.replace('e', "f"))).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    client.list_jobs(with_token(TOKEN)).await.expect("a listed token gets in");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health needs no token");
    assert_eq!(serving.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let plaintext = match RenderServiceClient::connect(server.addr.clone()).await {
        Ok(mut client) => client.list_jobs(with_token(TOKEN)).await.is_ok(),
        Err(_) => false,
    };
    assert!(!plaintext, "plaintext is refused by a TLS server");

    let cli = |token: &str| {
        Command::new(BIN)
            .args(["list", "--json", "--addr", &addr])
            .env("VIDFARM_CLIENT_TLS_CA", &cert_file)
            .env("VIDFARM_CLIENT_TOKEN", token)
            .output()
            .unwrap()
    };
    json(&cli(TOKEN));
    let stranger = cli("");
    assert!(!stranger.status.success() && String::from_utf8_lossy(&stranger.stderr).contains("authorization"), "{stranger:?}");

    // Rotation without a restart: the file is swapped whole, as the kubelet swaps a Secret's.
    const NEXT_TOKEN: &str = "e2e-rotated-0123456789abcdef0123456789";
    std::fs::write(dir.path().join("tokens.new"), format!("{NEXT_TOKEN}\n")).unwrap();
    std::fs::rename(dir.path().join("tokens.new"), &tokens).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.list_jobs(with_token(NEXT_TOKEN)).await.is_err() {
        assert!(Instant::now() < deadline, "the rotated token was not accepted within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let revoked = client.list_jobs(with_token(TOKEN)).await.unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated, "the token taken out of the file is refused: {revoked:?}");

    // A renewed certificate is served to new connections, as cert-manager renews one in place.
    let rcgen::CertifiedKey { cert: renewed, signing_key: renewed_key } =
        rcgen::generate_simple_self_signed(["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    for (name, path, pem) in [("tls.crt.new", &cert_file, renewed.pem()), ("tls.key.new", &key_file, renewed_key.serialize_pem())] {
        std::fs::write(dir.path().join(name), pem).unwrap();
        std::fs::rename(dir.path().join(name), path).unwrap();
    }
    let trusting = |cert: &rcgen::Certificate| {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(cert.pem()));
        Endpoint::from_shared(addr.clone()).unwrap().tls_config(tls).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let renewed_channel = loop {
        if let Ok(channel) = trusting(&renewed).connect().await {
            break channel;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was not served within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    RenderServiceClient::new(renewed_channel).list_jobs(with_token(NEXT_TOKEN)).await.expect("calls over the renewed certificate");
    assert!(trusting(&cert).connect().await.is_err(), "new connections no longer get the old certificate");

    let bad_cert = write("bad.crt", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n");
    let failed = Command::new(BIN).args(["serve", "--listen", "127.0.0.1:0", "--store", &store]).envs(settings(&bad_cert)).output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && stderr.contains("server.tls_cert"), "{stderr}");
    assert!(!String::from_utf8_lossy(&failed.stdout).contains("listening"), "it stopped before listening");
}
