//! The distributed farm as real processes: `vidfarm coordinator` and `vidfarm worker` on the
//! local Redis (127.0.0.1:6379, started by tests/run.sh), each test in a namespace of its own,
//! with processes killed by SIGKILL in the middle of their work.

use futures::StreamExt;
use redis::Commands;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use tonic::transport::Channel;
use vidfarm_api::pb::{self, render_service_client::RenderServiceClient};

const BIN: &str = env!("CARGO_BIN_EXE_vidfarm");
const REDIS: &str = "redis://127.0.0.1:6379";
const PROMPT: &str = "a red circle moving to the right on a white background";

/// One test at a time: on two cores, several farms rendering at once would make the short
/// leases of these tests lapse spuriously.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A Redis key namespace of one test and a store folder its processes share; both removed on
/// drop. `env` is set for every process.
struct Farm {
    namespace: String,
    store: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Farm {
    fn new() -> Self {
        let namespace = format!("farm-test-{}", unique_suffix());
        Self { namespace, store: tempfile::tempdir().unwrap(), env: Vec::new() }
    }

    /// A farm whose processes export their spans to `collector` at once (every 100 ms).
    fn traced(collector: &Collector) -> Self {
        let env = [("VIDFARM_TRACES_OTLP_ENDPOINT", collector.endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
        let mut farm = Self::new();
        farm.env = env.map(|(k, v)| (k.to_string(), v.to_string())).to_vec();
        farm
    }

    fn args(&self) -> Vec<String> {
        let store = self.store.path().display().to_string();
        ["--redis", REDIS, "--redis-namespace", &self.namespace, "--store", &store].map(String::from).to_vec()
    }

    fn coordinator(&self) -> Process {
        self.coordinator_on("127.0.0.1:0")
    }

    fn coordinator_on(&self, listen: &str) -> Process {
        let mut process = Process::spawn(Command::new(BIN).arg("coordinator").args(self.args()).args(["--listen", listen]).envs(self.env.clone()));
        let line = process.first_line();
        let addr = line.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        process.addr = format!("http://{addr}");
        process
    }

    fn worker(&self, name: &str, lease_seconds: u64) -> Process {
        self.worker_with(name, &[("VIDFARM_WORKER_LEASE_SECONDS", &lease_seconds.to_string())])
    }

    /// A worker with settings from the environment.
    fn worker_with(&self, name: &str, env: &[(&str, &str)]) -> Process {
        let mut process =
            Process::spawn(Command::new(BIN).arg("worker").args(self.args()).args(["--name", name]).envs(self.env.clone()).envs(env.iter().copied()));
        assert_eq!(process.first_line(), format!("worker {name} started"));
        process
    }

    fn redis(&self) -> redis::Connection {
        redis::Client::open(REDIS).unwrap().get_connection().expect("a Redis server on 127.0.0.1:6379")
    }

    fn key(&self, name: &str) -> String {
        format!("vidfarm:{}:{name}", self.namespace)
    }

    /// The worker holding a task's lease, if it is leased.
    fn lease_holder(&self, task_id: &str) -> Option<String> {
        self.redis().hget(self.key(&format!("queue:task:{task_id}")), "worker").unwrap()
    }

    /// The job record as stored, for what the gRPC view leaves out (attempts per chunk).
    fn stored_job(&self, job_id: &str) -> serde_json::Value {
        let raw: String = self.redis().get(self.key(&format!("job:{job_id}"))).unwrap();
        serde_json::from_str(&raw).unwrap()
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        let mut conn = self.redis();
        let keys: Vec<String> = conn.scan_match(self.key("*")).map(|iter| iter.filter_map(Result::ok).collect()).unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = conn.del(keys);
        }
    }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// A child process, killed with SIGKILL on drop.
struct Process {
    child: Child,
    addr: String,
}

impl Process {
    fn spawn(command: &mut Command) -> Self {
        let child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("vidfarm starts");
        Self { child, addr: String::new() }
    }

    fn first_line(&mut self) -> String {
        let mut line = String::new();
        BufReader::new(self.child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    async fn client(&self) -> RenderServiceClient<Channel> {
        RenderServiceClient::connect(self.addr.clone()).await.unwrap()
    }

    /// Waits up to `within` for the process to exit on its own; its exit status.
    async fn exits_within(mut self, within: Duration) -> std::process::ExitStatus {
        let exited = tokio::task::spawn_blocking(move || {
            let status = self.child.wait().unwrap();
            (self, status)
        });
        let (_process, status) = tokio::time::timeout(within, exited).await.expect("the process exits in time").unwrap();
        status
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spec(seconds: f64, steps: u32, priority: pb::Priority) -> pb::JobSpec {
    pb::JobSpec {
        prompt: PROMPT.into(),
        length: Some(pb::job_spec::Length::Seconds(seconds)),
        seed: Some(7),
        steps: Some(steps),
        priority: priority as i32,
        ..Default::default()
    }
}

async fn submit(client: &mut RenderServiceClient<Channel>, spec: pb::JobSpec) -> String {
    let response = client.submit_job(pb::SubmitJobRequest { spec: Some(spec), idempotency_key: String::new() }).await.unwrap();
    response.into_inner().job.expect("the submitted job").job_id
}

async fn watch(client: &mut RenderServiceClient<Channel>, job_id: &str) -> tonic::Streaming<pb::JobEvent> {
    client.watch_job(pb::WatchJobRequest { job_id: job_id.into() }).await.unwrap().into_inner()
}

/// Reads events until one reports a denoising step; returns its chunk.
async fn first_step(events: &mut tonic::Streaming<pb::JobEvent>) -> u32 {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(120), events.next()).await.expect("a step in time");
        let event = event.expect("the job is still going").unwrap();
        if let Some(pb::job_event::Detail::Step(step)) = event.detail {
            assert!(step.step < step.steps_total, "the chunk is still being denoised");
            return step.chunk_index;
        }
    }
}

/// Follows a job to its end; returns the job as its last event shows it.
async fn finish(events: &mut tonic::Streaming<pb::JobEvent>) -> pb::Job {
    let mut last = None;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(180), events.next()).await.expect("events keep coming") {
        last = event.unwrap().job;
    }
    last.expect("at least one event")
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn succeeded(job: &pb::Job) -> &pb::Clip {
    assert_eq!(pb::JobState::try_from(job.state), Ok(pb::JobState::Succeeded), "{job:?}");
    job.clip.as_ref().expect("a succeeded job has a clip")
}

#[tokio::test]
async fn a_worker_killed_mid_chunk_loses_nothing_and_the_clip_is_byte_identical() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let farm = Farm::new();
    let coordinator = farm.coordinator();
    let mut workers = [farm.worker("w1", 2), farm.worker("w2", 2)];
    let mut client = coordinator.client().await;
    let job_id = submit(&mut client, pb::JobSpec { keep_intermediates: true, ..spec(4.0, 12, pb::Priority::Normal) }).await;
    let mut events = watch(&mut client, &job_id).await;

    let chunk = first_step(&mut events).await;
    let holder = farm.lease_holder(&format!("{job_id}/denoise/{chunk}")).expect("the chunk is leased");
    let victim = if holder == "w1" { 0 } else { 1 };
    workers[victim].kill();

    let job = finish(&mut events).await;
    let clip = succeeded(&job);
    let attempts = farm.stored_job(&job_id)["chunks"][chunk as usize]["attempts"].as_u64().unwrap();
    assert!(attempts >= 2, "chunk {chunk} was taken again after {holder} died (attempts {attempts})");
    assert_eq!(sha256_file(&farm.store.path().join(&clip.object_key)), clip.sha256);

    // The reference: the same spec on the embedded farm (one worker, one process), no fault.
    let reference = tempfile::tempdir().unwrap();
    let (latents, mp4) = render_on_the_embedded_farm(reference.path(), 4, 7, 12, "blend");
    assert!(chunk_latents(farm.store.path(), Some(&job_id)) == latents, "chunk latents differ from the no-fault render");
    assert_eq!(clip.sha256, mp4, "the clip is byte-identical to the one rendered without a fault");
}

/// Renders the farm tests' prompt with `vidfarm render` (embedded farm) into `dir` in a stitch
/// mode, keeping the chunk latents; returns their bytes and the MP4's sha256.
fn render_on_the_embedded_farm(dir: &Path, seconds: u32, seed: u64, steps: u32, stitch: &str) -> (Vec<Vec<u8>>, String) {
    let (store, out) = (dir.join("store"), dir.join("reference.mp4"));
    let [seconds, seed, steps] = [seconds.to_string(), seed.to_string(), steps.to_string()];
    let rendered = Command::new(BIN)
        .args(["render", PROMPT, "--seconds", &seconds, "--seed", &seed, "--steps", &steps, "--stitch", stitch, "--keep-intermediates", "--store"])
        .arg(&store)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    (chunk_latents(&store, None), sha256_file(&out))
}

/// The bytes of a job's stored chunk latents, in chunk order (`job_id` None: the store's only
/// job); sync mode's per-step latents, in a folder below, are left out.
fn chunk_latents(store: &Path, job_id: Option<&str>) -> Vec<Vec<u8>> {
    let job = match job_id {
        Some(id) => id.to_string(),
        None => std::fs::read_dir(store.join("jobs")).unwrap().next().expect("a job").unwrap().file_name().into_string().unwrap(),
    };
    let mut files: Vec<_> =
        std::fs::read_dir(store.join("jobs").join(job).join("chunks")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    assert!(!files.is_empty(), "chunk latents kept");
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// A port free now on the loopback, for a server that must come back at the same address.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_coordinator_killed_mid_job_is_replaced_and_vidfarm_watch_follows_the_job_to_its_end() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let farm = Farm::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut first = farm.coordinator_on(&listen);
    let _worker = farm.worker("w1", 15);
    let mut client = first.client().await;
    let job_id = submit(&mut client, spec(4.0, 8, pb::Priority::Normal)).await;
    first_step(&mut watch(&mut client, &job_id).await).await;
    // The CLI's watch, as a user runs it, across the coordinator's death and replacement.
    let watcher = Command::new(BIN).args(["watch", &job_id, "--json", "--addr", &listen]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let second = farm.coordinator_on(&listen);
    let output = tokio::task::spawn_blocking(move || watcher.wait_with_output());
    let output = tokio::time::timeout(Duration::from_secs(180), output).await.expect("the watch ends").unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("lost the coordinator"), "the watch noticed the coordinator going: {stderr}");
    let last: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!((last["job_id"].as_str(), last["state"].as_str()), (Some(job_id.as_str()), Some("succeeded")));

    let mut client = second.client().await;
    let job = finish(&mut watch(&mut client, &job_id).await).await;
    succeeded(&job);
}

#[tokio::test]
async fn a_drained_worker_finishes_its_chunk_leaves_the_list_and_exits() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let farm = Farm::new();
    let coordinator = farm.coordinator();
    let [w1, w2] = [farm.worker("w1", 15), farm.worker("w2", 15)];
    let mut client = coordinator.client().await;
    let names = |workers: &[pb::Worker]| workers.iter().map(|w| w.name.clone()).collect::<Vec<_>>();
    // Workers send their first heartbeat as they start taking tasks.
    let mut listed = Vec::new();
    for _ in 0..50 {
        listed = client.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
        if listed.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(names(&listed), ["w1", "w2"], "both workers are listed");
    assert!(listed.iter().all(|w| w.state == pb::WorkerState::Idle as i32 && w.heartbeat_at_ms > 0), "{listed:?}");

    let job_id = submit(&mut client, spec(4.0, 12, pb::Priority::Normal)).await;
    let mut events = watch(&mut client, &job_id).await;
    let chunk = first_step(&mut events).await;
    let holder = farm.lease_holder(&format!("{job_id}/denoise/{chunk}")).expect("the chunk is leased");
    let (drained, _kept, kept) = if holder == "w1" { (w1, w2, "w2") } else { (w2, w1, "w1") };
    let answer = client.drain_worker(pb::DrainWorkerRequest { name: holder.clone() }).await.unwrap().into_inner();
    assert_eq!((answer.name.as_str(), pb::WorkerState::try_from(answer.state)), (holder.as_str(), Ok(pb::WorkerState::Draining)));

    assert!(drained.exits_within(Duration::from_secs(120)).await.success(), "a drained worker exits cleanly");
    let stored = farm.stored_job(&job_id);
    assert_eq!(stored["chunks"][chunk as usize]["done"], true, "the chunk in hand was finished");
    assert_eq!(stored["chunks"][chunk as usize]["attempts"], 1, "and not taken again");
    let listed = client.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert_eq!(names(&listed), [kept], "the drained worker left the list");
    succeeded(&finish(&mut events).await);

    let unknown = client.drain_worker(pb::DrainWorkerRequest { name: "nobody".into() }).await.unwrap_err();
    assert_eq!((unknown.code(), unknown.message()), (tonic::Code::NotFound, "no live worker named nobody"));
    let empty = client.drain_worker(pb::DrainWorkerRequest { name: String::new() }).await.unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert!(empty.message().starts_with("name"), "{}", empty.message());
}

#[tokio::test]
async fn a_high_priority_job_behind_twenty_low_ones_starts_next() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let farm = Farm::new();
    let coordinator = farm.coordinator();
    let mut client = coordinator.client().await;
    let mut low = Vec::new();
    for _ in 0..20 {
        low.push(submit(&mut client, spec(1.0, 2, pb::Priority::Low)).await);
    }
    let high = submit(&mut client, spec(1.0, 2, pb::Priority::High)).await;
    let mut events = watch(&mut client, &high).await;
    let _worker = farm.worker("w1", 15);
    succeeded(&finish(&mut events).await);

    // One worker takes one task at a time: had any low job gone first, it would be done or
    // under way; at most the task taken right after the high job's last one may have started.
    let mut started = 0;
    for id in &low {
        let job = client.get_job(pb::GetJobRequest { job_id: id.clone() }).await.unwrap().into_inner();
        assert_ne!(pb::JobState::try_from(job.state), Ok(pb::JobState::Succeeded), "low job {id} finished first");
        if pb::JobState::try_from(job.state) != Ok(pb::JobState::Queued) {
            started += 1;
        }
    }
    assert!(started <= 1, "{started} low jobs started before the high one ended");
}

#[tokio::test]
async fn sigterm_lets_a_worker_finish_its_chunk_and_take_no_more() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let farm = Farm::new();
    let coordinator = farm.coordinator();
    let worker = farm.worker("w1", 15);
    let mut client = coordinator.client().await;
    let job_id = submit(&mut client, spec(4.0, 12, pb::Priority::Normal)).await;
    let chunk = first_step(&mut watch(&mut client, &job_id).await).await;
    signal(&worker, "TERM");
    assert!(worker.exits_within(Duration::from_secs(120)).await.success(), "a drained worker exits cleanly");

    let stored = farm.stored_job(&job_id);
    let chunks = stored["chunks"].as_array().unwrap();
    assert_eq!(chunks[chunk as usize]["done"], true, "the chunk in hand was finished");
    assert_eq!(chunks[chunk as usize]["attempts"], 1);
    let untouched = chunks.iter().filter(|c| c["attempts"] == 0).count();
    assert_eq!(untouched, chunks.len() - 1, "no other chunk was taken: {chunks:?}");

    let _replacement = farm.worker("w2", 15);
    succeeded(&finish(&mut watch(&mut client, &job_id).await).await);
}

#[tokio::test]
async fn a_chunk_that_always_fails_is_retried_with_backoff_then_fails_its_job_alone() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let farm = Farm::new();
    let coordinator = farm.coordinator();
    let mut client = coordinator.client().await;
    let doomed = submit(&mut client, spec(1.0, 2, pb::Priority::Normal)).await;
    let healthy = submit(&mut client, spec(1.0, 2, pb::Priority::Normal)).await;
    // A folder where the doomed chunk's latents must go: every write of them fails.
    let blocked = farm.store.path().join(format!("jobs/{doomed}/chunks/00000.safetensors"));
    std::fs::create_dir_all(blocked.join("in-the-way")).unwrap();

    let started = std::time::Instant::now();
    let _worker = farm.worker_with("w1", &[("VIDFARM_WORKER_MAX_ATTEMPTS", "3"), ("VIDFARM_WORKER_RETRY_BASE_MS", "300")]);
    let failed = finish(&mut watch(&mut client, &doomed).await).await;
    assert_eq!(pb::JobState::try_from(failed.state), Ok(pb::JobState::Failed));
    assert!(failed.error.starts_with("chunk 0 failed after 3 attempts: "), "{}", failed.error);
    assert!(started.elapsed() >= Duration::from_millis(900), "backoff of 300 ms, then 600 ms");
    let kept = client.get_job(pb::GetJobRequest { job_id: doomed.clone() }).await.unwrap().into_inner();
    assert_eq!(kept.error, failed.error, "GetJob keeps the reason");
    let chunk = &farm.stored_job(&doomed)["chunks"][0];
    assert_eq!((&chunk["attempts"], &chunk["failures"]), (&3.into(), &3.into()));
    succeeded(&finish(&mut watch(&mut client, &healthy).await).await);
}

#[tokio::test]
async fn sigterm_ends_a_coordinators_watch_streams_so_it_exits_at_once() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let _turn = ONE_AT_A_TIME.lock().await;
    let farm = Farm::new();
    let coordinator = farm.coordinator();
    let mut client = coordinator.client().await;
    // No worker: the job stays queued and its watch stream open.
    let job_id = submit(&mut client, spec(4.0, 8, pb::Priority::Normal)).await;
    let mut events = watch(&mut client, &job_id).await;
    events.next().await.expect("the job's current state").unwrap();
    // A load balancer's health watch, as Envoy and gRPC clients keep one open.
    let mut health = HealthClient::new(Channel::from_shared(coordinator.addr.clone()).unwrap().connect().await.unwrap());
    let mut health = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(health.next().await.unwrap().unwrap().status(), ServingStatus::Serving);
    signal(&coordinator, "TERM");
    let ended = tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("the stream ends at shutdown");
    let status = ended.expect("a last word").unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "clients take it as: watch again ({status:?})");
    let said = tokio::time::timeout(Duration::from_secs(10), health.next()).await.expect("the health watch hears of the shutdown");
    assert_eq!(said.expect("a last status").unwrap().status(), ServingStatus::NotServing, "sent elsewhere from now on");
    let ended = tokio::time::timeout(Duration::from_secs(10), health.next()).await.expect("the health watch ends at shutdown");
    assert!(!matches!(ended, Some(Ok(_))), "no status after NOT_SERVING: {ended:?}");
    assert!(coordinator.exits_within(Duration::from_secs(10)).await.success(), "a graceful exit");
}

