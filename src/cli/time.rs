//! Times as people read them: local clock time, and "in 42m" / "3h ago".

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// `2026-11-26 10:42:00 CET`, in the machine's time zone.
pub fn local(t: Timestamp) -> String {
    t.to_zoned(TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// `in 42m`, `3h ago`, `now`: the largest two units, as kubectl prints ages.
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    let secs = t.as_second() - now.as_second();
    if secs == 0 {
        return "now".into();
    }
    let span = short(secs.unsigned_abs());
    if secs > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn short(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) if m == 0 => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        _ if h == 0 => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_like_kubectl_ages() {
        let now: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let at = |s: i64| Timestamp::from_second(now.as_second() + s).unwrap();
        assert_eq!(relative(at(0), now), "now");
        assert_eq!(relative(at(42 * 60), now), "in 42m");
        assert_eq!(relative(at(-(3 * 3600 + 5 * 60)), now), "3h5m ago");
        assert_eq!(relative(at(90), now), "in 1m30s");
        assert_eq!(relative(at(-5), now), "5s ago");
        assert_eq!(relative(at(64 * 86_400 + 3600), now), "in 64d1h");
    }
}
