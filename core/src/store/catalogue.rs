//! The catalogue on the device: procedures (current version, and every version a dossier may
//! have pinned), the working calendar, folded-name search and the list by sector.
//!
//! Contract: installing a catalogue (a file before the first sync, or what a sync brings) is
//! one transaction: it lands whole or not at all, and a catalogue that does not parse or breaks
//! a bound changes nothing. A version of a procedure once seen is never forgotten (a removal
//! takes the procedure out of the list, not out of `procedure_versions`), so an open dossier is
//! always checked against the rules it was received under. Search folds names as record search
//! does ([`crate::search::fold`]): "khai sinh" finds "Đăng ký khai sinh"; every query reads at
//! most [`MAX_SEARCH_RESULTS`] rows.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::DeviceStore;
use crate::catalogue::delta::{CalendarUpdate, CatalogueDelta, CatalogueEntry, CatalogueHeld};
use crate::catalogue::procedure::MAX_OVERRIDES;
use crate::catalogue::{
    CalendarOverride, CatalogueFile, CivilDate, Procedure, ProcessingTime, WorkingCalendar,
};
use crate::integrity::{ProcedureLookup, ProcedureSource};
use crate::record::{Fee, NewApplication, ReceivedDocument};
use crate::search::fold;
use crate::{Error, Result};

const META_CATALOGUE_VERSION: &str = "catalogue_version";
/// Where the device stopped in a paged delta (JSON of a `CataloguePosition`).
const META_CATALOGUE_RESUME: &str = "catalogue_resume";
const META_CALENDAR_VERSION: &str = "calendar_version";
/// Most procedures one search or sector list returns.
pub const MAX_SEARCH_RESULTS: u32 = 200;

/// A procedure as lists show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcedureSummary {
    /// National code.
    pub code: String,
    /// Name.
    pub name: String,
    /// Sector.
    pub sector: String,
    /// Version in force on this device.
    pub version: u64,
}

