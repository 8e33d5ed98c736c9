//! Realistic generated records for demos, benchmarks and tests (feature `sample`): Vietnamese
//! names of the Kinh, Thái and H'Mông people of Điện Biên, villages, real procedure names and
//! notes of about 200 characters, from a seeded generator so runs are repeatable.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::catalogue::{CivilDate, Procedure, ProcessingTime};
use crate::record::{Applicant, Fee, NewApplication, NewCitizenRequest, ReceivedDocument};

const FAMILY: &[&str] = &[
    "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi", "Đỗ", "Lò", "Quàng", "Lường",
    "Cà", "Vì", "Giàng", "Sùng", "Mùa", "Thào", "Lý", "Tòng",
];
const MIDDLE: &[&str] = &[
    "Thị", "Văn", "Đức", "Thu", "Minh", "A", "Seo", "Ngọc", "Thanh",
];
const GIVEN: &[&str] = &[
    "Hương", "Hùng", "Lan", "Mai", "Dung", "Sơn", "Pọm", "Chu", "Páo", "Xuân", "Thắng", "Đông",
    "Ngọc", "Tâm", "Hải", "Dính", "Sinh", "Hoa", "Nga", "Khánh", "Dế", "Súa", "Chiến", "Yến",
];
const VILLAGES: &[&str] = &[
    "Bản Phăng",
    "Bản Che Căn",
    "Bản Mển",
    "Bản Ten",
    "Bản Noong Luống",
    "Bản Pa Pốm",
    "Bản Xôm",
    "Bản Hua Pe",
    "Bản Cang",
    "Bản Co Mỵ",
    "Bản Huổi Hoa",
    "Bản Pú Vang",
    "Bản Nà Nhạn",
    "Tổ dân phố 3",
    "Tổ dân phố 7",
];
const NOTES: &[&str] = &[
    "Công dân nộp đủ hồ sơ theo quy định.",
    "Đã hướng dẫn bổ sung bản sao căn cước công dân.",
    "Hẹn trả kết quả tại bộ phận một cửa của xã.",
    "Tiếp nhận trong chuyến công tác tại bản, chưa có sóng điện thoại.",
    "Người nộp là con trai, có giấy ủy quyền kèm theo.",
    "Cần xác minh thêm với trưởng bản về nơi cư trú.",
    "Đã thu lệ phí, biên lai số 0012345.",
    "Gia đình thuộc hộ nghèo, được miễn lệ phí.",
    "Chuyển cán bộ địa chính kiểm tra thực địa.",
    "Công dân đề nghị nhận kết quả qua bưu điện.",
    "Hồ sơ viết tay, đã đối chiếu bản chính.",
    "Đã gọi điện báo công dân đến nhận kết quả.",
];
const REQUESTS: &[(&str, &str)] = &[
    (
        "road",
        "Đường vào bản bị sạt lở sau mưa lớn, xe máy không đi được.",
    ),
    (
        "water",
        "Bể nước sinh hoạt của bản bị hỏng, đề nghị xã hỗ trợ sửa chữa.",
    ),
    (
        "land",
        "Đề nghị xác định lại ranh giới đất nương giữa hai hộ.",
    ),
    (
        "social_welfare",
        "Xin hỗ trợ gạo cứu đói cho hộ có người ốm dài ngày.",
    ),
    (
        "feedback",
        "Cán bộ tiếp dân nhiệt tình, đề nghị thêm buổi trực tại bản.",
    ),
    (
        "electricity",
        "Cột điện nghiêng gần trường mầm non, nguy hiểm cho trẻ.",
    ),
];

/// A seeded generator of realistic records.
#[derive(Debug)]
pub struct SampleData {
    rng: StdRng,
}

