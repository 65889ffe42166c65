//! The Device-ID refresh budget, as pure functions of the recorded attempts and an injected `now`.
//!
//! The vendor documents: `cert:refresh` — 3 attempts, then 1 per hour; `token:refresh` — 5
//! attempts, then 2 per hour. It does not say when (or whether) the attempt counter resets, nor
//! whether "per hour" means a rolling hour, a clock hour, an evenly spaced rate, or an hour
//! counted from the last attempt. Overspending is not a mere 429: every successful `cert:refresh`
//! may evict the oldest valid certificate, so careless calls can lock the integration out until a
//! human re-onboards. This module therefore allows only calls that every reading of the
//! documentation permits.
//!
//! # The model
//!
//! Attempts are every `cert:refresh` (or `token:refresh`) call the controller ever started. The
//! controller records (persists) an attempt *before* it sends the call, so a crash, a lost
//! response or a 409/429/5xx only ever wastes budget; it never hides a call.
//!
//! 1. **The burst never comes back.** While fewer than `burst` attempts are recorded, a call is
//!    allowed. Once `burst` attempts are recorded, the burst counts as spent for good: the counter
//!    may never reset, so we assume it doesn't. [`prune`] keeps the latest `burst` attempts
//!    forever, so the history keeps saying that the burst was used.
//! 2. **After the burst, the strictest rate.** A call at `t` needs both
//!    - fewer than `per_window` attempts in the rolling window `(t - window', t]` (this covers
//!      rolling hours, clock hours and hours anchored anywhere, and counts the burst attempts
//!      too, in case the vendor does), and
//!    - at least `window / per_window + MARGIN` since the latest attempt (this covers an evenly
//!      spaced rate such as a leaky bucket, and "an hour since the last attempt"),
//!
//!    where `window' = window + MARGIN`. [`MARGIN`] exists because the vendor measures the hour by
//!    its own clock when the request *arrives*, while we record the time *before* persisting and
//!    sending: the delay between the two (status write, connect, request timeout) and modest clock
//!    drift must not make two calls look closer than an hour to the vendor.
//! 3. **Future-dated attempts count as now.** An attempt later than `now` means the clock jumped
//!    back after it was recorded. It certainly happened already, so it blocks calls as if it had
//!    been made now; and because we cannot tell a fast clock that was corrected from a slow clock
//!    that will be stepped forward again, it keeps its recorded time (it is never rewritten) and
//!    keeps blocking until the clock has passed it by the usual spacing. Meanwhile
//!    [`next_allowed`] reports when that will be.
//!
//! Limits of any pure rule, stated so nobody relies on more: if status is lost (the resource is
//! recreated) the history restarts empty and the burst looks unused — whatever the vendor's own
//! count forbids is then refused with 429 (a wasted attempt, not an eviction), which
//! [`after_rate_limited`] turns into an hour's wait; and if the clock is stepped *forward* by more than [`MARGIN`] beyond the time base the attempts
//! were recorded in, they look older than they are — nothing in `(history, now)` can reveal that.
//!
//! 429 and 409 add waits on top of the budget: [`after_rate_limited`] and [`conflict_backoff`];
//! the controller takes the latest of these times and [`next_allowed`].

use std::time::Duration;

use jiff::Timestamp;

/// A documented "`burst` attempts, then `per_window` per `window`" limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub burst: usize,
    pub per_window: usize,
    pub window: Duration,
}

const HOUR: Duration = Duration::from_secs(3600);

/// `cert:refresh`: 3 attempts, then 1 per hour.
pub const CERT_REFRESH: Limits = Limits {
    burst: 3,
    per_window: 1,
    window: HOUR,
};

/// `token:refresh`: 5 attempts, then 2 per hour.
pub const TOKEN_REFRESH: Limits = Limits {
    burst: 5,
    per_window: 2,
    window: HOUR,
};

