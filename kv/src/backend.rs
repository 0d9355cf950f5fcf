//! What the redb and PostgreSQL backends share: the jobs their writer
//! thread takes and how their callers are answered after a group's
//! commit, the purge timer that queues a purge job, and reads of several
//! keys with the hits answered from the cache.
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::apply::live;
use crate::{Entry, KvError, KvStats, KvStore, NamespaceId, WriteOp, WriteResult, now_ms};

/// Where a job's caller waits for its answer.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, KvError>>;

/// A job for the writer thread.
pub(crate) enum Job {
    Write {
        ns: NamespaceId,
        ops: Vec<WriteOp>,
        reply: Reply<Vec<WriteResult>>,
    },
    CreateNamespace {
        ns: NamespaceId,
        reply: Reply<bool>,
    },
    DeleteTenant {
        tenant: String,
        reply: Reply<()>,
    },
    Purge {
        now: u64,
        reply: Option<Reply<usize>>,
    },
}

/// What one job of a committed group came to, in the order of the jobs.
pub(crate) enum Outcome {
    Write(Result<Vec<WriteResult>, KvError>),
    Created(Result<bool, KvError>),
    Deleted(Result<(), KvError>),
    Purged(Result<usize, KvError>),
}

/// Queues a job for the writer thread and awaits its answer, which comes
/// after the commit that includes it.
pub(crate) async fn submit<T>(
    writer: Option<&mpsc::Sender<Job>>,
    job: impl FnOnce(Reply<T>) -> Job,
) -> Result<T, KvError> {
    let (tx, rx) = oneshot::channel();
    let writer = writer.ok_or_else(|| KvError::Storage("KV store closed".into()))?;
    let stopped = || KvError::Storage("KV writer stopped".into());
    writer.send(job(tx)).map_err(|_| stopped())?;
    rx.await.map_err(|_| stopped())?
}

/// Answers every job of a group: each its outcome once the group
/// committed (counted in `stats`), or all the group's error.
pub(crate) fn answer(stats: &KvStats, jobs: Vec<Job>, result: Result<Vec<Outcome>, KvError>) {
    match result {
        Ok(outcomes) => {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .write_jobs
                .fetch_add(jobs.len() as u64, Ordering::Relaxed);
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                match (job, outcome) {
                    (Job::Write { reply, .. }, Outcome::Write(r)) => drop(reply.send(r)),
                    (Job::CreateNamespace { reply, .. }, Outcome::Created(r)) => {
                        drop(reply.send(r))
                    }
                    (Job::DeleteTenant { reply, .. }, Outcome::Deleted(r)) => drop(reply.send(r)),
                    (Job::Purge { reply, .. }, Outcome::Purged(r)) => {
                        if let Ok(n) = &r {
                            stats.purged.fetch_add(*n as u64, Ordering::Relaxed);
                        }
                        if let Some(reply) = reply {
                            let _ = reply.send(r);
                        }
                    }
                    _ => unreachable!("outcomes follow jobs"),
                }
            }
        }
        Err(e) => {
            for job in jobs {
                match job {
                    Job::Write { reply, .. } => drop(reply.send(Err(e.clone()))),
                    Job::CreateNamespace { reply, .. } => drop(reply.send(Err(e.clone()))),
                    Job::DeleteTenant { reply, .. } => drop(reply.send(Err(e.clone()))),
                    Job::Purge {
                        reply: Some(reply), ..
                    } => drop(reply.send(Err(e.clone()))),
                    Job::Purge { reply: None, .. } => {}
                }
            }
        }
    }
}

/// Starts the thread that queues a purge job on `writer` every `every`,
/// until the returned sender is dropped (or the writer is gone).
pub(crate) fn start_purger(
    writer: mpsc::Sender<Job>,
    every: Duration,
) -> Result<(mpsc::Sender<()>, std::thread::JoinHandle<()>), KvError> {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let purger = std::thread::Builder::new()
        .name("perch-kv-purge".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(every) {
                let job = Job::Purge {
                    now: now_ms(),
                    reply: None,
                };
                if writer.send(job).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| KvError::Storage(e.to_string()))?;
    Ok((stop_tx, purger))
}

/// Values of several keys: the hits from `kv`'s cache inline, the misses
/// (stored entries, expired ones too, in the order asked) from one call of
/// `read_misses`.
pub(crate) async fn get_many<Fut>(
    kv: &dyn KvStore,
    ns: &NamespaceId,
    keys: &[String],
    read_misses: impl FnOnce(Vec<String>) -> Fut,
) -> Result<Vec<Option<Entry>>, KvError>
where
    Fut: Future<Output = Result<Vec<Option<Entry>>, KvError>>,
{
    let mut out: Vec<Option<Option<Entry>>> = keys.iter().map(|k| kv.get_cached(ns, k)).collect();
    let misses: Vec<String> = keys
        .iter()
        .zip(&out)
        .filter(|(_, hit)| hit.is_none())
        .map(|(k, _)| k.clone())
        .collect();
    if !misses.is_empty() {
        let mut read = read_misses(misses).await?.into_iter();
        let now = now_ms();
        for slot in out.iter_mut().filter(|hit| hit.is_none()) {
            *slot = Some(live(read.next().flatten(), now));
        }
    }
    Ok(out.into_iter().map(Option::flatten).collect())
}
