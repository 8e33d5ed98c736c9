//! The procedure catalogue that the province distributes, and statutory due dates.
//!
//! Processing times are set by law in *working days*: Saturdays, Sundays and public holidays do
//! not count, and the day of receipt does not count either. Dates are civil dates in Vietnam
//! (UTC+7, no daylight saving), whatever the tablet's time zone setting says.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use autosurgeon::{Hydrate, HydrateError, Reconcile, Reconciler};
use serde::{Deserialize, Serialize};
use time::{Date, Duration, Month, OffsetDateTime, UtcOffset, Weekday};

use crate::{Error, Result};

/// Vietnam's offset from UTC (Asia/Ho_Chi_Minh has no daylight saving).
pub const VIETNAM_OFFSET: UtcOffset = match UtcOffset::from_hms(7, 0, 0) {
    Ok(offset) => offset,
    Err(_) => UtcOffset::UTC,
};

/// A calendar date (no time, no zone), stored as `YYYY-MM-DD` so that it sorts as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CivilDate(pub Date);

impl CivilDate {
    /// From year, month (1-12) and day.
    pub fn from_ymd(year: i32, month: u8, day: u8) -> Result<Self> {
        let month = Month::try_from(month).map_err(|e| Error::invalid("date", e.to_string()))?;
        Date::from_calendar_date(year, month, day)
            .map(CivilDate)
            .map_err(|e| Error::invalid("date", e.to_string()))
    }

    /// The civil date in Vietnam at `millis` since the Unix epoch.
    pub fn from_unix_millis(millis: i64) -> Result<Self> {
        let nanos = i128::from(millis) * 1_000_000;
        let at = OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .map_err(|e| Error::invalid("timestamp", e.to_string()))?;
        Ok(CivilDate(at.to_offset(VIETNAM_OFFSET).date()))
    }

    /// Today in Vietnam by this machine's clock.
    pub fn today() -> Self {
        CivilDate(OffsetDateTime::now_utc().to_offset(VIETNAM_OFFSET).date())
    }

    /// The date `days` calendar days later (earlier when negative), saturating at the ends.
    pub fn plus_days(self, days: i64) -> Self {
        CivilDate(self.0.checked_add(Duration::days(days)).unwrap_or(self.0))
    }
}

impl fmt::Display for CivilDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}",
            self.0.year(),
            u8::from(self.0.month()),
            self.0.day()
        )
    }
}

impl FromStr for CivilDate {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid("date", format!("{s:?} is not a YYYY-MM-DD date"));
        let mut parts = s.splitn(3, '-');
        let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return Err(bad());
        }
        let (y, m, d) = (
            y.parse().map_err(|_| bad())?,
            m.parse().map_err(|_| bad())?,
            d.parse().map_err(|_| bad())?,
        );
        CivilDate::from_ymd(y, m, d)
    }
}

impl Serialize for CivilDate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CivilDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Reconcile for CivilDate {
    type Key<'a> = autosurgeon::reconcile::NoKey;
    fn reconcile<R: Reconciler>(&self, mut reconciler: R) -> std::result::Result<(), R::Error> {
        reconciler.str(self.to_string())
    }
}

impl Hydrate for CivilDate {
    fn hydrate_string(s: &str) -> std::result::Result<Self, HydrateError> {
        s.parse()
            .map_err(|e: Error| HydrateError::unexpected("a YYYY-MM-DD date", e.to_string()))
    }
}

/// One administrative procedure of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Procedure {
    /// National procedure code (e.g. `1.001193`).
    pub code: String,
    /// Name ("Đăng ký khai sinh").
    pub name: String,
    /// Statutory processing time in working days (0 = same day).
    pub processing_days: u32,
    /// Whether an applicant may withdraw once it is received.
    #[serde(default = "default_true")]
    pub withdrawal_allowed: bool,
}

fn default_true() -> bool {
    true
}

/// Working-day arithmetic with a holiday list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkingCalendar {
    holidays: BTreeSet<CivilDate>,
}

impl WorkingCalendar {
    /// A calendar with these public holidays (weekends are always non-working).
    pub fn new(holidays: impl IntoIterator<Item = CivilDate>) -> Self {
        WorkingCalendar {
            holidays: holidays.into_iter().collect(),
        }
    }

