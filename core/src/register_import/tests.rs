use super::*;

const HEADER: &str = "external_id,procedure_code,applicant_name,status,received_at,due_date,original_reference,returned_at,applicant_village,notes";

fn file(lines: &[&str]) -> Vec<u8> {
    let mut text = String::from(HEADER);
    for line in lines {
        text.push('\n');
        text.push_str(line);
    }
    text.into_bytes()
}

#[test]
fn entries_read_with_their_state_and_vietnam_times() {
    let parsed = parse_register(&file(&[
        "SK-2025-0001,1.001193,Lò Văn Pọm,returned,2025-03-14 09:30,2025-03-17,12/HT-2025,17/03/2025 15:00,Bản Phăng,\"Đã trả, đúng hạn\"",
        "SK-2025-0002,1.001193,Lò Thị Xuân,IN_PROGRESS,14/03/2025,,,,,",
    ]))
    .unwrap();
    assert_eq!(parsed.errors, []);
    let [returned, open] = parsed.entries.as_slice() else {
        panic!("{:?}", parsed.entries)
    };
    assert_eq!(returned.line, 2);
    assert_eq!(returned.status, Status::Returned);
    // 09:30 in Vietnam is 02:30 UTC.
    assert_eq!(returned.received_at, 1_741_919_400_000);
    assert_eq!(returned.due_at, Some("2025-03-17".parse().unwrap()));
    assert_eq!(returned.original_reference, "12/HT-2025");
    assert_eq!(returned.returned_at, Some(1_742_198_400_000));
    assert_eq!(returned.applicant.village, "Bản Phăng");
    assert_eq!(returned.notes, "Đã trả, đúng hạn");
    assert_eq!(open.status, Status::InProgress);
    assert_eq!(open.received_at, 1_741_885_200_000);
    assert_eq!((open.due_at, open.returned_at), (None, None));
}

#[test]
fn a_bad_line_is_reported_with_its_number_and_the_rest_is_read() {
    let parsed = parse_register(&file(&[
        "A1,1.001193,Lò Văn Pọm,returned,2025-03-14,,,,,",
        "A2,1.001193,Lò Văn Pọm,done,2025-03-14,,,,,",
        "A3,1.001193,Lò Văn Pọm,received,2025-13-40,,,,,",
        "A4,1.001193,Lò Văn Pọm,received",
        ",1.001193,Lò Văn Pọm,received,2025-03-14,,,,,",
        "A1,1.001193,Lò Văn Pọm,received,2025-03-14,,,,,",
        "",
        "A7,1.001193,Lò Văn Pọm,received,2025-03-14 25:00,,,,,",
        "A8,1.001193,Lò Văn Pọm,received,2025-03-14,,,,,",
    ]))
    .unwrap();
    let ids: Vec<&str> = parsed
        .entries
        .iter()
        .map(|e| e.external_id.as_str())
        .collect();
    assert_eq!(ids, ["A1", "A8"]);
    let errors: Vec<(u64, &str)> = parsed
        .errors
        .iter()
        .map(|e| (e.line, e.reason.as_str()))
        .collect();
    assert_eq!(errors.len(), 6, "{errors:?}");
    assert_eq!(errors[0], (3, "status: unknown status \"done\""));
    assert_eq!(errors[1].0, 4);
    assert!(errors[1].1.starts_with("received_at:"), "{errors:?}");
    assert_eq!(errors[2], (5, "4 fields where the header has 10"));
    assert_eq!(errors[3], (6, "external_id: must not be empty"));
    assert_eq!(errors[4], (7, "external id already on line 2"));
    assert_eq!(errors[5].0, 9);
}

#[test]
fn a_bad_file_is_refused_whole() {
    for (bytes, why) in [
        (b"".to_vec(), "empty"),
        (
            b"external_id,status\nA,received\n".to_vec(),
            "no \"procedure_code\"",
        ),
        (
            format!("{HEADER},colour\n").into_bytes(),
            "unknown column \"colour\"",
        ),
        (format!("{HEADER},status\n").into_bytes(), "appears twice"),
        (vec![0xff, 0xfe, 0x00], "not UTF-8"),
        (vec![b' '; MAX_REGISTER_FILE + 1], "larger than"),
    ] {
        let err = parse_register(&bytes).unwrap_err().to_string();
        assert!(err.contains(why), "{why}: {err}");
    }
    let mut many = String::from(HEADER);
    for i in 0..=MAX_REGISTER_ENTRIES {
        many.push_str(&format!("\nA{i},1.001193,X,received,2025-03-14,,,,,"));
    }
    let err = parse_register(many.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("split the file"), "{err}");
}

#[test]
fn header_is_case_insensitive_in_any_order_with_a_byte_order_mark() {
    let text = "\u{feff}Status, RECEIVED_AT ,applicant_name,procedure_code,external_id\r\nready,2025-03-14T08:00:30,Lò Văn Pọm,1.001193,X-1\r\n";
    let parsed = parse_register(text.as_bytes()).unwrap();
    assert_eq!(parsed.errors, []);
    assert_eq!(parsed.entries[0].status, Status::Ready);
    assert_eq!(parsed.entries[0].received_at, 1_741_914_030_000);
}

#[test]
fn an_unterminated_quote_reports_its_line_and_keeps_what_came_before() {
    let parsed = parse_register(&file(&[
        "A1,1.001193,Lò Văn Pọm,received,2025-03-14,,,,,",
        "A2,1.001193,\"Lò Văn,received,2025-03-14,,,,,",
    ]))
    .unwrap();
    assert_eq!(parsed.entries.len(), 1);
    assert_eq!(parsed.errors[0].line, 3);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Whatever the text (quotes, commas, line breaks, dates, statuses mixed at random), a
    /// register is read into entries and line errors or refused whole, never a panic; every line
    /// that holds a record is accounted for once.
    #[test]
    fn any_text_is_read_or_refused_never_a_panic(
        rows in proptest::collection::vec(
            "[A-Za-z0-9 ,\"\n\r/:.-]{0,40}|[A-Z]-[0-9]{1,3},1.001193,Lò Văn Pọm,(returned|ready|x),(2025-03-14|14/03/2025|2025-02-30)( 09:30)?,,,,,",
            0..24,
        )
    ) {
        let text = format!("{HEADER}\n{}", rows.join("\n"));
        if let Ok(parsed) = parse_register(text.as_bytes()) {
            let lines = text.lines().count() as u64;
            for line in parsed.entries.iter().map(|e| e.line).chain(parsed.errors.iter().map(|e| e.line)) {
                proptest::prop_assert!((2..=lines.max(2)).contains(&line), "line {line} of {lines}");
            }
            let mut ids: Vec<&str> = parsed.entries.iter().map(|e| e.external_id.as_str()).collect();
            ids.sort_unstable();
            let before = ids.len();
            ids.dedup();
            proptest::prop_assert_eq!(ids.len(), before);
        }
    }
}