impl SampleData {
    /// A generator; the same seed gives the same records.
    pub fn new(seed: u64) -> Self {
        SampleData {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The procedure catalogue used by the samples (real names, statutory working days).
    pub fn catalogue() -> Vec<Procedure> {
        let p =
            |code: &str, name: &str, processing_days: u32, withdrawal_allowed: bool| Procedure {
                withdrawal_allowed,
                ..Procedure::new(code, name, ProcessingTime::WorkingDays(processing_days))
            };
        vec![
            p("1.001193", "Đăng ký khai sinh", 1, true),
            p("1.000894", "Đăng ký kết hôn", 5, true),
            p("1.000656", "Đăng ký khai tử", 1, true),
            p("1.004873", "Xác nhận tình trạng hôn nhân", 3, true),
            p("2.000908", "Chứng thực bản sao từ bản chính", 0, false),
            p("1.001612", "Đăng ký thường trú", 7, true),
            p(
                "1.003005",
                "Cấp giấy chứng nhận quyền sử dụng đất lần đầu",
                30,
                true,
            ),
            p("1.001776", "Trợ cấp xã hội hàng tháng", 7, true),
            p(
                "1.009994",
                "Cấp giấy phép xây dựng nhà ở riêng lẻ",
                15,
                true,
            ),
            p("2.001800", "Hòa giải tranh chấp đất đai", 45, false),
            p("1.003596", "Đăng ký nhận cha, mẹ, con", 3, true),
            p("1.001022", "Đăng ký giám hộ", 3, true),
        ]
    }

    /// Public holidays of 2026 and 2027 (Tết, Hùng Kings, 30/4-1/5, 2/9).
    pub fn holidays() -> Vec<CivilDate> {
        let days: &[(i32, u8, u8)] = &[
            (2026, 1, 1),
            (2026, 2, 16),
            (2026, 2, 17),
            (2026, 2, 18),
            (2026, 2, 19),
            (2026, 2, 20),
            (2026, 4, 27),
            (2026, 4, 30),
            (2026, 5, 1),
            (2026, 9, 1),
            (2026, 9, 2),
            (2027, 1, 1),
            (2027, 2, 5),
            (2027, 2, 8),
            (2027, 2, 9),
            (2027, 2, 10),
            (2027, 2, 11),
            (2027, 4, 16),
            (2027, 4, 30),
            (2027, 5, 3),
            (2027, 9, 2),
            (2027, 9, 3),
        ];
        days.iter()
            .filter_map(|&(y, m, d)| CivilDate::from_ymd(y, m, d).ok())
            .collect()
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.rng.random_range(0..from.len())]
    }

    /// A person's full name.
    pub fn name(&mut self) -> String {
        format!(
            "{} {} {}",
            self.pick(FAMILY),
            self.pick(MIDDLE),
            self.pick(GIVEN)
        )
    }

    /// A village.
    pub fn village(&mut self) -> String {
        self.pick(VILLAGES).to_owned()
    }

    /// One sentence of notes.
    pub fn note_line(&mut self) -> String {
        self.pick(NOTES).to_owned()
    }

    /// Notes of about `chars` characters.
    pub fn notes(&mut self, chars: usize) -> String {
        let mut notes = String::new();
        while notes.chars().count() < chars {
            if !notes.is_empty() {
                notes.push(' ');
            }
            notes.push_str(self.pick(NOTES));
        }
        notes
    }

    /// A new application for `commune`, received at `received_at` (ms since epoch).
    pub fn application(&mut self, commune: &str, received_at: Option<i64>) -> NewApplication {
        let catalogue = Self::catalogue();
        let procedure = &catalogue[self.rng.random_range(0..catalogue.len())];
        let id_number: String = (0..12)
            .map(|_| char::from(b'0' + self.rng.random_range(0..10u8)))
            .collect();
        let phone = format!("09{:08}", self.rng.random_range(0..100_000_000u32));
        let village = self.village();
        let fee = self.rng.random_range(0..4u64) * 10_000;
        NewApplication {
            commune_code: commune.to_owned(),
            procedure_code: procedure.code.clone(),
            applicant: Applicant {
                name: self.name(),
                id_number,
                phone,
                address: format!("Nhà số {}, {}", self.rng.random_range(1..200), village),
                village,
            },
            received_at,
            documents: vec![
                ReceivedDocument {
                    name: format!("Tờ khai {}", procedure.name.to_lowercase()),
                    copies: 1,
                    original: true,
                },
                ReceivedDocument {
                    name: "Bản sao căn cước công dân".into(),
                    copies: self.rng.random_range(1..3),
                    original: false,
                },
            ],
            fees: if fee > 0 {
                vec![Fee {
                    name: "Lệ phí".into(),
                    amount_vnd: fee,
                    paid: self.rng.random_bool(0.7),
                }]
            } else {
                Vec::new()
            },
            assignee: None,
            notes: self.notes(200),
            form_values: Default::default(),
        }
    }

    /// A new citizen request for `commune`.
    pub fn citizen_request(&mut self, commune: &str) -> NewCitizenRequest {
        let (category, description) = REQUESTS[self.rng.random_range(0..REQUESTS.len())];
        NewCitizenRequest {
            commune_code: commune.to_owned(),
            category: category.to_owned(),
            village: self.village(),
            description: description.to_owned(),
            reporter_name: self.name(),
            reporter_contact: format!("09{:08}", self.rng.random_range(0..100_000_000u32)),
            received_at: None,
            assignee: None,
            notes: String::new(),
        }
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }
}