fn signal(process: &Process, name: &str) {
    let sent = Command::new("kill").args([&format!("-{name}"), &process.child.id().to_string()]).status().unwrap();
    assert!(sent.success(), "kill -{name}");
}

#[tokio::test]
async fn two_workers_racing_on_a_chunk_after_its_lease_lapsed_make_one_result() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let farm = Farm::new();
    let coordinator = farm.coordinator();
    let mut workers = [farm.worker("w1", 2), farm.worker("w2", 2)];
    let mut client = coordinator.client().await;
    let job_id = submit(&mut client, spec(4.0, 12, pb::Priority::Normal)).await;
    let mut events = watch(&mut client, &job_id).await;
    let chunk = first_step(&mut events).await;
    let holder = farm.lease_holder(&format!("{job_id}/denoise/{chunk}")).expect("the chunk is leased");
    let frozen = if holder == "w1" { 0 } else { 1 };
    // Frozen, the holder stops renewing; the other worker takes the chunk when the lease lapses.
    signal(&workers[frozen], "STOP");
    let mut finished = Vec::new();
    let mut last = None;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(180), events.next()).await.expect("events keep coming") {
        let event = event.unwrap();
        if let Some(pb::job_event::Detail::ChunkFinished(c)) = event.detail {
            finished.push(c);
            if c == chunk {
                // Woken, the stale holder finds its lease gone (or finishes late, harmlessly).
                signal(&workers[frozen], "CONT");
            }
        }
        last = event.job;
    }
    let job = last.expect("events");
    let clip = succeeded(&job);
    finished.sort();
    assert_eq!(finished, (0..job.chunks.len() as u32).collect::<Vec<_>>(), "each chunk counted done once");
    assert!(farm.stored_job(&job_id)["chunks"][chunk as usize]["attempts"].as_u64().unwrap() >= 2);
    assert_eq!(sha256_file(&farm.store.path().join(&clip.object_key)), clip.sha256);
    assert!(workers[frozen].child.try_wait().unwrap().is_none(), "the stale worker lives on");
}

