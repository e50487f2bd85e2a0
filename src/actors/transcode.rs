//! TranscodeSupervisor and its TranscodeJob actors.
//!
//! The bridge hands a `media.uploaded` job to [`MediaJobs`] (the `JobHandler`),
//! which submits it to the supervisor and waits. The supervisor runs at most
//! `media.concurrency` jobs at once, each in its own `TranscodeJob` actor, and keeps
//! the rest in a FIFO queue (their deliveries stay leased by the bridge meanwhile).
//!
//! ```text
//! job ends                    → its result goes back to the bridge (media.ready / media.failed)
//! job panics or is killed     → the supervisor answers "crashed" (retryable): the bridge
//!                               naks with backoff and the job runs again from the start,
//!                               at most bus.max_deliver times; its temp files are removed
//!                               as its future is dropped
//! media.cancel {media_id}     → queued: dropped; running: ffmpeg killed, files removed;
//!                               either way media.failed {reason: "cancelled"}
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::{Map, Value, json};
use tokio::sync::{oneshot, watch};

use crate::bus::events;
use crate::jobs::{Job, JobHandler, Outcome};
use crate::media::{MediaError, Progress, Request, Transcoder};
use crate::metrics::Metrics;
use crate::supervisors::policy::exit_of;

/// Progress of one job, as it goes out.
pub type ProgressSink = Box<dyn FnMut(Progress) + Send>;

/// The node's transcoding: the transcoder and the current supervisor.
pub struct MediaService {
    pub transcoder: Arc<Transcoder>,
    supervisor: Mutex<Option<ActorRef<TranscodeMsg>>>,
    limit: usize,
    metrics: Arc<Metrics>,
    /// The last progress of each transcode running here, by media id (the dashboard).
    progress: dashmap::DashMap<String, Progress>,
}

impl MediaService {
    pub fn new(transcoder: Transcoder, concurrency: usize, metrics: Arc<Metrics>) -> MediaService {
        let limit = if concurrency > 0 {
            concurrency
        } else {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        };
        MediaService {
            transcoder: Arc::new(transcoder),
            supervisor: Mutex::new(None),
            limit,
            metrics,
            progress: dashmap::DashMap::new(),
        }
    }

    /// The last progress of each transcode running here, by media id.
    pub fn progress_all(&self) -> Vec<(String, Progress)> {
        self.progress
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Media ids running, and waiting for a slot, on this node.
    pub async fn jobs(&self) -> Option<(Vec<String>, Vec<String>)> {
        let sup = self.supervisor()?;
        match sup
            .call(TranscodeMsg::Jobs, Some(std::time::Duration::from_secs(1)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(jobs)) => Some(jobs),
            _ => None,
        }
    }

    /// Jobs running at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn set_supervisor(&self, actor: Option<ActorRef<TranscodeMsg>>) {
        *self.supervisor.lock() = actor;
    }

    pub fn supervisor(&self) -> Option<ActorRef<TranscodeMsg>> {
        self.supervisor.lock().clone()
    }

    /// Run `request` under the supervisor and wait for its result.
    pub async fn submit(
        &self,
        request: Request,
        progress: ProgressSink,
    ) -> Result<Map<String, Value>, MediaError> {
        let (reply, result) = oneshot::channel();
        let id = NEXT_SUBMISSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let submission = Submission {
            id,
            request,
            progress,
            reply,
        };
        let Some(sup) = self.supervisor() else {
            return Err(MediaError::Tool(
                "transcode supervisor is not running".into(),
            ));
        };
        sup.cast(TranscodeMsg::Submit(Box::new(submission)))
            .map_err(|_| MediaError::Tool("transcode supervisor is not running".into()))?;
        // The bridge may give up on the job (job_timeout_s, node stopping): then
        // this future is dropped, and the transcode must stop too.
        let abandon = Abandon(Some((sup, id)));
        let answer = result
            .await
            .unwrap_or_else(|_| Err(MediaError::Tool("transcode supervisor stopped".into())));
        abandon.disarm();
        answer
    }

    /// Cancel the job of `media_id`, queued or running.
    pub fn cancel(&self, media_id: &str) {
        if let Some(sup) = self.supervisor() {
            let _ = sup.cast(TranscodeMsg::Cancel(media_id.to_string()));
        }
    }
}

static NEXT_SUBMISSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Tells the supervisor a submission's waiter is gone, unless disarmed.
struct Abandon(Option<(ActorRef<TranscodeMsg>, u64)>);

impl Abandon {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some((sup, id)) = self.0.take() {
            let _ = sup.cast(TranscodeMsg::Abandoned(id));
        }
    }
}

/// The `media.uploaded` handler.
pub struct MediaJobs(pub Arc<MediaService>);

#[async_trait]
impl JobHandler for MediaJobs {
    fn capacity(&self) -> Option<usize> {
        Some(self.0.limit)
    }

