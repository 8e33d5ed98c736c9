//! The published catalogue: publications, their delta to tablets, and every procedure version
//! a dossier may pin.
//!
//! Contract. A publication is a whole catalogue file; the server compares it with what is
//! published and records only the difference ([`plan_publication`]): procedures added or given
//! a new version, procedures taken out (a removal entry), and the calendar when it moved. A
//! published procedure version never changes: a file that changes a procedure without raising
//! its version, or lowers it, is refused whole ([`StorageError::Conflict`]). Every version ever
//! published stays, so a dossier taken offline under version N is checked against N after N+1
//! is published, and a version never published is refused. A tablet receives, per sync round,
//! one page of the entries changed after its position ([`delta_page`]): at most
//! [`MAX_PAGE_ENTRIES`] entries and about [`PAGE_BODY_BYTES`] of JSON, whatever the catalogue
//! holds; a tablet with nothing gets the whole catalogue that way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use communesync_core::catalogue::delta::{
    CalendarUpdate, CatalogueDelta, CatalogueEntry, CatalogueHeld, CataloguePosition,
    MAX_PAGE_ENTRIES, MAX_PROCEDURE_JSON, PAGE_BODY_BYTES,
};
use communesync_core::catalogue::procedure::MAX_PINNED_VERSIONS;
use communesync_core::catalogue::{CalendarOverride, CatalogueFile, Procedure, WorkingCalendar};
use communesync_core::integrity::{ProcedureLookup, ProcedureSource};

use crate::storage::{
    CatalogueHead, CataloguePublication, CatalogueRow, Result, ServerStorage, StorageError,
};

/// Publishes catalogue file `json`: checks it, compares it with the published catalogue and
/// records the difference as a new catalogue version (returned).
pub async fn publish<S: ServerStorage + ?Sized>(storage: &S, json: &str) -> Result<u64> {
    let file = CatalogueFile::parse(json).map_err(|e| StorageError::Conflict(e.to_string()))?;
    let head = storage.catalogue_head().await?;
    let rows = storage.catalogue_rows().await?;
    let publication =
        plan_publication(head.as_ref(), &rows, &file, json).map_err(StorageError::Conflict)?;
    let calendar_changed = publication.calendar.is_some();
    let version = storage.publish_catalogue(publication).await?;
    // A new calendar moves open dossiers' effective deadlines: their read-model rows follow
    // (pinned procedure versions never change, so a publication without a calendar moves none).
    // The publication stands whatever happens here; a row left behind is corrected by its next
    // push or by `communesync admin rebuild-read-model`.
    if calendar_changed && crate::storage::read_model::ENABLED {
        let reprojected = match CatalogueRules::load_deadline_rules(storage).await {
            Ok(rules) => storage.reproject_open(rules).await,
            Err(e) => Err(e),
        };
        match reprojected {
            Ok(rows) => tracing::info!(
                version,
                rows,
                "open dossiers re-projected for the new calendar"
            ),
            Err(e) => {
                tracing::error!(version, error = %e, "open dossiers not re-projected for the new calendar")
            }
        }
    }
    Ok(version)
}

/// The published catalogue as a file for tablets to install before their first sync: its
/// procedures, its version, and every version no longer current that a dossier may pin (a tablet
/// installing it holds what a sync from 0 would have brought). `None` before any publication.
pub async fn export<S: ServerStorage + ?Sized>(storage: &S) -> Result<Option<CatalogueFile>> {
    let Some((version, json)) = storage.catalogue().await? else {
        return Ok(None);
    };
    let mut file =
        CatalogueFile::parse(&json).map_err(|e| StorageError::Conflict(e.to_string()))?;
    file.version = Some(version);
    let rows = storage
        .pinned_versions_after(0, "", 0, MAX_PINNED_VERSIONS + 1)
        .await?;
    if rows.len() > MAX_PINNED_VERSIONS {
        return Err(StorageError::Conflict(format!(
            "more than {MAX_PINNED_VERSIONS} pinned procedure versions to export"
        )));
    }
    for row in rows {
        match serde_json::from_str::<Procedure>(&row.body) {
            Ok(p) => file.pinned.push(p),
            Err(e) => {
                tracing::error!(code = %row.code, version = row.version, error = %e, "a stored procedure does not parse")
            }
        }
    }
    Ok(Some(file))
}

