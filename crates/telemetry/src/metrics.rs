//! The process's metrics, in the OpenMetrics text format at `GET /metrics` when
//! `metrics.listen` is set: Prometheus scrapes it, and so does an OpenTelemetry collector's
//! `prometheus` receiver. One registry per process ([`metrics`]), so the code that observes
//! something records it where it happens, with no handle passed down.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A finished task: what it was and how it ended (`done`, `abandoned`, `later`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskKindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StitchLabels {
    pub stitch_mode: &'static str,
}

/// How a job ended: `succeeded`, `failed` or `cancelled`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobEndLabels {
    pub state: &'static str,
}

pub struct Metrics {
    registry: Registry,
    tasks: Family<TaskLabels, Counter>,
    task_seconds: Family<TaskKindLabels, Histogram>,
    clips: Family<StitchLabels, Counter>,
    seam_ratio: Family<StitchLabels, Histogram>,
    jobs_accepted: Counter,
    jobs_ended: Family<JobEndLabels, Counter>,
    job_seconds: Family<JobEndLabels, Histogram>,
    jobs_removed: Counter,
    step_seconds: Histogram,
    queue_depth: Gauge,
}

/// Seconds a task took: a denoising step on a CPU takes a fraction of a second, a chunk on a
/// large model minutes.
const SECONDS_BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1200.0];
/// Seconds from a job's acceptance to its end: a short clip on a CPU, an hour-long one on a farm.
const JOB_SECONDS_BUCKETS: [f64; 12] = [1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0];
/// Seam ratios: 1.0 is an invisible seam; the long-video targets sit at 1.15.
const SEAM_BUCKETS: [f64; 11] = [0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.25, 1.5, 2.0, 3.0];

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("vidfarm");
        let tasks = Family::default();
        registry.register("tasks", "Tasks a worker finished, by kind and outcome", tasks.clone());
        let task_seconds = Family::<_, _, fn() -> Histogram>::new_with_constructor(|| Histogram::new(SECONDS_BUCKETS));
        registry.register("task_seconds", "Time a worker spent on a task that it completed", task_seconds.clone());
        let clips = Family::default();
        registry.register("clips_assembled", "Clips stitched, decoded and stored, by stitch mode", clips.clone());
        let seam_ratio = Family::<_, _, fn() -> Histogram>::new_with_constructor(|| Histogram::new(SEAM_BUCKETS));
        registry.register(
            "clip_seam_ratio",
            "Seam ratio of each assembled clip of two or more chunks (1.0: seams as smooth as the rest)",
            seam_ratio.clone(),
        );
        let jobs_accepted = Counter::default();
        registry.register("jobs_accepted", "Jobs a coordinator accepted (a repeated idempotency key is not counted)", jobs_accepted.clone());
        let jobs_ended = Family::default();
        registry.register("jobs_ended", "Jobs that ended, by final state, counted by the process that ended them", jobs_ended.clone());
        let job_seconds = Family::<_, _, fn() -> Histogram>::new_with_constructor(|| Histogram::new(JOB_SECONDS_BUCKETS));
        registry.register("job_seconds", "Time from a job's acceptance to its end, by final state", job_seconds.clone());
        let jobs_removed = Counter::default();
        registry.register("jobs_removed", "Ended jobs a coordinator removed, objects and record, after their retention", jobs_removed.clone());
        let step_seconds = Histogram::new(SECONDS_BUCKETS);
        registry.register("step_seconds", "Time a worker spent on one denoising step of one chunk", step_seconds.clone());
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "Tasks queued or leased, as a coordinator last counted them (every 5 s)", queue_depth.clone());
        Self { registry, tasks, task_seconds, clips, seam_ratio, jobs_accepted, jobs_ended, job_seconds, jobs_removed, step_seconds, queue_depth }
    }

    /// A worker took one denoising step of one chunk in `seconds`.
    pub fn step_finished(&self, seconds: f64) {
        self.step_seconds.observe(seconds);
    }

    /// A coordinator counted `depth` tasks queued or leased.
    pub fn queue_depth(&self, depth: usize) {
        self.queue_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// A task ended; `seconds` is recorded for completed (`done`) tasks only.
    pub fn task_finished(&self, kind: &'static str, outcome: &'static str, seconds: f64) {
        self.tasks.get_or_create(&TaskLabels { kind, outcome }).inc();
        if outcome == "done" {
            self.task_seconds.get_or_create(&TaskKindLabels { kind }).observe(seconds);
        }
    }

    /// A clip was stored; a single-chunk clip has no seam ratio.
    pub fn clip_assembled(&self, stitch_mode: &'static str, seam_ratio: Option<f64>) {
        let labels = StitchLabels { stitch_mode };
        self.clips.get_or_create(&labels).inc();
        if let Some(ratio) = seam_ratio {
            self.seam_ratio.get_or_create(&labels).observe(ratio);
        }
    }

    pub fn job_accepted(&self) {
        self.jobs_accepted.inc();
    }

    /// A job reached its final `state`, `seconds` after it was accepted.
    pub fn job_ended(&self, state: &'static str, seconds: f64) {
        let labels = JobEndLabels { state };
        self.jobs_ended.get_or_create(&labels).inc();
        self.job_seconds.get_or_create(&labels).observe(seconds);
    }

    /// A coordinator removed a job past its retention.
    pub fn job_removed(&self) {
        self.jobs_removed.inc();
    }

    /// Everything recorded so far, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(|| async { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], metrics().encode()) }));
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_tasks_seams_and_jobs_appear_in_the_text() {
        let m = Metrics::new();
        m.task_finished("denoise", "done", 0.3);
        m.task_finished("denoise", "failed", 9.0);
        m.clip_assembled("sync", Some(1.02));
        m.clip_assembled("sync", None);
        m.job_accepted();
        m.job_accepted();
        m.job_ended("cancelled", 42.0);
        m.step_finished(0.2);
        m.step_finished(3.0);
        m.queue_depth(7);
        let text = m.encode();
        for line in [
            r#"vidfarm_tasks_total{kind="denoise",outcome="done"} 1"#,
            r#"vidfarm_tasks_total{kind="denoise",outcome="failed"} 1"#,
            r#"vidfarm_task_seconds_count{kind="denoise"} 1"#,
            r#"vidfarm_task_seconds_bucket{le="0.5",kind="denoise"} 1"#,
            r#"vidfarm_clips_assembled_total{stitch_mode="sync"} 2"#,
            r#"vidfarm_clip_seam_ratio_sum{stitch_mode="sync"} 1.02"#,
            r#"vidfarm_clip_seam_ratio_count{stitch_mode="sync"} 1"#,
            r#"vidfarm_clip_seam_ratio_bucket{le="1.05",stitch_mode="sync"} 1"#,
            r#"vidfarm_clip_seam_ratio_bucket{le="1.0",stitch_mode="sync"} 0"#,
            r#"vidfarm_jobs_accepted_total 2"#,
            r#"vidfarm_jobs_ended_total{state="cancelled"} 1"#,
            r#"vidfarm_job_seconds_bucket{le="30.0",state="cancelled"} 0"#,
            r#"vidfarm_job_seconds_bucket{le="60.0",state="cancelled"} 1"#,
            r#"vidfarm_step_seconds_count 2"#,
            r#"vidfarm_step_seconds_bucket{le="0.25"} 1"#,
            r#"vidfarm_queue_depth 7"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// The Helm chart's Grafana dashboard queries only series this registry exports.
    #[test]
    fn the_dashboard_queries_exported_series_only() {
        let m = Metrics::new();
        m.task_finished("denoise", "done", 0.3);
        m.clip_assembled("blend", Some(1.0));
        m.job_ended("succeeded", 1.0);
        let text = m.encode();
        let exported: std::collections::HashSet<&str> =
            text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
        let dashboard = include_str!("../../../helm/vidfarm/dashboards/vidfarm.json");
        let queried: Vec<&str> = dashboard
            .match_indices("vidfarm_")
            .map(|(at, _)| {
                let name = &dashboard[at..];
                &name[..name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(name.len())]
            })
            .collect();
        assert!(queried.len() >= 9, "{queried:?}");
        for name in queried {
            assert!(exported.contains(name), "the dashboard queries {name}, which is not exported:\n{text}");
        }
    }
}
