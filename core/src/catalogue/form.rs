//! A procedure's form: typed fields, and the check of a dossier's values against them.
//!
//! Contract: [`FormSchema::check`] is a pure function of the schema, the values and the day of
//! receipt, so the device (at intake and at every edit) and the server (against the procedure
//! version the dossier pinned) reach the same verdict. Every value is bounded in size whatever
//! the schema says ([`MAX_VALUE_BYTES`], [`MAX_FORM_FIELDS`]); a value of a field the schema
//! does not name is refused, so a form cannot carry data nobody validates.
//!
//! The citizen identity number (CCCD) check follows Circular 07/2016/TT-BCA (art. 7) as amended
//! by Circular 59/2021/TT-BCA: 12 digits; the first three the code of the province where the
//! birth was registered (one of the 63 codes of the circular's annex; the 2025 merger of
//! provinces kept numbers already issued); the fourth the century and sex (0/1 for the 20th
//! century, male/female, 2/3 for the 21st, 4/5, 6/7 and 8/9 for the next three); the fifth and
//! sixth the last two digits of the year of birth; six random digits. Checked here: the length
//! and digits, the province code, and that the year of birth the number encodes is not after
//! the day of receipt. A person's date of birth, when given, must agree with the number's
//! century and year.

use std::collections::BTreeMap;

use autosurgeon::{Hydrate, HydrateError, Reconcile, Reconciler};
use serde::{Deserialize, Serialize};

use super::date::CivilDate;

/// Most fields a form has, and most values a dossier carries.
pub const MAX_FORM_FIELDS: usize = 64;
/// Most bytes of one value (as its JSON), whatever its type.
pub const MAX_VALUE_BYTES: usize = 2048;
/// Longest field name.
pub const MAX_FIELD_NAME: usize = 64;

/// Province codes of the CCCD (annex of Circular 07/2016/TT-BCA).
const PROVINCE_CODES: [u16; 63] = [
    1, 2, 4, 6, 8, 10, 11, 12, 14, 15, 17, 19, 20, 22, 24, 25, 26, 27, 30, 31, 33, 34, 35, 36, 37,
    38, 40, 42, 44, 45, 46, 48, 49, 51, 52, 54, 56, 58, 60, 62, 64, 66, 67, 68, 70, 72, 74, 75, 77,
    79, 80, 82, 83, 84, 86, 87, 89, 91, 92, 93, 94, 95, 96,
];

/// The form of a procedure: its fields, in display order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormSchema {
    /// Fields, each name once.
    #[serde(default)]
    pub fields: Vec<FieldSpec>,
}

/// One field of a form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSpec {
    /// Key of the value in the dossier (`child_name`).
    pub name: String,
    /// Label shown to the officer ("Họ, chữ đệm, tên người được khai sinh").
    pub label: String,
    /// Type and constraints.
    #[serde(flatten)]
    pub kind: FieldKind,
    /// Whether the dossier must have a value.
    #[serde(default)]
    pub required: bool,
    /// Help shown under the field.
    #[serde(default)]
    pub help: String,
}

/// A field's type, with its constraints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FieldKind {
    /// Free text, at most `max_len` characters (and [`MAX_VALUE_BYTES`] bytes).
    Text {
        /// Longest value in characters.
        #[serde(default)]
        max_len: Option<u32>,
    },
    /// A whole number within bounds.
    Number {
        /// Smallest value.
        #[serde(default)]
        min: Option<i64>,
        /// Largest value.
        #[serde(default)]
        max: Option<i64>,
    },
    /// A civil date.
    Date,
    /// One of the options.
    Choice {
        /// The options, as stored and shown.
        options: Vec<String>,
    },
    /// A person (name, optional CCCD and date of birth).
    Person,
    /// A citizen identity number (CCCD), format-checked.
    CitizenId,
    /// An address.
    Address,
}

impl FieldKind {
    /// The type's name (`text`, `number`...).
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldKind::Text { .. } => "text",
            FieldKind::Number { .. } => "number",
            FieldKind::Date => "date",
            FieldKind::Choice { .. } => "choice",
            FieldKind::Person => "person",
            FieldKind::CitizenId => "citizen_id",
            FieldKind::Address => "address",
        }
    }
}

/// A person named on a form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonValue {
    /// Full name.
    pub name: String,
    /// Citizen identity number, if known.
    #[serde(default)]
    pub citizen_id: Option<String>,
    /// Date of birth, if known.
    #[serde(default)]
    pub birth_date: Option<CivilDate>,
}

