//! The printable receipt: one A5 page with the Vietnamese text and the QR code of the signed
//! payload. The text uses DejaVu Sans (subset to Latin and Vietnamese, `core/assets/fonts`, with
//! its license), embedded in the PDF, so it prints the same everywhere; text is NFC-normalized
//! so each Vietnamese letter is one precomposed glyph of the font.

use printpdf::{IndirectFontRef, Mm, PdfDocument, PdfLayerReference, Rect};
use qrcode::{EcLevel, QrCode};
use time::{OffsetDateTime, UtcOffset};
use unicode_normalization::UnicodeNormalization;

use super::SignedReceipt;

const FONT_REGULAR: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-vi.ttf");
const FONT_BOLD: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold-vi.ttf");

const PAGE_WIDTH: f32 = 148.0;
const PAGE_HEIGHT: f32 = 210.0;
const MARGIN: f32 = 12.0;
/// Side of the QR code on paper: modules of ~0.55 mm for a payload of 600 characters, which
/// phone cameras read at arm's length.
const QR_SIDE: f32 = 50.0;
/// Characters per line of body text at 9.5 pt across the page.
const LINE_CHARS: usize = 68;

/// The receipt as a one-page A5 PDF.
pub fn render(signed: &SignedReceipt, commune_name: Option<&str>) -> crate::Result<Vec<u8>> {
    let r = &signed.receipt;
    let (doc, page, layer) = PdfDocument::new(
        format!("Giấy tiếp nhận hồ sơ {}", r.dossier_number),
        Mm(PAGE_WIDTH),
        Mm(PAGE_HEIGHT),
        "receipt",
    );
    let pdf_error = |e: printpdf::Error| crate::Error::invalid("receipt pdf", e.to_string());
    let regular = doc
        .add_external_font(std::io::Cursor::new(FONT_REGULAR))
        .map_err(pdf_error)?;
    let bold = doc
        .add_external_font(std::io::Cursor::new(FONT_BOLD))
        .map_err(pdf_error)?;
    let layer = doc.get_page(page).get_layer(layer);
    let mut pen = Pen {
        layer: &layer,
        y: PAGE_HEIGHT - MARGIN - 4.0,
    };

    let commune = commune_name.unwrap_or(&r.commune_code);
    pen.centered(&format!("UBND {}", commune.to_uppercase()), 8.5, &bold);
    pen.centered("CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM", 9.0, &bold);
    pen.centered("Độc lập - Tự do - Hạnh phúc", 9.0, &regular);
    pen.y -= 4.0;
    pen.centered("GIẤY TIẾP NHẬN HỒ SƠ VÀ HẸN TRẢ KẾT QUẢ", 12.0, &bold);
    pen.centered(&format!("Mã hồ sơ: {}", r.dossier_number), 10.5, &bold);
    pen.y -= 3.0;

    pen.line(&format!("Người nộp hồ sơ: {}", r.applicant_name), &regular);
    if !r.applicant_id_number.is_empty() {
        pen.line(&format!("Số CCCD: {}", r.applicant_id_number), &regular);
    }
    pen.line(
        &format!(
            "Thủ tục: {} (danh mục phiên bản {})",
            r.procedure_code, r.procedure_version
        ),
        &regular,
    );
    pen.line(
        &format!("Thời gian tiếp nhận: {}", vietnam_time(r.received_at)),
        &regular,
    );
    let due = r
        .due_date()
        .map_or_else(|| "—".to_owned(), |d| format_date(d.0));
    pen.line(&format!("Ngày hẹn trả kết quả: {due}"), &bold);
    pen.line(&format!("Cán bộ tiếp nhận: {}", r.officer), &regular);
    pen.y -= 1.5;
    pen.line("Giấy tờ đã nhận:", &bold);
    for (i, paper) in r.papers.iter().enumerate() {
        let kind = if paper.original {
            "bản chính"
        } else {
            "bản sao"
        };
        pen.line(
            &format!("{}. {} ({} {kind})", i + 1, paper.name, paper.copies),
            &regular,
        );
    }
    if r.papers_omitted > 0 {
        pen.line(&format!("… và {} giấy tờ khác", r.papers_omitted), &regular);
    }
    if !r.fees.is_empty() || r.fees_omitted > 0 {
        pen.line("Phí, lệ phí:", &bold);
        for fee in &r.fees {
            let paid = if fee.paid {
                "đã nộp"
            } else {
                "chưa nộp"
            };
            pen.line(
                &format!(
                    "- {}: {} đồng ({paid})",
                    fee.name,
                    group_thousands(fee.amount_vnd)
                ),
                &regular,
            );
        }
        if r.fees_omitted > 0 {
            pen.line(&format!("… và {} khoản khác", r.fees_omitted), &regular);
        }
    }

    let code = QrCode::with_error_correction_level(signed.payload.as_bytes(), EcLevel::M)
        .map_err(|e| crate::Error::invalid("receipt qr", e.to_string()))?;
    let qr_bottom = MARGIN + 8.0;
    draw_qr(&layer, &code, PAGE_WIDTH - MARGIN - QR_SIDE, qr_bottom);
    layer.use_text(
        "Quét mã QR để kiểm tra giấy này",
        7.5,
        Mm(PAGE_WIDTH - MARGIN - QR_SIDE),
        Mm(qr_bottom - 4.5),
        &regular,
    );
    layer.use_text(
        format!("Ký số bởi thiết bị {}", short_device(&r.device.to_string())),
        7.0,
        Mm(MARGIN),
        Mm(qr_bottom + 4.0),
        &regular,
    );
    layer.use_text(
        format!("Mã điện tử: {}", r.record_id),
        7.0,
        Mm(MARGIN),
        Mm(qr_bottom),
        &regular,
    );
    doc.save_to_bytes().map_err(pdf_error)
}

