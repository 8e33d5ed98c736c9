//! HTML of the console: escaping, the page layout, the two languages and the server-side SVG
//! charts. Plain `format!` with one escaping function: every value that did not come from this
//! file goes through [`esc`].

use super::Lang;

/// `text` escaped for HTML text and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// `text` escaped for a URL query value.
pub fn url(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// A message in the console's language: Vietnamese first, English second.
pub fn t(lang: Lang, key: &str) -> &'static str {
    let (vi, en) = match key {
        "title" => ("Bảng điều khiển tỉnh", "Province console"),
        "dashboard" => ("Tổng quan", "Dashboard"),
        "records" => ("Hồ sơ", "Records"),
        "fleet" => ("Thiết bị", "Fleet"),
        "enrollment" => ("Đăng ký thiết bị", "Enrollment"),
        "catalogue" => ("Danh mục thủ tục", "Catalogue"),
        "exports" => ("Xuất dữ liệu", "Exports"),
        "audit" => ("Nhật ký thao tác", "Audit log"),
        "logout" => ("Đăng xuất", "Log out"),
        "login" => ("Đăng nhập", "Log in"),
        "username" => ("Tên đăng nhập", "Username"),
        "password" => ("Mật khẩu", "Password"),
        "login_failed" => (
            "Sai tên đăng nhập hoặc mật khẩu",
            "Wrong username or password",
        ),
        "too_many" => (
            "Quá nhiều lần thử; vui lòng thử lại sau",
            "Too many attempts; try again later",
        ),
        "commune" => ("Xã", "Commune"),
        "received_week" => ("Tiếp nhận tuần này", "Received this week"),
        "received_month" => ("Tiếp nhận tháng này", "Received this month"),
        "in_progress" => ("Đang giải quyết", "In progress"),
        "on_time_rate" => ("Tỷ lệ đúng hạn", "On-time rate"),
        "overdue" => ("Quá hạn", "Overdue"),
        "search" => ("Tìm kiếm", "Search"),
        "name" => ("Họ tên", "Name"),
        "id_number" => ("Số định danh", "ID number"),
        "dossier_number" => ("Số hồ sơ", "Dossier number"),
        "status" => ("Trạng thái", "Status"),
        "procedure" => ("Thủ tục", "Procedure"),
        "received" => ("Ngày nhận", "Received"),
        "due" => ("Hạn xử lý", "Due"),
        "assignee" => ("Người xử lý", "Assignee"),
        "conflicts" => ("Xung đột", "Conflicts"),
        "history" => ("Lịch sử", "History"),
        "device" => ("Thiết bị", "Device"),
        "officer" => ("Cán bộ", "Officer"),
        "fields" => ("Trường", "Fields"),
        "server_received" => ("Máy chủ nhận lúc", "Server received"),
        "last_sync" => ("Đồng bộ lần cuối", "Last sync"),
        "pending" => ("Chờ gửi", "Pending"),
        "refused" => ("Bị từ chối", "Refused"),
        "alarms" => ("Cảnh báo", "Alarms"),
        "silent" => ("Không đồng bộ quá {} ngày", "Silent for over {} days"),
        "growing_queue" => ("Hàng đợi lớn", "Growing queue"),
        "issue_code" => ("Cấp mã đăng ký", "Issue an enrollment code"),
        "code_issued" => (
            "Mã đăng ký (quét mã QR trên máy tính bảng)",
            "Enrollment code (scan the QR code on the tablet)",
        ),
        "expires" => ("Hết hạn", "Expires"),
        "revoke" => ("Thu hồi", "Revoke"),
        "revoke_wipe" => ("Thu hồi và xoá dữ liệu", "Revoke and wipe"),
        "revoked" => ("Đã thu hồi", "Revoked"),
        "upload" => ("Tải lên và kiểm tra", "Upload and check"),
        "publish" => ("Công bố", "Publish"),
        "current_version" => ("Phiên bản hiện tại", "Current version"),
        "added" => ("Thêm", "Added"),
        "removed" => ("Bỏ", "Removed"),
        "changed" => ("Sửa", "Changed"),
        "valid" => ("Hợp lệ", "Valid"),
        "published" => ("Đã công bố phiên bản", "Published version"),
        "report" => ("Báo cáo định kỳ", "Periodic report"),
        "from" => ("Từ ngày", "From"),
        "to" => ("Đến ngày", "To"),
        "download" => ("Tải về", "Download"),
        "who" => ("Ai", "Who"),
        "what" => ("Thao tác", "What"),
        "when" => ("Lúc", "When"),
        "detail" => ("Chi tiết", "Detail"),
        "forbidden" => (
            "Bạn không có quyền thực hiện thao tác này",
            "You may not do this",
        ),
        "csrf" => (
            "Phiên làm việc không hợp lệ; tải lại trang",
            "Invalid form session; reload the page",
        ),
        "not_found" => ("Không tìm thấy", "Not found"),
        "none" => ("Không có", "None"),
        _ => ("?", "?"),
    };
    match lang {
        Lang::Vi => vi,
        Lang::En => en,
    }
}