/// What publishing `file` over the published catalogue (`head`, `rows`) records.
pub fn plan_publication(
    head: Option<&CatalogueHead>,
    rows: &[CatalogueRow],
    file: &CatalogueFile,
    json: &str,
) -> std::result::Result<CataloguePublication, String> {
    let published: HashMap<&str, &CatalogueRow> =
        rows.iter().map(|row| (row.code.as_str(), row)).collect();
    let mut puts = Vec::new();
    for p in &file.procedures {
        let body = serde_json::to_string(p).map_err(|e| e.to_string())?;
        if body.len() > MAX_PROCEDURE_JSON {
            return Err(format!(
                "procedure {}: {} bytes of JSON (at most {MAX_PROCEDURE_JSON})",
                p.code,
                body.len()
            ));
        }
        match published.get(p.code.as_str()) {
            None => puts.push((p.code.clone(), p.version, body)),
            Some(row) if p.version > row.version => puts.push((p.code.clone(), p.version, body)),
            Some(row) if p.version < row.version => {
                return Err(format!(
                    "procedure {}: version {} is older than the published {} (versions only grow)",
                    p.code, p.version, row.version
                ));
            }
            Some(row) => {
                if !same_procedure(&row.body, p) {
                    return Err(format!(
                        "procedure {}: version {} was published with other content; give the \
                         change a new version (dossiers pin a version)",
                        p.code, p.version
                    ));
                }
                if row.removed {
                    puts.push((p.code.clone(), p.version, body));
                }
            }
        }
    }
    let listed: HashSet<&str> = file.procedures.iter().map(|p| p.code.as_str()).collect();
    let removals = rows
        .iter()
        .filter(|row| !row.removed && !listed.contains(row.code.as_str()))
        .map(|row| row.code.clone())
        .collect();
    let overrides = file.overrides();
    let calendar = serde_json::to_string(&overrides).map_err(|e| e.to_string())?;
    // A head without a calendar version was published whole before the delta: its first
    // publication since records the calendar too.
    let calendar_changed = head.is_none_or(|h| {
        h.calendar_version == 0
            || serde_json::from_str::<Vec<CalendarOverride>>(&h.calendar).ok() != Some(overrides)
    });
    Ok(CataloguePublication {
        base_version: head.map_or(0, |h| h.version),
        json: json.to_owned(),
        calendar: calendar_changed.then_some(calendar),
        puts,
        removals,
    })
}

fn same_procedure(body: &str, p: &Procedure) -> bool {
    serde_json::from_str::<Procedure>(body).is_ok_and(|stored| &stored == p)
}