impl DeviceStore {
    /// Adds or replaces procedures of the catalogue (reference data from the province).
    pub fn import_catalogue(&mut self, procedures: &[Procedure]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for p in procedures {
            p.validate().map_err(|e| Error::invalid("procedure", e))?;
            upsert_procedure(&tx, p)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces the public holiday list (days off); compensatory working days stay.
    pub fn set_holidays(&mut self, days: &[CivilDate]) -> Result<()> {
        let overrides: Vec<CalendarOverride> = days
            .iter()
            .map(|&day| CalendarOverride {
                day,
                working: false,
                reason: String::new(),
            })
            .chain(
                self.calendar
                    .compensatory_working_days()
                    .map(|day| CalendarOverride {
                        day,
                        working: true,
                        reason: String::new(),
                    }),
            )
            .collect();
        self.set_calendar(&overrides)
    }

    /// Replaces the calendar's overrides, both ways.
    pub fn set_calendar(&mut self, overrides: &[CalendarOverride]) -> Result<()> {
        let tx = self.conn.transaction()?;
        write_calendar(&tx, overrides)?;
        tx.commit()?;
        self.calendar = WorkingCalendar::from_overrides(overrides);
        self.recompute_deadlines()?;
        Ok(())
    }

    /// The current version of a procedure of the catalogue.
    pub fn procedure(&self, code: &str) -> Result<Procedure> {
        self.conn
            .query_row(
                "SELECT code, name, processing_days, withdrawal_allowed, body FROM procedures
                 WHERE code = ?1",
                [code],
                read_procedure_row,
            )
            .optional()?
            .ok_or_else(|| Error::UnknownProcedure(code.to_owned()))?
    }

    /// Version `version` of a procedure, as this device received it (the current one, or one a
    /// later catalogue replaced or removed); `None` when this device never had it.
    pub fn procedure_at(&self, code: &str, version: u64) -> Result<Option<Procedure>> {
        let version_sql = i64::try_from(version).unwrap_or(i64::MAX);
        let body: Option<String> = self
            .conn
            .prepare_cached("SELECT body FROM procedure_versions WHERE code = ?1 AND version = ?2")?
            .query_row(params![code, version_sql], |row| row.get(0))
            .optional()?;
        match body {
            Some(body) => Ok(Some(parse_body(&body)?)),
            // A version 1 row written before version 2 kept no copy: it is the current one.
            None => match self.procedure(code) {
                Ok(p) if p.version == version => Ok(Some(p)),
                Ok(_) | Err(Error::UnknownProcedure(_)) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    pub(super) fn has_versions_of(&self, code: &str) -> bool {
        self.conn
            .query_row(
                "SELECT 1 FROM procedure_versions WHERE code = ?1 LIMIT 1",
                [code],
                |_| Ok(()),
            )
            .optional()
            .ok()
            .flatten()
            .is_some()
    }

    /// A new application for `code` with the catalogue's papers (mandatory ones, with the
    /// copies and originals it asks) and fees (unpaid) filled in: the intake checklist the
    /// officer then edits for this dossier.
    pub fn prefilled_application(&self, commune: &str, code: &str) -> Result<NewApplication> {
        let procedure = self.procedure(code)?;
        Ok(NewApplication {
            commune_code: commune.to_owned(),
            procedure_code: procedure.code.clone(),
            documents: procedure
                .papers
                .iter()
                .filter(|p| p.is_mandatory())
                .map(|p| ReceivedDocument {
                    name: p.name.clone(),
                    copies: p.copies,
                    original: p.original,
                })
                .collect(),
            fees: procedure
                .fees
                .iter()
                .map(|f| Fee {
                    name: f.name.clone(),
                    amount_vnd: f.amount_vnd,
                    paid: false,
                })
                .collect(),
            ..NewApplication::default()
        })
    }

    /// The working-day calendar in force.
    pub fn calendar(&self) -> &WorkingCalendar {
        &self.calendar
    }

    /// Version of the procedure catalogue this device holds (0 = none from the province yet).
    pub fn catalogue_version(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [META_CATALOGUE_VERSION],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .map_or(0, |v| u64::try_from(v).unwrap_or(0)))
    }

    /// Installs the province's reference data whole (`{"procedures":[...],"holidays":[...],
    /// "calendar":[...]}`, version 1 or 2) as catalogue `version`: procedures it lists are added
    /// or replaced, the calendar replaced. One transaction; a bad catalogue changes nothing.
    pub fn apply_catalogue(&mut self, version: u64, json: &str) -> Result<()> {
        let file = CatalogueFile::parse(json)?;
        self.install(&file, Some(version))
    }

    /// Installs a catalogue file before the first sync (`communesync device catalogue import`,
    /// the bindings): procedures and calendar, without claiming a province catalogue version,
    /// so the first sync still brings what changed since. Returns how many procedures it holds.
    ///
    /// A file exported by the server carries its catalogue version: the tablet then holds that
    /// version (catalogue and calendar), and its first sync brings only what changed after it.
    /// A file older than the version the tablet holds is refused (it would take procedures
    /// back).
    pub fn install_catalogue_file(&mut self, json: &str) -> Result<usize> {
        let file = CatalogueFile::parse(json)?;
        if let Some(version) = file.version {
            let held = self.catalogue_version()?;
            if version < held {
                return Err(Error::invalid(
                    "catalogue",
                    format!("file version {version} is older than the version held ({held})"),
                ));
            }
        }
        self.install(&file, file.version)?;
        Ok(file.procedures.len())
    }

    /// What this device holds of the catalogue, as a sync request says it (tag 5).
    pub fn catalogue_held(&self) -> Result<CatalogueHeld> {
        let resume = self
            .meta_text(META_CATALOGUE_RESUME)?
            .and_then(|text| serde_json::from_str(&text).ok());
        Ok(CatalogueHeld {
            version: self.catalogue_version()?,
            resume,
            calendar_version: self.meta_number(META_CALENDAR_VERSION)?,
        })
    }

    /// Installs one page of a catalogue delta from the server, in one transaction: procedures
    /// added or given a new version (each checked as a file's), removals (the procedure leaves
    /// the list; its versions stay for the dossiers pinning them), pinned-only versions (kept to
    /// check the dossiers pinning them, never listed nor offered for intake), then the position (the
    /// catalogue version with the last page). A page with a bad entry changes nothing.
    /// Returns how many entries it installed.
    pub fn apply_catalogue_delta(&mut self, delta: &CatalogueDelta) -> Result<usize> {
        let mut parsed = Vec::new();
        for entry in &delta.entries {
            if let CatalogueEntry::Put(json) | CatalogueEntry::Pinned(json) = entry {
                let p = parse_body(json)?;
                p.validate().map_err(|e| Error::invalid("catalogue", e))?;
                parsed.push(p);
            }
        }
        let tx = self.conn.transaction()?;
        let mut parsed = parsed.iter();
        for entry in &delta.entries {
            match entry {
                CatalogueEntry::Put(_) => {
                    if let Some(p) = parsed.next() {
                        upsert_procedure(&tx, p)?;
                    }
                }
                CatalogueEntry::Pinned(_) => {
                    if let Some(p) = parsed.next() {
                        keep_pinned_version(&tx, p)?;
                    }
                }
                CatalogueEntry::Removed(code) => {
                    tx.prepare_cached("DELETE FROM procedures WHERE code = ?1")?
                        .execute([code])?;
                }
            }
        }
        match &delta.more {
            Some(position) => {
                let text =
                    serde_json::to_string(position).map_err(|e| Error::Document(e.to_string()))?;
                set_meta(&tx, META_CATALOGUE_RESUME, &text)?;
            }
            None => {
                tx.execute("DELETE FROM meta WHERE key = ?1", [META_CATALOGUE_RESUME])?;
                set_catalogue_version(&tx, delta.version)?;
            }
        }
        tx.commit()?;
        Ok(delta.entries.len())
    }

    /// Replaces the working calendar by the province's (tag 6) and holds its version.
    pub fn apply_calendar_update(&mut self, update: &CalendarUpdate) -> Result<()> {
        if update.overrides.len() > MAX_OVERRIDES {
            return Err(Error::invalid(
                "calendar",
                format!("more than {MAX_OVERRIDES} days"),
            ));
        }
        let tx = self.conn.transaction()?;
        write_calendar(&tx, &update.overrides)?;
        set_meta_number(&tx, META_CALENDAR_VERSION, update.version)?;
        tx.commit()?;
        self.calendar = WorkingCalendar::from_overrides(&update.overrides);
        Ok(())
    }

    fn meta_text(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get::<_, String>(0)
            })
            .optional()?)
    }

    fn meta_number(&self, key: &str) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get::<_, i64>(0)
            })
            .optional()?
            .map_or(0, |v| u64::try_from(v).unwrap_or(0)))
    }

    fn install(&mut self, file: &CatalogueFile, version: Option<u64>) -> Result<()> {
        let overrides = file.overrides();
        let tx = self.conn.transaction()?;
        for p in &file.procedures {
            upsert_procedure(&tx, p)?;
        }
        for p in &file.pinned {
            keep_pinned_version(&tx, p)?;
        }
        write_calendar(&tx, &overrides)?;
        if let Some(version) = version {
            set_catalogue_version(&tx, version)?;
            // A whole catalogue: no page of an older delta is pending, and the calendar is
            // this version's.
            tx.execute("DELETE FROM meta WHERE key = ?1", [META_CATALOGUE_RESUME])?;
            set_meta_number(&tx, META_CALENDAR_VERSION, version)?;
        }
        tx.commit()?;
        let calendar = WorkingCalendar::from_overrides(&overrides);
        if calendar != self.calendar {
            self.calendar = calendar;
            // Open dossiers' effective due dates follow the new calendar.
            self.recompute_deadlines()?;
        }
        Ok(())
    }

    /// Procedures whose folded name contains every word of `query` (or whose code starts with
    /// it), names that start with the query first, then by name; at most `limit`
    /// (≤ [`MAX_SEARCH_RESULTS`]).
    pub fn search_procedures(&self, query: &str, limit: u32) -> Result<Vec<ProcedureSummary>> {
        let folded = fold(query);
        let words: Vec<&str> = folded
            .split(|c: char| !c.is_alphanumeric() && c != '.')
            .filter(|w| !w.is_empty())
            .take(8)
            .collect();
        if words.is_empty() {
            return Ok(Vec::new());
        }
        let limit = limit.min(MAX_SEARCH_RESULTS);
        let mut sql = String::from(
            "SELECT code, name, sector, version FROM procedures WHERE (code LIKE ?1 ESCAPE '\\' OR (",
        );
        let mut args: Vec<String> = vec![format!("{}%", escape_like(words.join(" ").trim()))];
        for (i, word) in words.iter().enumerate() {
            if i > 0 {
                sql.push_str(" AND ");
            }
            sql.push_str(&format!("name_folded LIKE ?{} ESCAPE '\\'", i + 2));
            args.push(format!("%{}%", escape_like(word)));
        }
        let starts = args.len() + 1;
        let lim = args.len() + 2;
        sql.push_str(&format!(
            "))
             ORDER BY (name_folded LIKE ?{starts} ESCAPE '\\') DESC, name_folded, code LIMIT ?{lim}"
        ));
        args.push(format!("{}%", escape_like(&folded)));
        args.push(limit.to_string());
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), summary_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The procedures of `sector` in Vietnamese order of their names; at most `limit`
    /// (≤ [`MAX_SEARCH_RESULTS`]) after the procedure `after_code` (paging: the last code of
    /// the previous page).
    pub fn procedures_by_sector(
        &self,
        sector: &str,
        after_code: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ProcedureSummary>> {
        // The key of the last procedure of the previous page (from the start when it is gone).
        let after: (String, String) = match after_code {
            Some(code) => self
                .conn
                .query_row(
                    "SELECT name_folded, code FROM procedures WHERE code = ?1",
                    [code],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?
                .unwrap_or_default(),
            None => Default::default(),
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT code, name, sector, version FROM procedures
             WHERE sector = ?1 AND (name_folded, code) > (?2, ?3)
             ORDER BY name_folded, code LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![sector, after.0, after.1, limit.min(MAX_SEARCH_RESULTS)],
            summary_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The sectors of the catalogue with how many procedures each has, in Vietnamese order.
    pub fn procedure_sectors(&self) -> Result<Vec<(String, u64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT sector, COUNT(*) FROM procedures GROUP BY sector ORDER BY sector",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get(0)?,
                u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
            ))
        })?;
        let mut sectors = rows.collect::<rusqlite::Result<Vec<(String, u64)>>>()?;
        // Vietnamese order (Đ with D), not byte order.
        sectors.sort_by_cached_key(|(sector, _)| (fold(sector), sector.clone()));
        Ok(sectors)
    }

    /// How many procedures the catalogue lists.
    pub fn procedure_count(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM procedures", [], |row| row.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

fn summary_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ProcedureSummary> {
    Ok(ProcedureSummary {
        code: row.get(0)?,
        name: row.get(1)?,
        sector: row.get(2)?,
        version: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
    })
}

fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn parse_body(body: &str) -> Result<Procedure> {
    serde_json::from_str(body).map_err(|e| Error::invalid("procedure", e.to_string()))
}

/// A procedure row: its body when version 2 wrote one, else the version 1 columns.
fn read_procedure_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Procedure>> {
    let body: Option<String> = row.get(4)?;
    if let Some(body) = body {
        return Ok(parse_body(&body));
    }
    let code: String = row.get(0)?;
    let name: String = row.get(1)?;
    let mut p = Procedure::new(&code, &name, ProcessingTime::WorkingDays(row.get(2)?));
    p.withdrawal_allowed = row.get(3)?;
    Ok(Ok(p))
}

/// Writes the current version of `p` and keeps a copy of that version.
pub(super) fn upsert_procedure(tx: &Transaction<'_>, p: &Procedure) -> Result<()> {
    let body = serde_json::to_string(p).map_err(|e| Error::Document(e.to_string()))?;
    let version = i64::try_from(p.version).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO procedures
            (code, name, processing_days, withdrawal_allowed, version, sector, name_folded, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        p.code,
        p.name,
        p.processing.working_days(),
        p.withdrawal_allowed,
        version,
        p.sector,
        fold(&p.name),
        body
    ])?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO procedure_versions(code, version, body) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![p.code, version, body])?;
    Ok(())
}

