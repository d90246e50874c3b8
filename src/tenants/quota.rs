//! Per-tenant admission: a token bucket for requests per second and a cap on requests in
//! flight, from the quotas the tenants file gives. The state outlives reloads of the tenants file, so a reload cannot refill a bucket.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

/// Quotas as written in the file; absent fields take the safe defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Prompts the tenant may own (default 1000).
    pub max_prompts: Option<usize>,
    /// Sustained predict requests per second, token bucket (default 100).
    pub requests_per_second: Option<f64>,
    /// Requests the bucket holds for bursts (default 2 × requests_per_second).
    pub burst: Option<f64>,
    /// Predict requests in flight at once (default 64).
    pub max_in_flight: Option<usize>,
    /// Longest prompt the tenant may upload, in rows (default and cap: --max-prompt-length).
    pub max_prompt_length: Option<usize>,
}

/// Rate and concurrency limits of one tenant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Sustained requests per second.
    pub rate: f64,
    /// Bucket size.
    pub burst: f64,
    /// Requests in flight at once.
    pub max_in_flight: usize,
}

impl Limits {
    /// From the file's quotas, with defaults (100/s, burst 2 × rate, 64 in flight).
    pub fn from_config(q: &QuotaConfig) -> Result<Self, String> {
        let rate = q.requests_per_second.unwrap_or(100.0);
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!(
                "requests_per_second {rate} must be a positive number"
            ));
        }
        let burst = q.burst.unwrap_or(2.0 * rate).max(1.0);
        if !burst.is_finite() {
            return Err(format!("burst {burst} must be finite"));
        }
        let max_in_flight = q.max_in_flight.unwrap_or(64);
        if max_in_flight == 0 {
            return Err("max_in_flight must be at least 1".into());
        }
        Ok(Self {
            rate,
            burst,
            max_in_flight,
        })
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// Over the request rate; the bucket holds a token again after `retry_after`.
    Rate {
        /// Time until the next token.
        retry_after: Duration,
        /// The sustained rate.
        rate: f64,
    },
    /// `max` requests are already in flight.
    InFlight {
        /// The cap.
        max: usize,
    },
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A tenant's admission state.
#[derive(Debug)]
pub struct Limiter {
    limits: Mutex<Limits>,
    bucket: Mutex<Bucket>,
    in_flight: AtomicUsize,
}

impl Limiter {
    /// A full bucket, nothing in flight.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Mutex::new(limits),
            bucket: Mutex::new(Bucket {
                tokens: limits.burst,
                last: Instant::now(),
            }),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// New limits from a reloaded file; the bucket keeps its level (capped at the new burst).
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.lock() = limits;
        let mut b = self.bucket.lock();
        b.tokens = b.tokens.min(limits.burst);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Admits one request now, or says why not. The returned guard counts it in flight until
    /// dropped. A refused request takes no token.
    pub fn admit(self: &Arc<Self>) -> Result<InFlight, Refusal> {
        self.admit_at(Instant::now())
    }

    /// [`Limiter::admit`] at a given time (tests).
    pub fn admit_at(self: &Arc<Self>, now: Instant) -> Result<InFlight, Refusal> {
        let limits = *self.limits.lock();
        let reserved = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if reserved >= limits.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::InFlight {
                max: limits.max_in_flight,
            });
        }
        let mut b = self.bucket.lock();
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * limits.rate).min(limits.burst);
        b.last = now.max(b.last);
        if b.tokens < 1.0 {
            let wait = (1.0 - b.tokens) / limits.rate;
            drop(b);
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Rate {
                retry_after: Duration::from_secs_f64(wait),
                rate: limits.rate,
            });
        }
        b.tokens -= 1.0;
        Ok(InFlight(self.clone()))
    }
}

/// One admitted request; dropping it frees its in-flight slot.
#[derive(Debug)]
pub struct InFlight(Arc<Limiter>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: f64, burst: f64, max_in_flight: usize) -> Arc<Limiter> {
        Arc::new(Limiter::new(Limits {
            rate,
            burst,
            max_in_flight,
        }))
    }

    #[test]
    fn bucket_allows_bursts_then_the_rate() {
        let l = limiter(10.0, 3.0, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(l.admit_at(t0).unwrap());
        }
        let Err(Refusal::Rate { retry_after, .. }) = l.admit_at(t0) else {
            panic!("fourth request in the same instant passed")
        };
        assert!(
            (retry_after.as_secs_f64() - 0.1).abs() < 1e-6,
            "{retry_after:?}"
        );
        // 100 ms later one token is back, not two.
        let t1 = t0 + Duration::from_millis(100);
        drop(l.admit_at(t1).unwrap());
        assert!(l.admit_at(t1).is_err());
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            drop(l.admit_at(t2).unwrap());
        }
        assert!(l.admit_at(t2).is_err());
    }

    #[test]
    fn in_flight_is_capped_and_freed_on_drop_without_taking_tokens() {
        let l = limiter(1000.0, 1000.0, 2);
        let now = Instant::now();
        let a = l.admit_at(now).unwrap();
        let _b = l.admit_at(now).unwrap();
        assert_eq!(l.admit_at(now).unwrap_err(), Refusal::InFlight { max: 2 });
        assert_eq!(l.in_flight(), 2);
        drop(a);
        assert_eq!(l.in_flight(), 1);
        let _c = l.admit_at(now).unwrap();
        let tokens = l.bucket.lock().tokens;
        assert_eq!(
            tokens, 997.0,
            "three admitted, the refused one took nothing"
        );
    }

    #[test]
    fn reload_caps_the_bucket_at_the_new_burst() {
        let l = limiter(1.0, 50.0, 10);
        l.set_limits(Limits {
            rate: 1.0,
            burst: 2.0,
            max_in_flight: 10,
        });
        let now = Instant::now();
        drop(l.admit_at(now).unwrap());
        drop(l.admit_at(now).unwrap());
        assert!(l.admit_at(now).is_err());
    }
}
