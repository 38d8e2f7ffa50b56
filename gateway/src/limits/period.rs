//! Fixed UTC windows (minute, day, month) that limits count in.
//!
//! Fixed windows, not sliding ones, because every node can compute the
//! same window index from the wall clock alone: that index is the Redis
//! key suffix, so nodes share a window without talking to each other, and
//! the reset time in `x-ratelimit-reset-*` is exact. The cost is the known
//! fixed-window burst (up to twice the limit across a boundary), which is
//! what OpenAI's own per-minute limits also allow.

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

/// A window length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// 60 s (requests and tokens per minute).
    Minute,
    /// A UTC calendar day.
    Day,
    /// A UTC calendar month.
    Month,
}

impl Period {
    /// Name used in config and Redis keys.
    pub fn name(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// Window index of a wall-clock instant (Unix ms).
    pub fn index(self, unix_ms: u64) -> u64 {
        match self {
            Period::Minute => unix_ms / MINUTE_MS,
            Period::Day => unix_ms / DAY_MS,
            Period::Month => {
                let (y, m, _) = civil_from_days((unix_ms / DAY_MS) as i64);
                (y as u64) * 12 + u64::from(m - 1)
            }
        }
    }

    /// Start of window `index` (Unix ms).
    pub fn start_ms(self, index: u64) -> u64 {
        match self {
            Period::Minute => index * MINUTE_MS,
            Period::Day => index * DAY_MS,
            Period::Month => {
                let y = (index / 12) as i64;
                let m = (index % 12) as u32 + 1;
                days_from_civil(y, m, 1).max(0) as u64 * DAY_MS
            }
        }
    }

    /// End of window `index` (Unix ms, exclusive).
    pub fn end_ms(self, index: u64) -> u64 {
        self.start_ms(index + 1)
    }

    /// Longest window, for Redis key expiry.
    pub fn max_len_ms(self) -> u64 {
        match self {
            Period::Minute => MINUTE_MS,
            Period::Day => DAY_MS,
            Period::Month => 31 * DAY_MS,
        }
    }
}

/// Wall clock in Unix ms.
pub fn wall_ms() -> u64 {
    crate::sys::coarse_wall_ms()
}

/// `YYYY-MM-DD` of a Unix-ms instant (UTC).
pub fn day_string(unix_ms: u64) -> String {
    let (y, m, d) = civil_from_days((unix_ms / DAY_MS) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31); Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips() {
        for z in [-1000i64, 0, 59, 365, 10_957, 19_000, 20_000, 50_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z, "{y}-{m}-{d}");
        }
        // 2026-11-25 is day 20_782.
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
        assert_eq!(day_string(20_782 * DAY_MS + 5), "2026-11-25");
    }

    #[test]
    fn month_windows_cover_the_month() {
        // 2024-02-10 (leap year): window is Feb 1 .. Mar 1.
        let t = days_from_civil(2024, 2, 10) as u64 * DAY_MS + 123;
        let i = Period::Month.index(t);
        assert_eq!(
            Period::Month.start_ms(i),
            days_from_civil(2024, 2, 1) as u64 * DAY_MS
        );
        assert_eq!(
            Period::Month.end_ms(i),
            days_from_civil(2024, 3, 1) as u64 * DAY_MS
        );
        // December rolls over to January of the next year.
        let dec = days_from_civil(2026, 12, 31) as u64 * DAY_MS;
        let j = Period::Month.index(dec);
        assert_eq!(
            Period::Month.end_ms(j),
            days_from_civil(2027, 1, 1) as u64 * DAY_MS
        );
    }

    #[test]
    fn minute_and_day_windows() {
        let t = 1_700_000_123_456;
        let i = Period::Minute.index(t);
        assert!(Period::Minute.start_ms(i) <= t && t < Period::Minute.end_ms(i));
        let d = Period::Day.index(t);
        assert_eq!(Period::Day.end_ms(d) - Period::Day.start_ms(d), DAY_MS);
    }
}