/// An address on a form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressValue {
    /// House number, street or hamlet (thôn, bản, tổ dân phố).
    pub detail: String,
    /// Commune or ward.
    #[serde(default)]
    pub commune: String,
    /// Province or city.
    #[serde(default)]
    pub province: String,
}

/// A typed value of a form field. In the record each value is one register (its JSON), so
/// concurrent edits of different fields merge and of one field surface as a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum FormValue {
    /// Text.
    Text(String),
    /// A whole number.
    Number(i64),
    /// A date.
    Date(CivilDate),
    /// One option of a choice.
    Choice(String),
    /// A person.
    Person(PersonValue),
    /// A citizen identity number.
    CitizenId(String),
    /// An address.
    Address(AddressValue),
}

impl FormValue {
    /// The value's type name, as [`FieldKind::type_name`].
    pub fn type_name(&self) -> &'static str {
        match self {
            FormValue::Text(_) => "text",
            FormValue::Number(_) => "number",
            FormValue::Date(_) => "date",
            FormValue::Choice(_) => "choice",
            FormValue::Person(_) => "person",
            FormValue::CitizenId(_) => "citizen_id",
            FormValue::Address(_) => "address",
        }
    }

    fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Reconcile for FormValue {
    type Key<'a> = autosurgeon::reconcile::NoKey;
    fn reconcile<R: Reconciler>(&self, mut reconciler: R) -> Result<(), R::Error> {
        reconciler.str(self.json())
    }
}

impl Hydrate for FormValue {
    fn hydrate_string(s: &str) -> Result<Self, HydrateError> {
        serde_json::from_str(s).map_err(|e| HydrateError::unexpected("a form value", e.to_string()))
    }
}

/// The values of a dossier's form, by field name.
pub type FormValues = BTreeMap<String, FormValue>;

/// One way a form breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormProblem {
    /// The field (`form.child_name`).
    pub field: String,
    /// Why.
    pub reason: String,
}