/// The console menu and frame around `body`.
pub fn page(lang: Lang, title: &str, user: Option<(&str, &str)>, csrf: &str, body: &str) -> String {
    let menu = match user {
        Some((username, role)) => {
            let links: String = [
                ("/console", "dashboard"),
                ("/console/records", "records"),
                ("/console/fleet", "fleet"),
                ("/console/enrollment", "enrollment"),
                ("/console/catalogue", "catalogue"),
                ("/console/exports", "exports"),
                ("/console/audit", "audit"),
            ]
            .iter()
            .map(|(href, key)| format!("<a href=\"{href}\">{}</a>", t(lang, key)))
            .collect();
            format!(
                "<nav>{links}<span class=\"who\">{} ({})</span>\
                 <form method=\"post\" action=\"/console/logout\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button id=\"logout\">{}</button></form></nav>",
                esc(username),
                esc(role),
                esc(csrf),
                t(lang, "logout")
            )
        }
        None => String::new(),
    };
    let (html_lang, other, other_label) = match lang {
        Lang::Vi => ("vi", "en", "English"),
        Lang::En => ("en", "vi", "Tiếng Việt"),
    };
    format!(
        "<!DOCTYPE html><html lang=\"{html_lang}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · communesync</title><style>{CSS}</style></head><body>\
         <header><b>communesync</b> · {}<a class=\"lang\" id=\"lang\" href=\"/console/lang?to={other}\">{other_label}</a></header>\
         {menu}<main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        t(lang, "title"),
        esc(title)
    )
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222}\
header{background:#7a1a1a;color:#fff;padding:.5em 1em}header .lang{color:#fff;float:right}\
nav{background:#eee;padding:.4em 1em}nav a{margin-right:1em}nav .who{margin:0 1em;color:#555}\
main{padding:1em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}\
th{background:#f4f4f4}.alarm{color:#a00;font-weight:bold}.ok{color:#070}.error{color:#a00}\
form.inline{display:inline}input,select,button{font-size:1em;margin:.2em}code{background:#f4f4f4}";

/// A horizontal bar chart as inline SVG: one bar per `(label, value)`, scaled to the largest.
pub fn bar_chart(id: &str, bars: &[(String, f64)], unit: &str) -> String {
    let max = bars
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let row = 22;
    let height = row * bars.len().max(1) + 4;
    let mut svg = format!(
        "<svg id=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"520\" height=\"{height}\" role=\"img\">",
        esc(id)
    );
    for (i, (label, value)) in bars.iter().enumerate() {
        let y = i * row + 2;
        let width = (value / max * 300.0).round();
        svg.push_str(&format!(
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text>\
             <rect x=\"140\" y=\"{y}\" width=\"{width}\" height=\"16\" fill=\"#7a1a1a\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"12\">{}{}</text>",
            y + 13,
            esc(label),
            146.0 + width,
            y + 13,
            format_number(*value),
            esc(unit)
        ));
    }
    svg.push_str("</svg>");
    svg
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_charts() {
        assert_eq!(
            esc("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
        assert_eq!(url("nguyễn a&b"), "nguy%E1%BB%85n%20a%26b");
        let svg = bar_chart("c", &[("<x>".into(), 2.0), ("y".into(), 1.0)], "");
        assert!(svg.contains("&lt;x&gt;") && !svg.contains("<x>"));
        assert!(svg.contains("width=\"300\"") && svg.contains("width=\"150\""));
    }
}
