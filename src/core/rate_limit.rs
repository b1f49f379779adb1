//! A token bucket: `rate` events per second on average, bursts up to `burst`. Time is passed in,
//! so tests drive it.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`. `rate` and `burst` are clamped to at least a tiny positive rate
    /// and one token.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate.max(1e-9),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0, t0);
        for _ in 0..3 {
            assert!(bucket.take(t0).is_ok());
        }
        let wait = bucket.take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(bucket.take(t0 + Duration::from_millis(50)).is_err());
        assert!(bucket.take(t0 + Duration::from_millis(100)).is_ok());
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        let granted = (0..10).filter(|_| bucket.take(later).is_ok()).count();
        assert_eq!(granted, 3);
    }
}
