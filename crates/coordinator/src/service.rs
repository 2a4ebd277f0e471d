//! `RenderService` over the coordinator: request checks, status codes, the watch stream.

use crate::convert::{clip_to_pb, detail_to_pb, job_to_pb, state_from_pb, state_to_pb, worker_to_pb};
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::rpc_span::record_job_id;
use futures::StreamExt;
use futures::stream::BoxStream;
use prost::Message;
use tonic::{Request, Response, Status};
use vidfarm_api::pb::{self, render_service_server::RenderService};
use vidfarm_queue::{Control, QueueError};

/// The most job bytes a ListJobs page holds, under the 4 MiB a gRPC client takes by default.
const MAX_PAGE_BYTES: usize = 3 << 20;

pub struct RenderApi {
    coordinator: Coordinator,
    /// Turns true when the server begins to shut down: open watch streams then end, so that
    /// a graceful shutdown does not wait on them until the pod is killed.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl RenderApi {
    pub fn new(coordinator: Coordinator, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { coordinator, stopping }
    }

    fn job(&self, record: &vidfarm_queue::JobRecord) -> pb::Job {
        job_to_pb(record, self.coordinator.store())
    }

    async fn control(&self, job_id: &str, control: Control) -> Result<Response<pb::Job>, Status> {
        record_job_id(job_id);
        let record = self.coordinator.control(job_id, control).await.map_err(status)?;
        Ok(Response::new(self.job(&record)))
    }
}

