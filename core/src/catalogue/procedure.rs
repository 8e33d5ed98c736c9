//! Procedures of the catalogue (version 2) and the catalogue file, read in both versions.
//!
//! A procedure is reference data the province publishes: national code, name, sector, level,
//! processing time, fees, required papers, a form, whether the applicant may withdraw, the days
//! it is in force, and a version the province raises at each change. The catalogue of version 1
//! (`{"procedures":[{"code","name","processing_days","withdrawal_allowed"}],"holidays":[...]}`)
//! still reads: stores and files made before version 2 keep loading, as procedures of version 1
//! with no fee, paper or form.

use serde::{Deserialize, Serialize};

use super::calendar::{CalendarOverride, WorkingCalendar};
use super::date::CivilDate;
use super::form::FormSchema;

/// Most fees, papers a procedure lists.
pub const MAX_PROCEDURE_ITEMS: usize = 50;
/// Longest code, name or sector.
pub const MAX_PROCEDURE_TEXT: usize = 500;
/// Most working days a procedure may take (a year and a half of working days).
pub const MAX_WORKING_DAYS: u32 = 400;

/// Statutory processing time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingTime {
    /// Working days after the day of receipt (0 = the same day).
    WorkingDays(u32),
    /// Working hours after the receipt (same-day procedures: "trong ngày", "4 giờ làm việc").
    WorkingHours(u32),
}

impl ProcessingTime {
    /// Whole working days, rounding hours up (what a list by days shows).
    pub fn working_days(self) -> u32 {
        match self {
            ProcessingTime::WorkingDays(days) => days,
            ProcessingTime::WorkingHours(hours) => {
                hours.div_ceil(super::calendar::HOURS_PER_WORKING_DAY)
            }
        }
    }
}

/// Administrative level that settles the procedure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// The commune (xã, phường).
    #[default]
    Commune,
    /// The district (huyện), where it still exists.
    District,
    /// The province.
    Province,
    /// A ministry or central agency.
    Central,
}

impl Level {
    /// Name on disk and in the bindings.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Commune => "commune",
            Level::District => "district",
            Level::Province => "province",
            Level::Central => "central",
        }
    }
}

/// A fee of the procedure, in đồng.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeSpec {
    /// What it is ("Lệ phí đăng ký kết hôn").
    pub name: String,
    /// Amount in đồng.
    pub amount_vnd: u64,
}

/// A paper the applicant hands in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequiredPaper {
    /// What it is ("Tờ khai đăng ký khai sinh").
    pub name: String,
    /// Copies required.
    #[serde(default = "one_u32")]
    pub copies: u32,
    /// Whether the original must be shown.
    #[serde(default)]
    pub original: bool,
    /// `None` when mandatory; for a conditional paper, the case that requires it ("nếu người
    /// đi đăng ký là người được ủy quyền").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

impl RequiredPaper {
    /// Whether every dossier needs it.
    pub fn is_mandatory(&self) -> bool {
        self.condition.is_none()
    }
}

/// One administrative procedure of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ProcedureJson")]
pub struct Procedure {
    /// National procedure code (e.g. `1.001193`).
    pub code: String,
    /// Name ("Đăng ký khai sinh").
    pub name: String,
    /// Sector ("Hộ tịch", "Đất đai").
    pub sector: String,
    /// Level that settles it.
    pub level: Level,
    /// Statutory processing time.
    pub processing: ProcessingTime,
    /// Fees.
    pub fees: Vec<FeeSpec>,
    /// Papers to hand in.
    pub papers: Vec<RequiredPaper>,
    /// The procedure's form.
    pub form: FormSchema,
    /// Whether an applicant may withdraw once it is received.
    pub withdrawal_allowed: bool,
    /// First day in force, if limited.
    pub effective_from: Option<CivilDate>,
    /// Last day in force, if limited.
    pub effective_until: Option<CivilDate>,
    /// Version of this procedure, raised by the province at each change (1 for version-1 data).
    pub version: u64,
}

/// What a procedure reads from: version 2 fields, or version 1's `processing_days`.
#[derive(Deserialize)]
struct ProcedureJson {
    code: String,
    name: String,
    #[serde(default)]
    sector: String,
    #[serde(default)]
    level: Level,
    #[serde(default)]
    processing: Option<ProcessingTime>,
    #[serde(default)]
    processing_days: Option<u32>,
    #[serde(default)]
    fees: Vec<FeeSpec>,
    #[serde(default)]
    papers: Vec<RequiredPaper>,
    #[serde(default)]
    form: FormSchema,
    #[serde(default = "yes")]
    withdrawal_allowed: bool,
    #[serde(default)]
    effective_from: Option<CivilDate>,
    #[serde(default)]
    effective_until: Option<CivilDate>,
    #[serde(default = "one_u64")]
    version: u64,
}