/// The delta page and the calendar a tablet holding `held` receives (both `None` when it is up
/// to date). `head` is the catalogue's head read before the entries, so the version a last page
/// claims never covers an entry the page lacks (a publication in between is sent again next
/// time).
pub async fn delta_page<S: ServerStorage + ?Sized>(
    storage: &S,
    head: &CatalogueHead,
    held: &CatalogueHeld,
) -> Result<(Option<CatalogueDelta>, Option<CalendarUpdate>)> {
    // A version this server never reached (the tablet's catalogue is from before a restore of
    // the server's database, or from another server) is not trusted: the tablet starts again.
    let ahead = held.version > head.version
        || held
            .resume
            .as_ref()
            .is_some_and(|position| position.publication > head.version);
    let fresh = CatalogueHeld::default();
    let held = if ahead { &fresh } else { held };
    let calendar = if head.calendar_version != held.calendar_version {
        match serde_json::from_str::<Vec<CalendarOverride>>(&head.calendar) {
            Ok(overrides) => Some(CalendarUpdate {
                version: head.calendar_version,
                overrides,
            }),
            Err(e) => {
                tracing::error!(error = %e, "the stored calendar does not parse");
                None
            }
        }
    } else {
        None
    };
    if held.resume.is_none() && held.version >= head.version {
        return Ok((None, calendar));
    }
    let mut page = Page::default();
    // Pinned-only versions start after the tablet's version (the ones published before it
    // reached this tablet as current entries then).
    let mut pinned_from = (held.version.saturating_add(1), String::new(), 0);
    match &held.resume {
        Some(CataloguePosition {
            publication,
            code,
            pinned_version: Some(version),
        }) => pinned_from = (*publication, code.clone(), *version),
        // Without a page under way: everything of the publications after the tablet's version
        // (the empty code sorts before every procedure code, which is never empty).
        resume => {
            let (publication, code) = match resume {
                Some(position) => (position.publication, position.code.clone()),
                None => (held.version.saturating_add(1), String::new()),
            };
            let rows = storage
                .catalogue_changes(publication, &code, MAX_PAGE_ENTRIES + 1)
                .await?;
            let start = CataloguePosition {
                publication,
                code,
                pinned_version: None,
            };
            if let Some(more) = page.fill(&rows, start) {
                return Ok((Some(page.into_delta(head, Some(more))), calendar));
            }
        }
    }
    let start = CataloguePosition {
        publication: pinned_from.0,
        code: pinned_from.1,
        pinned_version: Some(pinned_from.2),
    };
    let room = MAX_PAGE_ENTRIES.saturating_sub(page.entries.len());
    let more = if room == 0 {
        // The page is full of current entries: the pinned-only ones start on the next.
        Some(start)
    } else {
        let rows = storage
            .pinned_versions_after(start.publication, &start.code, pinned_from.2, room + 1)
            .await?;
        page.fill(&rows, start)
    };
    Ok((Some(page.into_delta(head, more)), calendar))
}

/// A delta page being filled, within [`MAX_PAGE_ENTRIES`] and about [`PAGE_BODY_BYTES`].
#[derive(Default)]
struct Page {
    entries: Vec<CatalogueEntry>,
    bytes: usize,
}

impl Page {
    /// Adds `rows` (read after position `start`; pinned-only versions when `start` is among
    /// them) in order while the page has room; where the next page starts when it filled up
    /// before the end of `rows`.
    fn fill(
        &mut self,
        rows: &[CatalogueRow],
        start: CataloguePosition,
    ) -> Option<CataloguePosition> {
        let pinned = start.pinned_version.is_some();
        let mut last: Option<&CatalogueRow> = None;
        for row in rows {
            let entry_bytes = if row.removed {
                row.code.len()
            } else {
                row.body.len()
            };
            if self.entries.len() == MAX_PAGE_ENTRIES
                || (!self.entries.is_empty() && self.bytes + entry_bytes > PAGE_BODY_BYTES)
            {
                // When nothing of `rows` fitted, the next page starts where these did.
                return Some(match last {
                    Some(row) => CataloguePosition {
                        publication: row.changed,
                        code: row.code.clone(),
                        pinned_version: pinned.then_some(row.version),
                    },
                    None => start,
                });
            }
            self.bytes += entry_bytes;
            self.entries.push(if pinned {
                CatalogueEntry::Pinned(row.body.clone())
            } else if row.removed {
                CatalogueEntry::Removed(row.code.clone())
            } else {
                CatalogueEntry::Put(row.body.clone())
            });
            last = Some(row);
        }
        None
    }

    fn into_delta(self, head: &CatalogueHead, more: Option<CataloguePosition>) -> CatalogueDelta {
        CatalogueDelta {
            version: head.version,
            entries: self.entries,
            more,
        }
    }
}

/// What the record rules need of the catalogue: every published version of every procedure
/// (the form a dossier pinned) and each current procedure's withdrawal rule.
#[derive(Default)]
pub struct CatalogueRules {
    versions: HashMap<(String, u64), Arc<Procedure>>,
    /// Codes ever published.
    codes: HashSet<String>,
    /// Current (not removed) procedures' withdrawal rule.
    withdrawal: HashMap<String, bool>,
    /// The published working calendar, which statutory time counts with.
    calendar: WorkingCalendar,
}

