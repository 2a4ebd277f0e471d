//! Redis backends for the distributed farm: the task queue as sorted sets changed only by Lua
//! scripts (each step atomic on the server, timed by the server's clock), the job book as JSON
//! records changed by compare-and-set and announced on a per-job channel. `REDIS.md` beside
//! this crate's manifest describes the keys and the guarantees.

use crate::book::{JobBook, JobUpdate, Page, refuse_removal};
use crate::job::{JobChange, JobRecord, JobState, UpdateDetail};
use crate::memory::now_ms;
use crate::task::{Lease, Queue, Task};
use crate::workers::{WorkerInfo, WorkerRegistry};
use crate::QueueError;
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncCommands, Client, Script};
use std::time::{Duration, Instant};
use vidfarm_api::Priority;

/// How often a waiting `pull` asks again.
const PULL_POLL: Duration = Duration::from_millis(25);
/// Compare-and-set attempts before an update gives up (each loses only to another writer).
const MAX_UPDATE_RACES: usize = 64;
/// Updates a watcher may fall behind by before its watch ends (it watches again, from a
/// fresh snapshot) rather than have them held for it without bound.
const WATCH_BUFFER: usize = 256;
/// A watch's connection silent this long is pinged.
const WATCH_PING_EVERY: Duration = Duration::from_secs(30);
/// A watch whose subscription or ping goes unanswered this long ends.
const WATCH_PING_TIMEOUT: Duration = Duration::from_secs(10);

fn backend(context: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Backend(format!("{context}: {e}"))
}

/// What a lease's holder asks of it.
#[derive(Clone, Copy)]
enum HolderCall {
    Renew,
    Ack,
    Retry,
}

/// How long a task of a newer version waits before it is offered again.
const FOREIGN_TASK_RETRY_DELAY: Duration = Duration::from_secs(30);

/// serde's error for a variant (a task kind, a priority) the type does not have.
fn is_unknown_variant(error: &serde_json::Error) -> bool {
    error.classify() == serde_json::error::Category::Data && error.to_string().starts_with("unknown variant")
}

/// Whether a task's JSON names the job whose task `id` is (`<job>/...`).
fn names_task(json: &str, id: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|value| value["job_id"].as_str().map(|job| id.strip_prefix(job).is_some_and(|rest| rest.starts_with('/'))))
        .unwrap_or(false)
}

/// A Redis URL without its password, for messages: the user info, and a unix socket URL's
/// `pass=` (or `password=`) parameter.
fn redacted(url: &str) -> String {
    let url = match url.split_once("://") {
        Some((scheme, rest)) => {
            // The user info ends at the last '@' before the query (which may hold one too).
            let before_query = rest.find('?').map_or(rest, |end| &rest[..end]);
            match before_query.rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    };
    let Some((base, query)) = url.split_once('?') else { return url };
    let query: Vec<&str> = query
        .split('&')
        .map(|pair| if pair.starts_with("pass=") || pair.starts_with("password=") { "pass=***" } else { pair })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// One farm's corner of a Redis server: a connection that reconnects by itself, and the
/// prefix (`vidfarm:<namespace>:`) of every key the farm touches.
#[derive(Clone)]
pub struct RedisNamespace {
    client: Client,
    conn: ConnectionManager,
    prefix: String,
    url: String,
}

/// TLS for a `rediss://` URL, all PEM: a CA to trust instead of the system's roots, and a
/// certificate and key to present to a server that asks clients for one (`tls-auth-clients`).
#[derive(Clone, Default)]
pub struct RedisTls {
    pub ca: Option<Vec<u8>>,
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisNamespace {
    /// Connects, failing fast with the (password-free) URL when Redis cannot be reached, so
    /// the caller decides how to wait and retry. A `rediss://` URL speaks TLS, trusting the
    /// system's roots.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, QueueError> {
        Self::connect_with_tls(url, namespace, &RedisTls::default()).await
    }

    /// [`RedisNamespace::connect`] with a CA and client certificate of the farm's own.
    pub async fn connect_with_tls(url: &str, namespace: &str, tls: &RedisTls) -> Result<Self, QueueError> {
        let shown = redacted(url);
        let valid = !namespace.is_empty() && namespace.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            return Err(QueueError::Backend(format!(
                "Redis namespace {namespace:?}: use letters, digits, '-', '_' and '.'"
            )));
        }
        let client = if tls.ca.is_none() && tls.client_cert.is_none() {
            Client::open(url)
        } else if url.starts_with("rediss://") {
            let client_tls = tls.client_cert.clone().map(|(client_cert, client_key)| ::redis::ClientTlsConfig { client_cert, client_key });
            Client::build_with_tls(url, ::redis::TlsCertificates { client_tls, root_cert: tls.ca.clone() })
        } else {
            return Err(QueueError::Backend(format!("Redis URL {shown}: a CA or client certificate needs a rediss:// URL")));
        };
        let client = client.map_err(|e| backend(&format!("Redis URL {shown}"), e))?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| backend(&format!("cannot reach Redis at {shown}"), e))?;
        Ok(Self { client, conn, prefix: format!("vidfarm:{namespace}:"), url: shown })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> QueueError {
        backend(&format!("Redis {} {what}", self.url), e)
    }

    /// Records why a value was moved aside (`HGETALL vidfarm:<ns>:malformed` lists them).
    fn malformed_key(&self) -> String {
        self.key("malformed")
    }

    /// Deletes every key of the namespace.
    #[cfg(test)]
    pub(crate) async fn clear(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = {
            let mut iter = conn.scan_match::<_, String>(format!("{}*", self.prefix)).await.map_err(|e| self.err("scan", e))?;
            let mut keys = Vec::new();
            while let Some(key) = iter.next_item().await {
                keys.push(key.map_err(|e| self.err("scan", e))?);
            }
            keys
        };
        if !keys.is_empty() {
            let mut conn = self.conn.clone();
            let _: () = conn.del(keys).await.map_err(|e| self.err("del", e))?;
        }
        Ok(())
    }
}

/// The server's clock in milliseconds: leases are timed by one clock, whatever the workers' say.
const NOW: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// KEYS: leased set, task hash. ARGV: task id, token. The caller still holds the lease.
const HOLDS: &str = r"
local function holds()
  return redis.call('HGET', KEYS[2], 'token') == ARGV[2] and redis.call('ZSCORE', KEYS[1], ARGV[1]) ~= false
end
";

/// KEYS: ready set, task hash, sequence counter, delayed set, leased set. ARGV: task JSON,
/// priority rank, task id. The score orders by rank, then arrival; it stays with the task
/// across redeliveries. A task record in none of the sets (a script stopped by an error half
/// way, a set evicted) would make every push a no-op and its job wait for ever: it is made anew.
const PUSH: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then
  for _, set in ipairs({KEYS[1], KEYS[4], KEYS[5]}) do
    if redis.call('ZSCORE', set, ARGV[3]) then return 0 end
  end
  redis.call('DEL', KEYS[2])
end
local seq = redis.call('INCR', KEYS[3])
local score = string.format('%.0f', tonumber(ARGV[2]) * 1e12 + seq)
redis.call('HSET', KEYS[2], 'task', ARGV[1], 'score', score, 'attempt', 0, 'token', 0)
redis.call('ZADD', KEYS[1], score, ARGV[3])
return 1
";

/// KEYS: ready, delayed, leased, malformed. ARGV: task hash prefix, token counter, lease ms,
/// worker. Moves due retries and lapsed leases back to ready, then leases the first ready task.
const PULL: &str = r"
local now = now_ms()
for _, set in ipairs({KEYS[2], KEYS[3]}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', set, '-inf', now)) do
    redis.call('ZREM', set, id)
    local score = redis.call('HGET', ARGV[1] .. id, 'score')
    if score then
      redis.call('ZADD', KEYS[1], score, id)
    else
      redis.call('HSET', KEYS[4], 'task:' .. id, 'listed as ' .. set .. ' without a task record')
    end
  end
end
while true do
  local first = redis.call('ZPOPMIN', KEYS[1])
  if #first == 0 then return false end
  local id = first[1]
  local key = ARGV[1] .. id
  local json = redis.call('HGET', key, 'task')
  if json then
    local token = redis.call('INCR', ARGV[2])
    local attempt = redis.call('HINCRBY', key, 'attempt', 1)
    redis.call('HSET', key, 'token', token, 'worker', ARGV[4])
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), id)
    return {id, json, attempt, token}
  end
  redis.call('HSET', KEYS[4], 'task:' .. id, 'queued without a task record')