/// Added to every window after the burst. It covers the time between recording an attempt and the
/// request reaching the vendor (status write plus the client's 30 s request timeout) and clock
/// drift between us and the vendor. A controller that took longer than [`MAX_RECORD_TO_SEND`]
/// between recording an attempt and sending it must not send it (record a new attempt instead).
pub const MARGIN: Duration = Duration::from_secs(120);

/// The longest the controller may take between recording an attempt and starting the call, so
/// that [`MARGIN`] still covers the delay (the rest of the margin is the client's timeout and drift).
pub const MAX_RECORD_TO_SEND: Duration = Duration::from_secs(60);

/// The wait after a 429 when the vendor gives no longer `Retry-After`: the documented rate is
/// hourly, so anything shorter would only earn another 429.
pub const RATE_LIMITED_WAIT: Duration = HOUR;

/// The first wait after a 409 ("another update/delete job is running"); doubles per consecutive 409.
pub const CONFLICT_BASE: Duration = Duration::from_secs(60);
/// The longest wait after a 409: the other job should be long over, and the hourly budget gates
/// further calls anyway.
pub const CONFLICT_CAP: Duration = HOUR;

/// The earliest time at which one more call is allowed. A result `<= now` means "may call now";
/// the result is never earlier than `now`, so it can go into status as `nextAttemptTime` as is.
///
/// `attempts` is every call recorded (in any order, possibly future-dated after a clock jump back).
pub fn next_allowed(limits: &Limits, attempts: &[Timestamp], now: Timestamp) -> Timestamp {
    if attempts.len() < limits.burst {
        return now;
    }
    if limits.per_window == 0 {
        return Timestamp::MAX;
    }
    let per_window = u32::try_from(limits.per_window).unwrap_or(u32::MAX);
    // The margin is added to both whole: it stands for the delay of one request, not a rate.
    let window = limits.window.saturating_add(MARGIN);
    let spacing = (limits.window / per_window).saturating_add(MARGIN);

    // Future-dated attempts keep their time: they count at least as "now" (see the module docs).
    let mut newest_first = attempts.to_vec();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    let Some(&latest) = newest_first.first() else {
        return now; // a zero-sized burst and no attempts yet
    };
    let mut earliest = plus(latest, spacing);
    // The rolling window ending at `t` holds fewer than `per_window` attempts once the
    // `per_window`-th newest has left it.
    if let Some(&kth) = newest_first.get(limits.per_window - 1) {
        earliest = earliest.max(plus(kth, window));
    }
    earliest.max(now)
}

/// Whether one more call is allowed at `now`.
pub fn may_call(limits: &Limits, attempts: &[Timestamp], now: Timestamp) -> bool {
    next_allowed(limits, attempts, now) <= now
}

/// The attempts that status must keep, sorted oldest first. [`next_allowed`] depends only on
/// whether `burst` attempts were made and on the newest `per_window` of them, so the newest
/// `max(burst, per_window)` are exactly what still constrains: the result gives the same
/// [`next_allowed`] as `attempts` at every time, before or after `now` (a clock jump cannot make a
/// dropped attempt matter again), and status stays a few entries long.
pub fn prune(limits: &Limits, attempts: &[Timestamp], _now: Timestamp) -> Vec<Timestamp> {
    let mut sorted = attempts.to_vec();
    sorted.sort_unstable();
    // At least one is kept so that a zero-sized burst still leaves the spacing rule its anchor.
    let keep = limits.burst.max(limits.per_window).max(1);
    sorted.split_off(sorted.len().saturating_sub(keep))
}

/// Parses the attempts kept in status (RFC 3339). An entry that does not parse still proves that
/// a call was started, so it counts as made `now` — the conservative reading of a damaged record.
pub fn parse_attempts(recorded: &[String], now: Timestamp) -> Vec<Timestamp> {
    recorded
        .iter()
        .map(|s| s.parse::<Timestamp>().unwrap_or(now))
        .collect()
}

