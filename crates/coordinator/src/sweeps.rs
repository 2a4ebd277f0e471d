//! The housekeeping every coordinator runs in the background. Each sweep is safe to run from
//! any number of replicas at once.

use crate::coordinator::Coordinator;
use std::time::Duration;
use tokio::task::JoinHandle;
use vidfarm_queue::now_ms;

/// How often each sweep runs: at start, then at this interval.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Jobs one retention sweep removes at most, so that a long backlog (retention just turned
/// on) is worked through a slice at a time and each sweep reports.
const REMOVALS_PER_SWEEP: usize = 500;

/// An interval that, after a tick handled late (a sweep slower than its period), waits a whole
/// period again: tokio's default fires the missed ticks back to back, sweeping again at once.
pub(crate) fn steady_interval(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// Runs the sweeps until aborted: queueing again the tasks unfinished jobs lost
/// (`Coordinator::requeue_unfinished`) and, given a retention, forgetting the jobs that ended
/// longer ago than that (`Coordinator::expire_finished`). They run side by side, so a slow
/// retention sweep never holds up the recovery of lost tasks.
pub fn spawn_sweeps(coordinator: Coordinator, retention: Option<Duration>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let requeue = async {
            let mut every = steady_interval(SWEEP_EVERY);
            loop {
                every.tick().await;
                match coordinator.requeue_unfinished().await {
                    Ok(tasks) => tracing::debug!(tasks, "made sure the tasks of unfinished jobs are queued"),
                    Err(e) => tracing::warn!(error = %e, "could not check unfinished jobs for lost tasks"),
                }
            }
        };
        let expire = async {
            let Some(retention) = retention else { return };
            let mut every = steady_interval(SWEEP_EVERY);
            loop {
                every.tick().await;
                match coordinator.expire_finished(retention, now_ms(), REMOVALS_PER_SWEEP).await {
                    Ok(0) => {}
                    Ok(jobs) => tracing::info!(jobs, ?retention, "removed the jobs past their retention"),
                    Err(e) => tracing::warn!(error = %e, "could not remove the jobs past their retention"),
                }
            }
        };
        tokio::join!(requeue, expire);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// After a sweep three periods long, the next sweep is a period away, not due at once.
    #[tokio::test]
    async fn a_slow_sweep_is_not_followed_by_missed_ones() {
        let period = Duration::from_millis(100);
        let mut every = steady_interval(period);
        every.tick().await;
        std::thread::sleep(3 * period);
        every.tick().await;
        let waited = Instant::now();
        every.tick().await;
        assert!(waited.elapsed() >= period / 2, "the next tick came after {:?}", waited.elapsed());
    }
}