impl TryFrom<ProcedureJson> for Procedure {
    type Error = String;
    fn try_from(p: ProcedureJson) -> Result<Self, String> {
        let processing = match (p.processing, p.processing_days) {
            (Some(time), _) => time,
            (None, Some(days)) => ProcessingTime::WorkingDays(days),
            (None, None) => return Err(format!("procedure {:?}: no processing time", p.code)),
        };
        Ok(Procedure {
            code: p.code,
            name: p.name,
            sector: p.sector,
            level: p.level,
            processing,
            fees: p.fees,
            papers: p.papers,
            form: p.form,
            withdrawal_allowed: p.withdrawal_allowed,
            effective_from: p.effective_from,
            effective_until: p.effective_until,
            version: p.version,
        })
    }
}

fn yes() -> bool {
    true
}
fn one_u32() -> u32 {
    1
}
fn one_u64() -> u64 {
    1
}

impl Procedure {
    /// A procedure of version 1 with this code, name and time, nothing else (tests, tools).
    pub fn new(code: &str, name: &str, processing: ProcessingTime) -> Self {
        Procedure {
            code: code.to_owned(),
            name: name.to_owned(),
            sector: String::new(),
            level: Level::Commune,
            processing,
            fees: Vec::new(),
            papers: Vec::new(),
            form: FormSchema::default(),
            withdrawal_allowed: true,
            effective_from: None,
            effective_until: None,
            version: 1,
        }
    }

    /// Whether it may be received on `day`.
    pub fn in_force_on(&self, day: CivilDate) -> bool {
        self.effective_from.is_none_or(|from| from <= day)
            && self.effective_until.is_none_or(|until| day <= until)
    }

    /// Checks what the province publishes: code, name and sector present and bounded, times and
    /// lists bounded, a valid form, a version of at least 1, dates in order.
    pub fn validate(&self) -> Result<(), String> {
        let who = &self.code;
        if self.code.trim().is_empty() {
            return Err("a procedure has no code".to_owned());
        }
        for (what, text) in [
            ("code", &self.code),
            ("name", &self.name),
            ("sector", &self.sector),
        ] {
            if text.len() > MAX_PROCEDURE_TEXT {
                return Err(format!(
                    "procedure {who}: {what} longer than {MAX_PROCEDURE_TEXT} bytes"
                ));
            }
        }
        if self.name.trim().is_empty() {
            return Err(format!("procedure {who}: no name"));
        }
        if self.processing.working_days() > MAX_WORKING_DAYS {
            return Err(format!(
                "procedure {who}: more than {MAX_WORKING_DAYS} working days"
            ));
        }
        if self.fees.len() > MAX_PROCEDURE_ITEMS || self.papers.len() > MAX_PROCEDURE_ITEMS {
            return Err(format!(
                "procedure {who}: more than {MAX_PROCEDURE_ITEMS} fees or papers"
            ));
        }
        if self.fees.iter().any(|f| f.name.trim().is_empty())
            || self.papers.iter().any(|p| p.name.trim().is_empty())
        {
            return Err(format!("procedure {who}: a fee or paper without a name"));
        }
        if self.version == 0 {
            return Err(format!("procedure {who}: versions start at 1"));
        }
        if let (Some(from), Some(until)) = (self.effective_from, self.effective_until)
            && from > until
        {
            return Err(format!("procedure {who}: in force until before it starts"));
        }
        self.form
            .validate()
            .map_err(|e| format!("procedure {who}: form: {e}"))
    }
}

/// A catalogue as a file or an operator's publication: procedures, and the calendar's
/// overrides. Version 1 files list `holidays` (days off); version 2 adds `calendar`
/// (overrides both ways); both read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueFile {
    /// The procedures.
    #[serde(default)]
    pub procedures: Vec<Procedure>,
    /// Days off (version 1 form; kept for protocol 2/3 tablets).
    #[serde(default)]
    pub holidays: Vec<CivilDate>,
    /// Overrides of the week's rule, both ways.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calendar: Vec<CalendarOverride>,
    /// The province's catalogue version this file is (a file exported by the server): a tablet
    /// that installs it asks the server only for what changed after it. `None` in a hand-made
    /// file (the tablet's first sync then brings the whole catalogue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Versions that are no longer current (replaced, or of a removed procedure) that an open
    /// dossier may pin (a file exported by the server): the tablet keeps them only to check
    /// those dossiers, never for search or intake. Publishing ignores them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<Procedure>,
}

/// Most procedures in one catalogue.
pub const MAX_PROCEDURES: usize = 20_000;
/// Most calendar overrides in one catalogue.
pub const MAX_OVERRIDES: usize = 2_000;
/// Most pinned-only (no longer current) procedure versions in one catalogue file.
pub const MAX_PINNED_VERSIONS: usize = 4 * MAX_PROCEDURES;

impl CatalogueFile {
    /// Reads a catalogue (either version), checking every procedure, unique codes and the bounds.
    pub fn parse(json: &str) -> crate::Result<Self> {
        let file: CatalogueFile = serde_json::from_str(json)
            .map_err(|e| crate::Error::invalid("catalogue", e.to_string()))?;
        file.validate()
            .map_err(|e| crate::Error::invalid("catalogue", e))?;
        Ok(file)
    }