/// Maps coordinator errors to gRPC codes: bad fields are INVALID_ARGUMENT naming the field.
pub fn status(e: CoordinatorError) -> Status {
    match e {
        CoordinatorError::Invalid(field) => field.into(),
        CoordinatorError::Queue(QueueError::JobNotFound(id)) => Status::not_found(format!("job {id} not found")),
        CoordinatorError::Queue(e @ QueueError::WorkerNotFound(_)) => Status::not_found(e.to_string()),
        CoordinatorError::Queue(QueueError::Precondition(m)) => Status::failed_precondition(m),
        // Incompatible: another replica, of the version that stored the job, can answer.
        CoordinatorError::Queue(QueueError::Backend(m) | QueueError::Incompatible(m)) => Status::unavailable(m),
        e @ CoordinatorError::NoClip { .. } => Status::failed_precondition(e.to_string()),
        // Transient (the server unreachable or failing): a retry may succeed. Otherwise (access
        // refused, a bad object) a retry would only repeat it.
        CoordinatorError::Store(e) if e.is_transient() => Status::unavailable(e.to_string()),
        CoordinatorError::Store(e) => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl RenderService for RenderApi {
    async fn submit_job(&self, request: Request<pb::SubmitJobRequest>) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let request = request.into_inner();
        let spec = request.spec.ok_or_else(|| Status::invalid_argument("spec: is required"))?;
        // Runs in the call's span (`RpcSpans`), which the job record keeps as its trace's root.
        let (record, created) = self.coordinator.submit(&spec, &request.idempotency_key).await.map_err(status)?;
        record_job_id(&record.id);
        Ok(Response::new(pb::SubmitJobResponse { job: Some(self.job(&record)), created }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let job_id = request.into_inner().job_id;
        record_job_id(&job_id);
        let record = self.coordinator.get(&job_id).await.map_err(status)?;
        Ok(Response::new(self.job(&record)))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let request = request.into_inner();
        let mut states = Vec::new();
        for &s in &request.states {
            let state = pb::JobState::try_from(s)
                .ok()
                .and_then(state_from_pb)
                .ok_or_else(|| Status::invalid_argument(format!("states: unknown job state {s}")))?;
            // Each record listed is checked against every state asked for: repeats cost alone.
            if !states.contains(&state) {
                states.push(state);
            }
        }
        let page = self.coordinator.list(&states, &request.page_token, request.page_size).await.map_err(status)?;
        // A page stays under what clients take by default (4 MiB): long jobs carry thousands
        // of chunks each, and the jobs past the limit go to the next page.
        let (mut jobs, mut bytes, mut next) = (Vec::with_capacity(page.jobs.len()), 0, page.next);
        for (i, record) in page.jobs.iter().enumerate() {
            let job = self.job(record);
            bytes += job.encoded_len();
            if bytes > MAX_PAGE_BYTES && i > 0 {
                next = Some(page.jobs[i - 1].id.clone());
                break;
            }
            jobs.push(job);
        }
        Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token: next.unwrap_or_default() }))
    }

    type WatchJobStream = BoxStream<'static, Result<pb::JobEvent, Status>>;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let job_id = request.into_inner().job_id;
        record_job_id(&job_id);
        // Subscribe before reading the snapshot, so no change falls between the two.
        self.coordinator.get(&job_id).await.map_err(status)?;
        let updates = self.coordinator.book().subscribe(&job_id).await.map_err(|e| status(e.into()))?;
        let snapshot = self.coordinator.get(&job_id).await.map_err(status)?;
        let store = self.coordinator.store().clone();
        let first = pb::JobEvent {
            sequence: snapshot.sequence,
            job: Some(job_to_pb(&snapshot, &store)),
            detail: Some(pb::job_event::Detail::StateChanged(state_to_pb(snapshot.state) as i32)),
        };
        let finished = snapshot.state.is_final();
        let after = snapshot.sequence;
        let rest = updates
            .filter(move |u| futures::future::ready(u.record.sequence > after))
            .map(move |u| pb::JobEvent {
                sequence: u.record.sequence,
                job: Some(job_to_pb(&u.record, &store)),
                detail: Some(detail_to_pb(&u.detail)),
            });
        // The stream ends with the event that makes the job final, without waiting for another.
        // Updates that stop before it (the book's connection was lost: Redis restarted, the
        // connection was killed) end it with UNAVAILABLE, so the client watches again instead
        // of taking a running job's stream for a finished one.
        let rest = futures::stream::unfold((rest.boxed(), finished), |(mut updates, done)| async move {
            if done {
                return None;
            }
            let Some(event) = updates.next().await else {
                return Some((Err(Status::unavailable("the job's updates were cut off: watch the job again")), (updates, true)));
            };
            let state = event.job.as_ref().map(|j| j.state).unwrap_or_default();
            let done = matches!(
                pb::JobState::try_from(state),
                Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
            );
            Some((Ok(event), (updates, done)))
        });
        // On shutdown the stream ends with UNAVAILABLE, which clients take as "watch again"
        // (another coordinator, or this one restarted); the job goes on regardless.
        let (mut until_stopping, stopped) = (self.stopping.clone(), self.stopping.clone());
        let stopping = async move {
            let _ = until_stopping.wait_for(|stopping| *stopping).await;
        };
        let farewell = futures::stream::once(async move { *stopped.borrow() })
            .filter(|stopped| futures::future::ready(*stopped))
            .map(|_| Err(Status::unavailable("the coordinator is shutting down: watch the job again")));
        let stream = futures::stream::once(async move { Ok(first) }).chain(rest).take_until(stopping).chain(farewell);
        Ok(Response::new(stream.boxed()))
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        self.control(&request.into_inner().job_id, Control::Cancel).await
    }

    async fn pause_job(&self, request: Request<pb::PauseJobRequest>) -> Result<Response<pb::Job>, Status> {
        self.control(&request.into_inner().job_id, Control::Pause).await
    }

    async fn resume_job(&self, request: Request<pb::ResumeJobRequest>) -> Result<Response<pb::Job>, Status> {
        self.control(&request.into_inner().job_id, Control::Resume).await
    }

    async fn get_clip(&self, request: Request<pb::GetClipRequest>) -> Result<Response<pb::Clip>, Status> {
        let job_id = request.into_inner().job_id;
        record_job_id(&job_id);
        let (record, url) = self.coordinator.clip(&job_id).await.map_err(status)?;
        clip_to_pb(&record, url)
            .map(Response::new)
            .ok_or_else(|| Status::failed_precondition("job has no clip"))
    }

    async fn list_workers(&self, _: Request<pb::ListWorkersRequest>) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let workers = self.coordinator.workers().await.map_err(status)?;
        Ok(Response::new(pb::ListWorkersResponse { workers: workers.iter().map(worker_to_pb).collect() }))
    }

    async fn drain_worker(&self, request: Request<pb::DrainWorkerRequest>) -> Result<Response<pb::Worker>, Status> {
        let worker = self.coordinator.drain_worker(&request.into_inner().name).await.map_err(status)?;
        Ok(Response::new(worker_to_pb(&worker)))
    }

    async fn delete_job(&self, request: Request<pb::DeleteJobRequest>) -> Result<Response<pb::Job>, Status> {
        let job_id = request.into_inner().job_id;
        record_job_id(&job_id);
        let record = self.coordinator.delete(&job_id).await.map_err(status)?;
        Ok(Response::new(self.job(&record)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vidfarm_queue::conformance::sample_record;
    use vidfarm_queue::flaky::FlakyBook;
    use vidfarm_queue::{FarmState, JobBook, MemoryQueue, MemoryWorkerRegistry};
    use vidfarm_store::ArtifactStore;

    /// A store that fails for now answers UNAVAILABLE (clients retry); one that refuses access
    /// answers INTERNAL, which no retry mends.
    #[test]
    fn store_errors_are_unavailable_only_when_transient() {
        let object = |source| CoordinatorError::Store(vidfarm_store::StoreError::Object { key: "jobs/job-a/clip.mp4".into(), source });
        let unreachable = object(object_store::Error::Generic { store: "S3", source: "connection refused".into() });
        assert_eq!(status(unreachable).code(), tonic::Code::Unavailable);
        let refused = object(object_store::Error::PermissionDenied { path: "jobs/job-a".into(), source: "AccessDenied".into() });
        let refused = status(refused);
        assert_eq!(refused.code(), tonic::Code::Internal);
        assert!(refused.message().contains("jobs/job-a/clip.mp4"), "{refused:?}");
    }

    /// Long jobs fill a page before its job count does: the page stops under what a client
    /// takes by default, and the next one goes on from there, missing nothing.
    #[tokio::test]
    async fn a_page_of_long_jobs_stays_under_a_clients_message_limit() {
        let book = Arc::new(vidfarm_queue::MemoryJobBook::new());
        // 300 jobs of 4000 chunks (10 minutes in chunks of 2 latent frames): about 5 MB.
        let jobs = 300;
        for i in 0..jobs {
            let mut record = sample_record(&format!("job-{i:04}"), None);
            record.chunks = vec![record.chunks[0].clone(); 4000];
            book.insert(record).await.unwrap();
        }
        let farm = FarmState { queue: Arc::new(MemoryQueue::new()), book, registry: Arc::new(MemoryWorkerRegistry::new()) };
        let store = ArtifactStore::local(&std::env::temp_dir()).unwrap();
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        let api = RenderApi::new(Coordinator::new(farm, store, Vec::new()), stopping);
        let (mut seen, mut token, mut pages) = (std::collections::BTreeSet::new(), String::new(), 0);
        loop {
            let request = pb::ListJobsRequest { page_size: 1000, page_token: token, ..Default::default() };
            let page = api.list_jobs(Request::new(request)).await.expect("a page").into_inner();
            assert!(page.encoded_len() < 4 << 20, "a page of {} bytes", page.encoded_len());
            pages += 1;
            for job in page.jobs {
                assert!(seen.insert(job.job_id.clone()), "{} listed twice", job.job_id);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen.len(), jobs);
        assert!(pages > 1, "the jobs fit one page");
    }

    /// A watch whose updates stop before the job ends must not end as a finished job's does.
    #[tokio::test]
    async fn a_watch_whose_updates_are_cut_off_ends_with_unavailable() {
        let book = Arc::new(FlakyBook::new());
        book.cut_update_streams();
        book.insert(sample_record("job-a", None)).await.unwrap();
        let farm = FarmState { queue: Arc::new(MemoryQueue::new()), book, registry: Arc::new(MemoryWorkerRegistry::new()) };
        let store = ArtifactStore::local(&std::env::temp_dir()).unwrap();
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        let api = RenderApi::new(Coordinator::new(farm, store, Vec::new()), stopping);

        let request = Request::new(pb::WatchJobRequest { job_id: "job-a".into() });
        let mut events = api.watch_job(request).await.expect("watch").into_inner();
        let first = events.next().await.expect("the snapshot").expect("the snapshot");
        assert_eq!(first.job.expect("job").state, pb::JobState::Queued as i32);
        let end = events.next().await.expect("an answer saying why the stream ends").expect_err("not a clean end");
        assert_eq!(end.code(), tonic::Code::Unavailable, "{end}");
        assert!(events.next().await.is_none());
    }
}