end
";

/// KEYS: leased, task hash. ARGV: id, token, lease ms.
const RENEW: &str = r"
if not holds() then return 0 end
redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[3]), ARGV[1])
return 1
";

/// KEYS: leased, task hash. ARGV: id, token.
const ACK: &str = r"
if not holds() then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
";

/// KEYS: leased, task hash, delayed. ARGV: id, token, delay ms.
const RETRY: &str = r"
if not holds() then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[3]), ARGV[1])
return 1
";

/// KEYS: ready, delayed. ARGV: task hash prefix, task id prefix of the job (`<job>/`).
const DISCARD_JOB: &str = r"
local n = 0
for _, set in ipairs(KEYS) do
  for _, id in ipairs(redis.call('ZRANGE', set, 0, -1)) do
    if string.sub(id, 1, #ARGV[2]) == ARGV[2] then
      redis.call('ZREM', set, id)
      redis.call('DEL', ARGV[1] .. id)
      n = n + 1
    end
  end
end
return n
";

/// KEYS: leased, task hash, malformed. ARGV: id, reason. Takes an unreadable task out of the
/// queue, keeping its text and the reason beside it.
const SET_ASIDE_TASK: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
local raw = redis.call('HGET', KEYS[2], 'task') or ''
redis.call('HSET', KEYS[3], 'task:' .. ARGV[1], ARGV[2] .. ': ' .. raw)
redis.call('DEL', KEYS[2])
return 1
";

fn priority_rank(priority: Priority) -> u8 {
    match priority {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The task queue in Redis. Keys: `queue:ready` (zset, rank and arrival), `queue:delayed`
/// (zset, due time of retries), `queue:leased` (zset, lease deadline), `queue:task:<id>`
/// (hash: task JSON, score, attempt, token, worker), counters `queue:seq` and `queue:token`.
pub struct RedisQueue {
    ns: RedisNamespace,
    push: Script,
    pull: Script,
    renew: Script,
    ack: Script,
    retry: Script,
    discard_job: Script,
    set_aside: Script,
}

impl RedisQueue {
    pub fn new(ns: RedisNamespace) -> Self {
        let lease_check = |body: &str| Script::new(&format!("{NOW}{HOLDS}{body}"));
        Self {
            ns,
            push: Script::new(PUSH),
            pull: Script::new(&format!("{NOW}{PULL}")),
            renew: lease_check(RENEW),
            ack: lease_check(ACK),
            retry: lease_check(RETRY),
            discard_job: Script::new(DISCARD_JOB),
            set_aside: Script::new(SET_ASIDE_TASK),
        }
    }

    fn task_key(&self, id: &str) -> String {
        self.ns.key(&format!("queue:task:{id}"))
    }

    /// Runs one of the lease-holder scripts with its extra key and argument, for the holder of
    /// task `id`'s lease `token`.
    async fn as_holder(&self, asked: HolderCall, id: &str, token: u64, extra_key: Option<String>, extra_arg: Option<u64>) -> Result<bool, QueueError> {
        let (script, what) = match asked {
            HolderCall::Renew => (&self.renew, "renew"),
            HolderCall::Ack => (&self.ack, "ack"),
            HolderCall::Retry => (&self.retry, "retry"),
        };
        let mut call = script.key(self.ns.key("queue:leased"));
        call.key(self.task_key(id));
        if let Some(key) = extra_key {
            call.key(key);
        }
        call.arg(id).arg(token.to_string());
        if let Some(arg) = extra_arg {
            call.arg(arg);
        }
        let held: i64 = call.invoke_async(&mut self.ns.conn.clone()).await.map_err(|e| self.ns.err(&format!("{what} of task {id}"), e))?;
        Ok(held == 1)
    }

    /// One attempt at leasing a ready task; unreadable tasks are set aside on the way, and those
    /// of a newer version handed back.
    async fn try_pull(&self, worker: &str, lease_for: Duration) -> Result<Option<Lease>, QueueError> {
        let mut conn = self.ns.conn.clone();
        loop {
            let leased: Option<(String, String, u32, u64)> = self
                .pull
                .key(self.ns.key("queue:ready"))
                .key(self.ns.key("queue:delayed"))
                .key(self.ns.key("queue:leased"))
                .key(self.ns.malformed_key())
                .arg(self.ns.key("queue:task:"))
                .arg(self.ns.key("queue:token"))
                .arg(millis(lease_for))
                .arg(worker)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.ns.err("pull", e))?;
            let Some((id, json, attempt, token)) = leased else { return Ok(None) };
            match serde_json::from_str::<Task>(&json) {
                Ok(mut task) if task.id() == id => {
                    task.attempt = attempt;
                    return Ok(Some(Lease { task, worker: worker.to_string(), token }));
                }
                // Well-formed, this id's, and of a kind or priority this version does not know:
                // a newer version's (a rolling upgrade). Left for the workers that read it, as
                // its job's record is, not thrown away. (A wrong type or a missing field is
                // no newer version's: set aside, and the next push makes the task anew.)
                Err(e) if is_unknown_variant(&e) && names_task(&json, &id) => {
                    tracing::warn!(task = %id, error = %e, "task of a newer vidfarm version handed back");
                    let delayed = Some(self.ns.key("queue:delayed"));
                    self.as_holder(HolderCall::Retry, &id, token, delayed, Some(millis(FOREIGN_TASK_RETRY_DELAY))).await?;
                }
                parsed => {
                    let reason = match parsed {
                        Ok(task) => format!("stored under id {id} but is task {}", task.id()),
                        Err(e) => format!("unreadable task: {e}"),
                    };
                    tracing::warn!(task = %id, %reason, "setting a malformed task aside");
                    let _: i64 = self
                        .set_aside
                        .key(self.ns.key("queue:leased"))
                        .key(self.task_key(&id))
                        .key(self.ns.malformed_key())
                        .arg(&id)
                        .arg(reason)
                        .invoke_async(&mut conn)
                        .await
                        .map_err(|e| self.ns.err("setting a task aside", e))?;
                }
            }
        }
    }
}

#[async_trait]
impl Queue for RedisQueue {
    async fn push(&self, task: Task) -> Result<(), QueueError> {
        let id = task.id();
        let json = serde_json::to_string(&Task { attempt: 0, ..task.clone() }).map_err(|e| backend("encoding a task", e))?;
        let _: i64 = self
            .push
            .key(self.ns.key("queue:ready"))
            .key(self.task_key(&id))
            .key(self.ns.key("queue:seq"))
            .key(self.ns.key("queue:delayed"))
            .key(self.ns.key("queue:leased"))
            .arg(json)
            .arg(priority_rank(task.priority))
            .arg(&id)
            .invoke_async(&mut self.ns.conn.clone())
            .await
            .map_err(|e| self.ns.err("push", e))?;
        Ok(())
    }

    async fn pull(&self, worker: &str, lease_for: Duration, wait: Duration) -> Result<Option<Lease>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(lease) = self.try_pull(worker, lease_for).await? {
                return Ok(Some(lease));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep((deadline - now).min(PULL_POLL)).await;
        }
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<bool, QueueError> {
        self.as_holder(HolderCall::Renew, &lease.task.id(), lease.token, None, Some(millis(lease_for))).await
    }

    async fn ack(&self, lease: &Lease) -> Result<bool, QueueError> {
        self.as_holder(HolderCall::Ack, &lease.task.id(), lease.token, None, None).await
    }

    async fn retry(&self, lease: &Lease, delay: Duration) -> Result<bool, QueueError> {
        self.as_holder(HolderCall::Retry, &lease.task.id(), lease.token, Some(self.ns.key("queue:delayed")), Some(millis(delay))).await
    }

    async fn discard_job(&self, job_id: &str) -> Result<usize, QueueError> {
        let n: usize = self
            .discard_job
            .key(self.ns.key("queue:ready"))
            .key(self.ns.key("queue:delayed"))
            .arg(self.ns.key("queue:task:"))
            .arg(format!("{job_id}/"))
            .invoke_async(&mut self.ns.conn.clone())
            .await
            .map_err(|e| self.ns.err("discard", e))?;
        Ok(n)
    }

    async fn depth(&self) -> Result<usize, QueueError> {
        let (ready, delayed, leased): (usize, usize, usize) = ::redis::pipe()
            .zcard(self.ns.key("queue:ready"))
            .zcard(self.ns.key("queue:delayed"))
            .zcard(self.ns.key("queue:leased"))
            .query_async(&mut self.ns.conn.clone())
            .await
            .map_err(|e| self.ns.err("depth", e))?;
        Ok(ready + delayed + leased)
    }
}

/// KEYS: job key, job index, idempotency key (the job key again when there is none),
/// unfinished index. ARGV: id, record JSON, job key prefix, '1' when there is an idempotency key.
/// Returns false when stored, else the id and record of the job the idempotency key already
/// names. A key whose job's record is gone (set aside as malformed) names the new job.
const INSERT_JOB: &str = r"
if ARGV[4] == '1' then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    local record = redis.call('GET', ARGV[3] .. existing)
    if record then return {existing, record} end
  end
  redis.call('SET', KEYS[3], ARGV[1])
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
return false
";

/// KEYS: job key, updates channel, unfinished index. ARGV: the record as read, the record after
/// the change, the update message, the id, '1' when the change ended the job. Stores and
/// announces only if nobody changed the record meanwhile.
const UPDATE_JOB: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[5] == '1' then redis.call('ZREM', KEYS[3], ARGV[4]) end
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1
";

/// KEYS: job key, job index, malformed, set-aside key, unfinished index. ARGV: id, reason.
const SET_ASIDE_JOB: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[4]) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[3], 'job:' .. ARGV[1], ARGV[2])
return 1
";

