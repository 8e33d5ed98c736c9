//! Statutory time: working days and working hours with a calendar of overrides.
//!
//! Processing times are set by law in *working days* (or working hours for same-day
//! procedures). Saturdays and Sundays are off unless the calendar makes one a working day (a
//! compensatory working Saturday that pays back a bridge day), weekdays work unless the
//! calendar gives them off (Tết, 30/4-1/5, 2/9...). The day of receipt does not count. Office
//! hours are 07:30-11:30 and 13:00-17:00 Vietnam time (8 working hours a day).
//!
//! Every loop here is bounded by the requested count plus a fixed margin, never by the data: a
//! calendar that made every day off cannot make a due date loop forever.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::Weekday;

use super::date::{CivilDate, VIETNAM_OFFSET};
use super::procedure::ProcessingTime;

/// One override of the week's rule, as the province publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarOverride {
    /// The day.
    pub day: CivilDate,
    /// Whether the offices work that day (`true` on a compensatory Saturday, `false` on a
    /// holiday).
    pub working: bool,
    /// Why ("Tết Nguyên đán", "Làm bù cho ngày 2/1").
    #[serde(default)]
    pub reason: String,
}

/// Office hours, minutes after midnight in Vietnam: morning and afternoon.
const OFFICE_HOURS: [(i64, i64); 2] = [(7 * 60 + 30, 11 * 60 + 30), (13 * 60, 17 * 60)];
/// Working hours in one working day.
pub const HOURS_PER_WORKING_DAY: u32 = 8;
const MINUTE_MS: i64 = 60_000;
const DAY_MINUTES: i64 = 24 * 60;
/// Most calendar days a span of working time is counted over (ten years and more): the bound
/// of [`WorkingCalendar::working_minutes_between`] whatever times it is given.
pub const MAX_SPAN_DAYS: u32 = 4000;

/// Working-day arithmetic with days off and compensatory working days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkingCalendar {
    days_off: BTreeSet<CivilDate>,
    working_days: BTreeSet<CivilDate>,
}

impl WorkingCalendar {
    /// A calendar with these public holidays (weekends are non-working).
    pub fn new(holidays: impl IntoIterator<Item = CivilDate>) -> Self {
        WorkingCalendar {
            days_off: holidays.into_iter().collect(),
            working_days: BTreeSet::new(),
        }
    }

