//! The scheduling layer alone on a real Redis: one submitter pushing chunk tasks of many jobs,
//! and simulated workers (each with its own connection) that lease, renew, sleep instead of
//! rendering, and ack. Prints dispatch latency (pushed to leased) percentiles and tasks per second.
//! `load` paces the pushes at that fraction of the workers' capacity, so latency is the
//! scheduler's and not a backlog's; 0 pushes everything at once (throughput at saturation).
//!
//! cargo run --release -p vidfarm-queue --example schedule_bench -- [workers] [tasks] [work_ms] [load] [redis_url]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vidfarm_api::Priority;
use vidfarm_queue::{Queue, RedisNamespace, RedisQueue, Task, TaskKind};

const CHUNKS_PER_JOB: u32 = 8;
const LEASE: Duration = Duration::from_secs(15);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let workers: usize = arg(0, "64").parse()?;
    let tasks: u32 = arg(1, "4000").parse()?;
    let work = Duration::from_millis(arg(2, "20").parse()?);
    let load: f64 = arg(3, "0.8").parse()?;
    let url = arg(4, "redis://127.0.0.1:6379");
    let namespace = format!("bench-{}", std::process::id());

    let pushed_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut handles = Vec::new();
    for w in 0..workers {
        let queue = RedisQueue::new(RedisNamespace::connect(&url, &namespace).await?);
        let (pushed_at, latencies) = (pushed_at.clone(), latencies.clone());
        handles.push(tokio::spawn(async move {
            let name = format!("sim-{w}");
            let mut done = 0u32;
            while let Some(lease) = queue.pull(&name, LEASE, Duration::from_secs(2)).await? {
                let pushed = pushed_at.lock().map_err(|e| e.to_string())?.get(&lease.task.id()).copied();
                if let Some(pushed) = pushed {
                    latencies.lock().map_err(|e| e.to_string())?.push(pushed.elapsed());
                }
                queue.renew(&lease, LEASE).await?;
                tokio::time::sleep(work).await;
                queue.ack(&lease).await?;
                done += 1;
            }
            Ok::<u32, Box<dyn std::error::Error + Send + Sync>>(done)
        }));
    }

    let submitter = RedisQueue::new(RedisNamespace::connect(&url, &namespace).await?);
    let start = Instant::now();
    let capacity = workers as f64 / work.as_secs_f64();
    let mut pace = (load > 0.0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / (capacity * load))));
    for i in 0..tasks {
        if let Some(pace) = pace.as_mut() {
            pace.tick().await;
        }
        let task = Task::new(&format!("job-{}", i / CHUNKS_PER_JOB), TaskKind::Denoise { chunk: i % CHUNKS_PER_JOB }, Priority::Normal);
        pushed_at.lock().map_err(|e| e.to_string())?.insert(task.id(), Instant::now());
        submitter.push(task).await?;
    }
    let mut done = 0;
    for handle in handles {
        done += handle.await?.map_err(|e| e.to_string())?;
    }
    // The workers stop after two seconds without work; that idle tail is not throughput.
    let elapsed = start.elapsed().saturating_sub(Duration::from_secs(2));

    let mut latencies = latencies.lock().map_err(|e| e.to_string())?.clone();
    latencies.sort();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default();
    println!(
        "{workers} workers, {done}/{tasks} tasks of {work:?} each in {elapsed:.2?}: {:.0} tasks/s (capacity {:.0}, pushed at load {load}); dispatch latency p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        f64::from(done) / elapsed.as_secs_f64(),
        capacity,
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
    let cleanup = redis::Client::open(url.as_str())?;
    let mut conn = cleanup.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("vidfarm:{namespace}:*")).query_async(&mut conn).await?;
    if !keys.is_empty() {
        redis::cmd("DEL").arg(keys).exec_async(&mut conn).await?;
    }
    Ok(())
}
