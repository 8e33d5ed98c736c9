//! The receipt a citizen takes home (giấy tiếp nhận hồ sơ và hẹn trả kết quả), signed by the
//! tablet that took the dossier, and its QR payload that any tablet of the province verifies
//! offline.
//!
//! Contract:
//! - [`Receipt`] holds what the paper states: dossier number, record id, applicant, procedure and
//!   its version (the catalogue version the device had), papers received, fees, received time,
//!   appointment (due) date, officer, commune, device and signing time.
//! - The QR payload is `base45(format byte ‖ postcard(receipt) ‖ Ed25519 signature)`, at most
//!   [`MAX_PAYLOAD_BYTES`] characters. Base45 uses exactly QR's alphanumeric alphabet (5.5 bits a
//!   character), so the payload needs fewer QR modules than base64url in byte mode (8 bits a
//!   character; `tests::base45_needs_fewer_qr_modules_than_base64url`). A long name or many papers
//!   still fit: strings are cut at a character boundary and lists keep their first entries with a
//!   count of those left out (`papers_omitted`, `fees_omitted`); the signature covers the bytes
//!   as encoded, truncation included, so what the QR says is exactly what was signed.
//! - [`verify_payload`] is the one verification, on a tablet (with the province's
//!   [`KeyList`] it holds) and on the server alike: the payload is decoded within bounds, the
//!   signature is checked over the exact bytes with the device's key valid at the signing time,
//!   and only then is the content decoded. Anything else is refused with a
//!   [`SignatureRefusal`] whose code says why (`malformed`, `unknown_device`, `key_revoked`,
//!   `key_replaced`, `bad_signature`).
//! - [`pdf`] renders an A5 page with the Vietnamese text and the QR code.

pub mod base45;
pub mod pdf;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::catalogue::CivilDate;
use crate::keys::{DeviceSigningKey, KeyList, SIGNATURE_LEN, Signature, SignatureRefusal};
use crate::record::{Application, DeviceId, RecordId};

/// Most characters a QR payload may have.
pub const MAX_PAYLOAD_BYTES: usize = 600;
/// Format byte of this layout.
const FORMAT_V1: u8 = 1;
/// Signed messages start with this, so a receipt signature can never be taken for a push's.
const DOMAIN: &[u8] = b"communesync/receipt/v1\0";
/// Longest text a verifier reads before refusing it as malformed (bounded work on junk).
const MAX_SCANNED_CHARS: usize = 2 * MAX_PAYLOAD_BYTES;

/// A paper received, as the receipt lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptPaper {
    /// What it is.
    pub name: String,
    /// Copies received.
    pub copies: u32,
    /// Whether the original was shown.
    pub original: bool,
}

/// A fee, as the receipt lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptFee {
    /// What it is for.
    pub name: String,
    /// Amount in đồng.
    pub amount_vnd: u64,
    /// Whether it was paid at the desk.
    pub paid: bool,
}

/// What a receipt states (and its QR payload carries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Dossier number (empty when the record has none).
    pub dossier_number: String,
    /// The record.
    pub record_id: RecordId,
    /// Commune code.
    pub commune_code: String,
    /// Procedure code.
    pub procedure_code: String,
    /// Version of the procedure: the province catalogue's version the device had at intake.
    pub procedure_version: u64,
    /// Applicant's name.
    pub applicant_name: String,
    /// Applicant's identity number.
    pub applicant_id_number: String,
    /// Papers received (the first ones, when there are too many for the QR code).
    pub papers: Vec<ReceiptPaper>,
    /// Papers left out of `papers` for room.
    pub papers_omitted: u32,
    /// Fees (the first ones).
    pub fees: Vec<ReceiptFee>,
    /// Fees left out of `fees` for room.
    pub fees_omitted: u32,
    /// When the dossier was received (ms since the epoch).
    pub received_at: i64,
    /// Appointment date for the result, as a Julian day number (see [`Receipt::due_date`]).
    pub due_julian_day: i32,
    /// Officer who received it.
    pub officer: String,
    /// Device that signed.
    pub device: DeviceId,
    /// When it was signed (ms since the epoch, the device's best time).
    pub signed_at: i64,
}

impl Receipt {
    /// The receipt of `application` (its creation data), by `device` with catalogue version
    /// `procedure_version`, signed at `signed_at`.
    pub fn of_application(
        application: &Application,
        device: DeviceId,
        procedure_version: u64,
        signed_at: i64,
    ) -> Self {
        Receipt {
            dossier_number: application.dossier_number.clone().unwrap_or_default(),
            record_id: application.id,
            commune_code: application.commune_code.clone(),
            procedure_code: application.procedure_code.clone(),
            procedure_version,
            applicant_name: application.applicant.name.nfc().collect(),
            applicant_id_number: application.applicant.id_number.clone(),
            papers: application
                .documents
                .iter()
                .map(|d| ReceiptPaper {
                    name: d.name.nfc().collect(),
                    copies: d.copies,
                    original: d.original,
                })
                .collect(),
            papers_omitted: 0,
            fees: application
                .fees
                .iter()
                .map(|f| ReceiptFee {
                    name: f.name.nfc().collect(),
                    amount_vnd: f.amount_vnd,
                    paid: f.paid,
                })
                .collect(),
            fees_omitted: 0,
            received_at: application.received_at,
            due_julian_day: application.due_at.0.to_julian_day(),
            officer: application.created_by.officer.clone(),
            device,
            signed_at,
        }
    }

