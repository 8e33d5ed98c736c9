//! The procedure catalogue and dossier forms, for the app: install a catalogue file before the
//! first sync, search procedures by folded name, list them by sector, read a procedure's
//! papers, fees and form, prefill an intake, and create or edit a dossier's form values.
//!
//! Every method here touches the store, so each is `async` (Kotlin `suspend`, Swift `async`)
//! and runs its store work on a blocking-pool thread. Form values cross the boundary typed
//! ([`FormValue`]); dates as `YYYY-MM-DD` strings, refused with `InvalidInput` when malformed.

use communesync_core::catalogue as core;
use communesync_core::record::RecordId;

use crate::engine::Engine;
use crate::error::CommuneSyncError;
use crate::types::{Application, NewApplication, parse_id};

type Result<T, E = CommuneSyncError> = std::result::Result<T, E>;

/// A procedure as lists show it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ProcedureSummary {
    /// National code (`1.001193`).
    pub code: String,
    /// Name ("Đăng ký khai sinh").
    pub name: String,
    /// Sector ("Hộ tịch").
    pub sector: String,
    /// Version in force on this tablet.
    pub version: u64,
}

/// A sector and how many procedures it has.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SectorCount {
    /// Sector name.
    pub sector: String,
    /// Procedures in it.
    pub procedures: u64,
}

/// A paper the applicant hands in.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RequiredPaper {
    /// What it is.
    pub name: String,
    /// Copies.
    pub copies: u32,
    /// Whether the original must be shown.
    pub original: bool,
    /// `None` when mandatory; the case that requires it when conditional.
    pub condition: Option<String>,
}

/// A fee of the procedure.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ProcedureFee {
    /// What it is.
    pub name: String,
    /// Amount in đồng.
    pub amount_vnd: u64,
}

/// The type of a form field, with its constraints.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum FieldKind {
    /// Free text.
    Text {
        /// Longest value in characters.
        max_len: Option<u32>,
    },
    /// A whole number.
    Number {
        /// Smallest value.
        min: Option<i64>,
        /// Largest value.
        max: Option<i64>,
    },
    /// A date (`YYYY-MM-DD`).
    Date,
    /// One of the options.
    Choice {
        /// The options.
        options: Vec<String>,
    },
    /// A person.
    Person,
    /// A citizen identity number (CCCD, format-checked).
    CitizenId,
    /// An address.
    Address,
}

/// One field of a procedure's form.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct FormField {
    /// Key of the value.
    pub name: String,
    /// Label.
    pub label: String,
    /// Type and constraints.
    pub kind: FieldKind,
    /// Whether a value is required.
    pub required: bool,
    /// Help text.
    pub help: String,
}

/// A procedure with its papers, fees and form.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ProcedureDetails {
    /// National code.
    pub code: String,
    /// Name.
    pub name: String,
    /// Sector.
    pub sector: String,
    /// `commune`, `district`, `province` or `central`.
    pub level: String,
    /// Working days (hours-based procedures: their hours rounded up to days).
    pub processing_days: u32,
    /// Working hours for a same-day procedure, else `None`.
    pub processing_hours: Option<u32>,
    /// Fees.
    pub fees: Vec<ProcedureFee>,
    /// Papers.
    pub papers: Vec<RequiredPaper>,
    /// The form.
    pub form: Vec<FormField>,
    /// Whether an applicant may withdraw.
    pub withdrawal_allowed: bool,
    /// First day in force (`YYYY-MM-DD`).
    pub effective_from: Option<String>,
    /// Last day in force (`YYYY-MM-DD`).
    pub effective_until: Option<String>,
    /// Version.
    pub version: u64,
}

/// A typed form value.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum FormValue {
    /// Text.
    Text {
        /// The text.
        value: String,
    },
    /// A whole number.
    Number {
        /// The number.
        value: i64,
    },
    /// A date.
    Date {
        /// `YYYY-MM-DD`.
        value: String,
    },
    /// An option of a choice.
    Choice {
        /// The option.
        value: String,
    },
    /// A person.
    Person {
        /// Full name.
        name: String,
        /// CCCD number.
        citizen_id: Option<String>,
        /// Date of birth, `YYYY-MM-DD`.
        birth_date: Option<String>,
    },
    /// A citizen identity number.
    CitizenId {
        /// 12 digits.
        value: String,
    },
    /// An address.
    Address {
        /// House, street or hamlet.
        detail: String,
        /// Commune or ward.
        commune: String,
        /// Province.
        province: String,
    },
}

/// One value of a dossier's form.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct FormEntry {
    /// Field name.
    pub name: String,
    /// Value.
    pub value: FormValue,
}