impl FormSchema {
    /// The field named `name`.
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Checks the schema itself (what the operator publishes): names unique, non-empty and
    /// short, choices with options, bounds in order.
    pub fn validate(&self) -> Result<(), String> {
        if self.fields.len() > MAX_FORM_FIELDS {
            return Err(format!("more than {MAX_FORM_FIELDS} fields"));
        }
        for (i, f) in self.fields.iter().enumerate() {
            if f.name.trim().is_empty() || f.name.len() > MAX_FIELD_NAME {
                return Err(format!("field {i}: a name of 1 to {MAX_FIELD_NAME} bytes"));
            }
            if self.fields[..i].iter().any(|g| g.name == f.name) {
                return Err(format!("field {:?} appears twice", f.name));
            }
            match &f.kind {
                FieldKind::Choice { options } if options.is_empty() => {
                    return Err(format!("field {:?}: a choice without options", f.name));
                }
                FieldKind::Number {
                    min: Some(min),
                    max: Some(max),
                } if min > max => {
                    return Err(format!("field {:?}: min above max", f.name));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Every way `values` break this schema, for a dossier received on `received_on`; empty
    /// when the form is good.
    pub fn check(&self, values: &FormValues, received_on: CivilDate) -> Vec<FormProblem> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, reason: String| {
            problems.push(FormProblem {
                field: format!("form.{field}"),
                reason,
            })
        };
        if values.len() > MAX_FORM_FIELDS {
            problem("", format!("more than {MAX_FORM_FIELDS} values"));
            return problems;
        }
        for (name, value) in values {
            let Some(spec) = self.field(name) else {
                problem(name, "is not a field of this procedure's form".to_owned());
                continue;
            };
            if value.json().len() > MAX_VALUE_BYTES {
                problem(name, format!("longer than {MAX_VALUE_BYTES} bytes"));
                continue;
            }
            if let Err(reason) = check_value(&spec.kind, value, received_on) {
                problem(name, reason);
            }
        }
        for spec in self.fields.iter().filter(|f| f.required) {
            if !values.contains_key(&spec.name) {
                problem(&spec.name, "is required".to_owned());
            }
        }
        problems
    }
}

fn check_text(value: &str, required_non_empty: bool) -> Result<(), String> {
    if required_non_empty && value.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err("contains control characters".to_owned());
    }
    Ok(())
}

fn check_value(kind: &FieldKind, value: &FormValue, received_on: CivilDate) -> Result<(), String> {
    match (kind, value) {
        (FieldKind::Text { max_len }, FormValue::Text(text)) => {
            check_text(text, false)?;
            if let Some(max) = max_len
                && text.chars().count() > *max as usize
            {
                return Err(format!("longer than {max} characters"));
            }
            Ok(())
        }
        (FieldKind::Number { min, max }, FormValue::Number(n)) => {
            if min.is_some_and(|min| *n < min) || max.is_some_and(|max| *n > max) {
                return Err(format!(
                    "{n} is outside {}..{}",
                    min.map(|m| m.to_string()).unwrap_or_default(),
                    max.map(|m| m.to_string()).unwrap_or_default()
                ));
            }
            Ok(())
        }
        (FieldKind::Date, FormValue::Date(_)) => Ok(()),
        (FieldKind::Choice { options }, FormValue::Choice(choice)) => {
            if options.iter().any(|o| o == choice) {
                Ok(())
            } else {
                Err(format!("{choice:?} is not one of the options"))
            }
        }
        (FieldKind::Person, FormValue::Person(person)) => {
            check_text(&person.name, true)?;
            if let Some(id) = &person.citizen_id {
                let year = check_citizen_id(id, received_on)?;
                if let Some(born) = person.birth_date
                    && born.0.year() != year
                {
                    return Err(format!(
                        "the citizen id says born in {year}, the date of birth {born}"
                    ));
                }
            }
            if let Some(born) = person.birth_date
                && born > received_on
            {
                return Err("born after the day of receipt".to_owned());
            }
            Ok(())
        }
        (FieldKind::CitizenId, FormValue::CitizenId(id)) => {
            check_citizen_id(id, received_on).map(|_| ())
        }
        (FieldKind::Address, FormValue::Address(address)) => {
            check_text(&address.detail, true)?;
            check_text(&address.commune, false)?;
            check_text(&address.province, false)
        }
        (kind, value) => Err(format!(
            "a {} value where the form wants a {}",
            value.type_name(),
            kind.type_name()
        )),
    }
}

/// Checks a citizen identity number (CCCD) as the module documents; returns the year of birth
/// it encodes.
pub fn check_citizen_id(id: &str, received_on: CivilDate) -> Result<i32, String> {
    let bytes = id.as_bytes();
    if bytes.len() != 12 || !bytes.iter().all(u8::is_ascii_digit) {
        return Err("a citizen id number is 12 digits".to_owned());
    }
    let digit = |i: usize| i32::from(bytes[i] - b'0');
    let province = digit(0) * 100 + digit(1) * 10 + digit(2);
    if !PROVINCE_CODES
        .iter()
        .any(|&code| i32::from(code) == province)
    {
        return Err(format!("{province:03} is not a province code"));
    }
    let century = 1900 + (digit(3) / 2) * 100;
    let year = century + digit(4) * 10 + digit(5);
    if year > received_on.0.year() {
        return Err(format!("the number says born in {year}, after the receipt"));
    }
    Ok(year)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> CivilDate {
        s.parse().unwrap()
    }

    fn birth_form() -> FormSchema {
        serde_json::from_str(
            r#"{"fields":[
            {"name":"child_name","label":"Họ tên người được khai sinh","type":"text","max_len":100,"required":true},
            {"name":"child_birth_date","label":"Ngày sinh","type":"date","required":true},
            {"name":"sex","label":"Giới tính","type":"choice","options":["Nam","Nữ"],"required":true},
            {"name":"mother","label":"Mẹ","type":"person","required":true,"help":"Theo CCCD"},
            {"name":"declarant_id","label":"Số CCCD người đi khai","type":"citizen_id"},
            {"name":"birth_place","label":"Nơi sinh","type":"address"},
            {"name":"birth_order","label":"Con thứ","type":"number","min":1,"max":20}
        ]}"#,
        )
        .unwrap()
    }

    fn good_values() -> FormValues {
        let mut v = FormValues::new();
        v.insert("child_name".into(), FormValue::Text("Lò Thị Mai".into()));
        v.insert(
            "child_birth_date".into(),
            FormValue::Date(day("2026-11-20")),
        );
        v.insert("sex".into(), FormValue::Choice("Nữ".into()));
        v.insert(
            "mother".into(),
            FormValue::Person(PersonValue {
                name: "Lò Thị Hương".into(),
                citizen_id: Some("011198001234".into()),
                birth_date: Some(day("1998-03-04")),
            }),
        );
        v.insert(
            "declarant_id".into(),
            FormValue::CitizenId("011095004321".into()),
        );
        v.insert("birth_order".into(), FormValue::Number(2));
        v
    }