    /// Checks the bounds, every procedure, and that each code appears once.
    pub fn validate(&self) -> Result<(), String> {
        if self.procedures.len() > MAX_PROCEDURES {
            return Err(format!("more than {MAX_PROCEDURES} procedures"));
        }
        if self.holidays.len() + self.calendar.len() > MAX_OVERRIDES {
            return Err(format!("more than {MAX_OVERRIDES} calendar days"));
        }
        let mut codes = std::collections::HashSet::new();
        for p in &self.procedures {
            p.validate()?;
            if !codes.insert(p.code.as_str()) {
                return Err(format!("procedure {} appears twice", p.code));
            }
        }
        if self.pinned.len() > MAX_PINNED_VERSIONS {
            return Err(format!(
                "more than {MAX_PINNED_VERSIONS} pinned procedure versions"
            ));
        }
        for p in &self.pinned {
            p.validate()?;
        }
        Ok(())
    }

    /// Every override: the holidays as days off, then the calendar's own.
    pub fn overrides(&self) -> Vec<CalendarOverride> {
        self.holidays
            .iter()
            .map(|&day| CalendarOverride {
                day,
                working: false,
                reason: String::new(),
            })
            .chain(self.calendar.iter().cloned())
            .collect()
    }

    /// The working calendar it sets.
    pub fn working_calendar(&self) -> WorkingCalendar {
        WorkingCalendar::from_overrides(&self.overrides())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_catalogues_still_read() {
        let v1 = r#"{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","processing_days":1},
            {"code":"2.000908","name":"Chứng thực","processing_days":0,"withdrawal_allowed":false}],
            "holidays":["2026-09-02"]}"#;
        let file = CatalogueFile::parse(v1).unwrap();
        assert_eq!(
            file.procedures[0].processing,
            ProcessingTime::WorkingDays(1)
        );
        assert_eq!(file.procedures[0].version, 1);
        assert!(file.procedures[0].withdrawal_allowed);
        assert!(!file.procedures[1].withdrawal_allowed);
        assert!(file.procedures[0].form.fields.is_empty());
        assert!(
            !file
                .working_calendar()
                .is_working_day("2026-09-02".parse().unwrap())
        );
    }

    #[test]
    fn version_2_procedures_round_trip() {
        let json = r#"{"code":"1.000894","name":"Đăng ký kết hôn","sector":"Hộ tịch","level":"commune",
            "processing":{"working_days":5},
            "fees":[{"name":"Lệ phí đăng ký kết hôn","amount_vnd":0}],
            "papers":[{"name":"Tờ khai đăng ký kết hôn","copies":1,"original":true},
                      {"name":"Giấy ủy quyền","condition":"nếu nộp thay"}],
            "form":{"fields":[{"name":"spouse","label":"Người kết hôn","type":"person","required":true}]},
            "withdrawal_allowed":true,"effective_from":"2026-01-01","version":3}"#;
        let p: Procedure = serde_json::from_str(json).unwrap();
        p.validate().unwrap();
        assert_eq!(p.papers[1].condition.as_deref(), Some("nếu nộp thay"));
        assert!(p.papers[0].is_mandatory() && !p.papers[1].is_mandatory());
        assert_eq!(p.papers[1].copies, 1);
        assert!(p.in_force_on("2026-01-01".parse().unwrap()));
        assert!(!p.in_force_on("2025-12-31".parse().unwrap()));
        let back: Procedure = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let hours: Procedure = serde_json::from_str(
            r#"{"code":"2.000908","name":"Chứng thực","processing":{"working_hours":4}}"#,
        )
        .unwrap();
        assert_eq!(hours.processing, ProcessingTime::WorkingHours(4));
        assert_eq!(hours.processing.working_days(), 1);
    }

    #[test]
    fn bad_catalogues_say_why() {
        for (bad, why) in [
            (
                r#"{"procedures":[{"code":"1","name":"x"}]}"#,
                "no processing time",
            ),
            (
                r#"{"procedures":[{"code":"","name":"x","processing_days":1}]}"#,
                "no code",
            ),
            (
                r#"{"procedures":[{"code":"1","name":"x","processing_days":1},{"code":"1","name":"y","processing_days":2}]}"#,
                "twice",
            ),
            (
                r#"{"procedures":[{"code":"1","name":"x","processing_days":100000}]}"#,
                "working days",
            ),
            (
                r#"{"procedures":[{"code":"1","name":"x","processing_days":1,"version":0}]}"#,
                "versions start",
            ),
            (
                r#"{"procedures":[{"code":"1","name":"x","processing_days":1,"effective_from":"2026-02-01","effective_until":"2026-01-01"}]}"#,
                "until before",
            ),
        ] {
            let err = CatalogueFile::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
