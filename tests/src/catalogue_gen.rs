//! A realistic generated province catalogue for tests and benchmarks (never linked by the
//! server or the app): about 2,000 procedures over the sectors of a commune's one-stop desk,
//! Vietnamese names built from the verbs and objects of the national procedure list, forms of
//! 3 to 12 typed fields, 1 to 6 papers (some conditional), 0 to 2 fees, processing times in
//! working days (some in working hours), from a seeded generator so runs are repeatable.

use communesync_core::catalogue::{
    CalendarOverride, CatalogueFile, CivilDate, FeeSpec, FieldKind, FieldSpec, FormSchema, Level,
    Procedure, ProcessingTime, RequiredPaper,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SECTORS: &[(&str, &[&str])] = &[
    (
        "Hộ tịch",
        &[
            "khai sinh",
            "kết hôn",
            "khai tử",
            "nhận cha, mẹ, con",
            "giám hộ",
            "thay đổi, cải chính hộ tịch",
            "xác nhận tình trạng hôn nhân",
        ],
    ),
    (
        "Chứng thực",
        &[
            "bản sao từ bản chính",
            "chữ ký",
            "hợp đồng, giao dịch",
            "văn bản thỏa thuận phân chia di sản",
        ],
    ),
    (
        "Đất đai",
        &[
            "quyền sử dụng đất lần đầu",
            "chuyển mục đích sử dụng đất",
            "tách thửa, hợp thửa đất",
            "đăng ký biến động đất đai",
            "giải quyết tranh chấp đất đai",
        ],
    ),
    (
        "Xây dựng",
        &[
            "giấy phép xây dựng nhà ở riêng lẻ",
            "giấy phép sửa chữa, cải tạo",
            "thông báo khởi công",
        ],
    ),
    (
        "Bảo trợ xã hội",
        &[
            "trợ cấp xã hội hàng tháng",
            "hỗ trợ chi phí mai táng",
            "trợ giúp xã hội khẩn cấp",
            "xác định mức độ khuyết tật",
        ],
    ),
    (
        "Người có công",
        &[
            "trợ cấp ưu đãi",
            "bảo hiểm y tế cho người có công",
            "hỗ trợ cải thiện nhà ở",
        ],
    ),
    (
        "Nông nghiệp",
        &[
            "hỗ trợ giống cây trồng",
            "kinh tế trang trại",
            "hỗ trợ khắc phục thiên tai",
        ],
    ),
    (
        "Lâm nghiệp",
        &[
            "khai thác gỗ rừng trồng",
            "giao rừng cho hộ gia đình",
            "trồng rừng thay thế",
        ],
    ),
    (
        "Giáo dục",
        &[
            "hỗ trợ học tập cho trẻ mẫu giáo",
            "miễn, giảm học phí",
            "chuyển trường",
        ],
    ),
    (
        "Văn hóa",
        &[
            "gia đình văn hóa",
            "thôn, bản văn hóa",
            "lễ hội truyền thống",
        ],
    ),
    (
        "Tư pháp",
        &["hòa giải viên", "tổ hòa giải", "trợ giúp pháp lý"],
    ),
    (
        "Lao động",
        &[
            "hỗ trợ người lao động mất việc",
            "đăng ký thất nghiệp",
            "hỗ trợ đào tạo nghề",
        ],
    ),
    (
        "Môi trường",
        &["kế hoạch bảo vệ môi trường", "thu gom chất thải rắn"],
    ),
    (
        "Giao thông",
        &["đấu nối đường giao thông", "sử dụng tạm thời lòng đường"],
    ),
    (
        "Công thương",
        &[
            "đăng ký hộ kinh doanh",
            "bán lẻ rượu",
            "bán lẻ sản phẩm thuốc lá",
        ],
    ),
    (
        "Dân tộc",
        &[
            "người có uy tín trong đồng bào dân tộc thiểu số",
            "hỗ trợ đất sản xuất",
        ],
    ),
    (
        "Tôn giáo",
        &["sinh hoạt tôn giáo tập trung", "lễ hội tín ngưỡng"],
    ),
    (
        "Thi đua khen thưởng",
        &["giấy khen của chủ tịch xã", "danh hiệu lao động tiên tiến"],
    ),
];
const VERBS: &[&str] = &[
    "Đăng ký",
    "Cấp",
    "Cấp lại",
    "Cấp đổi",
    "Xác nhận",
    "Điều chỉnh",
    "Gia hạn",
    "Công nhận",
    "Giải quyết",
    "Thẩm định",
    "Phê duyệt",
    "Thông báo",
    "Đề nghị",
    "Thôi hưởng",
];
const PAPERS: &[&str] = &[
    "Tờ khai theo mẫu",
    "Bản sao căn cước công dân",
    "Giấy chứng sinh",
    "Sổ hộ khẩu",
    "Giấy xác nhận của trưởng bản",
    "Biên bản xác minh",
    "Đơn đề nghị",
    "Giấy tờ chứng minh nơi cư trú",
    "Bản vẽ thiết kế",
    "Giấy chứng nhận quyền sử dụng đất",
];
const FIELD_LABELS: &[&str] = &[
    "Họ, chữ đệm, tên",
    "Ngày sinh",
    "Nơi sinh",
    "Giới tính",
    "Dân tộc",
    "Quốc tịch",
    "Nơi cư trú",
    "Số điện thoại",
    "Số thửa",
    "Diện tích (m²)",
    "Lý do",
    "Người đi khai",
];

/// `count` procedures (at most 20,000) with the Vietnamese calendar of 2027 (Tết, 30/4-1/5, 2/9
/// and a compensatory working Saturday); the same seed gives the same catalogue.
pub fn generated_catalogue(count: usize, seed: u64) -> CatalogueFile {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut procedures = Vec::with_capacity(count);
    for i in 0..count.min(20_000) {
        let (sector, objects) = SECTORS[i % SECTORS.len()];
        let object = objects[rng.random_range(0..objects.len())];
        let verb = VERBS[rng.random_range(0..VERBS.len())];
        let mut p = Procedure::new(
            &format!("{}.{:06}", 1 + i % 2, 1000 + i),
            &format!("{verb} {object} (thủ tục {})", i + 1),
            if rng.random_bool(0.1) {
                ProcessingTime::WorkingHours(rng.random_range(2..=8))
            } else {
                ProcessingTime::WorkingDays(rng.random_range(0..=30))
            },
        );
        p.sector = sector.to_owned();
        p.level = if rng.random_bool(0.8) {
            Level::Commune
        } else {
            Level::District
        };
        p.withdrawal_allowed = rng.random_bool(0.9);
        p.version = rng.random_range(1..=3);
        p.fees = (0..rng.random_range(0..=2))
            .map(|k| FeeSpec {
                name: format!("Lệ phí {} {k}", object),
                amount_vnd: rng.random_range(0..20) * 5_000,
            })
            .collect();
        p.papers = (0..rng.random_range(1..=6))
            .map(|k| RequiredPaper {
                name: PAPERS[(k + i) % PAPERS.len()].to_owned(),
                copies: rng.random_range(1..=2),
                original: rng.random_bool(0.3),
                condition: rng
                    .random_bool(0.2)
                    .then(|| "nếu người nộp là người được ủy quyền".to_owned()),
            })
            .collect();
        p.form = FormSchema {
            fields: (0..rng.random_range(3..=12))
                .map(|k| FieldSpec {
                    name: format!("field_{k}"),
                    label: FIELD_LABELS[k % FIELD_LABELS.len()].to_owned(),
                    kind: match k % 7 {
                        0 => FieldKind::Text { max_len: Some(200) },
                        1 => FieldKind::Date,
                        2 => FieldKind::Person,
                        3 => FieldKind::CitizenId,
                        4 => FieldKind::Address,
                        5 => FieldKind::Number {
                            min: Some(0),
                            max: Some(1_000_000),
                        },
                        _ => FieldKind::Choice {
                            options: vec!["Nam".into(), "Nữ".into()],
                        },
                    },
                    required: k < 3,
                    help: if k % 3 == 0 {
                        "Ghi theo giấy tờ tùy thân".to_owned()
                    } else {
                        String::new()
                    },
                })
                .collect(),
        };
        procedures.push(p);
    }
    let day = |m: u8, d: u8| CivilDate::from_ymd(2027, m, d).unwrap_or(CivilDate(time::Date::MIN));
    let mut calendar: Vec<CalendarOverride> = [
        (1, 1),
        (2, 5),
        (2, 8),
        (2, 9),
        (2, 10),
        (2, 11),
        (4, 16),
        (4, 30),
        (5, 3),
        (9, 2),
        (9, 3),
    ]
    .into_iter()
    .map(|(m, d)| CalendarOverride {
        day: day(m, d),
        working: false,
        reason: "Nghỉ lễ".to_owned(),
    })
    .collect();
    calendar.push(CalendarOverride {
        day: day(2, 20),
        working: true,
        reason: "Làm bù cho ngày 12/2".to_owned(),
    });
    CatalogueFile {
        procedures,
        holidays: Vec::new(),
        calendar,
        version: None,
        pinned: Vec::new(),
    }
}

/// The next publication of `catalogue` with 20 procedure changes: the first 18 procedures get
/// a new version (the first one also a new required text field, `household_book`), the 19th and
/// 20th are removed, and a compensatory working Saturday (2027-05-08) is added. Returns it with
/// the removed codes.
pub fn twenty_changes(mut catalogue: CatalogueFile) -> (CatalogueFile, Vec<String>) {
    for (i, p) in catalogue.procedures.iter_mut().take(18).enumerate() {
        p.version += 1;
        p.name = format!("{} (sửa đổi {i})", p.name);
    }
    if let Some(first) = catalogue.procedures.first_mut() {
        first.form.fields.push(FieldSpec {
            name: "household_book".into(),
            label: "Số sổ hộ khẩu".into(),
            kind: FieldKind::Text { max_len: Some(20) },
            required: true,
            help: String::new(),
        });
    }
    let end = catalogue.procedures.len().min(20);
    let start = end.min(18);
    let removed: Vec<String> = catalogue
        .procedures
        .drain(start..end)
        .map(|p| p.code)
        .collect();
    catalogue.calendar.push(CalendarOverride {
        day: CivilDate::from_ymd(2027, 5, 8).unwrap_or(CivilDate(time::Date::MIN)),
        working: true,
        reason: "Làm bù cho ngày 3/5".into(),
    });
    (catalogue, removed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use communesync_core::store::{DeviceStore, StoreConfig};

    #[test]
    fn the_generated_catalogue_is_valid_installs_and_searches() {
        let file = generated_catalogue(2_000, 15);
        file.validate().unwrap();
        assert_eq!(file.procedures.len(), 2_000);
        assert_eq!(generated_catalogue(2_000, 15), file);
        let json = serde_json::to_string(&file).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut store = DeviceStore::open(StoreConfig::new(dir.path().join("t.db"))).unwrap();
        store.apply_catalogue(1, &json).unwrap();
        assert_eq!(store.procedure_count().unwrap(), 2_000);
        let hits = store.search_procedures("khai sinh", 200).unwrap();
        assert!(!hits.is_empty());
        assert!(hits.iter().all(|h| h.name.contains("khai sinh")));
        // Tết 2027 off, the compensatory Saturday works.
        assert!(
            !store
                .calendar()
                .is_working_day("2027-02-08".parse().unwrap())
        );
        assert!(
            store
                .calendar()
                .is_working_day("2027-02-20".parse().unwrap())
        );
    }
}
