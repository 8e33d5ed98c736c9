//! The web console over real HTTP on 127.0.0.1, driven as a browser would (cookies, forms with
//! their CSRF token): log in, a dashboard whose figures match what a tablet synced, a search
//! without diacritics, a record's history, an enrollment code (with its QR code) that enrolls a
//! tablet, a revocation that refuses its next sync, a catalogue checked and published, a report
//! exported with its numbers, the audit log; CSRF, role and login-rate checks refused.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_communesync");
const COMMUNE: &str = "DB-THANHNUA";
const KEY: &str = "33";

fn command(args: &[&str], dir: &std::path::Path, stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("COMMUNESYNC_STORE_KEY", KEY.repeat(32))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn run(args: &[&str], dir: &std::path::Path) -> serde_json::Value {
    let output = command(args, dir, None);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A response: status, headers (lowercased names) and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").unwrap() + 19;
        self.body[at..].split('"').next().unwrap().to_owned()
    }
}

struct Browser {
    addr: String,
    cookie: String,
}

fn form_encode(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    other => format!("%{other:02X}"),
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Browser {
    fn request(&mut self, method: &str, path: &str, form: Option<&[(&str, &str)]>) -> Answer {
        let body = form.map(form_encode).unwrap_or_default();
        let mut stream = std::net::TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if form.is_some() {
            head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        if !self.cookie.is_empty() {
            head.push_str(&format!("Cookie: {}\r\n", self.cookie));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        let answer = Answer {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        };
        if let Some(set) = answer.header("set-cookie") {
            let pair = set.split(';').next().unwrap().to_owned();
            if pair.starts_with("cs_session=") {
                self.cookie = pair;
            }
        }
        answer
    }

    fn get(&mut self, path: &str) -> Answer {
        self.request("GET", path, None)
    }

    fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.request("POST", path, Some(form))
    }

    fn login(&mut self, username: &str, password: &str) -> Answer {
        self.post(
            "/console/login",
            &[("username", username), ("password", password)],
        )
    }
}

#[test]
fn the_province_sees_its_communes_in_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("province.db").display());
    run(
        &[
            "admin",
            "--database",
            &db,
            "create-commune",
            COMMUNE,
            "Xã Thanh Nưa",
        ],
        dir.path(),
    );
    for (name, role) in [("lan", "admin"), ("minh", "viewer")] {
        let out = command(
            &[
                "admin",
                "--database",
                &db,
                "create-operator",
                name,
                "--role",
                role,
            ],
            dir.path(),
            Some("a long enough passphrase\n"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let short = command(
        &["admin", "--database", &db, "create-operator", "x"],
        dir.path(),
        Some("short\n"),
    );
    assert!(!short.status.success());
    let code = run(
        &[
            "admin",
            "--database",
            &db,
            "issue-code",
            "--commune",
            COMMUNE,
        ],
        dir.path(),
    );

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _server = Server(
        Command::new(BIN)
            .args(["serve", "--database", &db, "--listen", &listen])
            .current_dir(dir.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://{listen}");

    // A tablet syncs four applications.
    let tablet = dir.path().join("tablet.db").display().to_string();
    run(
        &[
            "device",
            "--store",
            &tablet,
            "enroll",
            "--server",
            &url,
            "--code",
            code["code"].as_str().unwrap(),
        ],
        dir.path(),
    );
    let catalogue = dir.path().join("catalogue.json");
    std::fs::write(&catalogue, r#"{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","processing_days":5}],"holidays":[]}"#).unwrap();
    run(
        &[
            "admin",
            "--database",
            &db,
            "put-catalogue",
            catalogue.to_str().unwrap(),
        ],
        dir.path(),
    );
    run(&["device", "--store", &tablet, "sync"], dir.path());
    let register = dir.path().join("register.jsonl");
    let mut lines = String::new();
    for name in ["Lò Thị Hương", "Quàng Văn Đức", "Lò Văn Mạnh", "Cà Thị Nga"] {
        lines.push_str(&format!(
            r#"{{"commune_code":"{COMMUNE}","procedure_code":"1.001193","applicant":{{"name":"{name}","id_number":"","phone":"","address":"","village":"Bản Co"}}}}"#
        ));
        lines.push('\n');
    }
    std::fs::write(&register, lines).unwrap();
    run(
        &[
            "device",
            "--store",
            &tablet,
            "import",
            register.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(
        run(&["device", "--store", &tablet, "sync"], dir.path())["pushed_docs"],
        4
    );

    // Not logged in: the login page. A wrong password is refused.
    let mut browser = Browser {
        addr: listen.clone(),
        cookie: String::new(),
    };
    let anonymous = browser.get("/console");
    assert_eq!(anonymous.status, 303);
    assert_eq!(
        anonymous.header("location").as_deref(),
        Some("/console/login")
    );
    assert_eq!(browser.login("lan", "wrong password!!").status, 401);
    let logged = browser.login("lan", "a long enough passphrase");
    assert_eq!(logged.status, 303, "{}", logged.body);
    let cookie = logged.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    // Dashboard figures match what the tablet synced.
    let dashboard = browser.get("/console");
    assert_eq!(dashboard.status, 200);
    assert!(dashboard.body.contains("lang=\"vi\"") && dashboard.body.contains("Tổng quan"));
    let row_at = dashboard
        .body
        .find(&format!("data-commune=\"{COMMUNE}\""))
        .unwrap();
    let row = &dashboard.body[row_at..];
    assert!(
        row.contains("<td class=\"month\">4</td>") && row.contains("<td class=\"open\">4</td>"),
        "{row}"
    );
    assert!(dashboard.body.contains("<svg id=\"chart-received\""));
    assert!(
        dashboard
            .header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );

    // Search without diacritics, then the record's history.
    let found = browser.get("/console/records?name=lo+thi+huong");
    assert!(
        found.body.contains("<p id=\"count\">1</p>"),
        "{}",
        found.body
    );
    assert!(found.body.contains("Lò Thị Hương"));
    let link_at = found.body.find("href=\"/console/records/").unwrap() + 6;
    let link = found.body[link_at..].split('"').next().unwrap().to_owned();
    let record = browser.get(&link);
    assert_eq!(record.status, 200);
    assert!(
        record.body.contains("<table id=\"history\">") && record.body.contains("created"),
        "{}",
        record.body
    );

    // English.
    let english = browser.get("/console/lang?to=en");
    assert_eq!(english.status, 303);
    let lang_cookie = english.header("set-cookie").unwrap();
    assert!(lang_cookie.starts_with("cs_lang=en"));
    let session_cookie = browser.cookie.clone();
    browser.cookie = format!("{session_cookie}; cs_lang=en");
    assert!(browser.get("/console").body.contains("Dashboard"));
    browser.cookie = session_cookie;

    // Issue an enrollment code (with its QR code); a tablet enrolls with it.
    let page = browser.get("/console/enrollment");
    let csrf = page.csrf();
    let issued = browser.post(
        "/console/enrollment/codes",
        &[("csrf", &csrf), ("commune", COMMUNE)],
    );
    assert_eq!(issued.status, 200);
    assert!(
        issued.body.contains("<div id=\"qr\"><?xml") || issued.body.contains("<div id=\"qr\"><svg"),
        "{}",
        issued.body
    );
    let code_at = issued.body.find("<code id=\"code\">").unwrap() + 16;
    let new_code = issued.body[code_at..].split('<').next().unwrap().to_owned();
    let second = dir.path().join("second.db").display().to_string();
    let enrolled = run(
        &[
            "device", "--store", &second, "enroll", "--server", &url, "--code", &new_code,
        ],
        dir.path(),
    );
    let second_id = enrolled["device_id"].as_str().unwrap().to_owned();
    run(&["device", "--store", &second, "sync"], dir.path());

    // The fleet lists both tablets.
    let fleet = browser.get("/console/fleet");
    assert!(fleet.body.contains(&format!("data-device=\"{second_id}\"")));

    // CSRF: a form without the token, or with another, is refused and changes nothing.
    let path = format!("/console/devices/{second_id}/revoke");
    assert_eq!(browser.post(&path, &[]).status, 403);
    assert_eq!(browser.post(&path, &[("csrf", "forged")]).status, 403);
    run(&["device", "--store", &second, "sync"], dir.path());

    // Revoke: its next sync is refused.
    assert_eq!(browser.post(&path, &[("csrf", &csrf)]).status, 303);
    let refused = command(&["device", "--store", &second, "sync"], dir.path(), None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("revoked"));

    // Catalogue: check shows the difference; publish makes version 2.
    let json = r#"{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","processing_days":3},{"code":"1.000894","name":"Đăng ký kết hôn","processing_days":5}],"holidays":[]}"#;
    let checked = browser.post(
        "/console/catalogue/check",
        &[("csrf", &csrf), ("json", json)],
    );
    assert!(
        checked.body.contains("<span id=\"added\">1.000894</span>"),
        "{}",
        checked.body
    );
    assert!(
        checked
            .body
            .contains("<span id=\"changed\">1.001193</span>")
    );
    let invalid = browser.post(
        "/console/catalogue/check",
        &[("csrf", &csrf), ("json", "{\"procedures\":[{}]}")],
    );
    assert!(invalid.body.contains("id=\"invalid\""));
    // A procedure changed without a new version is refused, with the reason, nothing published.
    let refused = browser.post(
        "/console/catalogue/publish",
        &[("csrf", &csrf), ("json", json)],
    );
    assert!(refused.body.contains("id=\"invalid\""), "{}", refused.body);
    assert!(refused.body.contains("1.001193"), "{}", refused.body);
    let json = r#"{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","processing_days":3,"version":2},{"code":"1.000894","name":"Đăng ký kết hôn","processing_days":5}],"holidays":[]}"#;
    let published = browser.post(
        "/console/catalogue/publish",
        &[("csrf", &csrf), ("json", json)],
    );
    assert!(
        published.body.contains("<b id=\"catalogue-version\">2</b>"),
        "{}",
        published.body
    );

    // Report export: its numbers.
    let today = communesync_core::catalogue::CivilDate::today().to_string();
    let report = browser.get(&format!(
        "/console/exports/report?from={today}&to={today}&format=csv"
    ));
    assert_eq!(report.status, 200);
    assert!(
        report
            .body
            .contains(&format!("{today},{today},{COMMUNE},1.001193,4,0,0,0")),
        "{}",
        report.body
    );

    // A viewer reads but may not act.
    let mut viewer = Browser {
        addr: listen.clone(),
        cookie: String::new(),
    };
    assert_eq!(viewer.login("minh", "a long enough passphrase").status, 303);
    let page = viewer.get("/console/enrollment");
    let viewer_csrf = page.csrf();
    assert_eq!(
        viewer
            .post(
                "/console/enrollment/codes",
                &[("csrf", &viewer_csrf), ("commune", COMMUNE)]
            )
            .status,
        403
    );
    assert_eq!(
        viewer
            .post(
                "/console/catalogue/publish",
                &[("csrf", &viewer_csrf), ("json", json)]
            )
            .status,
        403
    );
    // Another session's token is not this one's.
    assert_eq!(
        viewer
            .post(
                "/console/enrollment/codes",
                &[("csrf", &csrf), ("commune", COMMUNE)]
            )
            .status,
        403
    );

    // The audit log shows who did what.
    let audit = browser.get("/console/audit");
    for action in [
        "login",
        "login_failed",
        "issue_code",
        "refused_csrf",
        "revoke",
        "publish_catalogue",
        "export_report",
        "refused_role",
    ] {
        assert!(
            audit
                .body
                .contains(&format!("<td class=\"action\">{action}</td>")),
            "{action} not audited"
        );
    }

    // Logout ends the session.
    let logout_csrf = browser.get("/console").csrf();
    assert_eq!(
        browser
            .post("/console/logout", &[("csrf", &logout_csrf)])
            .status,
        303
    );
    assert_eq!(browser.get("/console").status, 303);

    // Login attempts are limited per address.
    let mut guesser = Browser {
        addr: listen.clone(),
        cookie: String::new(),
    };
    let statuses: Vec<u16> = (0..12)
        .map(|_| guesser.login("lan", "guessing wrong").status)
        .collect();
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}
