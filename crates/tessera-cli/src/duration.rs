//! Durations on the command line: `90s`, `30m`, `1h30m`, `500ms`, `7d`.
//!
//! A unit is required: a bare `30` could mean seconds or minutes, and a TTL off by a factor
//! of 60 is a security bug, not a typo.

use std::time::Duration;

/// Parses a duration such as `30m` or `1h30m` (units `ms`, `s`, `m`, `h`, `d`).
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. 30s, 5m or 1h".to_owned());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration {input:?}: expected a number at {rest:?}; write e.g. 30s, 5m or 1h30m"
            ));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let (unit, after) = after.split_at(unit_len);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {input:?}: number too large"))?;
        let unit_value = match unit {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3_600),
            "d" => Duration::from_secs(86_400),
            "" => {
                return Err(format!(
                    "invalid duration {input:?}: missing unit after {number}; use ms, s, m, h or d (e.g. {number}s)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {input:?}: unknown unit {other:?}; use ms, s, m, h or d"
                ));
            }
        };
        let part = u32::try_from(number)
            .ok()
            .and_then(|n| unit_value.checked_mul(n))
            .ok_or_else(|| format!("invalid duration {input:?}: too large"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("invalid duration {input:?}: too large"))?;
        rest = after;
    }
    Ok(total)
}

/// Parses a positive duration in whole seconds, for TTLs.
pub fn parse_ttl(input: &str) -> Result<Duration, String> {
    let ttl = parse_duration(input)?;
    if ttl.is_zero() {
        return Err("a TTL must be positive; omit the flag to use the agent's default".to_owned());
    }
    if ttl.subsec_nanos() != 0 {
        return Err(format!("invalid TTL {input:?}: use whole seconds"));
    }
    if u32::try_from(ttl.as_secs()).is_err() {
        return Err(format!("invalid TTL {input:?}: too large"));
    }
    Ok(ttl)
}

/// Parses a positive duration, for timeouts.
pub fn parse_timeout(input: &str) -> Result<Duration, String> {
    let timeout = parse_duration(input)?;
    if timeout.is_zero() {
        return Err("a timeout must be positive".to_owned());
    }
    Ok(timeout)
}

/// A duration as the shortest string [`parse_duration`] reads back, e.g. `1h30m`, `45s`.
pub fn format_secs(secs: u64) -> String {
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (size, unit) in [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn refuses_a_number_without_unit() {
        let err = parse_duration("30").unwrap_err();
        assert!(err.contains("missing unit"), "{err}");
    }

    #[test]
    fn refuses_unknown_units_and_garbage() {
        assert!(parse_duration("5w").unwrap_err().contains("unknown unit"));
        assert!(
            parse_duration("m")
                .unwrap_err()
                .contains("expected a number")
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn ttl_must_be_positive_whole_seconds() {
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1_800)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1500ms").is_err());
    }

    #[test]
    fn format_secs_round_trips() {
        for secs in [1, 59, 60, 90, 3_600, 5_400, 86_400, 90_061] {
            let text = format_secs(secs);
            assert_eq!(
                parse_duration(&text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        assert_eq!(format_secs(5_400), "1h30m");
    }
}