    #[test]
    fn a_good_form_passes_and_its_schema_is_valid() {
        let form = birth_form();
        form.validate().unwrap();
        assert_eq!(form.check(&good_values(), day("2026-11-23")), vec![]);
    }

    #[test]
    fn every_kind_of_break_is_named() {
        let form = birth_form();
        let on = day("2026-11-23");
        let broken = |edit: &dyn Fn(&mut FormValues)| {
            let mut v = good_values();
            edit(&mut v);
            let problems = form.check(&v, on);
            assert_eq!(problems.len(), 1, "{problems:?}");
            problems[0].field.clone()
        };
        assert_eq!(broken(&|v| drop(v.remove("child_name"))), "form.child_name");
        assert_eq!(
            broken(&|v| drop(v.insert("sex".into(), FormValue::Choice("Khác".into())))),
            "form.sex"
        );
        assert_eq!(
            broken(&|v| drop(v.insert("birth_order".into(), FormValue::Number(0)))),
            "form.birth_order"
        );
        assert_eq!(
            broken(&|v| drop(v.insert("child_name".into(), FormValue::Number(3)))),
            "form.child_name"
        );
        assert_eq!(
            broken(&|v| drop(v.insert("child_name".into(), FormValue::Text("x".repeat(101))))),
            "form.child_name"
        );
        assert_eq!(
            broken(&|v| drop(v.insert("nickname".into(), FormValue::Text("Bé".into())))),
            "form.nickname"
        );
        assert_eq!(
            broken(&|v| drop(v.insert(
                "declarant_id".into(),
                FormValue::CitizenId("003095004321".into())
            ))),
            "form.declarant_id"
        );
        // The mother's number says 1998, her date of birth 1999.
        assert_eq!(
            broken(&|v| drop(v.insert(
                "mother".into(),
                FormValue::Person(PersonValue {
                    name: "Lò Thị Hương".into(),
                    citizen_id: Some("011198001234".into()),
                    birth_date: Some(day("1999-03-04")),
                })
            ))),
            "form.mother"
        );
        assert_eq!(
            broken(&|v| drop(v.insert(
                "birth_place".into(),
                FormValue::Address(AddressValue::default())
            ))),
            "form.birth_place"
        );
        assert_eq!(
            broken(&|v| drop(v.insert("child_name".into(), FormValue::Text("a\u{0}b".into())))),
            "form.child_name"
        );
    }

    #[test]
    fn citizen_ids_follow_the_circular() {
        let on = day("2026-11-23");
        // Hà Nội (001), male born 1985; Điện Biên (011), female born 2003; Cà Mau (096).
        assert_eq!(check_citizen_id("001085012345", on), Ok(1985));
        assert_eq!(check_citizen_id("011303012345", on), Ok(2003));
        assert_eq!(check_citizen_id("096200000001", on), Ok(2000));
        for bad in [
            "01108501234",   // 11 digits
            "0110850123456", // 13
            "01108501234a",
            "０１１０８５０１２３４５", // full-width digits
            "003085012345",             // 003 is not a province code
            "097085012345",
            "011227012345", // 21st century, born 2027: after the receipt
            "011485012345", // 22nd century
        ] {
            assert!(check_citizen_id(bad, on).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_schemas_are_refused() {
        let mut form = birth_form();
        form.fields.push(form.fields[0].clone());
        assert!(form.validate().is_err());
        let choice: FormSchema = serde_json::from_str(
            r#"{"fields":[{"name":"a","label":"A","type":"choice","options":[]}]}"#,
        )
        .unwrap();
        assert!(choice.validate().is_err());
        assert!(
            serde_json::from_str::<FormSchema>(
                r#"{"fields":[{"name":"a","label":"A","type":"colour"}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn values_round_trip_through_json() {
        for value in good_values().into_values() {
            let json = serde_json::to_string(&value).unwrap();
            assert_eq!(serde_json::from_str::<FormValue>(&json).unwrap(), value);
        }
        assert_eq!(
            serde_json::to_string(&FormValue::Number(3)).unwrap(),
            r#"{"type":"number","value":3}"#
        );
    }
}
