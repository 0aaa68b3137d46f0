//! Calendar dates from the clock: [`utc`] turns ns since the Unix epoch into a UTC date and time,
//! by [`civil_from_days`] (Howard Hinnant's algorithm, proleptic Gregorian, any `i64` day). What
//! it is not: no time zones, no leap seconds, no parsing. Conflict names ([`crate::conflict_name`])
//! and the CLI's dates use it, so both print the same calendar.

/// UTC calendar date and time of `ns` since the epoch: (year, month, day, hour, minute, second).
pub fn utc(ns: i64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = ns.div_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// The (year, month 1-12, day 1-31) of `days` since 1970-01-01 (Howard Hinnant's
/// civil_from_days).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0));
        // 2024-02-29 12:34:56 UTC
        assert_eq!(
            utc(1_709_210_096 * 1_000_000_000 + 5),
            (2024, 2, 29, 12, 34, 56)
        );
        assert_eq!(utc(-1), (1969, 12, 31, 23, 59, 59));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // 2000-02-29 (a leap day of a century divisible by 400) and the day after.
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        // 1900 is not a leap year: 1900-02-28 is followed by 1900-03-01.
        assert_eq!(civil_from_days(-25_509), (1900, 2, 28));
        assert_eq!(civil_from_days(-25_508), (1900, 3, 1));
    }

    #[test]
    fn consecutive_days_give_consecutive_dates() {
        // Consecutive days give consecutive dates: the day advances by one, or wraps to 1 with
        // the month (and the year) moving on.
        let mut prev = civil_from_days(-146_097);
        for days in -146_096..146_097 {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = prev;
            let next_day = (y, m, d) == (py, pm, pd + 1);
            let next_month = d == 1 && ((y, m) == (py, pm + 1) || (y, m, pm) == (py + 1, 1, 12));
            assert!(next_day || next_month, "{prev:?} then {:?}", (y, m, d));
            prev = (y, m, d);
        }
        assert_eq!(utc(86_400 * 1_000_000_000 - 1), (1970, 1, 1, 23, 59, 59));
    }
}