#[tokio::test]
async fn two_hundred_jobs_submitted_at_once_to_three_workers_all_finish_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let farm = Farm::new();
    let coordinator = farm.coordinator();
    let _workers = [farm.worker("w1", 15), farm.worker("w2", 15), farm.worker("w3", 15)];
    let client = coordinator.client().await;
    let submits = (0..200).map(|i| {
        let mut client = client.clone();
        async move { submit(&mut client, pb::JobSpec { seed: Some(i), ..spec(1.0, 1, pb::Priority::Normal) }).await }
    });
    let mut ids = futures::future::join_all(submits).await;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);

    let mut client = client.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(400);
    let jobs = loop {
        let page = pb::ListJobsRequest { page_size: 1000, ..Default::default() };
        let jobs = client.list_jobs(page).await.unwrap().into_inner().jobs;
        if jobs.iter().all(|j| pb::JobState::try_from(j.state).is_ok_and(|s| s != pb::JobState::Queued && s != pb::JobState::Running)) {
            break jobs;
        }
        assert!(std::time::Instant::now() < deadline, "jobs still unfinished");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut listed: Vec<String> = jobs.iter().map(|j| j.job_id.clone()).collect();
    listed.sort();
    assert_eq!(listed, ids, "every job listed, none lost, none made twice");
    let mut keys = Vec::new();
    for job in &jobs {
        let clip = succeeded(job);
        assert_eq!(sha256_file(&farm.store.path().join(&clip.object_key)), clip.sha256);
        keys.push(clip.object_key.clone());
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 200, "one clip per job");
    let mut redis = farm.redis();
    for set in ["queue:ready", "queue:delayed", "queue:leased"] {
        let left: usize = redis.zcard(farm.key(set)).unwrap();
        assert_eq!(left, 0, "{set} is empty");
    }
}

