//! Observability of `communesync serve` as operators run it: JSON logs with a request id on
//! every line of a request (the sync line too) and no secret in any line, Prometheus metrics
//! that count what tablets did, and the health endpoints. Real HTTP on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_communesync");
const COMMUNE: &str = "DB-NATAU";

fn run(args: &[&str], dir: &std::path::Path) -> serde_json::Value {
    let output = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("COMMUNESYNC_STORE_KEY", "22".repeat(32))
        .output()
        .unwrap();
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

/// One HTTP/1.1 exchange over a plain socket; the whole response.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[test]
fn logs_are_json_with_request_ids_and_no_secret_and_metrics_count_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("province.db").display());
    run(
        &[
            "admin",
            "--database",
            &db,
            "create-commune",
            COMMUNE,
            "Xã Nà Tấu",
        ],
        dir.path(),
    );
    let code_cli = run(
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
    let code_raw = run(
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
    let code_cli = code_cli["code"].as_str().unwrap().to_owned();
    let code_raw = code_raw["code"].as_str().unwrap().to_owned();

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let log_path = dir.path().join("server.log");
    let server = Server(
        Command::new(BIN)
            .args(["serve", "--database", &db, "--listen", &listen])
            .current_dir(dir.path())
            .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let admin_token = std::fs::read_to_string(dir.path().join("communesync-admin-token")).unwrap();
    let admin_token = admin_token.trim().to_owned();
    let url = format!("http://{listen}");

    // Health.
    let live = http(&listen, "GET", "/v1/health/live", &[], b"");
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    let ready = http(&listen, "GET", "/v1/health/ready", &[], b"");
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.contains("\"ready\""),
        "{ready}"
    );
    assert!(
        ready.to_ascii_lowercase().contains("x-request-id: "),
        "{ready}"
    );

    // A tablet enrolls, takes in three applications and syncs them.
    let store = dir.path().join("tablet.db").display().to_string();
    run(
        &[
            "device", "--store", &store, "enroll", "--server", &url, "--code", &code_cli,
        ],
        dir.path(),
    );
    let catalogue = dir.path().join("catalogue.json");
    std::fs::write(
        &catalogue,
        r#"{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","processing_days":1}],"holidays":[]}"#,
    )
    .unwrap();
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
    run(&["device", "--store", &store, "sync"], dir.path());
    let register = dir.path().join("register.jsonl");
    let mut lines = String::new();
    for name in ["Lò Văn Một", "Lò Văn Hai", "Lò Văn Ba"] {
        lines.push_str(&format!(
            r#"{{"commune_code":"{COMMUNE}","procedure_code":"1.001193","applicant":{{"name":"{name}","id_number":"","phone":"","address":"","village":"Bản Nà"}}}}"#
        ));
        lines.push('\n');
    }
    std::fs::write(&register, lines).unwrap();
    run(
        &[
            "device",
            "--store",
            &store,
            "import",
            register.to_str().unwrap(),
        ],
        dir.path(),
    );
    let report = run(&["device", "--store", &store, "sync"], dir.path());
    assert_eq!(report["pushed_docs"], 3);

    // Another device enrolls by hand and sends a body that is not a sync; a wrong code fails.
    let device_id = uuid::Uuid::new_v4();
    let enroll_body = format!(r#"{{"code":"{code_raw}","device_id":"{device_id}","label":"raw"}}"#);
    let enrolled = http(
        &listen,
        "POST",
        "/v1/enroll",
        &[("Content-Type", "application/json")],
        enroll_body.as_bytes(),
    );
    assert!(enrolled.starts_with("HTTP/1.1 200"), "{enrolled}");
    let json_start = enrolled.find("{\"").unwrap();
    let answer: serde_json::Value =
        serde_json::from_str(enrolled[json_start..].trim_end()).unwrap();
    let device_token = answer["token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {device_token}");
    let garbage = http(
        &listen,
        "POST",
        "/v1/sync",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/x-communesync-v4"),
        ],
        b"not a sync body",
    );
    assert!(garbage.starts_with("HTTP/1.1 4"), "{garbage}");
    let wrong = format!(
        r#"{{"code":"WRONG-CODE-1234","device_id":"{}"}}"#,
        uuid::Uuid::new_v4()
    );
    let refused = http(
        &listen,
        "POST",
        "/v1/enroll",
        &[("Content-Type", "application/json")],
        wrong.as_bytes(),
    );
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let admin_bearer = format!("Bearer {admin_token}");
    let stats = http(
        &listen,
        "GET",
        "/v1/admin/stats?token=in-a-query",
        &[("Authorization", &admin_bearer)],
        b"",
    );
    assert!(stats.starts_with("HTTP/1.1 200"), "{stats}");

    // Metrics count what happened.
    let metrics = http(&listen, "GET", "/metrics", &[], b"");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let series = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(series(&format!("communesync_syncs_total{{commune=\"{COMMUNE}\"}}")) >= 1.0);
    assert_eq!(
        series(&format!(
            "communesync_documents_pushed_total{{commune=\"{COMMUNE}\"}}"
        )),
        3.0
    );
    assert!(
        series(&format!(
            "communesync_bytes_pushed_total{{commune=\"{COMMUNE}\"}}"
        )) > 100.0
    );
    assert_eq!(series("communesync_enrollment_failures_total"), 1.0);
    assert_eq!(series("communesync_read_model_lag_documents"), 0.0);
    assert!(
        series(
            "communesync_http_request_duration_seconds_count{route=\"/v1/sync\",method=\"POST\",status=\"200\"}"
        ) >= 1.0
    );
    assert!(
        series(
            "communesync_http_request_duration_seconds_count{route=\"/v1/enroll\",method=\"POST\",status=\"401\"}"
        ) >= 1.0
    );
    drop(server);

    // Logs: JSON lines; the sync line carries its request id; no secret anywhere.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let entries: Vec<serde_json::Value> = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let sync_line = entries
        .iter()
        .find(|e| e["fields"]["message"] == "sync" && e["fields"]["stored_docs"] == 3)
        .unwrap_or_else(|| panic!("no sync line in\n{log}"));
    let sync_id = sync_line["span"]["request_id"].as_str().unwrap();
    assert_eq!(sync_id.len(), 16);
    assert_eq!(sync_line["fields"]["commune"], COMMUNE);
    let request_line = entries
        .iter()
        .find(|e| e["fields"]["message"] == "request" && e["span"]["request_id"] == sync_id)
        .unwrap();
    assert_eq!(request_line["span"]["route"], "/v1/sync");
    assert_eq!(request_line["fields"]["status"], 200);
    let ids: std::collections::HashSet<&str> = entries
        .iter()
        .filter(|e| e["fields"]["message"] == "request")
        .map(|e| e["span"]["request_id"].as_str().unwrap())
        .collect();
    assert!(ids.len() >= 8, "one id per request: {ids:?}");
    for secret in [
        admin_token.as_str(),
        device_token.as_str(),
        code_cli.as_str(),
        code_raw.as_str(),
        "WRONG-CODE-1234",
        "in-a-query",
    ] {
        assert!(
            !log.contains(secret),
            "a secret is in the logs: {secret}\n{log}"
        );
    }
}
