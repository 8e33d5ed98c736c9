//! The province's dossier number format: a template with placeholders.
//!
//! Placeholders: `{agency}` (exactly once), `{seq}` or `{seq:N}` (exactly once, zero-padded to
//! N digits, 1 to 12), `{yymmdd}` and `{yyyymmdd}` (the day of receipt, Vietnam time). Everything
//! else is literal and must be ASCII punctuation or a space: values are letters and digits, so a
//! literal between two placeholders always shows where one ends (which makes rendering
//! injective). Two placeholders may not touch.

use std::fmt::Write as _;

use crate::catalogue::CivilDate;
use crate::record::DeviceId;
use crate::{Error, Result};

/// Longest template, in bytes.
const MAX_TEMPLATE_LEN: usize = 48;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Agency,
    Date { century: bool },
    Seq { width: usize },
}

/// A parsed, valid format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberFormat {
    template: String,
    parts: Vec<Part>,
}

/// The sequence part of a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// A number of a block granted by the server.
    Block(u64),
    /// A fallback number: `D<serial>-<n>`.
    Serial {
        /// The id of the first block the device was granted.
        serial: u64,
        /// The device's fallback counter.
        n: u64,
    },
    /// A fallback number of a device never granted a block: `U<device id hex>-<n>`.
    Device {
        /// The device.
        device: DeviceId,
        /// The device's fallback counter.
        n: u64,
    },
}

impl Sequence {
    /// Whether this is a fallback number.
    pub fn is_fallback(&self) -> bool {
        !matches!(self, Sequence::Block(_))
    }
}

impl Default for NumberFormat {
    fn default() -> Self {
        // The default template is valid; the fallback keeps this infallible all the same.
        NumberFormat::parse(super::DEFAULT_FORMAT).unwrap_or(NumberFormat {
            template: String::new(),
            parts: vec![
                Part::Agency,
                Part::Literal("-".into()),
                Part::Seq { width: 6 },
            ],
        })
    }
}

impl NumberFormat {
    /// Parses and checks a template.
    pub fn parse(template: &str) -> Result<Self> {
        let bad = |reason: &str| Error::invalid("dossier number format", reason.to_owned());
        if template.len() > MAX_TEMPLATE_LEN {
            return Err(bad("longer than 48 bytes"));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let end = after.find('}').ok_or_else(|| bad("a '{' is not closed"))?;
                let name = &after[..end];
                let part = match name {
                    "agency" => Part::Agency,
                    "yymmdd" => Part::Date { century: false },
                    "yyyymmdd" => Part::Date { century: true },
                    "seq" => Part::Seq { width: 1 },
                    _ => match name.strip_prefix("seq:").map(str::parse::<usize>) {
                        Some(Ok(width)) if (1..=12).contains(&width) => Part::Seq { width },
                        _ => {
                            return Err(bad(
                                "unknown placeholder (agency, yymmdd, yyyymmdd, seq, seq:N with N 1 to 12)",
                            ));
                        }
                    },
                };
                if matches!(parts.last(), Some(p) if !matches!(p, Part::Literal(_))) {
                    return Err(bad("two placeholders must be separated by a literal"));
                }
                parts.push(part);
                rest = &after[end + 1..];
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let literal = &rest[..end];
                if !literal.chars().all(|c| c == ' ' || c.is_ascii_graphic())
                    || literal.contains('}')
                {
                    return Err(bad("literal text must be printable ASCII"));
                }
                parts.push(Part::Literal(literal.to_owned()));
                rest = &rest[end..];
            }
        }
        // Where a literal touches a placeholder it shows with a delimiter, which no value
        // contains, where the value ends.
        let delimiter = |c: Option<char>| c.is_some_and(|c| c == ' ' || c.is_ascii_punctuation());
        for (index, part) in parts.iter().enumerate() {
            if let Part::Literal(text) = part {
                let after_placeholder = index > 0;
                let before_placeholder = index + 1 < parts.len();
                if (after_placeholder && !delimiter(text.chars().next()))
                    || (before_placeholder && !delimiter(text.chars().last()))
                {
                    return Err(bad(
                        "a placeholder must be delimited by punctuation or a space",
                    ));
                }
            }
        }
        let count = |f: fn(&Part) -> bool| parts.iter().filter(|p| f(p)).count();
        if count(|p| matches!(p, Part::Agency)) != 1
            || count(|p| matches!(p, Part::Seq { .. })) != 1
        {
            return Err(bad("needs {agency} and {seq} exactly once"));
        }
        Ok(NumberFormat {
            template: template.to_owned(),
            parts,
        })
    }

    /// The template as given.
    pub fn as_str(&self) -> &str {
        &self.template
    }

    /// The number of `sequence` of `agency` received on `day`.
    pub fn render(&self, agency: &str, day: CivilDate, sequence: Sequence) -> String {
        let mut out = String::new();
        for part in &self.parts {
            // Writing to a String cannot fail.
            let _ = match part {
                Part::Literal(text) => write!(out, "{text}"),
                Part::Agency => write!(out, "{agency}"),
                Part::Date { century } => {
                    let date = day.0;
                    let year = if *century {
                        date.year()
                    } else {
                        date.year().rem_euclid(100)
                    };
                    let width = if *century { 4 } else { 2 };
                    write!(
                        out,
                        "{year:0width$}{:02}{:02}",
                        u8::from(date.month()),
                        date.day()
                    )
                }
                Part::Seq { width } => match sequence {
                    Sequence::Block(n) => write!(out, "{n:0width$}"),
                    Sequence::Serial { serial, n } => write!(out, "D{serial}-{n}"),
                    Sequence::Device { device, n } => {
                        write!(out, "U{}-{n}", device.0.simple())
                    }
                },
            };
        }
        out
    }

    /// Reads `number` as a number of this format for `agency`: its sequence, or `None` when it
    /// is not one. The server checks with it that a pushed number is the pushing device's.
    pub fn sequence_of(&self, number: &str, agency: &str) -> Option<Sequence> {
        let mut rest = number;
        let mut sequence = None;
        for part in &self.parts {
            match part {
                Part::Literal(text) => rest = rest.strip_prefix(text.as_str())?,
                Part::Agency => {
                    rest = rest.strip_prefix(agency)?;
                }
                Part::Date { century } => {
                    let len = if *century { 8 } else { 6 };
                    let digits = rest.get(..len)?;
                    if !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    rest = &rest[len..];
                }
                Part::Seq { width } => {
                    let (found, after) = read_sequence(rest, *width)?;
                    sequence = Some(found);
                    rest = after;
                }
            }
        }
        if rest.is_empty() { sequence } else { None }
    }
}

