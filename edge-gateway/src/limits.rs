//! Rate limits: token buckets (governor) per client address, taken before authentication on
//! every request (so bad tokens and refused admins cost their sender too), a stricter one per
//! address for the account endpoints (login, register, refresh), and one per signed-in user.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// A limit: sustained requests per minute and the burst allowed on top.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub per_minute: u32,
    pub burst: u32,
}

/// Which bucket a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Every request, by client address, before authentication.
    Address,
    /// Login, registration, token refresh, by client address: stricter.
    Account,
    /// Signed-in requests, by user.
    User,
    /// Requests with an API key, by key.
    ApiKey,
}

impl Bucket {
    pub fn name(self) -> &'static str {
        match self {
            Self::Address => "address",
            Self::Account => "account",
            Self::User => "user",
            Self::ApiKey => "api_key",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// Login, registration, token refresh: keyed by client address, stricter.
    Account,
    Default,
}

/// What the client is told about its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until one more request is allowed (0 when some are left).
    pub reset: u64,
}

pub struct RateLimits {
    default: (Keyed, Limit),
    account: (Keyed, Limit),
    address: (Keyed, Limit),
    api_key: (Keyed, Limit),
    clock: DefaultClock,
}

fn limiter(l: Limit) -> Keyed {
    let per_minute = NonZeroU32::new(l.per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(l.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
        .with_middleware::<StateInformationMiddleware>()
}

impl RateLimits {
    /// `default` per user, `account` per address on account routes, `address` per address
    /// on every request; API keys draw on `default` too unless [`RateLimits::with_api_keys`].
    pub fn new(default: Limit, account: Limit, address: Limit) -> Self {
        Self {
            default: (limiter(default), default),
            account: (limiter(account), account),
            address: (limiter(address), address),
            api_key: (limiter(default), default),
            clock: DefaultClock::default(),
        }
    }

    /// `api_key` per API key.
    pub fn with_api_keys(mut self, api_key: Limit) -> Self {
        self.api_key = (limiter(api_key), api_key);
        self
    }

    /// Takes one token for `key`; `Err` carries the budget with the wait in `reset`.
    pub fn check(&self, bucket: Bucket, key: &str) -> Result<Budget, Budget> {
        let (limiter, limit) = match bucket {
            Bucket::Account => &self.account,
            Bucket::User => &self.default,
            Bucket::Address => &self.address,
            Bucket::ApiKey => &self.api_key,
        };
        match limiter.check_key(&key.to_string()) {
            Ok(snapshot) => Ok(Budget {
                limit: limit.burst,
                remaining: snapshot.remaining_burst_capacity(),
                reset: 0,
            }),
            Err(not_until) => {
                let wait: Duration = not_until.wait_time_from(self.clock.now());
                Err(Budget {
                    limit: limit.burst,
                    remaining: 0,
                    reset: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                })
            }
        }
    }

    /// Drops state for keys whose buckets are full again (bounded memory).
    pub fn sweep(&self) {
        self.default.0.retain_recent();
        self.account.0.retain_recent();
        self.address.0.retain_recent();
        self.api_key.0.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refuses_with_a_wait_per_key() {
        let limits = RateLimits::new(
            Limit {
                per_minute: 60,
                burst: 3,
            },
            Limit {
                per_minute: 6,
                burst: 1,
            },
            Limit {
                per_minute: 600,
                burst: 100,
            },
        );
        for expected in [2, 1, 0] {
            assert_eq!(
                limits.check(Bucket::User, "user:a").unwrap().remaining,
                expected
            );
        }
        let denied = limits.check(Bucket::User, "user:a").unwrap_err();
        assert!(denied.reset >= 1 && denied.reset <= 2, "{denied:?}");
        assert!(
            limits.check(Bucket::User, "user:b").is_ok(),
            "keys are independent"
        );
        assert!(limits.check(Bucket::Account, "ip:1").is_ok());
        assert!(
            limits.check(Bucket::Account, "ip:1").is_err(),
            "the account class is stricter"
        );
    }
}