/// Keeps a version that is not the current one, for the dossiers pinning it: only among the
/// versions (never in `procedures`, which search and intake read); a version already held stays
/// as it is (a published version never changes).
fn keep_pinned_version(tx: &Transaction<'_>, p: &Procedure) -> Result<()> {
    let body = serde_json::to_string(p).map_err(|e| Error::Document(e.to_string()))?;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO procedure_versions(code, version, body) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![
        p.code,
        i64::try_from(p.version).unwrap_or(i64::MAX),
        body
    ])?;
    Ok(())
}

pub(super) fn set_catalogue_version(tx: &Transaction<'_>, version: u64) -> Result<()> {
    set_meta_number(tx, META_CATALOGUE_VERSION, version)
}

fn set_meta_number(tx: &Transaction<'_>, key: &str, value: u64) -> Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
        params![key, i64::try_from(value).unwrap_or(i64::MAX)],
    )?;
    Ok(())
}

fn set_meta(tx: &Transaction<'_>, key: &str, value: &str) -> Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
        params![key, value],
    )?;
    Ok(())
}

pub(super) fn write_calendar(tx: &Transaction<'_>, overrides: &[CalendarOverride]) -> Result<()> {
    tx.execute("DELETE FROM holidays", [])?;
    tx.execute("DELETE FROM compensatory_days", [])?;
    for o in overrides {
        let table = if o.working {
            "INSERT OR IGNORE INTO compensatory_days(day) VALUES (?1)"
        } else {
            "INSERT OR IGNORE INTO holidays(day) VALUES (?1)"
        };
        tx.prepare_cached(table)?.execute([o.day.to_string()])?;
    }
    Ok(())
}

