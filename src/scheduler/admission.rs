//! Admission control: at most `max_in_flight` queries are worked on at once; a query beyond it
//! waits for a slot at most `max_queue_time` (and never past its deadline), behind at most
//! `max_queued` others. A query shed gets RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo`
//! detail; one whose deadline passes while it waits gets DEADLINE_EXCEEDED. Either way it never
//! reached an expert and nothing was charged. Counted in `l2d_admission_shed_total{reason}`;
//! `l2d_admission_in_flight` and `l2d_admission_queued` are written at scrape time.

use crate::grpc::status::resource_exhausted;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::Status;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionLimits {
    /// Queries worked on at once.
    pub max_in_flight: usize,
    /// Longest wait for a slot.
    pub max_queue_time: Duration,
    /// Queries waiting for a slot at once; beyond it a query is shed at once.
    pub max_queued: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            max_queue_time: Duration::from_millis(100),
            max_queued: 4096,
        }
    }
}

pub struct Admission {
    limits: AdmissionLimits,
    slots: Semaphore,
    queued: AtomicUsize,
    queue_full: metrics::Counter,
    queue_timeout: metrics::Counter,
    deadline: metrics::Counter,
}

/// Decrements a counter when dropped (a cancelled wait leaves the queue).
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Self {
        let shed = |reason: &'static str| metrics::counter!("l2d_admission_shed_total", "reason" => reason);
        Self {
            slots: Semaphore::new(limits.max_in_flight.max(1)),
            limits,
            queued: AtomicUsize::new(0),
            queue_full: shed("queue_full"),
            queue_timeout: shed("queue_timeout"),
            deadline: shed("deadline"),
        }
    }

    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
    }

    /// Queries being worked on now.
    pub fn in_flight(&self) -> usize {
        self.limits.max_in_flight.max(1) - self.slots.available_permits()
    }

    /// Queries waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// A slot for one query, held until the permit is dropped.
    pub async fn enter(&self, deadline: Option<Instant>) -> Result<SemaphorePermit<'_>, Status> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
        let retry = self
            .limits
            .max_queue_time
            .clamp(Duration::from_millis(5), Duration::from_secs(1));
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.limits.max_queued {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.queue_full.increment(1);
            return Err(resource_exhausted(
                format!(
                    "the scheduler is at its limit of {} queries in flight with {} waiting; \
                     retry in {} ms",
                    self.limits.max_in_flight,
                    self.limits.max_queued,
                    retry.as_millis()
                ),
                retry,
            ));
        }
        let _queued = Queued(&self.queued);
        let now = tokio::time::Instant::now();
        let by_queue = now + self.limits.max_queue_time;
        let deadline = deadline.map(tokio::time::Instant::from_std);
        let until = deadline.map_or(by_queue, |d| d.min(by_queue));
        match tokio::time::timeout_at(until, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Status::unavailable("the scheduler is shutting down")),
            Err(_) if deadline.is_some_and(|d| d <= by_queue) => {
                self.deadline.increment(1);
                Err(Status::deadline_exceeded(format!(
                    "deadline passed after {} ms waiting for one of the scheduler's {} query \
                     slots; no expert was called",
                    now.elapsed().as_millis(),
                    self.limits.max_in_flight
                )))
            }
            Err(_) => {
                self.queue_timeout.increment(1);
                Err(resource_exhausted(
                    format!(
                        "the scheduler is at its limit of {} queries in flight: no slot within \
                         {} ms; retry in {} ms",
                        self.limits.max_in_flight,
                        self.limits.max_queue_time.as_millis(),
                        retry.as_millis()
                    ),
                    retry,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn gate(in_flight: usize, queue_ms: u64, queued: usize) -> Admission {
        Admission::new(AdmissionLimits {
            max_in_flight: in_flight,
            max_queue_time: Duration::from_millis(queue_ms),
            max_queued: queued,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_beyond_the_limit_waits_then_is_shed_with_a_retry_hint() {
        let admission = gate(1, 50, 8);
        let first = admission.enter(None).await.unwrap();
        assert_eq!(admission.in_flight(), 1);
        let started = tokio::time::Instant::now();
        let shed = admission.enter(None).await.unwrap_err();
        assert_eq!(shed.code(), Code::ResourceExhausted);
        // Its queue time (the timer wheel rounds up to the next millisecond).
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(50) && waited <= Duration::from_millis(51),
            "{waited:?}"
        );
        assert_eq!(
            crate::grpc::status::retry_after(&shed),
            Some(Duration::from_millis(50))
        );
        assert_eq!(admission.queued(), 0, "a shed query leaves the queue");
        // A slot freed while a query waits goes to it.
        let waiter = async { admission.enter(None).await.map(|_| ()) };
        let release = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(first);
        };
        let (admitted, ()) = tokio::join!(waiter, release);
        assert!(admitted.is_ok());
        assert_eq!(admission.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_sheds_at_once_and_a_deadline_ends_the_wait() {
        let admission = gate(1, 1000, 1);
        let _held = admission.enter(None).await.unwrap();
        let deadline = tokio::time::Instant::now().into_std() + Duration::from_millis(30);
        let waiting = admission.enter(Some(deadline));
        let full = async {
            // The queue (one place) is taken by the first waiter: the second is shed at once.
            tokio::task::yield_now().await;
            let started = tokio::time::Instant::now();
            let shed = admission.enter(None).await.unwrap_err();
            (shed, started.elapsed())
        };
        let (waited, (shed, after)) = tokio::join!(waiting, full);
        assert_eq!(shed.code(), Code::ResourceExhausted);
        assert_eq!(after, Duration::ZERO);
        let waited = waited.unwrap_err();
        assert_eq!(waited.code(), Code::DeadlineExceeded, "{waited:?}");
        assert!(crate::grpc::status::retry_after(&waited).is_none());
    }
}
