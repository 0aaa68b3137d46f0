//! Durations as people type them: the one parser of each kind `left` accepts.
//!
//! - [`parse_retention`]: whole units, for `left gc --keep-within` (`30d`, `12h`, `90m`, `2w`,
//!   `1y`, or several: `1d12h`); `m` is minutes.
//! - [`parse_precise`]: one decimal number and a sub-second unit, for `LEFT_IMPAIR` (`5ms`,
//!   `200us`, `1.5s`, `10ns`, `0`); `ms` is milliseconds, and there is no bare `m`.
//!
//! The two grammars differ on purpose (a retention period is days, an impairment delay is
//! milliseconds) and each keeps exactly what its caller accepted before they met here. Pure: no
//! clock, no IO.

use std::time::Duration;

/// Parses a retention duration: a number and a unit (s, m, h, d, w, y), or several such
/// (`1d12h`). The error is the one-line message `left gc` prints.
pub fn parse_retention(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 30d, 12h, 90m, 2w or 1y");
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            'y' => 365 * 86_400,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(bad)?;
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// Parses `5ms`, `200us` (or `µs`), `1s`, `10ns`, `0`: a decimal number and one unit, under
/// 1e6 seconds.
pub fn parse_precise(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    let secs = number * scale;
    (0.0..1e6)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_durations_parse() {
        assert_eq!(parse_retention("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_retention("1d12h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_retention("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_retention("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_retention("1y"), Ok(Duration::from_secs(365 * 86_400)));
        assert_eq!(parse_retention(" 45s "), Ok(Duration::from_secs(45)));
        for bad in ["", "d", "30", "3x", "1.5d", "5ms", "99999999999999999999y"] {
            assert!(parse_retention(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_retention("3x").unwrap_err(),
            "\"3x\" is not a duration like 30d, 12h, 90m, 2w or 1y"
        );
    }

    #[test]
    fn precise_durations_parse() {
        assert_eq!(parse_precise("0"), Some(Duration::ZERO));
        assert_eq!(parse_precise("5ms"), Some(Duration::from_millis(5)));
        assert_eq!(parse_precise("200us"), Some(Duration::from_micros(200)));
        assert_eq!(parse_precise("200µs"), Some(Duration::from_micros(200)));
        assert_eq!(parse_precise("10ns"), Some(Duration::from_nanos(10)));
        assert_eq!(parse_precise(" 1.5s "), Some(Duration::from_millis(1500)));
        for bad in ["", "5", "5m", "1d", "ms", "1e3ms", "2000000s", "-1ms"] {
            assert_eq!(parse_precise(bad), None, "{bad}");
        }
    }
}