/// The calendar on disk.
pub(super) fn load_calendar(conn: &Connection) -> Result<WorkingCalendar> {
    let mut overrides = Vec::new();
    for (sql, working) in [
        ("SELECT day FROM holidays ORDER BY day", false),
        ("SELECT day FROM compensatory_days ORDER BY day", true),
    ] {
        let mut stmt = conn.prepare(sql)?;
        let days = stmt
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for day in days {
            overrides.push(CalendarOverride {
                day: day.parse()?,
                working,
                reason: String::new(),
            });
        }
    }
    Ok(WorkingCalendar::from_overrides(&overrides))
}

/// Folds the names of procedures written before version 2 (the migration cannot fold in SQL).
pub(super) fn fold_legacy_names(conn: &Connection) -> Result<()> {
    let mut stmt = conn.prepare("SELECT code, name FROM procedures WHERE name_folded = ''")?;
    let rows = stmt
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (code, name) in rows {
        conn.execute(
            "UPDATE procedures SET name_folded = ?2 WHERE code = ?1",
            params![code, fold(&name)],
        )?;
    }
    Ok(())
}

/// The device's catalogue, for the form rule.
impl ProcedureSource for DeviceStore {
    fn lookup(&self, code: &str, version: u64) -> ProcedureLookup {
        match self.procedure_at(code, version) {
            Ok(Some(procedure)) => ProcedureLookup::Known(Arc::new(procedure)),
            _ if self.procedure(code).is_ok() || self.has_versions_of(code) => {
                ProcedureLookup::UnknownVersion
            }
            _ => ProcedureLookup::UnknownCode,
        }
    }

