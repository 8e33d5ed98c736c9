//! Civil dates in Vietnam: a calendar date with no time and no zone, stored as `YYYY-MM-DD` so
//! that it sorts as text. Vietnam is UTC+7 with no daylight saving, whatever the tablet's time
//! zone setting says.

use std::fmt;
use std::str::FromStr;

use autosurgeon::{Hydrate, HydrateError, Reconcile, Reconciler};
use serde::{Deserialize, Serialize};
use time::{Date, Duration, Month, OffsetDateTime, UtcOffset};

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