impl CatalogueRules {
    /// Rules from the stored versions and entries.
    pub fn from_storage(versions: Vec<(String, u64, String)>, rows: &[CatalogueRow]) -> Self {
        let mut rules = CatalogueRules::default();
        for (code, version, body) in versions {
            match serde_json::from_str::<Procedure>(&body) {
                Ok(p) => {
                    rules.codes.insert(code.clone());
                    rules.versions.insert((code, version), Arc::new(p));
                }
                Err(e) => {
                    tracing::error!(%code, version, error = %e, "a stored procedure does not parse")
                }
            }
        }
        for row in rows.iter().filter(|row| !row.removed) {
            if let Some(p) = rules.versions.get(&(row.code.clone(), row.version)) {
                rules
                    .withdrawal
                    .insert(row.code.clone(), p.withdrawal_allowed);
            }
        }
        rules
    }

    /// Rules from a whole catalogue published before the delta (its procedures as current).
    pub fn from_file(file: CatalogueFile) -> Self {
        let mut rules = CatalogueRules {
            calendar: file.working_calendar(),
            ..CatalogueRules::default()
        };
        for p in file.procedures {
            rules.codes.insert(p.code.clone());
            rules
                .withdrawal
                .insert(p.code.clone(), p.withdrawal_allowed);
            rules
                .versions
                .insert((p.code.clone(), p.version), Arc::new(p));
        }
        rules
    }

    /// These rules with the published calendar's overrides (`overrides_json`, a JSON list of
    /// [`CalendarOverride`]; empty or unreadable: the plain week, logged).
    pub fn with_calendar(mut self, overrides_json: &str) -> Self {
        if overrides_json.trim().is_empty() {
            return self;
        }
        match serde_json::from_str::<Vec<CalendarOverride>>(overrides_json) {
            Ok(overrides) => self.calendar = WorkingCalendar::from_overrides(&overrides),
            Err(e) => tracing::error!(error = %e, "the stored calendar does not parse"),
        }
        self
    }

    /// Whether the procedure may be withdrawn, if the catalogue has it.
    pub fn withdrawal_allowed(&self, code: &str) -> Option<bool> {
        self.withdrawal.get(code).copied()
    }
}

impl CatalogueRules {
    /// The rules of the catalogue storage holds: every published procedure version, withdrawal
    /// rules, the working calendar.
    pub async fn load<S: ServerStorage + ?Sized>(storage: &S) -> Result<Self> {
        let versions = storage.procedure_versions().await?;
        Ok(if versions.is_empty() {
            // A catalogue published before the delta (server schema 6): its file is the rule.
            match storage.catalogue().await? {
                Some((_, json)) => match communesync_core::catalogue::CatalogueFile::parse(&json) {
                    Ok(file) => CatalogueRules::from_file(file),
                    Err(e) => {
                        tracing::error!(error = %e, "the stored catalogue does not parse");
                        CatalogueRules::default()
                    }
                },
                None => CatalogueRules::default(),
            }
        } else {
            let rows = storage.catalogue_rows().await?;
            let calendar = storage
                .catalogue_head()
                .await?
                .map(|head| head.calendar)
                .unwrap_or_default();
            CatalogueRules::from_storage(versions, &rows).with_calendar(&calendar)
        })
    }

    /// [`CatalogueRules::load`], as the read model's [`DeadlineRules`](crate::storage::read_model::DeadlineRules).
    pub async fn load_deadline_rules<S: ServerStorage + ?Sized>(
        storage: &S,
    ) -> Result<crate::storage::read_model::DeadlineRules> {
        Ok(Arc::new(Self::load(storage).await?))
    }
}

impl ProcedureSource for CatalogueRules {
    fn lookup(&self, code: &str, version: u64) -> ProcedureLookup {
        match self.versions.get(&(code.to_owned(), version)) {
            Some(p) => ProcedureLookup::Known(p.clone()),
            None if self.codes.contains(code) => ProcedureLookup::UnknownVersion,
            None => ProcedureLookup::UnknownCode,
        }
    }

