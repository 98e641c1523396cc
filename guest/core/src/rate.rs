//! Rate limits: the token bucket every runtime counts with, and the question the core asks its
//! host.
//!
//! The core decides *which* buckets a request spends from (a limit's key built from the route,
//! the client and the identity) and what the answer means for the decision. The buckets are
//! state the core does not own: each runtime keeps them where its instances can share them (the
//! sidecar in memory for all its workers, the Envoy filter in shared data, Spin in its key-value
//! store) and answers [`crate::Revocations::rate_limit`]. They all count with [`take`], so a
//! limit means the same everywhere.
//!
//! The bucket is GCRA (the generic cell rate algorithm), a token bucket stored as one number:
//! the *theoretical arrival time* at which the bucket would be full again. A bucket whose time
//! has passed is full, the same as one that never existed, so a runtime may forget it: idle
//! buckets expire by themselves, and a bounded table can always reuse their slots.

/// A limit's parameters: `burst` requests at once, one more every `interval_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateParams {
    /// Nanoseconds to regain one request (`per / requests`). At least 1.
    pub interval_ns: u64,
    /// Capacity: how many requests a full bucket admits at once. At least 1.
    pub burst: u32,
}

impl RateParams {
    /// Nanoseconds for an empty bucket to fill (`burst × interval`), saturating.
    pub fn window_ns(self) -> u64 {
        self.interval_ns.saturating_mul(u64::from(self.burst))
    }
}

/// One bucket a request spends from, as the core asks the host about it.
#[derive(Clone, Copy, Debug)]
pub struct RateBucket<'a> {
    /// The bucket's key: the limit's id and its key parts, separated by `\x1f`. Built from
    /// verified identity fields, the route and the client address; bounded in length.
    pub key: &'a str,
    /// How it fills.
    pub params: RateParams,
}

/// What a bucket said about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    /// Whether the request fits (and was counted).
    pub allowed: bool,
    /// Requests the bucket still admits at once after this one.
    pub remaining: u32,
    /// When not allowed: nanoseconds until one request would fit.
    pub retry_after_ns: u64,
    /// Nanoseconds until the bucket is full again.
    pub reset_ns: u64,
}

/// The host's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateCount {
    /// Counted.
    Counted(Taken),
    /// The host cannot count (no counter, or its store failed): the policy's `when_uncounted`
    /// decides.
    Unavailable,
}

/// Spends one request from a bucket whose stored arrival time is `tat` (0 for a bucket never
/// seen) at `now_ns` on the host's clock. Returns the time to store (`None` when the request
/// does not fit: nothing changes) and the answer. Pure, total, and free of overflow; exact
/// while times stay below 2^63 ns and the window below 2^62 ns (the policy compiler refuses
/// longer windows).
pub fn take(tat: u64, now_ns: u64, p: RateParams) -> (Option<u64>, Taken) {
    let interval = p.interval_ns.max(1);
    let window = interval.saturating_mul(u64::from(p.burst.max(1)));
    let start = tat.max(now_ns);
    let next = start.saturating_add(interval);
    // How far ahead of now the bucket would be booked: at most `window` fits.
    let ahead = next - now_ns;
    if ahead > window {
        let retry = ahead - window;
        let reset = start - now_ns;
        return (None, Taken { allowed: false, remaining: 0, retry_after_ns: retry, reset_ns: reset });
    }
    let free = (window - ahead) / interval;
    let remaining = u32::try_from(free).unwrap_or(u32::MAX);
    (Some(next), Taken { allowed: true, remaining, retry_after_ns: 0, reset_ns: ahead })
}

/// Whether a bucket stored with arrival time `tat` is full at `now_ns` (and so may be forgotten).
pub fn is_full(tat: u64, now_ns: u64) -> bool {
    tat <= now_ns
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const MS: u64 = 1_000_000;
    /// 20 per second, burst 40.
    const P: RateParams = RateParams { interval_ns: 50 * MS, burst: 40 };

    fn run(tat: &mut u64, now: u64) -> Taken {
        let (next, t) = take(*tat, now, P);
        if let Some(n) = next {
            *tat = n;
        }
        t
    }

    #[test]
    fn a_full_bucket_admits_its_burst_then_refuses() {
        let mut tat = 0;
        let now = 1_000 * MS;
        for i in 0..40 {
            let t = run(&mut tat, now);
            assert!(t.allowed, "request {i}");
            assert_eq!(t.remaining, 39 - i);
        }
        let t = run(&mut tat, now);
        assert!(!t.allowed);
        assert_eq!(t.remaining, 0);
        assert_eq!(t.retry_after_ns, 50 * MS, "one interval until the next request fits");
        assert_eq!(t.reset_ns, 2_000 * MS, "40 intervals until full");
    }

    #[test]
    fn it_refills_at_the_rate_and_never_beyond_the_burst() {
        let mut tat = 0;
        let now = 1_000 * MS;
        for _ in 0..40 {
            run(&mut tat, now);
        }
        assert!(!run(&mut tat, now + 49 * MS).allowed);
        assert!(run(&mut tat, now + 50 * MS).allowed);
        assert!(!run(&mut tat, now + 50 * MS).allowed);
        // Idle for an hour: full again, and exactly the burst fits.
        let later = now + 3_600_000 * MS;
        assert!(is_full(tat, later));
        let admitted = (0..100).filter(|_| run(&mut tat, later).allowed).count();
        assert_eq!(admitted, 40);
    }

    #[test]
    fn over_any_window_it_admits_at_most_burst_plus_refill() {
        // Requests every 7 ms for 10 s: admitted ≤ burst + 10 s × 20/s.
        let mut tat = 0;
        let start = 5_000 * MS;
        let mut admitted = 0u64;
        for i in 0..(10_000 / 7) {
            if run(&mut tat, start + i * 7 * MS).allowed {
                admitted += 1;
            }
        }
        assert!(admitted <= 40 + 200, "{admitted}");
        assert!(admitted >= 40 + 195, "the rate is honoured, not undercut: {admitted}");
    }

    #[test]
    fn extremes_do_not_overflow() {
        let huge = RateParams { interval_ns: u64::MAX, burst: u32::MAX };
        let (next, t) = take(u64::MAX, u64::MAX, huge);
        assert!(t.allowed || next.is_none());
        let zero = RateParams { interval_ns: 0, burst: 0 };
        let (_, t) = take(0, 0, zero);
        assert!(t.allowed, "treated as interval 1, burst 1");
        let (_, t) = take(u64::MAX, 0, P);
        assert!(!t.allowed);
    }
}