#[tokio::test]
async fn a_long_job_gives_the_same_clip_with_one_two_or_four_workers_as_on_the_embedded_farm() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // 12 s at 8 fps: 97 frames, 25 latent frames, six overlapping chunks finishing in any order
    // (in sync mode, their steps; in chain mode one after another, on whichever worker).
    for (stitch, mode) in [("blend", pb::StitchMode::Blend), ("sync", pb::StitchMode::Sync), ("chain", pb::StitchMode::Chain)] {
        let long = pb::JobSpec { seed: Some(21), keep_intermediates: true, stitch_mode: mode as i32, ..spec(12.0, 2, pb::Priority::Normal) };
        let reference = tempfile::tempdir().unwrap();
        let (latents, mp4) = render_on_the_embedded_farm(reference.path(), 12, 21, 2, stitch);
        assert_eq!(latents.len(), 6);

        for workers in [1, 2, 4] {
            let farm = Farm::new();
            let coordinator = farm.coordinator();
            let _workers: Vec<Process> = (0..workers).map(|i| farm.worker(&format!("w{i}"), 15)).collect();
            let mut client = coordinator.client().await;
            let job_id = submit(&mut client, long.clone()).await;
            let job = finish(&mut watch(&mut client, &job_id).await).await;
            let clip = succeeded(&job);
            let made = chunk_latents(farm.store.path(), Some(&job_id));
            assert!(made == latents, "{stitch}: {workers} worker(s) made other latents than the embedded farm");
            assert_eq!(clip.sha256, mp4, "{stitch}: {workers} worker(s) made another clip than the embedded farm");
        }
    }
}