    /// A calendar from overrides of the week's rule, both ways. A day listed both ways works
    /// (the later decision, a compensatory day, wins over a general holiday list).
    pub fn from_overrides<'a>(overrides: impl IntoIterator<Item = &'a CalendarOverride>) -> Self {
        let mut calendar = WorkingCalendar::default();
        for o in overrides {
            if o.working {
                calendar.working_days.insert(o.day);
            } else {
                calendar.days_off.insert(o.day);
            }
        }
        calendar
            .days_off
            .retain(|d| !calendar.working_days.contains(d));
        calendar
    }

    /// Every override, in day order.
    pub fn overrides(&self) -> Vec<CalendarOverride> {
        let mut all: Vec<CalendarOverride> = self
            .days_off
            .iter()
            .map(|&day| CalendarOverride {
                day,
                working: false,
                reason: String::new(),
            })
            .chain(self.working_days.iter().map(|&day| CalendarOverride {
                day,
                working: true,
                reason: String::new(),
            }))
            .collect();
        all.sort_by_key(|o| o.day);
        all
    }

    /// Whether the offices work on `day`.
    pub fn is_working_day(&self, day: CivilDate) -> bool {
        if self.working_days.contains(&day) {
            return true;
        }
        !matches!(day.0.weekday(), Weekday::Saturday | Weekday::Sunday)
            && !self.days_off.contains(&day)
    }

    /// The first working day on or after `day` (bounded: at most a year ahead).
    pub fn next_working_day(&self, day: CivilDate) -> CivilDate {
        let mut day = day;
        for _ in 0..366 {
            if self.is_working_day(day) {
                break;
            }
            day = day.plus_days(1);
        }
        day
    }

    /// The date `days` working days after `start` (the day of receipt does not count; with 0 the
    /// result is `start` itself, or the next working day when `start` is not one).
    pub fn add_working_days(&self, start: CivilDate, days: u32) -> CivilDate {
        if days == 0 {
            return self.next_working_day(start);
        }
        let mut day = start;
        let mut left = days;
        // Each working day takes at most 1 + (days off in a row) steps; the bound only guards
        // against a list that covers every day.
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
    /// Bounded by the span (callers pass dates of one dossier, at most years apart).
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

    /// The instant (ms since the epoch) `hours` working hours after `start_ms`, counting office
    /// hours of working days only. A start outside office hours counts from the next opening.
    pub fn add_working_hours(&self, start_ms: i64, hours: u32) -> i64 {
        let mut left = i64::from(hours) * 60;
        let (mut day, mut minute) = split(start_ms);
        // Each step consumes one office period or skips one day; bounded like the days.
        for _ in 0..(u64::from(hours) * 14 + 800) {
            if self.is_working_day(day) {
                for (open, close) in OFFICE_HOURS {
                    if minute >= close {
                        continue;
                    }
                    let from = minute.max(open);
                    let available = close - from;
                    if left <= available {
                        return join(day, from + left);
                    }
                    left -= available;
                    minute = close;
                }
            }
            day = day.plus_days(1);
            minute = 0;
        }
        join(day, 0)
    }

    /// Working minutes (office hours of working days) from `from_ms` to `to_ms`; 0 when `to_ms`
    /// is not later. Bounded by the span in days (callers pass times of one dossier).
    pub fn working_minutes_between(&self, from_ms: i64, to_ms: i64) -> u64 {
        if to_ms <= from_ms {
            return 0;
        }
        let (from_day, from_minute) = split(from_ms);
        let (to_day, to_minute) = split(to_ms);
        let mut total: i64 = 0;
        let mut day = from_day;
        // One step per calendar day of the span, at most [`MAX_SPAN_DAYS`] whatever the times.
        for _ in 0..MAX_SPAN_DAYS {
            if day > to_day {
                break;
            }
            if self.is_working_day(day) {
                let lo = if day == from_day { from_minute } else { 0 };
                let hi = if day == to_day {
                    to_minute
                } else {
                    DAY_MINUTES
                };
                for (open, close) in OFFICE_HOURS {
                    let (a, b) = (lo.max(open), hi.min(close));
                    if b > a {
                        total += b - a;
                    }
                }
            }
            day = day.plus_days(1);
        }
        u64::try_from(total).unwrap_or(0)
    }

    /// The instant `minutes` working minutes after `start_ms` (see
    /// [`WorkingCalendar::add_working_hours`]); `start_ms` itself for 0.
    pub fn add_working_minutes(&self, start_ms: i64, minutes: u64) -> i64 {
        if minutes == 0 {
            return start_ms;
        }
        let mut left = i64::try_from(minutes).unwrap_or(i64::MAX);
        let (mut day, mut minute) = split(start_ms);
        let bound = minutes / 60 * 14 + 800;
        for _ in 0..bound {
            if self.is_working_day(day) {
                for (open, close) in OFFICE_HOURS {
                    if minute >= close {
                        continue;
                    }
                    let from = minute.max(open);
                    let available = close - from;
                    if left <= available {
                        return join(day, from + left);
                    }
                    left -= available;
                    minute = close;
                }
            }
            day = day.plus_days(1);
            minute = 0;
        }
        join(day, 0)
    }

    /// When a dossier received at `received_ms` is due: the civil due date, and for an
    /// hours-based procedure the due instant too.
    pub fn deadline(&self, received_ms: i64, time: ProcessingTime) -> Deadline {
        match time {
            ProcessingTime::WorkingDays(days) => {
                let (received, _) = split(received_ms);
                Deadline {
                    date: self.add_working_days(received, days),
                    at_ms: None,
                }
            }
            ProcessingTime::WorkingHours(hours) => {
                let at = self.add_working_hours(received_ms, hours);
                Deadline {
                    date: split(at).0,
                    at_ms: Some(at),
                }
            }
        }
    }

    /// The days off (holidays), in order.
    pub fn holidays(&self) -> impl Iterator<Item = CivilDate> + '_ {
        self.days_off.iter().copied()
    }

    /// The compensatory working days (weekend days that work), in order.
    pub fn compensatory_working_days(&self) -> impl Iterator<Item = CivilDate> + '_ {
        self.working_days.iter().copied()
    }
}

/// A statutory deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// The civil date it falls on.
    pub date: CivilDate,
    /// The instant, for hours-based procedures (ms since the epoch).
    pub at_ms: Option<i64>,
}

/// A timestamp as a Vietnam civil date and minutes after its midnight.
fn split(ms: i64) -> (CivilDate, i64) {
    let local = ms.saturating_add(i64::from(VIETNAM_OFFSET.whole_seconds()) * 1000);
    let days = local.div_euclid(DAY_MINUTES * MINUTE_MS);
    let minute = local.rem_euclid(DAY_MINUTES * MINUTE_MS) / MINUTE_MS;
    let epoch = CivilDate(
        time::Date::from_calendar_date(1970, time::Month::January, 1).unwrap_or(time::Date::MIN),
    );
    (epoch.plus_days(days), minute)
}

/// The instant of `minute` after midnight of `day` in Vietnam.
fn join(day: CivilDate, minute: i64) -> i64 {
    let days = i64::from(day.0.to_julian_day()) - 2_440_588; // the Julian day of 1970-01-01
    (days * DAY_MINUTES + minute) * MINUTE_MS - i64::from(VIETNAM_OFFSET.whole_seconds()) * 1000
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
