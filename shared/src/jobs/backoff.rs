//! Retry delays: exponential, capped, with jitter so that jobs which failed
//! together (an SMTP server restart) do not all come back in the same instant.

use std::time::Duration;

/// The wait before the attempt after `attempt` (1-based) failed.
///
/// `base * 2^(attempt-1)`, capped at `max`, then scaled by a random factor in
/// [0.8, 1.2). A handler's `retry_after` hint raises it, never lowers it.
pub fn retry_delay(
    attempt: i32,
    base: Duration,
    max: Duration,
    hint: Option<Duration>,
) -> Duration {
    let exp = attempt.clamp(1, 31) as u32 - 1;
    let raw = base.saturating_mul(2u32.saturating_pow(exp)).min(max);
    let jittered = raw.mul_f64(0.8 + fastrand::f64() * 0.4);
    hint.map_or(jittered, |h| jittered.max(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for (attempt, nominal) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (6, 32.0),
            (7, 60.0),
            (30, 60.0),
        ] {
            let d = retry_delay(attempt, base, max, None).as_secs_f64();
            assert!(
                d >= nominal * 0.8 && d < nominal * 1.2,
                "attempt {attempt}: {d}"
            );
        }
    }

    #[test]
    fn hint_raises_delay() {
        let d = retry_delay(
            1,
            Duration::from_millis(10),
            Duration::from_secs(1),
            Some(Duration::from_secs(30)),
        );
        assert_eq!(d, Duration::from_secs(30));
    }
}