    /// Whether the offices work on `day`.
    pub fn is_working_day(&self, day: CivilDate) -> bool {
        !matches!(day.0.weekday(), Weekday::Saturday | Weekday::Sunday)
            && !self.holidays.contains(&day)
    }

    /// The date `days` working days after `start` (the day of receipt does not count; with 0 the
    /// result is `start` itself, or the next working day when `start` is not one).
    pub fn add_working_days(&self, start: CivilDate, days: u32) -> CivilDate {
        let mut day = start;
        if days == 0 {
            // Bounded: a year cannot be all holidays, but never loop forever on bad data.
            for _ in 0..366 {
                if self.is_working_day(day) {
                    break;
                }
                day = day.plus_days(1);
            }
            return day;
        }
        let mut left = days;
        // Each working day takes at most 1 + (weekends and holidays in a row) steps; the bound
        // only guards against a holiday list that covers every day.
        for _ in 0..(u64::from(days) * 7 + 400) {
            day = day.plus_days(1);
            if self.is_working_day(day) {
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
        day
    }

    /// Working days from `from` (exclusive) up to `to` (inclusive); negative when `to` is earlier.
    pub fn working_days_between(&self, from: CivilDate, to: CivilDate) -> i64 {
        let (lo, hi, sign) = if from <= to {
            (from, to, 1)
        } else {
            (to, from, -1)
        };
        let mut count = 0;
        let mut day = lo;
        while day < hi {
            day = day.plus_days(1);
            if self.is_working_day(day) {
                count += 1;
            }
        }
        count * sign
    }

    /// The holidays, in order.
    pub fn holidays(&self) -> impl Iterator<Item = CivilDate> + '_ {
        self.holidays.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> CivilDate {
        s.parse().unwrap()
    }

    #[test]
    fn skips_weekends_and_the_receipt_day() {
        let cal = WorkingCalendar::default();
        // Friday 2026-11-20 + 1 working day = Monday 2026-11-23.
        assert_eq!(cal.add_working_days(d("2026-11-20"), 1), d("2026-11-23"));
        // Monday + 5 working days = next Monday.
        assert_eq!(cal.add_working_days(d("2026-11-23"), 5), d("2026-11-30"));
        // Received on a Saturday: counting starts Monday.
        assert_eq!(cal.add_working_days(d("2026-11-21"), 1), d("2026-11-23"));
    }

    #[test]
    fn skips_holidays() {
        // Tết 2027: 2027-02-05 .. 2027-02-11 off (Friday to Thursday).
        let tet = (5..=11).map(|day| CivilDate::from_ymd(2027, 2, day).unwrap());
        let cal = WorkingCalendar::new(tet);
        // Thursday 2027-02-04 + 1 working day = Friday 2027-02-12.
        assert_eq!(cal.add_working_days(d("2027-02-04"), 1), d("2027-02-12"));
        assert_eq!(
            cal.working_days_between(d("2027-02-04"), d("2027-02-12")),
            1
        );
        assert_eq!(
            cal.working_days_between(d("2027-02-12"), d("2027-02-04")),
            -1
        );
    }

    #[test]
    fn same_day_procedures_fall_on_a_working_day() {
        let cal = WorkingCalendar::default();
        assert_eq!(cal.add_working_days(d("2026-11-23"), 0), d("2026-11-23"));
        assert_eq!(cal.add_working_days(d("2026-11-22"), 0), d("2026-11-23"));
    }

    #[test]
    fn dates_use_vietnam_time() {
        // 2026-11-22T20:00:00Z is already 2026-11-23 03:00 in Hà Nội.
        let ms = 1_795_377_600_000;
        assert_eq!(CivilDate::from_unix_millis(ms).unwrap(), d("2026-11-23"));
    }

    #[test]
    fn bad_dates_are_refused() {
        for bad in ["2026-13-01", "2026-02-30", "26-1-1", "tomorrow", ""] {
            assert!(bad.parse::<CivilDate>().is_err(), "{bad}");
        }
    }
}