/// Sync mode's barrier with a worker lost mid-step: the step is retaken from the last one all
/// chunks finished, not from the start, and the clip is the one a farm without the fault makes.
#[tokio::test]
async fn a_sync_job_survives_a_worker_killed_mid_step_and_retakes_only_that_step() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let farm = Farm::new();
    let coordinator = farm.coordinator();
    let mut workers = [farm.worker("w1", 2), farm.worker("w2", 2)];
    let mut client = coordinator.client().await;
    let steps = 12;
    let sync = pb::JobSpec { keep_intermediates: true, stitch_mode: pb::StitchMode::Sync as i32, ..spec(8.0, steps, pb::Priority::Normal) };
    let job_id = submit(&mut client, sync).await;
    let mut events = watch(&mut client, &job_id).await;

    // Past the first barriers, kill whoever holds step 3 or later.
    loop {
        let event = tokio::time::timeout(Duration::from_secs(120), events.next()).await.expect("steps in time").expect("the job goes on").unwrap();
        if matches!(event.detail, Some(pb::job_event::Detail::Step(ref s)) if s.step >= 4) {
            break;
        }
    }
    let (task, holder) = loop {
        let mut redis = farm.redis();
        let keys: Vec<String> = redis.scan_match(farm.key(&format!("queue:task:{job_id}/sync/*"))).unwrap().filter_map(Result::ok).collect();
        let prefix = farm.key("queue:task:");
        let leased = keys.into_iter().find_map(|key| {
            let task = key.strip_prefix(&prefix)?.to_string();
            let step: u32 = task.rsplit('/').next()?.parse().ok()?;
            farm.lease_holder(&task).filter(|w| !w.is_empty() && step >= 3).map(|w| (task, w))
        });
        if let Some(found) = leased {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    workers[if holder == "w1" { 0 } else { 1 }].kill();
    let chunk: usize = task.rsplit('/').nth(1).unwrap().parse().unwrap();

    let job = finish(&mut events).await;
    let clip = succeeded(&job);
    // One start per step; the dead worker's chunk may have one more, for the step it held (none
    // if it died before starting it). Starting that chunk over would have added 4 or more.
    let stored = farm.stored_job(&job_id);
    let attempts: Vec<u64> = stored["chunks"].as_array().unwrap().iter().map(|c| c["attempts"].as_u64().unwrap()).collect();
    let steps = u64::from(steps);
    for (index, &count) in attempts.iter().enumerate() {
        let allowed = if index == chunk { steps..=steps + 1 } else { steps..=steps };
        assert!(allowed.contains(&count), "chunk {index}: {count} steps started ({task} was held by {holder} when it died)");
    }
    let reference = tempfile::tempdir().unwrap();
    let (latents, mp4) = render_on_the_embedded_farm(reference.path(), 8, 7, steps as u32, "sync");
    assert!(chunk_latents(farm.store.path(), Some(&job_id)) == latents, "chunk latents differ from the no-fault render");
    assert_eq!(clip.sha256, mp4, "the clip is byte-identical to the one rendered without a fault");
}

/// As a container's only process (PID 1, where a signal without a handler is ignored), a
/// worker still waiting for its Redis ends at SIGTERM, instead of when the grace period runs out.
#[tokio::test]
async fn a_worker_as_pid_1_ends_at_sigterm_while_it_waits_for_redis() {
    if !Command::new("unshare").args(["--pid", "--fork", "true"]).status().is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot make a PID namespace here (unshare needs root)");
        return;
    }
    let farm = Farm::new();
    let redis_url = format!("redis://127.0.0.1:{}", free_port());
    let store = farm.store.path().display().to_string();
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", BIN, "worker", "--redis", &redis_url, "--store", &store, "--name", "pid1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare starts");
    let stderr = BufReader::new(unshare.stderr.take().unwrap());
    let waiting = tokio::task::spawn_blocking(move || {
        let mut lines = stderr.lines();
        lines.by_ref().map_while(Result::ok).find(|l| l.contains("Redis not reachable yet")).expect("the worker says it waits");
        lines
    });
    let mut lines = tokio::time::timeout(Duration::from_secs(30), waiting).await.expect("a warning in time").unwrap();
    std::thread::spawn(move || for _ in lines.by_ref() {});
    // unshare's one child is the worker, PID 1 in its namespace.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
    let worker = children.split_whitespace().next().expect("the worker process").to_string();
    assert!(Command::new("kill").args(["-TERM", &worker]).status().unwrap().success());
    let mut unshare = Process { child: unshare, addr: String::new() };
    let exited = tokio::task::spawn_blocking(move || unshare.child.wait().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(10), exited).await.expect("the worker ends at SIGTERM").unwrap();
    assert!(!status.success(), "stopped before it started: {status:?}");
}

