//! A running job's lease, kept alive by a heartbeat thread: renewed every third of the lease
//! whatever the job is doing — a long denoising step, the VAE decode, the MP4 encode, writing
//! the files — so a healthy worker never loses its job to another worker of a shared queue
//! (renewing only from the pipeline's progress events left gaps: one 720p step on a slow
//! device, or the encode of a long video, can outlast the lease). When a renewal finds the job
//! no longer held (deleted, or taken over after this process stalled past its lease), the job's
//! cancel flag is set, as a DELETE does. The heartbeat stops when the keeper is dropped, before
//! the worker records the outcome (a renewal after a release would take the release back).
//! The lease semantics are the queue's (`JobQueue::renew`).

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use hyvideo::generation::CancelFlag;

use crate::queue::JobQueue;
use crate::worker::now;

/// How often a lease of `lease_secs` is renewed: a third of it (leases are whole seconds and a
/// claim may take a job from the second its lease ends, so a third leaves a second or more).
pub fn renew_interval(lease_secs: i64) -> Duration {
    Duration::from_millis((lease_secs.max(1) as u64).saturating_mul(1000) / 3)
}

/// Renews one job's lease until dropped.
pub struct LeaseKeeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LeaseKeeper {
    /// Start renewing `id`'s lease for `worker` (who claimed it with `lease_secs`); `cancel` is
    /// set when the job turns out not to be held any more.
    pub fn start(
        queue: Arc<dyn JobQueue>,
        id: &str,
        worker: &str,
        lease_secs: i64,
        cancel: CancelFlag,
    ) -> LeaseKeeper {
        let (tx, rx) = mpsc::channel::<()>();
        let (id, worker) = (id.to_owned(), worker.to_owned());
        let every = renew_interval(lease_secs);
        let spawned = std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    match queue.renew(&id, &worker, lease_secs, now()) {
                        Ok(true) => {}
                        Ok(false) => {
                            cancel.cancel();
                            return;
                        }
                        // The database did not answer: try again at the next beat (the lease
                        // runs out only if it stays unreachable).
                        Err(e) => eprintln!("job {id}: renewing its lease: {e}"),
                    }
                }
            });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("lease heartbeat not started ({e}): the lease is not renewed");
                None
            }
        };
        LeaseKeeper {
            stop: Some(tx),
            thread,
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::sqlite::SqliteQueue;
    use std::time::Instant;

    fn queue_with_a_claimed_job(lease: i64) -> Arc<dyn JobQueue> {
        let q: Arc<dyn JobQueue> = Arc::new(SqliteQueue::open_in_memory().unwrap());
        q.create("a", "{}", None, 10, now()).unwrap();
        let job = q.claim("w1", lease, now()).unwrap().unwrap();
        assert_eq!((job.id.as_str(), job.attempts), ("a", 1));
        q
    }

    #[test]
    fn intervals_are_a_third_of_the_lease() {
        assert_eq!(renew_interval(30), Duration::from_secs(10));
        assert_eq!(renew_interval(3), Duration::from_secs(1));
        assert_eq!(renew_interval(0), Duration::from_millis(333));
    }

    #[test]
    fn a_kept_lease_outlasts_its_length_and_lapses_once_dropped() {
        let q = queue_with_a_claimed_job(3);
        let cancel = CancelFlag::new();
        let keeper = LeaseKeeper::start(q.clone(), "a", "w1", 3, cancel.clone());
        // Nothing reports progress for 4.5 s (a long step, an encode): the job stays w1's.
        std::thread::sleep(Duration::from_millis(4500));
        assert!(q.claim("w2", 3, now()).unwrap().is_none(), "taken over");
        assert!(!cancel.is_cancelled());
        drop(keeper);
        // Without the heartbeat the lease runs out and another worker takes the job.
        let t = Instant::now();
        let job = loop {
            if let Some(job) = q.claim("w2", 3, now()).unwrap() {
                break job;
            }
            assert!(t.elapsed() < Duration::from_secs(6), "never lapsed");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!((job.worker.as_deref(), job.attempts), (Some("w2"), 2));
    }

    #[test]
    fn a_deleted_job_is_cancelled_at_the_next_beat() {
        let q = queue_with_a_claimed_job(3);
        let cancel = CancelFlag::new();
        let _keeper = LeaseKeeper::start(q.clone(), "a", "w1", 3, cancel.clone());
        assert!(q.delete("a").unwrap());
        let t = Instant::now();
        while !cancel.is_cancelled() {
            assert!(t.elapsed() < Duration::from_secs(5), "not cancelled");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            t.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
}