/// A dossier's form: the pinned procedure version and the values.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DossierForm {
    /// Version of the procedure the dossier was received under (0: before catalogue v2).
    pub procedure_version: u64,
    /// The values, by field name.
    pub values: Vec<FormEntry>,
}

fn date(text: &str, field: &str) -> Result<core::CivilDate> {
    text.parse()
        .map_err(|e| CommuneSyncError::invalid(format!("form.{field}: {e}")))
}

fn values_to_core(entries: Vec<FormEntry>) -> Result<core::FormValues> {
    let mut values = core::FormValues::new();
    for entry in entries {
        let value = match entry.value {
            FormValue::Text { value } => core::FormValue::Text(value),
            FormValue::Number { value } => core::FormValue::Number(value),
            FormValue::Date { value } => core::FormValue::Date(date(&value, &entry.name)?),
            FormValue::Choice { value } => core::FormValue::Choice(value),
            FormValue::Person {
                name,
                citizen_id,
                birth_date,
            } => core::FormValue::Person(core::PersonValue {
                name,
                citizen_id,
                birth_date: birth_date.map(|d| date(&d, &entry.name)).transpose()?,
            }),
            FormValue::CitizenId { value } => core::FormValue::CitizenId(value),
            FormValue::Address {
                detail,
                commune,
                province,
            } => core::FormValue::Address(core::AddressValue {
                detail,
                commune,
                province,
            }),
        };
        if values.insert(entry.name.clone(), value).is_some() {
            return Err(CommuneSyncError::invalid(format!(
                "form.{}: given twice",
                entry.name
            )));
        }
    }
    Ok(values)
}

fn values_from_core(values: core::FormValues) -> Vec<FormEntry> {
    values
        .into_iter()
        .map(|(name, value)| FormEntry {
            name,
            value: match value {
                core::FormValue::Text(value) => FormValue::Text { value },
                core::FormValue::Number(value) => FormValue::Number { value },
                core::FormValue::Date(d) => FormValue::Date {
                    value: d.to_string(),
                },
                core::FormValue::Choice(value) => FormValue::Choice { value },
                core::FormValue::Person(p) => FormValue::Person {
                    name: p.name,
                    citizen_id: p.citizen_id,
                    birth_date: p.birth_date.map(|d| d.to_string()),
                },
                core::FormValue::CitizenId(value) => FormValue::CitizenId { value },
                core::FormValue::Address(a) => FormValue::Address {
                    detail: a.detail,
                    commune: a.commune,
                    province: a.province,
                },
            },
        })
        .collect()
}

impl From<communesync_core::store::ProcedureSummary> for ProcedureSummary {
    fn from(p: communesync_core::store::ProcedureSummary) -> Self {
        ProcedureSummary {
            code: p.code,
            name: p.name,
            sector: p.sector,
            version: p.version,
        }
    }
}