#[tokio::test]
async fn a_worker_started_before_its_redis_waits_for_it_then_works() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let farm = Farm::new();
    let port = free_port();
    let redis_url = format!("redis://127.0.0.1:{port}");
    let store = farm.store.path().display().to_string();
    let child = Command::new(BIN)
        .args(["worker", "--redis", &redis_url, "--redis-namespace", &farm.namespace, "--store", &store, "--name", "early"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vidfarm starts");
    let mut worker = Process { child, addr: String::new() };
    let stderr = BufReader::new(worker.child.stderr.take().unwrap());
    let waiting = tokio::task::spawn_blocking(move || {
        let mut lines = stderr.lines();
        lines.by_ref().map_while(Result::ok).find(|l| l.contains("Redis not reachable yet")).expect("the worker says it waits");
        lines
    });
    let mut lines = tokio::time::timeout(Duration::from_secs(30), waiting).await.expect("a warning in time").unwrap();
    assert!(worker.child.try_wait().unwrap().is_none(), "still running, not crashed");
    std::thread::spawn(move || for _ in lines.by_ref() {});

    // Redis comes up on that port; the worker connects on its next try and starts.
    let mut redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let started = tokio::task::spawn_blocking(move || {
        let line = worker.first_line();
        (worker, line)
    });
    let (_worker, line) = tokio::time::timeout(Duration::from_secs(30), started).await.expect("the worker starts once Redis is up").unwrap();
    assert_eq!(line, "worker early started");
    let _ = redis.kill();
    let _ = redis.wait();
}

/// A quieter log level leaves the traces whole: a worker logging only warnings still exports
/// its task spans (its log filter gated the exporter too, so it sent none).
#[tokio::test]
async fn a_worker_logging_only_warnings_still_exports_its_spans() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let collector = Collector::start().await;
    let farm = Farm::traced(&collector);
    let coordinator = farm.coordinator();
    let _worker = farm.worker_with("quiet", &[("VIDFARM_LOG_LEVEL", "warn")]);
    let mut client = coordinator.client().await;
    let request = pb::SubmitJobRequest { spec: Some(spec(1.0, 1, pb::Priority::Normal)), idempotency_key: String::new() };
    let job = client.submit_job(request).await.unwrap().into_inner().job.unwrap();
    succeeded(&finish(&mut watch(&mut client, &job.job_id).await).await);
    let of_quiet_worker = |s: &CollectedSpan| s.service == "vidfarm-worker" && s.name == "task" && s.job_id.as_deref() == Some(job.job_id.as_str());
    collector.wait_for(|spans| spans.iter().any(of_quiet_worker)).await;
}

