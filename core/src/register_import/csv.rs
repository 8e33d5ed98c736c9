//! A small CSV reader (RFC 4180, as spreadsheets export it): comma-separated fields, fields in
//! double quotes may hold commas, line breaks and doubled quotes (`""`); CRLF or LF line ends.
//! Each record comes with the line it starts on, for error messages. It works on text already
//! bounded by the caller (the file limit), and copies each field once.

/// One record: the line it starts on (1-based) and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CsvRecord {
    pub(super) line: u64,
    pub(super) fields: Vec<String>,
}

/// A quoted field that never ends: the rest of the file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unterminated {
    pub(super) line: u64,
}

/// The records of `text`, in order; blank lines are skipped. Stops at an unterminated quote.
pub(super) fn records(text: &str) -> (Vec<CsvRecord>, Option<Unterminated>) {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line: u64 = 1;
    loop {
        if chars.peek().is_none() {
            return (out, None);
        }
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        // Whether the current field began with a quote (then text after its closing quote is
        // kept as written, as spreadsheets do).
        let mut in_quotes = false;
        loop {
            let Some(c) = chars.next() else {
                if in_quotes {
                    return (out, Some(Unterminated { line: start }));
                }
                fields.push(std::mem::take(&mut field));
                break;
            };
            if in_quotes {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => in_quotes = false,
                    '\n' => {
                        line += 1;
                        field.push('\n');
                    }
                    other => field.push(other),
                }
                continue;
            }
            match c {
                '"' if field.is_empty() && !quoted => {
                    quoted = true;
                    in_quotes = true;
                }
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    quoted = false;
                }
                '\r' if chars.peek() == Some(&'\n') => {}
                '\n' => {
                    line += 1;
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                other => field.push(other),
            }
        }
        let blank = fields.len() == 1 && fields[0].trim().is_empty();
        if !blank {
            out.push(CsvRecord {
                line: start,
                fields,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<Vec<String>> {
        let (records, end) = records(text);
        assert_eq!(end, None);
        records.into_iter().map(|r| r.fields).collect()
    }

    #[test]
    fn quotes_commas_line_breaks_and_crlf() {
        assert_eq!(
            fields("a,b\r\n\"x, y\",\"say \"\"hi\"\"\"\n\n\"two\nlines\",z"),
            vec![
                vec!["a", "b"],
                vec!["x, y", "say \"hi\""],
                vec!["two\nlines", "z"]
            ]
        );
        let (records, _) = records("h\n\"a\nb\"\nc\n");
        assert_eq!(
            records.iter().map(|r| r.line).collect::<Vec<_>>(),
            [1, 2, 4]
        );
        assert_eq!(fields("a,,\n"), vec![vec!["a", "", ""]]);
    }

    #[test]
    fn an_unterminated_quote_names_its_line() {
        let (records, end) = records("a,b\n\"open,\nmore\n");
        assert_eq!(records.len(), 1);
        assert_eq!(end, Some(Unterminated { line: 2 }));
    }
}