/// When to call again after a 429: at least [`RATE_LIMITED_WAIT`] plus [`MARGIN`].
pub fn after_rate_limited(now: Timestamp) -> Timestamp {
    after_rate_limited_with(None, now)
}

/// The longest `Retry-After` taken at its word: a garbled or hostile header must not stop
/// refreshes for a year. Beyond it the wait is this, and status shows the time.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(24 * 3600);

/// Like [`after_rate_limited`], but honours a longer `Retry-After` from the vendor, up to
/// [`RETRY_AFTER_CAP`].
pub fn after_rate_limited_with(retry_after: Option<Duration>, now: Timestamp) -> Timestamp {
    let asked = retry_after.unwrap_or_default().min(RETRY_AFTER_CAP);
    let wait = RATE_LIMITED_WAIT.max(asked);
    plus(now, wait.saturating_add(MARGIN))
}

/// When to call again after `consecutive_409s` conflicts in a row: [`CONFLICT_BASE`] doubled per
/// further conflict, capped at [`CONFLICT_CAP`]; `0` means no wait. Deterministic — the caller adds
/// jitter — and never earlier than [`next_allowed`] says, since each retry is an attempt too.
pub fn conflict_backoff(consecutive_409s: u32, now: Timestamp) -> Timestamp {
    if consecutive_409s == 0 {
        return now;
    }
    let doublings = consecutive_409s - 1;
    let wait = if doublings >= 32 {
        CONFLICT_CAP
    } else {
        CONFLICT_BASE
            .checked_mul(1u32 << doublings)
            .map_or(CONFLICT_CAP, |w| w.min(CONFLICT_CAP))
    };
    plus(now, wait)
}

