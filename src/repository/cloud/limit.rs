//! The per-repository bandwidth limit of uploads: a token bucket shared by every open of the
//! same repository in the process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket: `rate` bytes per second, bursts up to one second's worth.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(bytes_per_second: u64) -> TokenBucket {
        let rate = bytes_per_second.max(1) as f64;
        TokenBucket {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Takes `n` bytes' worth of tokens, sleeping off any debt (so concurrent writers share the
    /// rate).
    pub async fn acquire(&self, n: u64) {
        let wait = {
            let mut s = match self.state.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.rate);
            s.1 = now;
            s.0 -= n as f64;
            if s.0 < 0.0 {
                Duration::from_secs_f64(-s.0 / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The token bucket of a repository URL and rate, shared by every `open` of it in this process
/// (a daemon that opens a repository per run still gets one limit for all of them).
pub(super) fn shared_limiter(url: &str, rate: u64) -> Arc<TokenBucket> {
    use std::collections::HashMap;
    use std::sync::{OnceLock, Weak};
    type Limiters = Mutex<HashMap<(String, u64), Weak<TokenBucket>>>;
    static LIMITERS: OnceLock<Limiters> = OnceLock::new();
    let map = LIMITERS.get_or_init(Default::default);
    let mut map = match map.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.retain(|_, w| w.strong_count() > 0);
    let key = (url.to_string(), rate);
    if let Some(b) = map.get(&key).and_then(Weak::upgrade) {
        return b;
    }
    let b = Arc::new(TokenBucket::new(rate));
    map.insert(key, Arc::downgrade(&b));
    b
}
