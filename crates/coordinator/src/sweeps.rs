//! The housekeeping every coordinator runs in the background. Each sweep is safe to run from
//! any number of replicas at once.

use crate::coordinator::Coordinator;
use std::time::Duration;
use tokio::task::JoinHandle;
use vidfarm_queue::now_ms;

/// How often the sweeps run: at start, then at this interval.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Runs the sweeps until aborted: queueing again the tasks unfinished jobs lost
/// (`Coordinator::requeue_unfinished`) and, given a retention, forgetting the jobs that ended
/// longer ago than that (`Coordinator::expire_finished`).
pub fn spawn_sweeps(coordinator: Coordinator, retention: Option<Duration>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            every.tick().await;
            match coordinator.requeue_unfinished().await {
                Ok(tasks) => tracing::debug!(tasks, "made sure the tasks of unfinished jobs are queued"),
                Err(e) => tracing::warn!(error = %e, "could not check unfinished jobs for lost tasks"),
            }
            let Some(retention) = retention else { continue };
            match coordinator.expire_finished(retention, now_ms()).await {
                Ok(0) => {}
                Ok(jobs) => tracing::info!(jobs, ?retention, "removed the jobs past their retention"),
                Err(e) => tracing::warn!(error = %e, "could not remove the jobs past their retention"),
            }
        }
    })
}
