//! Durations as users write them in Kubernetes (Go's `time.ParseDuration`: `720h`, `1h30m`,
//! `90s`, `1.5h`). The spec keeps the user's string; only the operator parses it.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses a Go-style duration. Negative durations are rejected: nothing here runs backwards.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err(err("negative"));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("missing unit (ns, us, ms, s, m, h)"))?;
        if num_end == 0 {
            return Err(err("expected a number"));
        }
        let number: f64 = rest[..num_end].parse().map_err(|_| err("bad number"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err("unknown unit (use ns, us, ms, s, m, h)")),
        };
        rest = &rest[unit_end..];
        total += number * seconds_per_unit;
    }
    if !total.is_finite() || total > 100.0 * 365.0 * 86400.0 {
        return Err(err("too large"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Renders whole seconds the way Go prints them (`720h0m0s` style, shortened: `720h`, `1h30m`).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_go_parses() {
        let table = [
            ("720h", 720 * 3600),
            ("1h30m", 5400),
            ("90s", 90),
            ("1.5h", 5400),
            ("2h0m0s", 7200),
            ("0", 0),
            ("+10m", 600),
            ("1500ms", 1),
        ];
        for (input, secs) in table {
            assert_eq!(parse_duration(input).unwrap().as_secs(), secs, "{input}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for input in ["", "h", "10", "10d", "-1h", "1h-", "abc", "1..5h", "1e5h"] {
            assert!(parse_duration(input).is_err(), "{input} should not parse");
        }
    }

    proptest::proptest! {
        #[test]
        fn format_round_trips(secs in 0u64..10_000_000) {
            let d = Duration::from_secs(secs);
            proptest::prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