    fn calendar(&self) -> Option<&WorkingCalendar> {
        Some(&self.calendar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str) -> CatalogueFile {
        CatalogueFile::parse(json).unwrap()
    }

    fn rows_after(publication: &CataloguePublication, version: u64) -> Vec<CatalogueRow> {
        publication
            .puts
            .iter()
            .map(|(code, v, body)| CatalogueRow {
                changed: version,
                code: code.clone(),
                version: *v,
                removed: false,
                body: body.clone(),
            })
            .collect()
    }

    const V1: &str = r#"{"procedures":[
        {"code":"1.001193","name":"Đăng ký khai sinh","processing":{"working_days":1},"version":2},
        {"code":"1.000894","name":"Đăng ký kết hôn","processing":{"working_days":5}}]}"#;

    #[test]
    fn a_publication_records_only_what_changed_and_versions_never_change_in_place() {
        let first = plan_publication(None, &[], &file(V1), V1).unwrap();
        assert_eq!(first.puts.len(), 2);
        assert!(first.removals.is_empty());
        let head = CatalogueHead {
            version: 1,
            calendar: first.calendar.clone().unwrap(),
            calendar_version: 1,
        };
        let rows = rows_after(&first, 1);

        // The same file again: nothing to send.
        let same = plan_publication(Some(&head), &rows, &file(V1), V1).unwrap();
        assert!(same.puts.is_empty() && same.removals.is_empty() && same.calendar.is_none());

        // A new version of one, the other removed, a day off added.
        let next = r#"{"procedures":[
            {"code":"1.001193","name":"Đăng ký khai sinh (mới)","processing":{"working_days":1},"version":3}],
            "holidays":["2027-04-30"]}"#;
        let plan = plan_publication(Some(&head), &rows, &file(next), next).unwrap();
        assert_eq!(plan.puts.len(), 1);
        assert_eq!(plan.puts[0].1, 3);
        assert_eq!(plan.removals, ["1.000894"]);
        assert!(plan.calendar.is_some());
        assert_eq!(plan.base_version, 1);

        // Changed in place, or going back: refused.
        let in_place = r#"{"procedures":[
            {"code":"1.001193","name":"Khai sinh","processing":{"working_days":1},"version":2}]}"#;
        let err = plan_publication(Some(&head), &rows, &file(in_place), in_place).unwrap_err();
        assert!(err.contains("new version"), "{err}");
        let back = r#"{"procedures":[
            {"code":"1.001193","name":"Đăng ký khai sinh","processing":{"working_days":1},"version":1}]}"#;
        let err = plan_publication(Some(&head), &rows, &file(back), back).unwrap_err();
        assert!(err.contains("only grow"), "{err}");
    }

    #[test]
    fn rules_know_every_published_version() {
        let p2 = r#"{"code":"1.001193","name":"Đăng ký khai sinh","processing":{"working_days":1},"version":2}"#;
        let p3 = r#"{"code":"1.001193","name":"Đăng ký khai sinh","processing":{"working_days":1},"version":3,"withdrawal_allowed":false}"#;
        let rows = [CatalogueRow {
            changed: 2,
            code: "1.001193".into(),
            version: 3,
            removed: false,
            body: p3.into(),
        }];
        let rules = CatalogueRules::from_storage(
            vec![
                ("1.001193".into(), 2, p2.into()),
                ("1.001193".into(), 3, p3.into()),
            ],
            &rows,
        );
        assert!(matches!(
            rules.lookup("1.001193", 2),
            ProcedureLookup::Known(_)
        ));
        assert!(matches!(
            rules.lookup("1.001193", 3),
            ProcedureLookup::Known(_)
        ));
        assert!(matches!(
            rules.lookup("1.001193", 4),
            ProcedureLookup::UnknownVersion
        ));
        assert!(matches!(
            rules.lookup("9.9", 1),
            ProcedureLookup::UnknownCode
        ));
        assert_eq!(rules.withdrawal_allowed("1.001193"), Some(false));
    }
}