/// `t + d`, saturating at the end of time (the conservative direction for every use here).
fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60;
    const H: i64 = 3600;
    const M: i64 = MARGIN.as_secs() as i64;

    fn at(secs: i64) -> Timestamp {
        // A fixed origin far from the ends of time, so offsets never overflow.
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn ats(secs: &[i64]) -> Vec<Timestamp> {
        secs.iter().copied().map(at).collect()
    }

    #[test]
    fn empty_history_may_call_now() {
        assert_eq!(next_allowed(&CERT_REFRESH, &[], at(0)), at(0));
        assert!(may_call(&CERT_REFRESH, &[], at(0)));
    }

    #[test]
    fn cert_burst_allows_three_back_to_back() {
        assert!(may_call(&CERT_REFRESH, &ats(&[0]), at(1)));
        assert!(may_call(&CERT_REFRESH, &ats(&[0, 1]), at(2)));
        assert!(!may_call(&CERT_REFRESH, &ats(&[0, 1, 2]), at(3)));
    }

    #[test]
    fn cert_after_burst_waits_an_hour_plus_margin_from_the_latest() {
        let spent = ats(&[0, 1, 2]);
        assert_eq!(next_allowed(&CERT_REFRESH, &spent, at(3)), at(2 + H + M));
        assert!(!may_call(&CERT_REFRESH, &spent, at(2 + H)));
        assert!(may_call(&CERT_REFRESH, &spent, at(2 + H + M)));
    }

    #[test]
    fn cert_burst_does_not_come_back_after_days() {
        let days_ago = ats(&[0, 1, 2]);
        let now = 10 * 24 * H;
        assert!(may_call(&CERT_REFRESH, &days_ago, at(now)));
        let mut one_more = days_ago.clone();
        one_more.push(at(now));
        assert_eq!(
            next_allowed(&CERT_REFRESH, &one_more, at(now + 1)),
            at(now + H + M)
        );
    }

    #[test]
    fn token_burst_of_five_then_two_per_hour() {
        let burst = ats(&[0, 0, 0, 0]);
        assert!(may_call(&TOKEN_REFRESH, &burst, at(0)));
        let spent = ats(&[0, 0, 0, 0, 0]);
        // The burst attempts still fill the rolling window: the 2nd newest must leave it.
        assert_eq!(next_allowed(&TOKEN_REFRESH, &spent, at(1)), at(H + M));
    }

    #[test]
    fn token_after_burst_spaces_calls_half_a_window_apart() {
        let spent_long_ago = ats(&[0, 1, 2, 3, 4]);
        let now = 5 * H;
        assert!(may_call(&TOKEN_REFRESH, &spent_long_ago, at(now)));
        let mut recent = spent_long_ago.clone();
        recent.push(at(now - 10 * MIN));
        let spacing = H / 2 + M;
        assert_eq!(
            next_allowed(&TOKEN_REFRESH, &recent, at(now)),
            at(now - 10 * MIN + spacing)
        );
        // Two close together (from before a restart, say): the older must leave the window.
        let mut close = spent_long_ago.clone();
        close.extend(ats(&[now - 40 * MIN, now - 39 * MIN]));
        assert_eq!(
            next_allowed(&TOKEN_REFRESH, &close, at(now)),
            at(now - 40 * MIN + H + M)
        );
    }

    #[test]
    fn future_dated_attempts_block_until_the_clock_passes_them() {
        let jumped = ats(&[0, 1, 2 * H]);
        assert!(!may_call(&CERT_REFRESH, &jumped, at(10)));
        assert_eq!(next_allowed(&CERT_REFRESH, &jumped, at(10)), at(3 * H + M));
        // Within the burst a future-dated attempt is just one used attempt.
        assert!(may_call(&CERT_REFRESH, &ats(&[2 * H]), at(0)));
    }

    #[test]
    fn order_of_attempts_does_not_matter() {
        let a = ats(&[2, 0, 1, 5000, 3]);
        let mut b = a.clone();
        b.sort();
        assert_eq!(
            next_allowed(&CERT_REFRESH, &a, at(5001)),
            next_allowed(&CERT_REFRESH, &b, at(5001))
        );
        assert_eq!(next_allowed(&CERT_REFRESH, &a, at(5001)), at(5000 + H + M));
    }

    #[test]
    fn prune_keeps_the_newest_that_still_constrain() {
        assert_eq!(prune(&CERT_REFRESH, &ats(&[5, 1]), at(9)), ats(&[1, 5]));
        assert_eq!(
            prune(&CERT_REFRESH, &ats(&[9, 1, 7, 3, 5]), at(10)),
            ats(&[5, 7, 9])
        );
        assert_eq!(
            prune(&TOKEN_REFRESH, &ats(&[1, 2, 3, 4, 5, 6]), at(7)).len(),
            5
        );
    }

    #[test]
    fn unparseable_attempts_count_as_now() {
        let parsed = parse_attempts(
            &["2027-01-15T08:00:00Z".to_string(), "garbage".to_string()],
            at(0),
        );
        assert_eq!(parsed, vec!["2027-01-15T08:00:00Z".parse().unwrap(), at(0)]);
    }

    #[test]
    fn rate_limited_waits_at_least_an_hour() {
        assert_eq!(after_rate_limited(at(0)), at(H + M));
        assert_eq!(
            after_rate_limited_with(Some(Duration::from_secs(60)), at(0)),
            at(H + M)
        );
        assert_eq!(
            after_rate_limited_with(Some(Duration::from_secs(2 * 3600)), at(0)),
            at(2 * H + M)
        );
        // A year-long Retry-After is taken as a day.
        assert_eq!(
            after_rate_limited_with(Some(Duration::from_secs(365 * 24 * 3600)), at(0)),
            at(24 * H + M)
        );
    }

    #[test]
    fn conflict_backoff_doubles_up_to_the_cap() {
        let table = [
            (0, 0),
            (1, MIN),
            (2, 2 * MIN),
            (3, 4 * MIN),
            (6, 32 * MIN),
            (7, H),
        ];
        for (n, wait) in table {
            assert_eq!(conflict_backoff(n, at(0)), at(wait), "after {n} conflicts");
        }
        assert_eq!(conflict_backoff(40, at(0)), at(H));
        assert_eq!(conflict_backoff(u32::MAX, at(0)), at(H));
    }

    #[test]
    fn saturates_at_the_end_of_time() {
        let late = vec![Timestamp::MAX; 3];
        assert_eq!(next_allowed(&CERT_REFRESH, &late, at(0)), Timestamp::MAX);
        let no_burst = Limits {
            burst: 0,
            ..CERT_REFRESH
        };
        assert_eq!(next_allowed(&no_burst, &[], at(0)), at(0));
        assert_eq!(next_allowed(&no_burst, &ats(&[0]), at(1)), at(H + M));
        let never = Limits {
            per_window: 0,
            ..CERT_REFRESH
        };
        assert_eq!(
            next_allowed(&never, &ats(&[0, 0, 0]), at(0)),
            Timestamp::MAX
        );
    }

    // ---- property tests -------------------------------------------------------------------

    /// How the vendor answered; it only changes the controller's extra waits, never the budget.
    #[derive(Clone, Copy, Debug)]
    enum Response {
        Ok,
        Conflict,
        RateLimited,
        ServerError,
        Dropped,
    }

    #[derive(Clone, Debug)]
    enum Event {
        /// Real time passes.
        Advance(i64),
        /// Real time passes until the controller's clock reaches the time it would requeue for:
        /// the tightest the controller ever gets to the budget's edges.
        Requeue,
        /// The controller asks the budget and, if allowed, records the attempt and calls; the
        /// request reaches the vendor `delay` seconds after it was recorded.
        Try {
            delay: i64,
            crash_before_send: bool,
            response: Response,
        },
        /// The process restarts: in-memory waits are lost, persisted attempts are not.
        Restart,
        ClockBack(i64),
        ClockForward(i64),
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            Just(Response::Ok),
            Just(Response::Conflict),
            Just(Response::RateLimited),
            Just(Response::ServerError),
            Just(Response::Dropped),
        ]
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            2 => prop_oneof![0..120i64, 0..3 * H].prop_map(Event::Advance),
            2 => Just(Event::Requeue),
            4 => (0..=90i64, any::<bool>(), response()).prop_map(|(delay, crash_before_send, response)| Event::Try { delay, crash_before_send, response }),
            1 => Just(Event::Restart),
            1 => (1..6 * H).prop_map(Event::ClockBack),
            1 => (1..6 * H).prop_map(Event::ClockForward),
        ]
    }

    /// The vendor, read as strictly as the documentation allows: the burst is lifetime; after it,
    /// fewer than `per_window` earlier calls in the rolling window (burst calls included) and at
    /// least `window / per_window` since the previous call. Times are the vendor's (true) clock.
    fn assert_within_strictest_vendor_rule(limits: &Limits, calls: &[i64]) {
        let window = limits.window.as_secs() as i64;
        for (i, &t) in calls.iter().enumerate() {
            let in_window = calls[..i].iter().filter(|&&c| c > t - window).count();
            assert!(
                in_window < limits.burst.max(limits.per_window),
                "call {i} at {t}: more than the budget in one rolling window: {calls:?}"
            );
            if i >= limits.burst {
                assert!(
                    in_window < limits.per_window,
                    "call {i} at {t}: {in_window} calls in the window after the burst: {calls:?}"
                );
                assert!(
                    t - calls[i - 1] >= window / limits.per_window as i64,
                    "call {i} at {t}: too close to the previous one: {calls:?}"
                );
            }
        }
    }

    /// Runs the controller's use of the budget through `events`; returns the vendor's arrival
    /// times of every call made.
    fn run(limits: &Limits, events: &[Event]) -> Vec<i64> {
        // Forward clock steps beyond the time base of recorded attempts are undetectable (see the
        // module docs); the margin left after the request delay absorbs this much of one.
        const FORWARD_SLACK: i64 = 30;
        let mut true_time: i64 = 0;
        let mut offset: i64 = 0;
        let mut min_record_offset: Option<i64> = None;
        let mut persisted: Vec<Timestamp> = Vec::new();
        let mut wait_until: Option<Timestamp> = None;
        let mut conflicts: u32 = 0;
        let mut calls = Vec::new();
        for event in events {
            let clock = at(true_time + offset);
            match *event {
                Event::Advance(secs) => true_time += secs,
                Event::Requeue => {
                    let due =
                        next_allowed(limits, &persisted, clock).max(wait_until.unwrap_or(clock));
                    true_time += due.duration_since(clock).as_secs().max(0);
                }
                Event::Restart => {
                    wait_until = None;
                    conflicts = 0;
                }
                Event::ClockBack(secs) => offset -= secs,
                Event::ClockForward(secs) => {
                    offset += secs;
                    if let Some(min) = min_record_offset {
                        offset = offset.min(min + FORWARD_SLACK);
                    }
                }
                Event::Try {
                    delay,
                    crash_before_send,
                    response,
                } => {
                    if wait_until.is_some_and(|w| clock < w) || !may_call(limits, &persisted, clock)
                    {
                        continue;
                    }
                    // Recorded and persisted (pruned, as status keeps it) before the call.
                    persisted.push(clock);
                    persisted = prune(limits, &persisted, clock);
                    min_record_offset = Some(min_record_offset.map_or(offset, |m| m.min(offset)));
                    if crash_before_send {
                        wait_until = None;
                        conflicts = 0;
                        continue;
                    }
                    true_time += delay;
                    calls.push(true_time);
                    let after = at(true_time + offset);
                    match response {
                        Response::Conflict => {
                            conflicts += 1;
                            wait_until = Some(conflict_backoff(conflicts, after));
                        }
                        Response::RateLimited => {
                            conflicts = 0;
                            wait_until = Some(after_rate_limited(after));
                        }
                        Response::Ok | Response::ServerError | Response::Dropped => conflicts = 0,
                    }
                }
            }
        }
        calls
    }

    fn history() -> impl Strategy<Value = Vec<Timestamp>> {
        prop::collection::vec((-10 * H..10 * H).prop_map(at), 0..12)
    }

    proptest! {
        // Cheap cases; many of them make it likely that some reach the budget's edges.
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn calls_never_exceed_the_budget_under_any_reset_policy(
            events in prop::collection::vec(event(), 0..120)
        ) {
            for limits in [CERT_REFRESH, TOKEN_REFRESH] {
                let calls = run(&limits, &events);
                assert_within_strictest_vendor_rule(&limits, &calls);
            }
        }

        #[test]
        fn prune_never_changes_next_allowed(
            attempts in history(),
            now in (-10 * H..10 * H).prop_map(at),
            later in (-20 * H..20 * H).prop_map(at),
        ) {
            for limits in [CERT_REFRESH, TOKEN_REFRESH] {
                let pruned = prune(&limits, &attempts, now);
                prop_assert_eq!(
                    next_allowed(&limits, &pruned, later),
                    next_allowed(&limits, &attempts, later)
                );
                prop_assert!(pruned.len() <= limits.burst.max(limits.per_window));
            }
        }

        #[test]
        fn next_allowed_is_monotone_in_history(
            attempts in history(),
            extra in history(),
            now in (-10 * H..10 * H).prop_map(at),
        ) {
            let mut more = attempts.clone();
            more.extend(extra);
            for limits in [CERT_REFRESH, TOKEN_REFRESH] {
                let before = next_allowed(&limits, &attempts, now);
                prop_assert!(before >= now);
                prop_assert!(next_allowed(&limits, &more, now) >= before);
            }
        }
    }
}