struct Pen<'a> {
    layer: &'a PdfLayerReference,
    y: f32,
}

impl Pen<'_> {
    fn centered(&mut self, text: &str, size: f32, font: &IndirectFontRef) {
        let text: String = text.nfc().collect();
        // DejaVu Sans (bold, capitals) is about 0.6 em a character.
        let width = text.chars().count() as f32 * size * 0.6 * 0.3528;
        let x = ((PAGE_WIDTH - width) / 2.0).max(MARGIN);
        self.layer.use_text(text, size, Mm(x), Mm(self.y), font);
        self.y -= size * 0.3528 * 1.45;
    }

    /// Body text, wrapped at word boundaries; stops above the QR code.
    fn line(&mut self, text: &str, font: &IndirectFontRef) {
        const SIZE: f32 = 9.5;
        let text: String = text.nfc().collect();
        for piece in wrap(&text, LINE_CHARS) {
            if self.y < MARGIN + QR_SIDE + 12.0 {
                return;
            }
            self.layer
                .use_text(piece, SIZE, Mm(MARGIN), Mm(self.y), font);
            self.y -= SIZE * 0.3528 * 1.4;
        }
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split(' ') {
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut current));
            current.push_str("    ");
        }
        if !current.is_empty() && !current.ends_with("    ") {
            current.push(' ');
        }
        current.push_str(word);
    }
    lines.push(current);
    lines
}

fn draw_qr(layer: &PdfLayerReference, code: &QrCode, left: f32, bottom: f32) {
    let width = code.width();
    let module = QR_SIDE / width as f32;
    let colors = code.to_colors();
    for (row, line) in colors.chunks(width).enumerate() {
        let top = bottom + QR_SIDE - row as f32 * module;
        // One rectangle per run of dark modules: a few hundred operations, not thousands.
        let mut col = 0;
        while col < width {
            if line[col] == qrcode::Color::Dark {
                let start = col;
                while col < width && line[col] == qrcode::Color::Dark {
                    col += 1;
                }
                layer.add_rect(Rect::new(
                    Mm(left + start as f32 * module),
                    Mm(top - module),
                    Mm(left + col as f32 * module),
                    Mm(top),
                ));
            } else {
                col += 1;
            }
        }
    }
}

fn vietnam_time(ms: i64) -> String {
    let offset = UtcOffset::from_hms(7, 0, 0).unwrap_or(UtcOffset::UTC);
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(at) => {
            let at = at.to_offset(offset);
            format!(
                "{:02} giờ {:02} phút, ngày {}",
                at.hour(),
                at.minute(),
                format_date(at.date())
            )
        }
        Err(_) => "—".to_owned(),
    }
}

fn format_date(date: time::Date) -> String {
    format!(
        "{:02}/{:02}/{:04}",
        date.day(),
        u8::from(date.month()),
        date.year()
    )
}

fn group_thousands(amount: u64) -> String {
    let digits = amount.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('.');
        }
        out.push(c);
    }
    out
}

fn short_device(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(group_thousands(1_234_567), "1.234.567");
        assert_eq!(group_thousands(50_000), "50.000");
        assert_eq!(group_thousands(0), "0");
        assert_eq!(wrap("a b c", 3), vec!["a b", "    c"]);
        assert_eq!(vietnam_time(0), "07 giờ 00 phút, ngày 01/01/1970");
    }
}