/// KEYS: job key, job index, unfinished index, idempotency key (the job key again when there
/// is none). ARGV: the record as read, the id. Removes the job only if nobody changed its
/// record meanwhile, and its idempotency key only while the key still names it.
const REMOVE_JOB: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if KEYS[4] ~= KEYS[1] and redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
return 1
";

/// The key of the index of unfinished jobs, and of the flag that says it holds every one.
const UNFINISHED: &str = "jobs:unfinished";
const UNFINISHED_BUILT: &str = "jobs:unfinished:built";

/// Jobs read per round trip while listing with a state filter.
const LIST_BATCH: usize = 200;

/// The job book in Redis. Keys: `job:<id>` (the record as JSON), `jobs` (zset of ids, all
/// scored 0 so they page in id order), `jobs:unfinished` (the same, of jobs not yet ended: what
/// the requeue sweep lists, however long the history), `idempotency:<key>` (job id); channel
/// `updates:<id>`.
pub struct RedisJobBook {
    ns: RedisNamespace,
    insert: Script,
    update: Script,
    set_aside: Script,
    remove: Script,
    /// Set once `jobs:unfinished` is known to hold every unfinished job (see `build_unfinished`).
    unfinished_built: std::sync::atomic::AtomicBool,
}

impl RedisJobBook {
    pub fn new(ns: RedisNamespace) -> Self {
        Self {
            ns,
            insert: Script::new(INSERT_JOB),
            update: Script::new(UPDATE_JOB),
            set_aside: Script::new(SET_ASIDE_JOB),
            remove: Script::new(REMOVE_JOB),
            unfinished_built: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Fills `jobs:unfinished` from the whole book, once per namespace: records stored before
    /// the index existed are in `jobs` only. Ids it adds of jobs that ended meanwhile are
    /// harmless (listing filters by state, and drops them from the index).
    async fn build_unfinished(&self) -> Result<(), QueueError> {
        use std::sync::atomic::Ordering;
        if self.unfinished_built.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut conn = self.ns.conn.clone();
        let built: bool = conn.exists(self.ns.key(UNFINISHED_BUILT)).await.map_err(|e| self.ns.err("list", e))?;
        if !built {
            let unfinished = [JobState::Queued, JobState::Running, JobState::Paused];
            let mut after = None;
            loop {
                let page = self.list_in("jobs", &unfinished, after.as_deref(), LIST_BATCH).await?;
                let ids: Vec<&str> = page.jobs.iter().map(|r| r.id.as_str()).collect();
                if !ids.is_empty() {
                    let members: Vec<(u8, &str)> = ids.iter().map(|id| (0, *id)).collect();
                    let _: () = conn.zadd_multiple(self.ns.key(UNFINISHED), &members).await.map_err(|e| self.ns.err("list", e))?;
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let _: () = conn.set(self.ns.key(UNFINISHED_BUILT), 1).await.map_err(|e| self.ns.err("list", e))?;
        }
        self.unfinished_built.store(true, Ordering::Release);
        Ok(())
    }

    /// `list` over the ids of the zset `index`.
    async fn list_in(&self, index: &str, states: &[JobState], after: Option<&str>, limit: usize) -> Result<Page, QueueError> {
        let mut conn = self.ns.conn.clone();
        let mut jobs = Vec::new();
        let mut cursor = after.map_or("-".to_string(), |a| format!("({a}"));
        // One more than asked tells whether another page follows.
        while jobs.len() <= limit {
            let batch = if states.is_empty() { limit + 1 - jobs.len() } else { LIST_BATCH };
            let ids: Vec<String> = conn
                .zrangebylex_limit(self.ns.key(index), &cursor, "+", 0, batch as isize)
                .await
                .map_err(|e| self.ns.err("list", e))?;
            let Some(last) = ids.last() else { break };
            cursor = format!("({last}");
            let keys: Vec<String> = ids.iter().map(|id| self.job_key(id)).collect();
            let raws: Vec<Option<String>> = ::redis::cmd("MGET").arg(&keys).query_async(&mut conn).await.map_err(|e| self.ns.err("list", e))?;
            for (id, raw) in ids.iter().zip(raws) {
                let Some(raw) = raw else { continue };
                let record = match StoredRecord::decode(id, &raw) {
                    StoredRecord::Record(record) => record,
                    StoredRecord::Malformed(reason) => {
                        self.set_aside(id, reason).await?;
                        continue;
                    }
                    // One job a newer version stored must not hide every other one.
                    StoredRecord::Foreign(reason) => {
                        tracing::warn!(job_id = %id, %reason, "job left out of a list");
                        continue;
                    }
                };
                if index == UNFINISHED && record.state.is_final() {
                    // Added by `build_unfinished` as the job ended.
                    let _: () = conn.zrem(self.ns.key(UNFINISHED), id).await.map_err(|e| self.ns.err("list", e))?;
                }
                if (states.is_empty() || states.contains(&record.state)) && jobs.len() <= limit {
                    jobs.push(record);
                }
            }
            if ids.len() < batch {
                break;
            }
        }
        let more = jobs.len() > limit;
        jobs.truncate(limit);
        let next = if more { jobs.last().map(|r| r.id.clone()) } else { None };
        Ok(Page { jobs, next })
    }

    fn job_key(&self, id: &str) -> String {
        self.ns.key(&format!("job:{id}"))
    }

    /// Parses a stored record (see `StoredRecord`): a malformed one is set aside and reads as
    /// absent; a foreign one reads as an error and stays.
    async fn parse(&self, id: &str, raw: &str) -> Result<Option<JobRecord>, QueueError> {
        match StoredRecord::decode(id, raw) {
            StoredRecord::Record(record) => Ok(Some(record)),
            StoredRecord::Malformed(reason) => {
                self.set_aside(id, reason).await?;
                Ok(None)
            }
            StoredRecord::Foreign(reason) => Err(QueueError::Incompatible(reason)),
        }
    }

    /// Moves a malformed record to `malformed:job:<id>`, with its reason recorded.
    async fn set_aside(&self, id: &str, reason: String) -> Result<(), QueueError> {
        tracing::warn!(job_id = %id, %reason, "setting a malformed job record aside");
        let _: i64 = self
            .set_aside
            .key(self.job_key(id))
            .key(self.ns.key("jobs"))
            .key(self.ns.malformed_key())
            .key(self.ns.key(&format!("malformed:job:{id}")))
            .key(self.ns.key(UNFINISHED))
            .arg(id)
            .arg(reason)
            .invoke_async(&mut self.ns.conn.clone())
            .await
            .map_err(|e| self.ns.err("setting a job aside", e))?;
        Ok(())
    }
}

/// A job record as read from Redis.
enum StoredRecord {
    Record(JobRecord),
    /// Not this job's record at all (broken JSON, another job's): set aside, so that it
    /// stops failing every read and list.
    Malformed(String),
    /// Well-formed JSON of this job that this version's types do not fit (a state or sampler
    /// it does not know): most likely stored by a newer vidfarm during a rolling upgrade, so
    /// left in place for the versions that read it.
    Foreign(String),
}

impl StoredRecord {
    fn decode(id: &str, raw: &str) -> Self {
        match serde_json::from_str::<JobRecord>(raw) {
            Ok(record) if record.id == id => Self::Record(record),
            Ok(record) => Self::Malformed(format!("stored under id {id} but is job {}", record.id)),
            Err(e) => {
                let names_this_job = serde_json::from_str::<serde_json::Value>(raw).is_ok_and(|value| value["id"] == id);
                if e.classify() == serde_json::error::Category::Data && names_this_job {
                    Self::Foreign(format!("job {id}: its record does not fit this vidfarm version (stored by a newer one?): {e}"))
                } else {
                    Self::Malformed(format!("unreadable job record: {e}"))
                }
            }
        }
    }
}

#[async_trait]
impl JobBook for RedisJobBook {
    async fn insert(&self, record: JobRecord) -> Result<(JobRecord, bool), QueueError> {
        let json = serde_json::to_string(&record).map_err(|e| backend("encoding a job record", e))?;
        let idempotency = record.idempotency_key.as_ref().map(|k| self.ns.key(&format!("idempotency:{k}")));
        // Twice at most: a malformed record the key names is set aside, and the key then names
        // this job (as it does once a read has set that record aside).
        for _ in 0..2 {
            let existing: Option<(String, String)> = self
                .insert
                .key(self.job_key(&record.id))
                .key(self.ns.key("jobs"))
                .key(idempotency.clone().unwrap_or_else(|| self.job_key(&record.id)))
                .key(self.ns.key(UNFINISHED))
                .arg(&record.id)
                .arg(&json)
                .arg(self.ns.key("job:"))
                .arg(if idempotency.is_some() { "1" } else { "0" })
                .invoke_async(&mut self.ns.conn.clone())
                .await
                .map_err(|e| self.ns.err("insert", e))?;
            let Some((existing_id, raw)) = existing else { return Ok((record, true)) };
            if let Some(found) = self.parse(&existing_id, &raw).await? {
                return Ok((found, false));
            }
        }
        Err(QueueError::Backend(format!("idempotency key {:?}: its job's record was set aside twice in a row", record.idempotency_key)))
    }

    async fn get(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        let raw: Option<String> = self.ns.conn.clone().get(self.job_key(id)).await.map_err(|e| self.ns.err("get", e))?;
        match raw {
            Some(raw) => self.parse(id, &raw).await,
            None => Ok(None),
        }
    }

    async fn list(&self, states: &[JobState], after: Option<&str>, limit: usize) -> Result<Page, QueueError> {
        // Only unfinished states asked (the requeue sweep, every 30 s): read the unfinished
        // index, not every job ever stored.
        if !states.is_empty() && states.iter().all(|state| !state.is_final()) {
            self.build_unfinished().await?;
            return self.list_in(UNFINISHED, states, after, limit).await;
        }
        self.list_in("jobs", states, after, limit).await
    }

    async fn update(&self, id: &str, change: JobChange) -> Result<(JobRecord, Option<UpdateDetail>), QueueError> {
        let mut conn = self.ns.conn.clone();
        for _ in 0..MAX_UPDATE_RACES {
            let raw: Option<String> = conn.get(self.job_key(id)).await.map_err(|e| self.ns.err("update", e))?;
            let raw = raw.ok_or_else(|| QueueError::JobNotFound(id.to_string()))?;
            let mut record = self.parse(id, &raw).await?.ok_or_else(|| QueueError::JobNotFound(id.to_string()))?;
            let Some(detail) = record.apply(&change, now_ms())? else { return Ok((record, None)) };
            let after = serde_json::to_string(&record).map_err(|e| backend("encoding a job record", e))?;
            let message = serde_json::to_string(&(&record, &detail)).map_err(|e| backend("encoding an update", e))?;
            let stored: i64 = self
                .update
                .key(self.job_key(id))
                .key(self.ns.key(&format!("updates:{id}")))
                .key(self.ns.key(UNFINISHED))
                .arg(&raw)
                .arg(after)
                .arg(message)
                .arg(id)
                .arg(if record.state.is_final() { "1" } else { "0" })
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.ns.err("update", e))?;
            if stored == 1 {
                return Ok((record, Some(detail)));
            }
        }
        Err(QueueError::Backend(format!("job {id}: gave up after {MAX_UPDATE_RACES} concurrent changes won the race")))
    }

    async fn subscribe(&self, id: &str) -> Result<BoxStream<'static, JobUpdate>, QueueError> {
        let failed = |e: String| self.ns.err("subscribe", format!("to job {id}'s updates: {e}"));
        // Subscribing takes a connection of its own: a subscribed connection runs no commands.
        let subscribing = async {
            let mut pubsub = self.ns.client.get_async_pubsub().await?;
            pubsub.subscribe(self.ns.key(&format!("updates:{id}"))).await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(WATCH_PING_TIMEOUT, subscribing)
            .await
            .map_err(|_| failed(format!("no answer in {WATCH_PING_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        let (mut sink, mut messages) = pubsub.split();
        // redis-rs buffers messages without bound; a watcher that stops reading (a stalled
        // client, whose HTTP/2 pings still answer) would pile up its job's records here.
        let (updates, watcher) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let job_id = id.to_string();
        tokio::spawn(async move {
            let mut silent = tokio::time::interval_at(tokio::time::Instant::now() + WATCH_PING_EVERY, WATCH_PING_EVERY);
            loop {
                tokio::select! {
                    message = messages.next() => {
                        // None: the connection ended, and so does the watch.
                        let Some(message) = message else { return };
                        silent.reset();
                        let update = match serde_json::from_slice::<(JobRecord, UpdateDetail)>(message.get_payload_bytes()) {
                            Ok((record, detail)) => JobUpdate { record, detail },
                            Err(e) => {
                                tracing::warn!(job_id, error = %e, "skipping a malformed job update");
                                continue;
                            }
                        };
                        if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = updates.try_send(update) {
                            tracing::warn!(job_id, behind = WATCH_BUFFER, "a watcher fell behind its job's updates: its watch ends");
                            return;
                        }
                    }
                    () = updates.closed() => return,
                    // A connection lost without a word (a host gone) would leave the watch
                    // waiting for ever: a ping unanswered ends it.
                    _ = silent.tick() => {
                        if !matches!(tokio::time::timeout(WATCH_PING_TIMEOUT, sink.ping::<::redis::Value>()).await, Ok(Ok(_))) {
                            tracing::warn!(job_id, "the watch's connection to Redis does not answer: its watch ends");
                            return;
                        }
                    }
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(watcher).boxed())
    }

    async fn remove(&self, id: &str) -> Result<bool, QueueError> {
        let mut conn = self.ns.conn.clone();
        for _ in 0..MAX_UPDATE_RACES {
            let raw: Option<String> = conn.get(self.job_key(id)).await.map_err(|e| self.ns.err("remove", e))?;
            let Some(raw) = raw else { return Ok(false) };
            let Some(record) = self.parse(id, &raw).await? else { return Ok(false) };
            refuse_removal(&record)?;
            let idempotency = record.idempotency_key.as_ref().map(|k| self.ns.key(&format!("idempotency:{k}")));
            let removed: i64 = self
                .remove
                .key(self.job_key(id))
                .key(self.ns.key("jobs"))
                .key(self.ns.key(UNFINISHED))
                .key(idempotency.unwrap_or_else(|| self.job_key(id)))
                .arg(&raw)
                .arg(id)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.ns.err("remove", e))?;
            if removed == 1 {
                return Ok(true);
            }
        }
        Err(QueueError::Backend(format!("job {id}: gave up removing it after {MAX_UPDATE_RACES} concurrent changes won the race")))
    }
}

/// KEYS: worker record, drain flag, worker set. ARGV: record JSON, ttl ms, name. Stores the
/// heartbeat for its time to live and answers the drain flag.
const HEARTBEAT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
";

/// KEYS: worker record, drain flag. ARGV: ttl ms. Flags a live worker; the flag lives as long
/// as its heartbeats do. Returns the record, or false when the worker is not live.
const DRAIN: &str = r"
local record = redis.call('GET', KEYS[1])
if not record then return false end
redis.call('SET', KEYS[2], 1, 'PX', ARGV[1])
return record
";

/// How long a drain request waits for the worker's next heartbeat, which then keeps it alive.
const DRAIN_FLAG_TTL: Duration = Duration::from_secs(600);

/// The worker registry in Redis: `worker:<name>` (JSON, expiring with the heartbeat's time to
/// live), `worker:<name>:drain` (the drain request) and the set `workers` of names, from which
/// the expired are dropped when listed.
pub struct RedisWorkerRegistry {
    ns: RedisNamespace,
    heartbeat: Script,
    drain: Script,
}

impl RedisWorkerRegistry {
    pub fn new(ns: RedisNamespace) -> Self {
        Self { ns, heartbeat: Script::new(HEARTBEAT), drain: Script::new(DRAIN) }
    }

    fn record_key(&self, name: &str) -> String {
        self.ns.key(&format!("worker:{name}"))
    }

    fn drain_key(&self, name: &str) -> String {
        self.ns.key(&format!("worker:{name}:drain"))
    }

    fn parse(&self, name: &str, raw: &str) -> Result<WorkerInfo, QueueError> {
        serde_json::from_str(raw).map_err(|e| backend(&format!("worker record {}", self.record_key(name)), e))
    }
}

#[async_trait]
impl WorkerRegistry for RedisWorkerRegistry {
    async fn heartbeat(&self, info: &WorkerInfo, ttl: Duration) -> Result<bool, QueueError> {
        let json = serde_json::to_string(info).map_err(|e| backend("encoding a worker record", e))?;
        let drain: i64 = self
            .heartbeat
            .key(self.record_key(&info.name))
            .key(self.drain_key(&info.name))
            .key(self.ns.key("workers"))
            .arg(json)
            .arg(millis(ttl).max(1))
            .arg(&info.name)
            .invoke_async(&mut self.ns.conn.clone())
            .await
            .map_err(|e| self.ns.err("heartbeat", e))?;
        Ok(drain == 1)
    }

    async fn list(&self) -> Result<Vec<WorkerInfo>, QueueError> {
        let mut conn = self.ns.conn.clone();
        let mut names: Vec<String> = conn.smembers(self.ns.key("workers")).await.map_err(|e| self.ns.err("list workers", e))?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        names.sort();
        let keys: Vec<String> = names.iter().map(|n| self.record_key(n)).collect();
        let raws: Vec<Option<String>> = ::redis::cmd("MGET").arg(&keys).query_async(&mut conn).await.map_err(|e| self.ns.err("list workers", e))?;
        let mut workers = Vec::new();
        for (name, raw) in names.iter().zip(raws) {
            match raw {
                Some(raw) => match self.parse(name, &raw) {
                    Ok(info) => workers.push(info),
                    // One unreadable record must not hide the others.
                    Err(e) => tracing::warn!(error = %e, "skipping a malformed worker record"),
                },
                None => {
                    let _: () = conn.srem(self.ns.key("workers"), name).await.map_err(|e| self.ns.err("list workers", e))?;
                }
            }
        }
        Ok(workers)
    }

    async fn drain(&self, name: &str) -> Result<WorkerInfo, QueueError> {
        let raw: Option<String> = self
            .drain
            .key(self.record_key(name))
            .key(self.drain_key(name))
            .arg(millis(DRAIN_FLAG_TTL))
            .invoke_async(&mut self.ns.conn.clone())
            .await
            .map_err(|e| self.ns.err("drain", e))?;
        let raw = raw.ok_or_else(|| QueueError::WorkerNotFound(name.to_string()))?;
        self.parse(name, &raw)
    }

    async fn remove(&self, name: &str) -> Result<(), QueueError> {
        let _: () = ::redis::pipe()
            .del(self.record_key(name))
            .del(self.drain_key(name))
            .srem(self.ns.key("workers"), name)
            .query_async(&mut self.ns.conn.clone())
            .await
            .map_err(|e| self.ns.err("remove worker", e))?;
        Ok(())
    }
}

/// A fresh namespace on the local test Redis (`tests/run.sh` starts one); `clear` it after.
#[cfg(test)]
pub(crate) async fn test_namespace() -> RedisNamespace {
    let name = format!("test-{}", uuid::Uuid::new_v4().simple());
    RedisNamespace::connect("redis://127.0.0.1:6379", &name).await.expect("a Redis server on 127.0.0.1:6379")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::sample_record;
    use crate::task::TaskKind;

    #[tokio::test]
    async fn unreachable_redis_is_a_clear_error_naming_the_url() {
        let err = RedisNamespace::connect("redis://user:secret@127.0.0.1:1", "ns").await.err().expect("nothing listens on port 1");
        let text = err.to_string();
        assert!(text.contains("cannot reach Redis at redis://***@127.0.0.1:1"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(redacted("redis+unix:///run/redis.sock?db=1&pass=secret"), "redis+unix:///run/redis.sock?db=1&pass=***");
        assert_eq!(redacted("redis+unix:///run/redis.sock?pass=p@ss"), "redis+unix:///run/redis.sock?pass=***");
        assert_eq!(redacted("redis://:pw@host:6379/0?protocol=resp3"), "redis://***@host:6379/0?protocol=resp3");
        let err = RedisNamespace::connect("redis://127.0.0.1:6379", "a b").await.err().expect("a space is refused");
        assert!(err.to_string().contains("namespace"), "{err}");
    }

    /// A Redis server that speaks TLS only, on a free port, with a CA of the test's making that
    /// signed its certificate and the client's (Redis asks clients for one by default).
    struct TlsRedis {
        child: std::process::Child,
        port: u16,
        ca: Vec<u8>,
        client_cert: (Vec<u8>, Vec<u8>),
        _dir: tempfile::TempDir,
    }

    impl TlsRedis {
        fn start() -> Self {
            use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
            let (ca, leaves) = crate::test_pki::ca_and_leaves(&[(&["127.0.0.1"], ServerAuth), (&["vidfarm"], ClientAuth)]);
            let [server, client] = <[_; 2]>::try_from(leaves).ok().unwrap();
            let client_cert = (client.cert.into_bytes(), client.key.into_bytes());
            let dir = tempfile::tempdir().unwrap();
            let file = |name: &str, bytes: &[u8]| {
                let path = dir.path().join(name);
                std::fs::write(&path, bytes).unwrap();
                path
            };
            let (ca_file, cert_file, key_file) = (file("ca.crt", ca.as_bytes()), file("redis.crt", server.cert.as_bytes()), file("redis.key", server.key.as_bytes()));
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = std::process::Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string(), "--save", "", "--appendonly", "no"])
                .arg("--tls-cert-file")
                .arg(&cert_file)
                .arg("--tls-key-file")
                .arg(&key_file)
                .arg("--tls-ca-cert-file")
                .arg(&ca_file)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server starts");
            let started = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(started.elapsed() < Duration::from_secs(10), "redis-server listens on {port}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Self { child, port, ca: ca.into_bytes(), client_cert, _dir: dir }
        }
    }

    impl Drop for TlsRedis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Whether a farm can work over this connection: connecting, then a command, succeed.
    async fn usable(connected: Result<RedisNamespace, QueueError>) -> bool {
        match connected {
            Ok(ns) => RedisQueue::new(ns).depth().await.is_ok(),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn over_rediss_with_the_farms_ca_and_client_certificate_the_queue_works() {
        let server = TlsRedis::start();
        let url = format!("rediss://127.0.0.1:{}", server.port);
        let tls = RedisTls { ca: Some(server.ca.clone()), client_cert: Some(server.client_cert.clone()) };
        let ns = RedisNamespace::connect_with_tls(&url, "tls", &tls).await.expect("a TLS connection");
        crate::conformance::queue_orders_and_acks(&RedisQueue::new(ns)).await;

        let untrusted = RedisTls { ca: None, ..tls.clone() };
        assert!(!usable(RedisNamespace::connect_with_tls(&url, "tls", &untrusted).await).await, "the server's CA is not a system root");
        let anonymous = RedisTls { client_cert: None, ..tls.clone() };
        assert!(!usable(RedisNamespace::connect_with_tls(&url, "tls", &anonymous).await).await, "the server asks for a client certificate");
        assert!(!usable(RedisNamespace::connect(&format!("redis://127.0.0.1:{}", server.port), "tls").await).await, "no plaintext");
        let plain_url = RedisNamespace::connect_with_tls(&format!("redis://127.0.0.1:{}", server.port), "tls", &tls).await.err().unwrap();
        assert!(plain_url.to_string().contains("needs a rediss:// URL"), "{plain_url}");
    }

    #[tokio::test]
    async fn a_dropped_connection_is_reopened_and_the_queue_carries_on() {
        let ns = test_namespace().await;
        let queue = RedisQueue::new(ns.clone());
        queue.push(Task::new("kept", TaskKind::Denoise { chunk: 0 }, Priority::Normal)).await.unwrap();
        let id: i64 = ::redis::cmd("CLIENT").arg("ID").query_async(&mut ns.conn.clone()).await.unwrap();
        let mut other = ns.client.get_multiplexed_async_connection().await.unwrap();
        let _: () = ::redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut other).await.unwrap();
        // The call in flight when the connection dies may fail; the next ones reconnect.
        let mut depth = Err(QueueError::Backend("not tried".into()));
        for _ in 0..50 {
            depth = queue.depth().await;
            if depth.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(depth.unwrap(), 1, "the queue is back with its task");
        let lease = queue.pull("w", Duration::from_secs(30), Duration::ZERO).await.unwrap().expect("the task");
        assert!(queue.ack(&lease).await.unwrap());
        ns.clear().await.unwrap();
    }

    #[tokio::test]
    async fn malformed_tasks_are_set_aside_with_their_reason() {
        let ns = test_namespace().await;
        let queue = RedisQueue::new(ns.clone());
        queue.push(Task::new("bad", TaskKind::Denoise { chunk: 0 }, Priority::High)).await.unwrap();
        queue.push(Task::new("good", TaskKind::Denoise { chunk: 0 }, Priority::Low)).await.unwrap();
        let mut conn = ns.conn.clone();
        let _: () = conn.hset(queue.task_key("bad/denoise/0"), "task", "{not json").await.unwrap();
        let lease = queue.pull("w", Duration::from_secs(30), Duration::ZERO).await.unwrap().expect("the readable task");
        assert_eq!(lease.task.job_id, "good");
        let reason: String = conn.hget(ns.malformed_key(), "task:bad/denoise/0").await.unwrap();
        assert!(reason.starts_with("unreadable task") && reason.ends_with("{not json"), "{reason}");
        assert!(queue.ack(&lease).await.unwrap());
        assert_eq!(queue.depth().await.unwrap(), 0, "the bad task left the queue");
        ns.clear().await.unwrap();
    }

    /// A task record left in no set (a script stopped half way) does not make pushes no-ops:
    /// the next push queues the task again. One queued, waiting or leased is pushed once.
    #[tokio::test]
    async fn a_task_record_in_no_set_is_queued_again_by_a_push() {
        let ns = test_namespace().await;
        let queue = RedisQueue::new(ns.clone());
        let task = Task::new("job-1", TaskKind::Denoise { chunk: 0 }, Priority::Normal);
        queue.push(task.clone()).await.unwrap();
        queue.push(task.clone()).await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), 1);
        let mut conn = ns.conn.clone();
        let _: () = conn.zrem(ns.key("queue:ready"), task.id()).await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), 0);
        queue.push(task.clone()).await.unwrap();
        let lease = queue.pull("w", Duration::from_secs(30), Duration::ZERO).await.unwrap().expect("queued again");
        assert_eq!(lease.task.id(), task.id());
        queue.push(task.clone()).await.unwrap();
        assert!(queue.pull("w", Duration::from_secs(30), Duration::ZERO).await.unwrap().is_none(), "a leased task is not queued twice");
        ns.clear().await.unwrap();
    }

    /// A well-formed task of a kind this version does not know (a newer version's, during a
    /// rolling upgrade) is handed back for a while, not set aside.
    #[tokio::test]
    async fn a_task_of_a_newer_version_is_handed_back() {
        let ns = test_namespace().await;
        let queue = RedisQueue::new(ns.clone());
        queue.push(Task::new("new", TaskKind::Denoise { chunk: 0 }, Priority::High)).await.unwrap();
        queue.push(Task::new("old", TaskKind::Denoise { chunk: 0 }, Priority::Low)).await.unwrap();
        let mut conn = ns.conn.clone();
        let newer = r#"{"job_id":"new","kind":{"kind":"upscale","chunk":0,"factor":2},"priority":"high","attempt":0}"#;
        let _: () = conn.hset(queue.task_key("new/denoise/0"), "task", newer).await.unwrap();
        let lease = queue.pull("w", Duration::from_secs(30), Duration::ZERO).await.unwrap().expect("the readable task");
        assert_eq!(lease.task.job_id, "old");
        let set_aside: Option<String> = conn.hget(ns.malformed_key(), "task:new/denoise/0").await.unwrap();
        assert_eq!(set_aside, None);
        let kept: Option<String> = conn.hget(queue.task_key("new/denoise/0"), "task").await.unwrap();
        assert_eq!(kept.as_deref(), Some(newer));
        let delayed: Option<f64> = conn.zscore(ns.key("queue:delayed"), "new/denoise/0").await.unwrap();
        assert!(delayed.is_some(), "handed back, to be offered again later");

        // A wrong type is no newer version's: set aside, as unreadable text is.
        queue.push(Task::new("bent", TaskKind::Denoise { chunk: 0 }, Priority::High)).await.unwrap();
        let bent = r#"{"job_id":"bent","kind":{"kind":"denoise","chunk":"zero"},"priority":"high","attempt":0}"#;
        let _: () = conn.hset(queue.task_key("bent/denoise/0"), "task", bent).await.unwrap();
        assert!(queue.pull("w", Duration::from_secs(30), Duration::ZERO).await.unwrap().is_none());
        let reason: String = conn.hget(ns.malformed_key(), "task:bent/denoise/0").await.unwrap();
        assert!(reason.starts_with("unreadable task"), "{reason}");
        ns.clear().await.unwrap();
    }

    /// The unfinished index holds only jobs that have not ended, and is built from the whole
    /// book where records were stored before it existed.
    #[tokio::test]
    async fn unfinished_jobs_are_listed_from_their_index_built_once_for_older_records() {
        let ns = test_namespace().await;
        let mut conn = ns.conn.clone();
        let book = RedisJobBook::new(ns.clone());
        for id in ["job-1", "job-2", "job-3"] {
            book.insert(sample_record(id, None)).await.unwrap();
        }
        book.update("job-2", JobChange::Control(crate::Control::Cancel)).await.unwrap();
        let indexed: Vec<String> = conn.zrange(ns.key(UNFINISHED), 0, -1).await.unwrap();
        assert_eq!(indexed, ["job-1", "job-3"]);

        // As stored by a version without the index: a fresh book builds it on its first listing.
        let _: () = conn.del(&[ns.key(UNFINISHED), ns.key(UNFINISHED_BUILT)]).await.unwrap();
        let book = RedisJobBook::new(ns.clone());
        let unfinished = [JobState::Queued, JobState::Running, JobState::Paused];
        let page = book.list(&unfinished, None, 10).await.unwrap();
        assert_eq!(page.jobs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["job-1", "job-3"]);
        let indexed: Vec<String> = conn.zrange(ns.key(UNFINISHED), 0, -1).await.unwrap();
        assert_eq!(indexed, ["job-1", "job-3"]);
        assert!(conn.exists::<_, bool>(ns.key(UNFINISHED_BUILT)).await.unwrap());

        // An id left in the index for a job that ended goes when listed.
        book.update("job-3", JobChange::Control(crate::Control::Cancel)).await.unwrap();
        let _: () = conn.zadd(ns.key(UNFINISHED), "job-3", 0).await.unwrap();
        let page = book.list(&unfinished, None, 10).await.unwrap();
        assert_eq!(page.jobs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["job-1"]);
        let indexed: Vec<String> = conn.zrange(ns.key(UNFINISHED), 0, -1).await.unwrap();
        assert_eq!(indexed, ["job-1"]);
        ns.clear().await.unwrap();
    }

    /// A watcher that stops reading is cut off once it falls `WATCH_BUFFER` updates behind,
    /// instead of its updates piling up in the coordinator without bound.
    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_cut_off() {
        let ns = test_namespace().await;
        let book = RedisJobBook::new(ns.clone());
        book.insert(sample_record("job-1", None)).await.unwrap();
        let mut watch = book.subscribe("job-1").await.unwrap();
        let updates = WATCH_BUFFER + 44;
        for _ in 0..updates {
            book.update("job-1", JobChange::ChunkStarted { chunk: 0 }).await.unwrap();
        }
        // Time for the last messages to reach the watch's connection.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut received = 0;
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            while watch.next().await.is_some() {
                received += 1;
            }
        })
        .await;
        assert!(ended.is_ok(), "the watch goes on after {received} of {updates} updates");
        assert!(received <= WATCH_BUFFER, "{received} updates were held for the watcher");
        ns.clear().await.unwrap();
    }

    #[tokio::test]
    async fn malformed_job_records_are_set_aside_and_read_as_absent() {
        let ns = test_namespace().await;
        let book = RedisJobBook::new(ns.clone());
        book.insert(sample_record("job-1", None)).await.unwrap();
        book.insert(sample_record("job-2", None)).await.unwrap();
        let mut conn = ns.conn.clone();
        let _: () = conn.set(book.job_key("job-1"), "garbage").await.unwrap();
        let page = book.list(&[], None, 10).await.unwrap();
        assert_eq!(page.jobs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["job-2"]);
        assert!(book.get("job-1").await.unwrap().is_none());
        assert!(matches!(book.update("job-1", JobChange::ChunkStarted { chunk: 0 }).await, Err(QueueError::JobNotFound(_))));
        let reason: String = conn.hget(ns.malformed_key(), "job:job-1").await.unwrap();
        assert!(reason.starts_with("unreadable job record"), "{reason}");
        let kept: String = conn.get(ns.key("malformed:job:job-1")).await.unwrap();
        assert_eq!(kept, "garbage");
        ns.clear().await.unwrap();
    }

    /// A record this version cannot read but that is well-formed and this job's (a newer
    /// version's, say, with a state this one does not know) stays where it is: reads of it
    /// fail, naming it, and lists pass over it, so no version loses it during an upgrade.
    #[tokio::test]
    async fn a_record_from_a_newer_version_stays_in_place() {
        let ns = test_namespace().await;
        let book = RedisJobBook::new(ns.clone());
        let (job, _) = book.insert(sample_record("job-1", None)).await.unwrap();
        book.insert(sample_record("job-2", None)).await.unwrap();
        let mut newer = serde_json::to_value(&job).unwrap();
        newer["state"] = "archived".into();
        let newer = newer.to_string();
        let mut conn = ns.conn.clone();
        let _: () = conn.set(book.job_key("job-1"), &newer).await.unwrap();

        let page = book.list(&[], None, 10).await.unwrap();
        assert_eq!(page.jobs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["job-2"]);
        let unfinished = book.list(&[JobState::Queued, JobState::Running], None, 10).await.unwrap();
        assert_eq!(unfinished.jobs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["job-2"]);
        let err = book.get("job-1").await.expect_err("not readable by this version");
        assert!(matches!(&err, QueueError::Incompatible(m) if m.contains("job job-1") && m.contains("archived")), "{err}");
        assert!(book.update("job-1", JobChange::ChunkStarted { chunk: 0 }).await.is_err());

        let stored: String = conn.get(book.job_key("job-1")).await.unwrap();
        assert_eq!(stored, newer, "left in place, unchanged");
        let indexed: Vec<String> = conn.zrange(ns.key("jobs"), 0, -1).await.unwrap();
        assert_eq!(indexed, ["job-1", "job-2"]);
        let set_aside: bool = conn.hexists(ns.malformed_key(), "job:job-1").await.unwrap();
        assert!(!set_aside);
        ns.clear().await.unwrap();
    }

    /// An idempotency key whose job's record was set aside makes a new job, rather than
    /// failing every submission with that key.
    #[tokio::test]
    async fn an_idempotency_key_whose_job_was_set_aside_makes_a_new_job() {
        let ns = test_namespace().await;
        let book = RedisJobBook::new(ns.clone());
        book.insert(sample_record("job-1", Some("key-1"))).await.unwrap();
        let _: () = ns.conn.clone().set(book.job_key("job-1"), "garbage").await.unwrap();
        assert!(book.get("job-1").await.unwrap().is_none(), "set aside");

        let (record, created) = book.insert(sample_record("job-3", Some("key-1"))).await.unwrap();
        assert!(created);
        assert_eq!(record.id, "job-3");
        let (again, created) = book.insert(sample_record("job-4", Some("key-1"))).await.unwrap();
        assert_eq!((again.id.as_str(), created), ("job-3", false), "the key names the new job");
        ns.clear().await.unwrap();
    }

    /// A key naming a record that became unreadable makes a new job, at once: the record is
    /// set aside on the way (it answered UNAVAILABLE to every submit with that key before).
    #[tokio::test]
    async fn an_idempotency_key_naming_an_unreadable_record_makes_a_new_job() {
        let ns = test_namespace().await;
        let book = RedisJobBook::new(ns.clone());
        book.insert(sample_record("job-1", Some("key-1"))).await.unwrap();
        let mut conn = ns.conn.clone();
        let _: () = conn.set(book.job_key("job-1"), "garbage").await.unwrap();
        let (record, created) = book.insert(sample_record("job-2", Some("key-1"))).await.unwrap();
        assert_eq!((record.id.as_str(), created), ("job-2", true));
        let reason: String = conn.hget(ns.malformed_key(), "job:job-1").await.unwrap();
        assert!(reason.starts_with("unreadable job record"), "{reason}");
        let (again, created) = book.insert(sample_record("job-3", Some("key-1"))).await.unwrap();
        assert_eq!((again.id.as_str(), created), ("job-2", false), "the key names the new job");
        ns.clear().await.unwrap();
    }
}