    fn calendar(&self) -> Option<&WorkingCalendar> {
        Some(&self.calendar)
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::catalogue::{FormValue, PersonValue};
    use crate::record::Applicant;
    use crate::store::{StoreConfig, schema};

    const COMMUNE: &str = "DB-MUONGPHANG";

    fn catalogue_json(form_version: u64, stricter: bool) -> String {
        let order_max = if stricter { 10 } else { 20 };
        format!(
            r#"{{"procedures":[
            {{"code":"1.001193","name":"Đăng ký khai sinh","sector":"Hộ tịch","processing":{{"working_days":1}},
              "fees":[{{"name":"Lệ phí đăng ký khai sinh","amount_vnd":0}}],
              "papers":[{{"name":"Tờ khai đăng ký khai sinh","copies":1,"original":true}},
                        {{"name":"Giấy chứng sinh","copies":1,"original":true}},
                        {{"name":"Văn bản ủy quyền","condition":"nếu nộp thay"}}],
              "form":{{"fields":[
                {{"name":"child_name","label":"Họ tên trẻ","type":"text","max_len":100,"required":true}},
                {{"name":"mother","label":"Mẹ","type":"person","required":true}},
                {{"name":"birth_order","label":"Con thứ","type":"number","min":1,"max":{order_max}}}]}},
              "version":{form_version}}},
            {{"code":"1.000894","name":"Đăng ký kết hôn","sector":"Hộ tịch","processing":{{"working_days":5}}}},
            {{"code":"1.003005","name":"Cấp giấy chứng nhận quyền sử dụng đất lần đầu","sector":"Đất đai","processing":{{"working_days":30}}}},
            {{"code":"2.000908","name":"Chứng thực bản sao từ bản chính","sector":"Chứng thực","processing":{{"working_hours":4}},"withdrawal_allowed":false}}],
            "holidays":["2026-09-01","2026-09-02"],
            "calendar":[{{"day":"2026-08-29","working":true,"reason":"Làm bù"}}]}}"#
        )
    }

    fn store(dir: &tempfile::TempDir) -> DeviceStore {
        DeviceStore::open(StoreConfig::new(dir.path().join("s.db"))).unwrap()
    }

    fn codes(list: &[ProcedureSummary]) -> Vec<&str> {
        list.iter().map(|p| p.code.as_str()).collect()
    }

    fn birth(child: &str, order: i64) -> NewApplication {
        let mut values = crate::catalogue::FormValues::new();
        values.insert("child_name".into(), FormValue::Text(child.into()));
        values.insert(
            "mother".into(),
            FormValue::Person(PersonValue {
                name: "Lò Thị Hương".into(),
                citizen_id: Some("011198001234".into()),
                birth_date: None,
            }),
        );
        values.insert("birth_order".into(), FormValue::Number(order));
        NewApplication {
            commune_code: COMMUNE.into(),
            procedure_code: "1.001193".into(),
            applicant: Applicant {
                name: "Lò Văn Pọm".into(),
                ..Applicant::default()
            },
            received_at: Some(1_795_399_200_000),
            form_values: values,
            ..NewApplication::default()
        }
    }

    #[test]
    fn folded_search_and_sectors() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir);
        assert_eq!(
            s.install_catalogue_file(&catalogue_json(1, false)).unwrap(),
            4
        );
        // Installing a file claims no province version: the first sync still brings the delta.
        assert_eq!(s.catalogue_version().unwrap(), 0);
        assert_eq!(
            codes(&s.search_procedures("khai sinh", 20).unwrap()),
            ["1.001193"]
        );
        assert_eq!(
            codes(&s.search_procedures("ĐĂNG KÝ", 20).unwrap()),
            ["1.000894", "1.001193"]
        );
        assert_eq!(
            codes(&s.search_procedures("dang ky ket", 20).unwrap()),
            ["1.000894"]
        );
        assert_eq!(
            codes(&s.search_procedures("1.0030", 20).unwrap()),
            ["1.003005"]
        );
        assert_eq!(
            codes(&s.search_procedures("dat lan dau", 20).unwrap()),
            ["1.003005"]
        );
        // LIKE wildcards are text, not patterns.
        assert!(s.search_procedures("%", 20).unwrap().is_empty());
        assert!(s.search_procedures("_", 20).unwrap().is_empty());
        assert!(s.search_procedures("  ", 20).unwrap().is_empty());
        assert_eq!(s.search_procedures("dang", 1).unwrap().len(), 1);
        assert_eq!(
            s.procedure_sectors().unwrap(),
            vec![
                ("Chứng thực".into(), 1),
                ("Đất đai".into(), 1),
                ("Hộ tịch".into(), 2)
            ]
        );
        let civil = s.procedures_by_sector("Hộ tịch", None, 1).unwrap();
        assert_eq!(codes(&civil), ["1.000894"]);
        let next = s
            .procedures_by_sector("Hộ tịch", Some(&civil[0].code), 10)
            .unwrap();
        assert_eq!(codes(&next), ["1.001193"]);
        // The calendar came too: 2026-09-01 off, Saturday 2026-08-29 works.
        assert!(!s.calendar().is_working_day("2026-09-01".parse().unwrap()));
        assert!(s.calendar().is_working_day("2026-08-29".parse().unwrap()));
        // A bad file changes nothing.
        assert!(
            s.install_catalogue_file(r#"{"procedures":[{"code":"x","name":""}]}"#)
                .is_err()
        );
        assert_eq!(s.procedure_count().unwrap(), 4);
    }

    #[test]
    fn intake_checks_the_form_and_pins_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir);
        s.apply_catalogue(1, &catalogue_json(1, false)).unwrap();
        // Prefilled checklist: mandatory papers and fees from the catalogue.
        let template = s.prefilled_application(COMMUNE, "1.001193").unwrap();
        assert_eq!(
            template
                .documents
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>(),
            ["Tờ khai đăng ký khai sinh", "Giấy chứng sinh"]
        );
        assert_eq!(template.fees.len(), 1);
        assert!(!template.fees[0].paid);

        let app = s
            .create_application("lan", birth("Lò Thị Mai", 15))
            .unwrap();
        assert_eq!(app.procedure_version, 1);
        assert_eq!(app.form_values.len(), 3);
        // A form that breaks its schema is refused and writes nothing.
        for bad in [
            {
                let mut b = birth("", 1);
                b.form_values.remove("child_name");
                b
            },
            birth("Lò Thị Mai", 0),
            {
                let mut b = birth("Lò Thị Mai", 1);
                b.form_values
                    .insert("pet".into(), FormValue::Text("mèo".into()));
                b
            },
            {
                let mut b = birth("Lò Thị Mai", 1);
                b.form_values
                    .insert("mother".into(), FormValue::Text("Hương".into()));
                b
            },
        ] {
            let err = s.create_application("lan", bad).unwrap_err();
            assert!(
                matches!(err, Error::InvalidInput { ref field, .. } if field.starts_with("form.")),
                "{err}"
            );
        }
        assert_eq!(s.list_ids_for_test(), 1);
        // Version 2 of the procedure is stricter (at most 10 children): the open dossier keeps
        // version 1's rules, a new one gets version 2's.
        s.apply_catalogue(2, &catalogue_json(2, true)).unwrap();
        let edited = s
            .update_application(app.id, "lan", |a| {
                a.form_values
                    .insert("birth_order".into(), FormValue::Number(16));
            })
            .unwrap();
        assert_eq!(edited.procedure_version, 1);
        assert!(
            s.create_application("lan", birth("Lò Thị Lan", 15))
                .is_err()
        );
        assert_eq!(
            s.create_application("lan", birth("Lò Thị Lan", 5))
                .unwrap()
                .procedure_version,
            2
        );
        // An edit may not break version 1's form, nor move the pin.
        assert!(
            s.update_application(app.id, "lan", |a| {
                a.form_values
                    .insert("birth_order".into(), FormValue::Number(21));
            })
            .is_err()
        );
        assert!(
            s.update_application(app.id, "lan", |a| a.procedure_version = 2)
                .is_err()
        );
        assert_eq!(s.procedure_at("1.001193", 1).unwrap().unwrap().version, 1);
        assert_eq!(s.procedure("1.001193").unwrap().version, 2);
        assert!(s.procedure_at("1.001193", 3).unwrap().is_none());
    }

    #[test]
    fn hours_and_compensatory_days_set_due_dates() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir);
        s.apply_catalogue(1, &catalogue_json(1, false)).unwrap();
        // Friday 2026-08-28 16:00 in Vietnam (09:00 UTC): 4 working hours = 1 hour on Friday,
        // 3 on the compensatory Saturday 2026-08-29 (07:30-10:30).
        let friday_4pm = 1_787_907_600_000;
        let mut new = birth("x", 1);
        new.procedure_code = "2.000908".into();
        new.form_values.clear();
        new.received_at = Some(friday_4pm);
        let app = s.create_application("lan", new).unwrap();
        assert_eq!(app.due_at.to_string(), "2026-08-29");
        let deadline = s
            .calendar()
            .deadline(friday_4pm, ProcessingTime::WorkingHours(4));
        assert_eq!(
            deadline.at_ms,
            Some(friday_4pm - 16 * 3_600_000 + 24 * 3_600_000 + 10 * 3_600_000 + 30 * 60_000)
        );
    }

    #[test]
    fn a_store_of_schema_6_keeps_its_procedures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            // Schema 6: the last one before catalogue version 2 (0007).
            schema::migrate_to(&mut conn, 6).unwrap();
            conn.execute(
                "INSERT INTO procedures(code, name, processing_days, withdrawal_allowed)
                 VALUES ('2.000908', 'Chứng thực bản sao từ bản chính', 0, 0)",
                [],
            )
            .unwrap();
            conn.execute("INSERT INTO holidays(day) VALUES ('2026-09-02')", [])
                .unwrap();
        }
        let s = DeviceStore::open(StoreConfig::new(&path)).unwrap();
        let p = s.procedure("2.000908").unwrap();
        assert_eq!(p.processing, ProcessingTime::WorkingDays(0));
        assert!(!p.withdrawal_allowed);
        assert_eq!(p.version, 1);
        assert_eq!(s.procedure_at("2.000908", 1).unwrap(), Some(p));
        assert_eq!(
            codes(&s.search_procedures("chung thuc", 5).unwrap()),
            ["2.000908"]
        );
        assert!(!s.calendar().is_working_day("2026-09-02".parse().unwrap()));
    }

    impl DeviceStore {
        fn list_ids_for_test(&self) -> i64 {
            self.conn
                .query_row("SELECT COUNT(*) FROM applications", [], |r| r.get(0))
                .unwrap()
        }
    }

    #[test]
    fn a_pinned_only_version_checks_dossiers_but_is_never_listed_nor_current() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir);
        // This tablet joined at version 2 of the procedure: it never had version 1.
        s.apply_catalogue(2, &catalogue_json(2, true)).unwrap();
        let v1 = CatalogueFile::parse(&catalogue_json(1, false))
            .unwrap()
            .procedures
            .remove(0);
        let v2 = s.procedure("1.001193").unwrap();
        let mut gone = Procedure::new(
            "9.999999",
            "Thủ tục đã bãi bỏ",
            ProcessingTime::WorkingDays(3),
        );
        gone.version = 4;
        let pinned = |p: &Procedure| CatalogueEntry::Pinned(serde_json::to_string(p).unwrap());
        let mut renamed_v2 = v2.clone();
        renamed_v2.name = "Không được thay".into();
        let installed = s
            .apply_catalogue_delta(&CatalogueDelta {
                version: 3,
                entries: vec![pinned(&v1), pinned(&renamed_v2), pinned(&gone)],
                more: None,
            })
            .unwrap();
        assert_eq!(installed, 3);
        assert_eq!(s.catalogue_version().unwrap(), 3);
        // Kept for the dossiers pinning them...
        assert_eq!(s.procedure_at("1.001193", 1).unwrap(), Some(v1));
        assert_eq!(s.procedure_at("9.999999", 4).unwrap(), Some(gone));
        // ...never current, listed or offered for intake; the current version stays as it was.
        assert_eq!(s.procedure("1.001193").unwrap(), v2);
        assert_eq!(s.procedure_at("1.001193", 2).unwrap(), Some(v2));
        assert!(matches!(
            s.procedure("9.999999"),
            Err(Error::UnknownProcedure(_))
        ));
        assert!(s.search_procedures("bai bo", 10).unwrap().is_empty());
        assert_eq!(
            codes(&s.search_procedures("khai sinh", 10).unwrap()),
            ["1.001193"]
        );
        assert!(matches!(
            s.prefilled_application(COMMUNE, "9.999999"),
            Err(Error::UnknownProcedure(_))
        ));
        assert_eq!(
            s.create_application("lan", birth("Lò Thị Lan", 5))
                .unwrap()
                .procedure_version,
            2
        );
        // A pinned entry that is not a procedure: the page changes nothing.
        let bad = CatalogueDelta {
            version: 4,
            entries: vec![CatalogueEntry::Pinned("{}".into())],
            more: None,
        };
        assert!(s.apply_catalogue_delta(&bad).is_err());
        assert_eq!(s.catalogue_version().unwrap(), 3);
    }
}
