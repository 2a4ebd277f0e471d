//! `vidfarm`: render a clip on the embedded farm, serve the farm over gRPC, drive a farm as a
//! client, and inspect or check models.

mod client;
mod distributed;
mod farm;
mod model_cmd;
mod output;
mod settings;
mod spec_args;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use tracing::Instrument;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::watch;
use vidfarm_queue::JobState;
use vidfarm_telemetry::{LogFormat, TraceExport};

use crate::client::ControlVerb;
use crate::farm::Farm;
use crate::settings::Settings;
use crate::spec_args::SpecArgs;

#[derive(Parser)]
#[command(name = "vidfarm", version, about = "A distributed text-to-video render farm")]
struct Cli {
    /// A TOML config file layered over the defaults (see config/vidfarm.toml).
    #[arg(long, global = true, env = "VIDFARM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render one clip on the embedded farm (no Redis, no S3) and write it as MP4.
    Render {
        #[command(flatten)]
        spec: SpecArgs,
        /// Where to write the MP4.
        #[arg(short, long, default_value = "clip.mp4")]
        out: PathBuf,
        /// The model folder [settings: server.model].
        #[arg(long)]
        model: Option<PathBuf>,
        /// Keep intermediate artifacts here instead of a temporary folder.
        #[arg(long)]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run the embedded farm behind the gRPC API.
    Serve {
        /// [settings: server.listen]
        #[arg(long)]
        listen: Option<String>,
        /// [settings: server.store]
        #[arg(long)]
        store: Option<String>,
        /// [settings: server.model]
        #[arg(long)]
        model: Option<PathBuf>,
        /// In-process workers [settings: worker.count].
        #[arg(long)]
        workers: Option<u32>,
    },
    /// Run a coordinator of a distributed farm: the gRPC API over Redis, no rendering.
    Coordinator {
        #[command(flatten)]
        redis: distributed::RedisArgs,
        /// [settings: server.listen]
        #[arg(long)]
        listen: Option<String>,
        /// The store the workers write to [settings: server.store].
        #[arg(long)]
        store: Option<String>,
        /// The model folder; only its vidfarm.toml is read [settings: server.model].
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Run a worker of a distributed farm: renders tasks from Redis until SIGTERM.
    Worker {
        #[command(flatten)]
        redis: distributed::RedisArgs,
        /// [settings: server.store]
        #[arg(long)]
        store: Option<String>,
        /// [settings: server.model]
        #[arg(long)]
        model: Option<PathBuf>,
        /// Shown in leases and logs: letters, digits, '.', '_' and '-' (default: host name and
        /// process id; in a container, where the worker is PID 1, the host name: a pod's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Submit a job; prints its id (`job_id` with --json).
    Submit {
        #[command(flatten)]
        spec: SpecArgs,
        /// The same key always names the same job: resubmitting is safe. Without one, the
        /// command makes up its own (a UUID), so its own retries never make two jobs.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the job to its end with a progress bar.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Follow a job to its end with a progress bar.
    Watch {
        job_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    Get {
        job_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    List {
        /// Only jobs in these states (repeatable).
        #[arg(long = "state")]
        states: Vec<String>,
        #[arg(long, default_value_t = 50)]
        page_size: u32,
        #[arg(long)]
        page_token: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    Cancel {
        job_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    Pause {
        job_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    Resume {
        job_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a finished job's clip and other objects from storage (the job record stays).
    Delete {
        job_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the live workers: state, task in hand, tasks done.
    Workers {
        #[command(flatten)]
        conn: Conn,
    },
    /// Ask a worker to finish its task in hand, take no more and stop (as SIGTERM does).
    Drain {
        /// The worker's name, as `vidfarm workers` lists it.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Download a finished clip and check its sha256.
    Fetch {
        job_id: String,
        #[arg(short, long)]
        out: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Model tools: inspect, run one component, make random weights, evaluate, train.
    Model {
        #[command(subcommand)]
        command: model_cmd::ModelCommand,
    },
}

#[derive(clap::Args)]
struct Conn {
    /// The coordinator [settings: client.addr].
    #[arg(long)]
    addr: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    let format = if settings.log.format == "json" { LogFormat::Json } else { LogFormat::Text };
    // A render shows a progress bar; its logs would only scroll it away.
    let quiet_level = match &cli.command {
        Command::Serve { .. } | Command::Coordinator { .. } | Command::Worker { .. } => settings.log.level.as_str(),
        _ => "warn",
    };
    // The farm's processes export their spans; client commands have none worth a trace.
    let service = match &cli.command {
        Command::Serve { .. } | Command::Render { .. } => Some("vidfarm"),
        Command::Coordinator { .. } => Some("vidfarm-coordinator"),
        Command::Worker { .. } => Some("vidfarm-worker"),
        _ => None,
    };
    let export = service.filter(|_| !settings.traces.otlp_endpoint.is_empty()).map(|service| TraceExport {
        endpoint: settings.traces.otlp_endpoint.clone(),
        service_name: service.to_string(),
    });
    if matches!(cli.command, Command::Serve { .. } | Command::Coordinator { .. } | Command::Worker { .. }) {
        listen_for_signals()?;
    }
    let traces = vidfarm_telemetry::init(format, quiet_level, export.as_ref())?;
    let result = run_command(cli.command, &settings).await;
    if let Some(traces) = traces {
        traces.shutdown();
    }
    result
}

async fn run_command(command: Command, settings: &Settings) -> Result<()> {
    let connect = async |conn: &Conn| client::connect(conn.addr.as_deref().unwrap_or(&settings.client.addr), &settings.client).await;
    match command {
        Command::Render { spec, out, model, store, json } => render(settings, &spec, &out, model, store, json).await,
        Command::Serve { listen, store, model, workers } => {
            let mut settings = settings.clone();
            if let Some(w) = workers {
                settings.worker.count = w;
            }
            let listen = listen.unwrap_or_else(|| settings.server.listen.clone());
            let store = store.unwrap_or_else(|| settings.server.store.clone());
            let model = model.unwrap_or_else(|| settings.server.model.clone());
            serve(&settings, &listen, &store, &model).await
        }
        Command::Coordinator { redis, listen, store, model } => {
            let listen = listen.unwrap_or_else(|| settings.server.listen.clone());
            let store = store.unwrap_or_else(|| settings.server.store.clone());
            let model = model.unwrap_or_else(|| settings.server.model.clone());
            distributed::coordinator(settings, &redis, &listen, &store, &model).await
        }
        Command::Worker { redis, store, model, name } => {
            let store = store.unwrap_or_else(|| settings.server.store.clone());
            let model = model.unwrap_or_else(|| settings.server.model.clone());
            distributed::worker(settings, &redis, &store, &model, name).await
        }
        Command::Submit { spec, idempotency_key, wait, conn } => {
            client::submit(&mut connect(&conn).await?, &spec, idempotency_key, wait, conn.json).await
        }
        Command::Watch { job_id, conn } => client::watch(&mut connect(&conn).await?, &job_id, conn.json).await,
        Command::Get { job_id, conn } => client::get(&mut connect(&conn).await?, &job_id, conn.json).await,
        Command::List { states, page_size, page_token, conn } => {
            client::list(&mut connect(&conn).await?, &states, page_size, page_token, conn.json).await
        }
        Command::Cancel { job_id, conn } => {
            client::control(&mut connect(&conn).await?, &job_id, ControlVerb::Cancel, conn.json).await
        }
        Command::Pause { job_id, conn } => {
            client::control(&mut connect(&conn).await?, &job_id, ControlVerb::Pause, conn.json).await
        }
        Command::Resume { job_id, conn } => {
            client::control(&mut connect(&conn).await?, &job_id, ControlVerb::Resume, conn.json).await
        }
        Command::Delete { job_id, conn } => {
            client::control(&mut connect(&conn).await?, &job_id, ControlVerb::Delete, conn.json).await
        }
        Command::Workers { conn } => client::workers(&mut connect(&conn).await?, conn.json).await,
        Command::Drain { name, conn } => client::drain(&mut connect(&conn).await?, &name, conn.json).await,
        Command::Fetch { job_id, out, conn } => {
            client::fetch(&mut connect(&conn).await?, &job_id, &out, conn.json).await
        }
        Command::Model { command } => model_cmd::run(command).await,
    }
}

async fn render(settings: &Settings, spec: &SpecArgs, out: &PathBuf, model: Option<PathBuf>, store: Option<String>, json: bool) -> Result<()> {
    let model = model.unwrap_or_else(|| settings.server.model.clone());
    let scratch = tempfile_dir()?;
    let store = store.unwrap_or_else(|| scratch.display().to_string());
    let farm = Farm::start(settings, &model, &store).await?;
    let unknown = farm.pipeline.tokenizer.encode(&spec.prompt, farm.pipeline.max_sequence_length)?.unknown_words;
    if !unknown.is_empty() {
        eprintln!("warning: the model does not know these words of the prompt: {}", unknown.join(", "));
    }
    // The job's trace starts here, as a served job's starts at its SubmitJob call.
    let (record, _) = farm.coordinator.submit(&spec.to_pb(), "").instrument(tracing::info_span!("render")).await?;
    let mut updates = farm.coordinator.book().subscribe(&record.id).await?;
    let bar = output::job_bar(json);
    let store = farm.coordinator.store().clone();
    let mut current = farm.coordinator.get(&record.id).await?;
    while !current.state.is_final() {
        output::update_bar(&bar, &vidfarm_coordinator::convert::job_to_pb(&current, &store));
        match updates.next().await {
            Some(update) => current = update.record,
            None => bail!("the farm stopped before the job ended"),
        }
    }
    bar.finish_and_clear();
    farm.stop().await;
    let job = vidfarm_coordinator::convert::job_to_pb(&current, &store);
    if current.state != JobState::Succeeded {
        bail!("job {} ended {}: {}", current.id, output::state_name(job.state), current.error.unwrap_or_default());
    }
    let clip = current.clip.as_ref().context("a succeeded job has a clip")?;
    let bytes = store.get(&clip.object_key).await?;
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    let _ = std::fs::remove_dir_all(&scratch);
    let mut value = output::job_json(&job);
    value["path"] = out.display().to_string().into();
    if json {
        output::emit(value);
    } else {
        output::emit(format!(
            "{}: {} frames at {} fps, {}x{}, {} bytes",
            out.display(),
            clip.frames,
            clip.fps,
            clip.width,
            clip.height,
            clip.size_bytes
        ));
    }
    Ok(())
}

/// A private scratch folder for a render's intermediate artifacts.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("vidfarm-render-{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

async fn serve(settings: &Settings, listen: &str, store: &str, model: &Path) -> Result<()> {
    let security = settings.server.security()?;
    start_metrics(settings).await?;
    let farm = Farm::start(settings, model, store).await?;
    // From here a signal is a graceful shutdown's: the workers may hold tasks, the sweeps run.
    let signal = shutdown_signal();
    let sweeps = vidfarm_coordinator::spawn_sweeps(farm.coordinator.clone(), settings.server.retention());
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    // Scripts and tests read the bound address (the port may have been 0) from this line.
    output::emit(format!("listening on {local}"));
    tracing::info!(%local, store, model = %model.display(), "serving");
    vidfarm_coordinator::serve(farm.coordinator.clone(), listener, security, signal).await?;
    sweeps.abort();
    tracing::info!("shutting down: finishing tasks in hand");
    farm.stop().await;
    Ok(())
}

/// Serves `GET /metrics` on `metrics.listen` for the life of the process, when it is set.
async fn start_metrics(settings: &Settings) -> Result<()> {
    let listen = &settings.metrics.listen;
    if listen.is_empty() {
        return Ok(());
    }
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding metrics.listen {listen}"))?;
    tracing::info!(local = %listener.local_addr()?, "metrics at /metrics");
    tokio::spawn(async move {
        if let Err(error) = vidfarm_telemetry::metrics::serve(listener).await {
            tracing::error!(%error, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

/// Whether a command's graceful shutdown listens for the signals yet ([`shutdown_signal`]).
static GRACEFUL: AtomicBool = AtomicBool::new(false);
/// Turns true at Ctrl-C or SIGTERM, once [`listen_for_signals`] listens.
static SIGNALLED: OnceLock<watch::Receiver<bool>> = OnceLock::new();

/// Listens for Ctrl-C and SIGTERM (what Kubernetes sends before killing a pod) from the start
/// of a long-running command. Until its graceful shutdown listens, a signal ends the process at
/// once: it holds no task yet, and as a container's PID 1 without a handler it would ignore
/// SIGTERM through a model load or a wait for Redis, until the grace period ran out.
fn listen_for_signals() -> Result<()> {
    let (signalled, receiver) = watch::channel(false);
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::spawn(async move {
        #[cfg(unix)]
        let term = term.recv();
        #[cfg(not(unix))]
        let term = futures::future::pending::<Option<()>>();
        // The shell's codes for a process ended by SIGINT and SIGTERM.
        let code = tokio::select! {
            _ = tokio::signal::ctrl_c() => 130,
            _ = term => 143,
        };
        if !GRACEFUL.load(Ordering::SeqCst) {
            eprintln!("stopped while starting");
            std::process::exit(code);
        }
        let _ = signalled.send(true);
    });
    let _ = SIGNALLED.set(receiver);
    Ok(())
}

/// Completes at Ctrl-C or SIGTERM. From this call on (not the future's first poll: a worker
/// may take a task before then), a signal is the command's to handle.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    GRACEFUL.store(true, Ordering::SeqCst);
    let receiver = SIGNALLED.get().cloned();
    async move {
        match receiver {
            Some(mut receiver) => {
                let _ = receiver.wait_for(|signalled| *signalled).await;
            }
            None => futures::future::pending().await,
        }
    }
}