/// An OTLP/gRPC trace collector on a loopback port that keeps every span it is sent.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
}

#[derive(Clone, Debug)]
struct CollectedSpan {
    /// The exporting process's `service.name`.
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    job_id: Option<String>,
    /// A call span's `rpc.method` attribute.
    rpc_method: Option<String>,
    /// The span's status is ERROR.
    failed: bool,
}

struct TraceReceiver(Arc<Mutex<Vec<CollectedSpan>>>);

#[tonic::async_trait]
impl TraceService for TraceReceiver {
    async fn export(&self, request: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let text = |attributes: &[KeyValue], key: &str| {
            attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
        };
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = text(resource.resource.as_ref().map_or(&[][..], |r| &r.attributes), "service.name").unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|scope| scope.spans) {
                spans.push(CollectedSpan {
                    service: service.clone(),
                    job_id: text(&span.attributes, "job_id"),
                    rpc_method: text(&span.attributes, "rpc.method"),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    failed: span.status.as_ref().is_some_and(|status| status.code == 2),
                    name: span.name,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(TraceReceiver(spans.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        Self { endpoint, spans }
    }

    /// The spans received once `enough` holds of them, waiting up to 30 s.
    async fn wait_for(&self, enough: impl Fn(&[CollectedSpan]) -> bool) -> Vec<CollectedSpan> {
        for _ in 0..300 {
            let spans = self.spans.lock().unwrap().clone();
            if enough(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("spans received: {:#?}", self.spans.lock().unwrap());
    }
}

/// The mission's trace: the caller's `traceparent` sent with SubmitJob is continued by the
/// coordinator's span, carried in the job record through Redis, and continued by every task
/// span of both worker processes, whose own work (denoising, decoding, encoding, storing) hangs
/// below them.
#[tokio::test]
async fn one_trace_follows_a_job_from_the_grpc_call_through_redis_to_every_worker() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let collector = Collector::start().await;
    let farm = Farm::traced(&collector);
    let coordinator = farm.coordinator();
    let _workers = [farm.worker("w1", 15), farm.worker("w2", 15)];
    let mut client = coordinator.client().await;
    let (caller_trace, caller_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let mut request = tonic::Request::new(pb::SubmitJobRequest { spec: Some(spec(4.0, 2, pb::Priority::Normal)), idempotency_key: String::new() });
    request.metadata_mut().insert("traceparent", format!("00-{caller_trace}-{caller_span}-01").parse().unwrap());
    let job = client.submit_job(request).await.unwrap().into_inner().job.unwrap();
    assert_eq!(job.trace_id, caller_trace, "GetJob names the trace");
    let done = finish(&mut watch(&mut client, &job.job_id).await).await;
    succeeded(&done);
    assert_eq!(done.trace_id, caller_trace);
    let unknown = client.get_job(pb::GetJobRequest { job_id: "no-such-job".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument, "a malformed job id");

    let of_job = |s: &&CollectedSpan| s.job_id.as_deref() == Some(job.job_id.as_str());
    let tasks_expected = done.chunks.len() + 1;
    let spans = collector
        .wait_for(|spans| {
            let tasks = spans.iter().filter(of_job).filter(|s| s.name == "task").count();
            tasks >= tasks_expected
                && ["SubmitJob", "WatchJob", "GetJob", "store_clip"].iter().all(|name| spans.iter().any(|s| s.name == *name))
        })
        .await;
    // Every call has its span, named after the method, naming the job and failing when the call did.
    let watch = spans.iter().find(|s| s.name == "WatchJob").unwrap();
    assert_eq!((watch.job_id.as_deref(), watch.failed), (Some(job.job_id.as_str()), false));
    let get = spans.iter().find(|s| s.name == "GetJob").unwrap();
    assert_eq!((get.job_id.as_deref(), get.failed, get.service.as_str()), (Some("no-such-job"), true, "vidfarm-coordinator"));
    assert_eq!(get.rpc_method.as_deref(), Some("GetJob"), "OpenTelemetry's rpc.* attributes");
    let submit = spans.iter().find(|s| s.name == "SubmitJob").unwrap();
    assert_eq!((submit.service.as_str(), submit.trace_id.as_str(), submit.parent_span_id.as_str()), ("vidfarm-coordinator", caller_trace, caller_span));
    assert_eq!((submit.job_id.as_deref(), submit.failed), (Some(job.job_id.as_str()), false));
    let tasks: Vec<&CollectedSpan> = spans.iter().filter(of_job).filter(|s| s.name == "task").collect();
    assert_eq!(tasks.len(), tasks_expected, "one span per task: {tasks:#?}");
    for task in &tasks {
        assert_eq!((task.service.as_str(), task.trace_id.as_str()), ("vidfarm-worker", caller_trace));
        assert_eq!(task.parent_span_id, submit.span_id, "tasks hang below the call that submitted the job");
    }
    for name in ["denoise_chunk", "decode", "encode_mp4", "store_clip"] {
        let inside = spans.iter().filter(|s| s.name == name).all(|s| tasks.iter().any(|t| t.span_id == s.parent_span_id));
        assert!(inside && spans.iter().any(|s| s.name == name), "{name} spans below a task: {spans:#?}");
    }
}