/// Digits at the start of `text`, as a number, and what follows.
fn leading_number(text: &str) -> Option<(u64, usize, &str)> {
    let len = text.bytes().take_while(u8::is_ascii_digit).count();
    if len == 0 || len > 20 {
        return None;
    }
    let value = text[..len].parse().ok()?;
    Some((value, len, &text[len..]))
}

/// [`leading_number`] written as rendered: no leading zero.
fn canonical_number(text: &str) -> Option<(u64, &str)> {
    let (value, len, rest) = leading_number(text)?;
    (len == value.to_string().len()).then_some((value, rest))
}

fn read_sequence(text: &str, width: usize) -> Option<(Sequence, &str)> {
    if let Some(rest) = text.strip_prefix('D') {
        let (serial, rest) = canonical_number(rest)?;
        let (n, rest) = canonical_number(rest.strip_prefix('-')?)?;
        return Some((Sequence::Serial { serial, n }, rest));
    }
    if let Some(rest) = text.strip_prefix('U') {
        let hex = rest.get(..32)?;
        let device = uuid::Uuid::try_parse(hex).ok()?;
        if hex.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let (n, rest) = canonical_number(rest[32..].strip_prefix('-')?)?;
        return Some((
            Sequence::Device {
                device: DeviceId(device),
                n,
            },
            rest,
        ));
    }
    let (n, len, rest) = leading_number(text)?;
    // Exactly as rendered: padded to the width, with no extra leading zero.
    let rendered_len = format!("{n:0width$}").len();
    (len == rendered_len).then_some((Sequence::Block(n), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day() -> CivilDate {
        CivilDate::from_ymd(2026, 12, 6).unwrap()
    }

    #[test]
    fn the_default_renders_the_one_stop_shape() {
        let format = NumberFormat::default();
        assert_eq!(format.as_str(), "{agency}-{yymmdd}-{seq:6}");
        assert_eq!(
            format.render("01234", day(), Sequence::Block(42)),
            "01234-261206-000042"
        );
        assert_eq!(
            format.render("01234", day(), Sequence::Block(1_234_567)),
            "01234-261206-1234567"
        );
        assert_eq!(
            format.render("01234", day(), Sequence::Serial { serial: 17, n: 3 }),
            "01234-261206-D17-3"
        );
    }

    #[test]
    fn numbers_read_back_to_their_sequence() {
        let device = DeviceId::new();
        for template in [
            "{agency}-{yymmdd}-{seq:6}",
            "{seq:4}/{agency}",
            "HS {agency}.{yyyymmdd}.{seq}",
        ] {
            let format = NumberFormat::parse(template).unwrap();
            for sequence in [
                Sequence::Block(0),
                Sequence::Block(7),
                Sequence::Block(123_456_789),
                Sequence::Serial { serial: 9, n: 0 },
                Sequence::Device { device, n: 12 },
            ] {
                let number = format.render("01234", day(), sequence);
                assert_eq!(
                    format.sequence_of(&number, "01234"),
                    Some(sequence),
                    "{template} {number}"
                );
                assert_eq!(format.sequence_of(&number, "01235"), None);
                assert_eq!(
                    format
                        .sequence_of(&format!("{number}0"), "01234")
                        .filter(|s| *s == sequence),
                    None
                );
            }
        }
        let format = NumberFormat::default();
        assert_eq!(format.sequence_of("01234-261206-0042", "01234"), None);
        assert_eq!(format.sequence_of("01234-261206-0000042", "01234"), None);
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "{seq}",
            "{agency}",
            "{agency}{seq}",
            "{agency}-{seq}-{seq}",
            "{agency}x{seq}",
            "{agency}-x{seq}",
            "HS{agency}-{seq}",
            "{agency}-{seq:0}",
            "{agency}-{seq:13}",
            "{agency}-{nope}-{seq}",
            "{agency}-{seq",
            "{agency}-{seq}-{yymmdd}-{yymmdd}-{yymmdd}-{yymmdd}-{yymmdd}",
        ] {
            assert!(NumberFormat::parse(bad).is_err(), "{bad}");
        }
    }
}
