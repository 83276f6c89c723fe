//! Durations on the command line, one way for every flag: a number with
//! units (`250ms`, `5s`, `1.5s`, `2m`, `1h`, as humantime reads them), or
//! a bare number of seconds.

use std::time::Duration;

/// The units a user is told about.
const UNITS: &str = "a number of seconds or one with units: 250ms, 5s, 2m";

/// Parses a duration flag's value.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("'{s}' is not a duration: {UNITS}"));
    }
    // humantime has no fractions ("1.5s"): they are read as seconds times
    // a factor here.
    if let Some((num, unit)) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| t.split_at(i))
        .filter(|(n, _)| n.contains('.'))
    {
        let factor = match unit {
            "ns" => 1e-9,
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("'{s}' is not a duration: {UNITS}")),
        };
        return num
            .parse::<f64>()
            .ok()
            .and_then(|v| Duration::try_from_secs_f64(v * factor).ok())
            .ok_or_else(|| format!("'{s}' is not a duration: {UNITS}"));
    }
    humantime::parse_duration(t).map_err(|_| format!("'{s}' is not a duration: {UNITS}"))
}

/// Parses a duration that must lie in `min..=max`.
pub fn parse_in(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse(s)?;
    if d < min || d > max {
        return Err(format!(
            "'{s}' is out of range ({} to {})",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// A time between readings: 10 ms to a day.
pub fn interval(s: &str) -> Result<Duration, String> {
    parse_in(s, Duration::from_millis(10), Duration::from_secs(86_400))
}

/// A positive duration up to a day.
pub fn positive(s: &str) -> Result<Duration, String> {
    parse_in(s, Duration::from_nanos(1), Duration::from_secs(86_400))
}

/// A duration from zero to a day.
pub fn up_to_a_day(s: &str) -> Result<Duration, String> {
    parse_in(s, Duration::ZERO, Duration::from_secs(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("250"), Ok(Duration::from_secs(250)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        for bad in ["soon", "-1s", "1e99", "NaN", "", "5 parsecs", "1.5x"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("250ms, 5s, 2m"), "{bad}: {e}");
        }
    }

    #[test]
    fn ranges_are_checked() {
        assert_eq!(interval("500ms"), Ok(Duration::from_millis(500)));
        assert!(interval("1ms").is_err());
        assert!(interval("25h").is_err());
        assert!(positive("0").is_err());
        assert_eq!(up_to_a_day("0"), Ok(Duration::ZERO));
        assert!(interval("2d").is_err());
    }
}