    async fn run(&self, job: Job) -> Outcome {
        let request = match Request::from_payload(&job.event.payload) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed {
                    reason: e.to_string(),
                    retry: false,
                };
            }
        };
        let outlet = job.outlet.clone();
        let (media_id, user_id) = (request.media_id.clone(), request.user_id.clone());
        let watched = Watched::new(&self.0, &media_id);
        let shown = watched.sink();
        let progress: ProgressSink = Box::new(move |p: Progress| {
            shown(&p);
            let mut payload = Map::new();
            payload.insert("media_id".into(), json!(media_id));
            payload.insert("user_id".into(), json!(user_id));
            payload.insert("progress".into(), json!(p.percent));
            payload.insert("percent".into(), json!(p.percent));
            payload.insert("stage".into(), json!(p.stage));
            payload.insert("fps".into(), json!(p.fps));
            payload.insert("speed".into(), json!(p.speed));
            payload.insert("eta_s".into(), json!(p.eta_s));
            outlet.emit(events::MEDIA_PROGRESS, payload);
        });
        let outcome = self.0.submit(request, progress).await;
        drop(watched);
        match outcome {
            Ok(ready) => Outcome::Done(ready),
            Err(e) => Outcome::Failed {
                retry: e.retryable(),
                reason: e.to_string(),
            },
        }
    }
}

/// A job's progress as the dashboard sees it, forgotten when its run ends however
/// it ends: a sink that reports after that (the job actor not yet killed) is
/// ignored.
struct Watched {
    service: Arc<MediaService>,
    media_id: String,
    ended: Arc<Mutex<bool>>,
}

impl Watched {
    fn new(service: &Arc<MediaService>, media_id: &str) -> Watched {
        Watched {
            service: service.clone(),
            media_id: media_id.to_string(),
            ended: Arc::default(),
        }
    }

    /// What the progress sink calls with each report.
    fn sink(&self) -> impl Fn(&Progress) + Send + 'static {
        let (service, media_id, ended) = (
            self.service.clone(),
            self.media_id.clone(),
            self.ended.clone(),
        );
        move |p| {
            let ended = ended.lock();
            if !*ended {
                service.progress.insert(media_id.clone(), p.clone());
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let mut ended = self.ended.lock();
        *ended = true;
        self.service.progress.remove(&self.media_id);
    }
}

/// One job waiting for, or holding, a slot.
pub struct Submission {
    id: u64,
    request: Request,
    progress: ProgressSink,
    reply: Answer,
}

pub enum TranscodeMsg {
    Submit(Box<Submission>),
    Cancel(String),
    /// Nobody waits for this submission any more: stop it.
    Abandoned(u64),
    /// Test and operations hook: media ids running, and queued.
    Jobs(ractor::RpcReplyPort<(Vec<String>, Vec<String>)>),
    /// Test hook: the actor running `media_id`.
    JobActor(String, ractor::RpcReplyPort<Option<ractor::ActorCell>>),
}

type Answer = oneshot::Sender<Result<Map<String, Value>, MediaError>>;

/// The answer to a running job's submitter: sent by the job when it ends, or by
/// the supervisor when the job dies without one.
type Reply = Arc<Mutex<Option<Answer>>>;

struct Running {
    submission: u64,
    media_id: String,
    cancel: watch::Sender<bool>,
    reply: Reply,
    cell: ractor::ActorCell,
}

pub struct TranscodeSupervisor;

pub struct SupervisorState {
    service: Arc<MediaService>,
    queue: VecDeque<Submission>,
    running: HashMap<ActorId, Running>,
}

impl SupervisorState {
    fn gauge(&self) {
        let m = &self.service.metrics;
        m.media_jobs_running.set(self.running.len() as i64);
        m.media_jobs_queued.set(self.queue.len() as i64);
    }
}

impl TranscodeSupervisor {
    /// Start queued jobs while there are free slots.
    async fn fill(myself: &ActorRef<TranscodeMsg>, state: &mut SupervisorState) {
        while state.running.len() < state.service.limit {
            let Some(sub) = state.queue.pop_front() else {
                break;
            };
            if sub.reply.is_closed() {
                continue; // the bridge gave up on it (node stopping, job timeout)
            }
            let (cancel_tx, cancel_rx) = watch::channel(false);
            let media_id = sub.request.media_id.clone();
            let submission = sub.id;
            let reply: Reply = Arc::new(Mutex::new(Some(sub.reply)));
            let args = JobArgs {
                transcoder: state.service.transcoder.clone(),
                request: sub.request,
                progress: sub.progress,
                cancel: cancel_rx,
                reply: reply.clone(),
            };
            match Actor::spawn_linked(None, TranscodeJob, args, myself.get_cell()).await {
                Ok((actor, _)) => {
                    state.running.insert(
                        actor.get_id(),
                        Running {
                            submission,
                            media_id,
                            cancel: cancel_tx,
                            reply,
                            cell: actor.get_cell(),
                        },
                    );
                }
                Err(e) => {
                    if let Some(answer) = reply.lock().take() {
                        let _ = answer.send(Err(MediaError::Crashed(format!("spawn: {e}"))));
                    }
                }
            }
        }
        state.gauge();
    }
}

impl Actor for TranscodeSupervisor {
    type Msg = TranscodeMsg;
    type State = SupervisorState;
    type Arguments = Arc<MediaService>;