    /// The appointment date.
    pub fn due_date(&self) -> Option<CivilDate> {
        time::Date::from_julian_day(self.due_julian_day)
            .ok()
            .map(CivilDate)
    }

    /// Every paper, including those the QR payload left out.
    pub fn papers_total(&self) -> u64 {
        self.papers.len() as u64 + u64::from(self.papers_omitted)
    }
}

/// A receipt with its signed QR payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    /// What the payload states (after any truncation for room).
    pub receipt: Receipt,
    /// The QR payload (base45 text, at most [`MAX_PAYLOAD_BYTES`]).
    pub payload: String,
}

/// Caps applied in turn until the payload fits: (longest string in bytes, papers kept, fees kept).
const FIT_STEPS: &[(usize, usize, usize)] = &[
    (usize::MAX, usize::MAX, usize::MAX),
    (96, 12, 6),
    (64, 8, 4),
    (48, 5, 3),
    (40, 3, 2),
    (32, 2, 1),
    (24, 1, 1),
    (16, 0, 0),
];

/// Signs `receipt` with `key`, shortening it as [`FIT_STEPS`] says until its payload fits.
pub fn sign(receipt: &Receipt, key: &DeviceSigningKey) -> crate::Result<SignedReceipt> {
    for &(max_text, max_papers, max_fees) in FIT_STEPS {
        let fitted = fit(receipt, max_text, max_papers, max_fees);
        let body = postcard::to_stdvec(&fitted)
            .map_err(|e| crate::Error::invalid("receipt", e.to_string()))?;
        let mut bytes = Vec::with_capacity(1 + body.len() + SIGNATURE_LEN);
        bytes.push(FORMAT_V1);
        bytes.extend_from_slice(&body);
        let signature = key.sign(&signed_message(&bytes));
        bytes.extend_from_slice(&signature.0);
        let payload = base45::encode(&bytes);
        if payload.len() <= MAX_PAYLOAD_BYTES {
            return Ok(SignedReceipt {
                receipt: fitted,
                payload,
            });
        }
    }
    Err(crate::Error::invalid(
        "receipt",
        "does not fit a QR payload even shortened",
    ))
}

fn signed_message(format_and_body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(DOMAIN.len() + format_and_body.len());
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(format_and_body);
    message
}

fn fit(receipt: &Receipt, max_text: usize, max_papers: usize, max_fees: usize) -> Receipt {
    let cut = |s: &str| truncate(s, max_text);
    let papers_kept = receipt.papers.len().min(max_papers);
    let fees_kept = receipt.fees.len().min(max_fees);
    Receipt {
        // Never cut: it is what the citizen quotes (at most MAX_NUMBER_LEN, which fits).
        dossier_number: receipt.dossier_number.clone(),
        commune_code: truncate(&receipt.commune_code, 40),
        procedure_code: truncate(&receipt.procedure_code, 40),
        applicant_name: cut(&receipt.applicant_name),
        applicant_id_number: truncate(&receipt.applicant_id_number, 20),
        papers: receipt.papers[..papers_kept]
            .iter()
            .map(|p| ReceiptPaper {
                name: cut(&p.name),
                ..p.clone()
            })
            .collect(),
        papers_omitted: receipt
            .papers_omitted
            .saturating_add(u32::try_from(receipt.papers.len() - papers_kept).unwrap_or(u32::MAX)),
        fees: receipt.fees[..fees_kept]
            .iter()
            .map(|f| ReceiptFee {
                name: cut(&f.name),
                ..f.clone()
            })
            .collect(),
        fees_omitted: receipt
            .fees_omitted
            .saturating_add(u32::try_from(receipt.fees.len() - fees_kept).unwrap_or(u32::MAX)),
        officer: cut(&receipt.officer),
        ..receipt.clone()
    }
}

/// `text` cut to at most `max` bytes at a character boundary, with "…" when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let room = max.saturating_sub('…'.len_utf8());
    let mut end = room;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Verifies a scanned QR payload against the province's `keys`: decodes within bounds, checks
/// the signature over the exact bytes with the device's key valid at the signing time, then
/// reads the content.
pub fn verify_payload(payload: &str, keys: &KeyList) -> Result<Receipt, SignatureRefusal> {
    let text = payload.trim();
    if text.len() > MAX_SCANNED_CHARS {
        return Err(SignatureRefusal::Malformed(format!(
            "{} characters, more than a receipt's {MAX_PAYLOAD_BYTES}",
            text.len()
        )));
    }
    let bytes = base45::decode(text)
        .map_err(|e| SignatureRefusal::Malformed(format!("not a receipt payload: {e}")))?;
    if bytes.len() < 1 + SIGNATURE_LEN || bytes[0] != FORMAT_V1 {
        return Err(SignatureRefusal::Malformed(
            "not a communesync receipt (unknown format)".into(),
        ));
    }
    let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
    let signature = Signature::from_slice(signature)
        .ok_or_else(|| SignatureRefusal::Malformed("signature".into()))?;
    // The device and the signing time are read before the signature is checked (to pick the
    // key); nothing else of the content is trusted until it is.
    let (receipt, rest) = postcard::take_from_bytes::<Receipt>(&signed[1..])
        .map_err(|e| SignatureRefusal::Malformed(format!("content: {e}")))?;
    if !rest.is_empty() {
        return Err(SignatureRefusal::Malformed("trailing bytes".into()));
    }
    keys.verify(
        receipt.device,
        receipt.signed_at,
        &signed_message(signed),
        &signature,
    )?;
    Ok(receipt)
}

#[cfg(test)]
mod tests;