impl From<core::Procedure> for ProcedureDetails {
    fn from(p: core::Procedure) -> Self {
        ProcedureDetails {
            processing_days: p.processing.working_days(),
            processing_hours: match p.processing {
                core::ProcessingTime::WorkingHours(h) => Some(h),
                core::ProcessingTime::WorkingDays(_) => None,
            },
            level: p.level.as_str().to_owned(),
            fees: p
                .fees
                .into_iter()
                .map(|f| ProcedureFee {
                    name: f.name,
                    amount_vnd: f.amount_vnd,
                })
                .collect(),
            papers: p
                .papers
                .into_iter()
                .map(|r| RequiredPaper {
                    name: r.name,
                    copies: r.copies,
                    original: r.original,
                    condition: r.condition,
                })
                .collect(),
            form: p
                .form
                .fields
                .into_iter()
                .map(|f| FormField {
                    name: f.name,
                    label: f.label,
                    kind: match f.kind {
                        core::FieldKind::Text { max_len } => FieldKind::Text { max_len },
                        core::FieldKind::Number { min, max } => FieldKind::Number { min, max },
                        core::FieldKind::Date => FieldKind::Date,
                        core::FieldKind::Choice { options } => FieldKind::Choice { options },
                        core::FieldKind::Person => FieldKind::Person,
                        core::FieldKind::CitizenId => FieldKind::CitizenId,
                        core::FieldKind::Address => FieldKind::Address,
                    },
                    required: f.required,
                    help: f.help,
                })
                .collect(),
            withdrawal_allowed: p.withdrawal_allowed,
            effective_from: p.effective_from.map(|d| d.to_string()),
            effective_until: p.effective_until.map(|d| d.to_string()),
            version: p.version,
            code: p.code,
            name: p.name,
            sector: p.sector,
        }
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl Engine {
    /// Installs a catalogue file (JSON, version 1 or 2) before the first sync; returns how many
    /// procedures it holds. A bad file (`InvalidInput`) changes nothing.
    pub async fn install_catalogue_file(&self, json: String) -> Result<u64> {
        self.with_store(move |s| Ok(s.install_catalogue_file(&json)? as u64))
            .await
    }

    /// Procedures whose name contains every word typed, without diacritics ("khai sinh" finds
    /// "Đăng ký khai sinh"), or whose code starts with it; at most `limit` (≤ 200).
    pub async fn search_procedures(
        &self,
        query: String,
        limit: u32,
    ) -> Result<Vec<ProcedureSummary>> {
        self.with_store(move |s| {
            Ok(s.search_procedures(&query, limit)?
                .into_iter()
                .map(Into::into)
                .collect())
        })
        .await
    }

    /// The procedures of a sector in Vietnamese order; the next page starts after the code
    /// `after_code` (the last of the previous page).
    pub async fn procedures_by_sector(
        &self,
        sector: String,
        after_code: Option<String>,
        limit: u32,
    ) -> Result<Vec<ProcedureSummary>> {
        self.with_store(move |s| {
            Ok(
                s.procedures_by_sector(&sector, after_code.as_deref(), limit)?
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            )
        })
        .await
    }

    /// The sectors, with how many procedures each has.
    pub async fn procedure_sectors(&self) -> Result<Vec<SectorCount>> {
        self.with_store(|s| {
            Ok(s.procedure_sectors()?
                .into_iter()
                .map(|(sector, procedures)| SectorCount { sector, procedures })
                .collect())
        })
        .await
    }

    /// A procedure's papers, fees and form (`InvalidInput` when unknown).
    pub async fn procedure_details(&self, code: String) -> Result<ProcedureDetails> {
        self.with_store(move |s| Ok(s.procedure(&code)?.into()))
            .await
    }

    /// A new application for the procedure, with the catalogue's mandatory papers and its fees
    /// (unpaid) filled in, for the officer to edit.
    pub async fn prefilled_application(
        &self,
        commune_code: String,
        procedure_code: String,
    ) -> Result<NewApplication> {
        self.with_store(move |s| {
            Ok(s.prefilled_application(&commune_code, &procedure_code)?
                .into())
        })
        .await
    }

    /// Records a new dossier with its form values, checked against the procedure version in
    /// force (which the dossier pins). A form that breaks its schema is `InvalidInput` naming
    /// the field (`form.child_name`), and nothing is written.
    pub async fn create_dossier(
        &self,
        officer: String,
        new: NewApplication,
        form: Vec<FormEntry>,
    ) -> Result<Application> {
        let mut new: communesync_core::record::NewApplication = new.into();
        new.form_values = values_to_core(form)?;
        let app = self
            .with_store(move |s| Ok(s.create_application(&officer, new)?))
            .await?;
        self.changed(app.id);
        Ok(app.into())
    }

    /// Replaces a dossier's form values, checked against its pinned procedure version.
    pub async fn set_form_values(
        &self,
        officer: String,
        id: String,
        form: Vec<FormEntry>,
    ) -> Result<DossierForm> {
        let id: RecordId = parse_id(&id)?;
        let values = values_to_core(form)?;
        let app = self
            .with_store(
                move |s| Ok(s.update_application(id, &officer, |a| a.form_values = values)?),
            )
            .await?;
        self.changed(id);
        Ok(DossierForm {
            procedure_version: app.procedure_version,
            values: values_from_core(app.form_values),
        })
    }

    /// The province catalogue version this device holds (0: none yet). A file installed before
    /// the first sync may set it (an exported file carries its version); each sync then brings
    /// only what changed after it.
    pub async fn catalogue_version(&self) -> Result<u64> {
        self.with_store(|s| Ok(s.catalogue_version()?)).await
    }

    /// A dossier's pinned procedure version and form values.
    pub async fn dossier_form(&self, id: String) -> Result<DossierForm> {
        let id: RecordId = parse_id(&id)?;
        self.with_store(move |s| {
            let app = s.get_application(id)?;
            Ok(DossierForm {
                procedure_version: app.procedure_version,
                values: values_from_core(app.form_values),
            })
        })
        .await
    }
}

impl From<communesync_core::record::NewApplication> for NewApplication {
    fn from(n: communesync_core::record::NewApplication) -> Self {
        NewApplication {
            commune_code: n.commune_code,
            procedure_code: n.procedure_code,
            applicant: n.applicant.into(),
            received_at: n.received_at.map(crate::types::time_from_ms),
            documents: n
                .documents
                .into_iter()
                .map(|d| crate::types::ReceivedDocument {
                    name: d.name,
                    copies: d.copies,
                    original: d.original,
                })
                .collect(),
            fees: n
                .fees
                .into_iter()
                .map(|f| crate::types::Fee {
                    name: f.name,
                    amount_vnd: f.amount_vnd,
                    paid: f.paid,
                })
                .collect(),
            assignee: n.assignee,
            notes: n.notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Applicant, EngineConfig};

    const CATALOGUE: &str = r#"{"procedures":[
        {"code":"1.001193","name":"Đăng ký khai sinh","sector":"Hộ tịch","processing":{"working_days":1},
         "fees":[{"name":"Lệ phí","amount_vnd":0}],
         "papers":[{"name":"Tờ khai","copies":1,"original":true},{"name":"Ủy quyền","condition":"nếu nộp thay"}],
         "form":{"fields":[
            {"name":"child_name","label":"Họ tên trẻ","type":"text","required":true},
            {"name":"child_birth_date","label":"Ngày sinh","type":"date","required":true},
            {"name":"mother","label":"Mẹ","type":"person"}]},"version":3},
        {"code":"1.000894","name":"Đăng ký kết hôn","sector":"Hộ tịch","processing_days":5}]}"#;

    async fn engine(dir: &tempfile::TempDir) -> std::sync::Arc<Engine> {
        Engine::open(EngineConfig {
            store_path: dir.path().join("t.db").display().to_string(),
            encryption_key: vec![7; 32],
            server_url: "http://127.0.0.1:9".into(),
            credential: None,
            background_policy: None,
            app_version: None,
            trusted_ca_pem: Vec::new(),
            pinned_keys: Vec::new(),
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn an_app_installs_searches_and_takes_a_dossier_with_its_form() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(&dir).await;
        assert_eq!(
            engine
                .install_catalogue_file(CATALOGUE.into())
                .await
                .unwrap(),
            2
        );
        let found = engine
            .search_procedures("khai sinh".into(), 10)
            .await
            .unwrap();
        assert_eq!(found[0].code, "1.001193");
        assert_eq!(
            engine.procedure_sectors().await.unwrap(),
            vec![SectorCount {
                sector: "Hộ tịch".into(),
                procedures: 2
            }]
        );
        let details = engine.procedure_details("1.001193".into()).await.unwrap();
        assert_eq!(details.form.len(), 3);
        assert_eq!(details.papers[1].condition.as_deref(), Some("nếu nộp thay"));

        let mut new = engine
            .prefilled_application("DB-MUONGPHANG".into(), "1.001193".into())
            .await
            .unwrap();
        assert_eq!(new.documents.len(), 1);
        new.applicant = Applicant {
            name: "Lò Văn Pọm".into(),
            id_number: String::new(),
            phone: String::new(),
            address: String::new(),
            village: "Bản Phăng".into(),
        };
        let form = vec![
            FormEntry {
                name: "child_name".into(),
                value: FormValue::Text {
                    value: "Lò Thị Mai".into(),
                },
            },
            FormEntry {
                name: "child_birth_date".into(),
                value: FormValue::Date {
                    value: "2026-11-20".into(),
                },
            },
        ];
        // A bad date string, and a form missing a required field: refused.
        let mut bad_date = form.clone();
        bad_date[1].value = FormValue::Date {
            value: "20/11/2026".into(),
        };
        assert!(matches!(
            engine
                .create_dossier("lan".into(), new.clone(), bad_date)
                .await,
            Err(CommuneSyncError::InvalidInput(_))
        ));
        let err = engine
            .create_dossier("lan".into(), new.clone(), form[..1].to_vec())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("form.child_birth_date"), "{err}");

        let app = engine
            .create_dossier("lan".into(), new, form.clone())
            .await
            .unwrap();
        let stored = engine.dossier_form(app.id.clone()).await.unwrap();
        assert_eq!(stored.procedure_version, 3);
        assert_eq!(stored.values.len(), 2);
        let mut more = form;
        more.push(FormEntry {
            name: "mother".into(),
            value: FormValue::Person {
                name: "Lò Thị Hương".into(),
                citizen_id: Some("011198001234".into()),
                birth_date: Some("1998-01-02".into()),
            },
        });
        let edited = engine
            .set_form_values("lan".into(), app.id.clone(), more)
            .await
            .unwrap();
        assert_eq!(edited.values.len(), 3);
    }
}