    async fn pre_start(
        &self,
        _myself: ActorRef<TranscodeMsg>,
        service: Arc<MediaService>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        // What jobs of an earlier run left behind (the node died mid-job).
        service.transcoder.clean_work_root().await;
        Ok(SupervisorState {
            service,
            queue: VecDeque::new(),
            running: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TranscodeMsg>,
        msg: TranscodeMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TranscodeMsg::Submit(sub) => {
                state.queue.push_back(*sub);
                Self::fill(&myself, state).await;
            }
            TranscodeMsg::Cancel(media_id) => {
                for sub in state
                    .queue
                    .iter_mut()
                    .filter(|s| s.request.media_id == media_id)
                {
                    // Answered now; `fill` skips it (its reply is closed).
                    let (dead, _) = oneshot::channel();
                    let reply = std::mem::replace(&mut sub.reply, dead);
                    let _ = reply.send(Err(MediaError::Cancelled));
                }
                state.queue.retain(|s| !s.reply.is_closed());
                for job in state.running.values().filter(|j| j.media_id == media_id) {
                    let _ = job.cancel.send(true);
                }
                tracing::info!(media_id, "transcode cancelled");
                state.gauge();
            }
            TranscodeMsg::Abandoned(id) => {
                state.queue.retain(|s| s.id != id);
                for job in state.running.values().filter(|j| j.submission == id) {
                    tracing::warn!(media_id = %job.media_id, "transcode abandoned (job timeout or stop); stopping it");
                    let _ = job.cancel.send(true);
                }
                state.gauge();
            }
            TranscodeMsg::Jobs(reply) => {
                let running = state.running.values().map(|j| j.media_id.clone()).collect();
                let queued = state
                    .queue
                    .iter()
                    .map(|s| s.request.media_id.clone())
                    .collect();
                let _ = reply.send((running, queued));
            }
            TranscodeMsg::JobActor(media_id, reply) => {
                let cell = state
                    .running
                    .values()
                    .find(|j| j.media_id == media_id)
                    .map(|j| j.cell.clone());
                let _ = reply.send(cell);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<TranscodeMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, exit)) = exit_of(&event) else {
            return Ok(());
        };
        let Some(job) = state.running.remove(&cell.get_id()) else {
            return Ok(());
        };
        let answer = job.reply.lock().take();
        if let Some(reply) = answer {
            // Ended without a result: it panicked or was killed.
            let why = match exit {
                crate::supervisors::policy::Exit::Failed(reason) => reason,
                crate::supervisors::policy::Exit::Normal => "killed".into(),
            };
            tracing::error!(media_id = %job.media_id, %why, "transcode job crashed");
            state
                .service
                .metrics
                .restarts
                .with_label_values(&["transcode"])
                .inc();
            let _ = reply.send(Err(MediaError::Crashed(why)));
        }
        Self::fill(&myself, state).await;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TranscodeMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Running jobs die with us (their ffmpeg killed and files removed as
        // their futures drop); their submitters hear a retryable failure, so the
        // bus runs them again (here once restarted, or on another node).
        for job in state.running.values() {
            if let Some(answer) = job.reply.lock().take() {
                let _ = answer.send(Err(MediaError::Crashed(
                    "transcode supervisor stopped".into(),
                )));
            }
            // A kill interrupts the running transcode (a stop would wait for it).
            job.cell.kill();
        }
        state.running.clear();
        state.queue.clear();
        state.gauge();
        Ok(())
    }
}

pub struct TranscodeJob;

pub struct JobArgs {
    transcoder: Arc<Transcoder>,
    request: Request,
    progress: ProgressSink,
    cancel: watch::Receiver<bool>,
    reply: Reply,
}

pub enum JobMsg {
    Run,
}

impl Actor for TranscodeJob {
    type Msg = JobMsg;
    type State = Option<JobArgs>;
    type Arguments = JobArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<JobMsg>,
        args: JobArgs,
    ) -> Result<Option<JobArgs>, ActorProcessingErr> {
        myself.cast(JobMsg::Run)?;
        Ok(Some(args))
    }

    async fn handle(
        &self,
        myself: ActorRef<JobMsg>,
        _msg: JobMsg,
        state: &mut Option<JobArgs>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(mut args) = state.take() else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let media_id = args.request.media_id.clone();
        tracing::info!(%media_id, "transcode started");
        let result = args
            .transcoder
            .run(&args.request, &mut args.progress, args.cancel.clone())
            .await;
        match &result {
            Ok(_) => {
                tracing::info!(%media_id, secs = started.elapsed().as_secs_f64(), "transcode done")
            }
            Err(e) => tracing::warn!(%media_id, error = %e, "transcode failed"),
        }
        if let Some(answer) = args.reply.lock().take() {
            let _ = answer.send(result);
        }
        myself.stop(None);
        Ok(())
    }
}
