//! The `communesync` binary as operators use it: `serve`, `admin`, and `device` on two tablets,
//! over real HTTP on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_communesync");

fn run(args: &[&str], dir: &std::path::Path) -> serde_json::Value {
    let output = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("COMMUNESYNC_STORE_KEY", "11".repeat(32))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or("null");
    serde_json::from_str(last).unwrap_or(serde_json::Value::String(stdout))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn operators_enroll_import_sync_and_export_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("province.db").display());
    run(
        &[
            "admin",
            "--database",
            &db,
            "create-commune",
            "DB-MUONGPHANG",
            "Xã Mường Phăng",
        ],
        dir.path(),
    );
    let code_a = run(
        &[
            "admin",
            "--database",
            &db,
            "issue-code",
            "--commune",
            "DB-MUONGPHANG",
        ],
        dir.path(),
    );
    let code_b = run(
        &[
            "admin",
            "--database",
            &db,
            "issue-code",
            "--commune",
            "DB-MUONGPHANG",
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
    assert!(dir.path().join("communesync-admin-token").exists());
    let url = format!("http://{listen}");

    let a = dir.path().join("a.db").display().to_string();
    let b = dir.path().join("b.db").display().to_string();
    let enrolled = run(
        &[
            "device",
            "--store",
            &a,
            "enroll",
            "--server",
            &url,
            "--code",
            code_a["code"].as_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(enrolled["scope"]["commune"], "DB-MUONGPHANG");
    run(
        &[
            "device",
            "--store",
            &b,
            "enroll",
            "--server",
            &url,
            "--code",
            code_b["code"].as_str().unwrap(),
        ],
        dir.path(),
    );

    // The catalogue arrives with the first sync; then a register is imported.
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
    run(&["device", "--store", &a, "sync"], dir.path());
    let register = dir.path().join("register.jsonl");
    let mut lines = String::new();
    for i in 0..25 {
        lines.push_str(&format!(
            r#"{{"commune_code":"DB-MUONGPHANG","procedure_code":"1.001193","applicant":{{"name":"Nguyễn Văn {i}","id_number":"","phone":"","address":"","village":"Bản Phăng"}}}}"#
        ));
        lines.push('\n');
    }
    lines.push_str("{\"not\": \"an application\"}\n");
    std::fs::write(&register, lines).unwrap();
    let imported = run(
        &[
            "device",
            "--store",
            &a,
            "import",
            register.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(
        (imported["imported"].as_u64(), imported["refused"].as_u64()),
        (Some(25), Some(1))
    );

    let report = run(&["device", "--store", &a, "sync"], dir.path());
    assert_eq!(report["pushed_docs"], 25);
    let report = run(&["device", "--store", &b, "sync"], dir.path());
    assert_eq!(report["pulled_docs"], 25);
    let idle = run(&["device", "--store", &b, "sync"], dir.path());
    assert_eq!(idle["requests"], 1);

    let exported = Command::new(BIN)
        .args(["device", "--store", &b, "export"])
        .env("COMMUNESYNC_STORE_KEY", "11".repeat(32))
        .output()
        .unwrap();
    let records: Vec<serde_json::Value> = String::from_utf8(exported.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 25);
    assert!(records.iter().all(|r| r["kind"] == "application"));

    let devices = Command::new(BIN)
        .args(["admin", "--database", &db, "devices"])
        .output()
        .unwrap();
    let devices: Vec<serde_json::Value> = String::from_utf8(devices.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(devices.len(), 2);
    // Each tablet reported its waiting documents at its last sync.
    assert!(
        devices
            .iter()
            .all(|d| d["pending_docs"] == 0 && d["last_seen_at"].is_i64())
    );
    let device_a = enrolled["device_id"].as_str().unwrap();
    run(
        &["admin", "--database", &db, "revoke", device_a],
        dir.path(),
    );
    let refused = Command::new(BIN)
        .args(["device", "--store", &a, "sync"])
        .env("COMMUNESYNC_STORE_KEY", "11".repeat(32))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("revoked"));

    // Revoked by mistake while it held unsynced work: the operator issues a re-enrollment code
    // and the same store enrolls again, keeping its id; its outbox then flows.
    let register = dir.path().join("later.jsonl");
    std::fs::write(
        &register,
        r#"{"commune_code":"DB-MUONGPHANG","procedure_code":"1.001193","applicant":{"name":"Lò Thị Xuân","id_number":"","phone":"","address":"","village":"Bản Phăng"}}"#,
    )
    .unwrap();
    run(
        &[
            "device",
            "--store",
            &a,
            "import",
            register.to_str().unwrap(),
        ],
        dir.path(),
    );
    let reenroll = run(
        &["admin", "--database", &db, "reenroll-code", device_a],
        dir.path(),
    );
    assert_eq!(reenroll["device_id"], device_a);
    let again = run(
        &[
            "device",
            "--store",
            &a,
            "enroll",
            "--server",
            &url,
            "--code",
            reenroll["code"].as_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(again["device_id"], device_a);
    let report = run(&["device", "--store", &a, "sync"], dir.path());
    assert_eq!(report["pushed_docs"], 1);
    let report = run(&["device", "--store", &b, "sync"], dir.path());
    assert_eq!(report["pulled_docs"], 1);

    // The read model: records by folded name, the dashboard, the report and exports.
    let found = json_lines(
        &[
            "admin",
            "--database",
            &db,
            "records",
            "--name",
            "nguyen van 1",
        ],
        dir.path(),
    );
    assert_eq!(found.len(), 11, "Nguyễn Văn 1 and 10..=19");
    assert!(found.iter().all(|r| r["commune"] == "DB-MUONGPHANG"));
    let xuan = json_lines(
        &["admin", "--database", &db, "records", "--name", "LO THI"],
        dir.path(),
    );
    assert_eq!(xuan.len(), 1);
    assert_eq!(xuan[0]["applicant_name"], "Lò Thị Xuân");
    let dashboard = json_lines(&["admin", "--database", &db, "dashboard"], dir.path());
    assert_eq!(dashboard.len(), 1);
    assert_eq!(
        (
            dashboard[0]["received_this_month"].as_u64(),
            dashboard[0]["open"].as_u64()
        ),
        (Some(26), Some(26))
    );
    let today = communesync_core::catalogue::CivilDate::today().to_string();
    let report = run(
        &[
            "admin",
            "--database",
            &db,
            "report",
            "--from",
            &today,
            "--to",
            &today,
            "--format",
            "json",
        ],
        dir.path(),
    );
    assert_eq!(report["lines"][0]["procedure_code"], "1.001193");
    assert_eq!(report["lines"][0]["received"], 26);
    let csv = Command::new(BIN)
        .args([
            "admin",
            "--database",
            &db,
            "export-records",
            "--name",
            "xuan",
        ])
        .output()
        .unwrap();
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.starts_with("id,commune,kind,status,"));
    assert!(csv.contains(",Lò Thị Xuân,"));
    let rebuilt = run(
        &["admin", "--database", &db, "rebuild-read-model"],
        dir.path(),
    );
    assert_eq!(rebuilt["read_model_rows"], 26);
    let token = std::fs::read_to_string(dir.path().join("communesync-admin-token")).unwrap();
    let answer = raw_get(
        &listen,
        "/v1/admin/records/search?name=lo%20thi%20xuan",
        token.trim(),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Lò Thị Xuân"), "{answer}");
    let bad = raw_get(
        &listen,
        "/v1/admin/report?from=2026-09-02&to=2026-09-01",
        token.trim(),
    );
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let unauthenticated = raw_get(&listen, "/v1/admin/dashboard", "not-a-token");
    assert!(
        unauthenticated.starts_with("HTTP/1.1 401"),
        "{unauthenticated}"
    );

    // Revocation with a wipe order.
    let device_b = devices
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .find(|id| *id != device_a)
        .unwrap();
    let wiped = run(
        &["admin", "--database", &db, "revoke", device_b, "--wipe"],
        dir.path(),
    );
    assert_eq!(wiped["wipe"], true);
    let listed = json_lines(&["admin", "--database", &db, "devices"], dir.path());
    let b_listed = listed.iter().find(|d| d["id"] == device_b).unwrap();
    assert_eq!(
        (b_listed["revoked"].as_bool(), b_listed["wiped"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(listed.iter().all(|d| d["refused_docs"] == 0));
    assert!(json_lines(&["admin", "--database", &db, "refusals"], dir.path()).is_empty());
    assert!(
        json_lines(
            &["admin", "--database", &db, "refusals", "--device", device_a],
            dir.path()
        )
        .is_empty()
    );

    // Operator tokens: listed without secrets, revocable, never the last one.
    let token = std::fs::read_to_string(dir.path().join("communesync-admin-token")).unwrap();
    let tokens = json_lines(&["admin", "--database", &db, "tokens"], dir.path());
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["label"], "bootstrap");
    assert!(
        !serde_json::to_string(&tokens)
            .unwrap()
            .contains(token.trim())
    );
    let bootstrap = tokens[0]["id"].as_u64().unwrap().to_string();
    let last = Command::new(BIN)
        .args(["admin", "--database", &db, "revoke-token", &bootstrap])
        .output()
        .unwrap();
    assert!(!last.status.success());
    assert!(String::from_utf8_lossy(&last.stderr).contains("last active operator token"));
    run(
        &[
            "admin",
            "--database",
            &db,
            "new-admin-token",
            "--label",
            "spare",
        ],
        dir.path(),
    );
    run(
        &["admin", "--database", &db, "revoke-token", &bootstrap],
        dir.path(),
    );
    let tokens = json_lines(&["admin", "--database", &db, "tokens"], dir.path());
    assert!(tokens[0]["revoked_at"].is_i64() && tokens[1]["revoked_at"].is_null());
    let refused = raw_get(&listen, "/v1/admin/stats", token.trim());
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

    // The server's database is readable by its user only.
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.path().join(format!("province.db{suffix}"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}

/// Every stdout line of a command, as JSON.
fn json_lines(args: &[&str], dir: &std::path::Path) -> Vec<serde_json::Value> {
    let output = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A GET with a bearer token over a plain socket; the response head.
fn raw_get(addr: &str, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// Runs `device --store STORE quarantine ARGS...` and returns its JSON lines.
fn quarantine(store: &str, args: &[&str], dir: &std::path::Path) -> Vec<serde_json::Value> {
    let output = Command::new(BIN)
        .args(["device", "--store", store, "quarantine"])
        .args(args)
        .current_dir(dir)
        .env("COMMUNESYNC_STORE_KEY", "11".repeat(32))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_device_quarantine_is_listed_and_settled_from_the_cli() {
    use communesync_core::record::{NewCitizenRequest, RecordKind};
    use communesync_core::store::{DeviceStore, EncryptionKey, RefusedDoc, StoreConfig};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let store_arg = path.display().to_string();
    // A tablet that typed requests for another commune before it enrolled, and one the server
    // refused.
    let (strays, refused) = {
        let mut store =
            DeviceStore::open(StoreConfig::new(&path).encrypted(EncryptionKey::new([0x11; 32])))
                .unwrap();
        let mut request = |commune: &str, description: &str| {
            store
                .create_citizen_request(
                    "can-bo.lan",
                    NewCitizenRequest {
                        commune_code: commune.into(),
                        category: "road".into(),
                        description: description.into(),
                        ..Default::default()
                    },
                )
                .unwrap()
                .id
        };
        let strays = [
            request("DB-NATAU", "Đường sạt lở"),
            request("DB-NATAU", "Cầu treo hỏng"),
        ];
        let own = request("DB-MUONGPHANG", "Đèn đường hỏng");
        assert_eq!(
            store.set_enrolled_commune(Some("DB-MUONGPHANG")).unwrap(),
            2
        );
        store
            .quarantine_refused(&[RefusedDoc {
                id: own,
                kind: RecordKind::CitizenRequest,
                code: "too_large".into(),
                message: "notes: longer than 65536 bytes".into(),
            }])
            .unwrap();
        (strays, own)
    };

    let listed = quarantine(&store_arg, &[], dir.path());
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|r| r["direction"] == "outgoing"));
    let reason = |id: &communesync_core::record::RecordId| {
        listed
            .iter()
            .find(|r| r["record_id"] == id.to_string())
            .map(|r| (r["code"].clone(), r["attempts"].clone()))
            .unwrap()
    };
    assert_eq!(reason(&strays[0]), ("not_yours".into(), 1.into()));
    assert_eq!(reason(&refused), ("too_large".into(), 1.into()));
    assert!(
        listed
            .iter()
            .all(|r| r["message"].as_str().is_some_and(|m| !m.is_empty()))
    );

    let retried = quarantine(&store_arg, &["retry", &refused.to_string()], dir.path());
    assert_eq!(retried[0]["left_quarantine"], true);
    let copied = quarantine(
        &store_arg,
        &[
            "copy-as-new",
            &strays[0].to_string(),
            "--officer",
            "can-bo.minh",
        ],
        dir.path(),
    );
    assert_eq!(copied[0]["record"]["commune_code"], "DB-MUONGPHANG");
    assert_eq!(copied[0]["record"]["description"], "Đường sạt lở");
    quarantine(
        &store_arg,
        &[
            "discard",
            &strays[1].to_string(),
            "--officer",
            "can-bo.minh",
            "--reason",
            "nhập trùng",
        ],
        dir.path(),
    );
    assert!(quarantine(&store_arg, &[], dir.path()).is_empty());
    let audit = quarantine(&store_arg, &["audit"], dir.path());
    assert_eq!(audit.len(), 2);
    assert_eq!(
        (audit[0]["action"].clone(), audit[1]["action"].clone()),
        ("copied_as_new".into(), "discarded".into())
    );
    assert_eq!(audit[1]["reason"], "nhập trùng");
    assert_eq!(audit[1]["officer"], "can-bo.minh");

    // A discard needs a reason, and only a quarantined record can be discarded.
    let refuse = |args: &[&str]| {
        let output = Command::new(BIN)
            .args(["device", "--store", &store_arg, "quarantine"])
            .args(args)
            .env("COMMUNESYNC_STORE_KEY", "11".repeat(32))
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let id = refused.to_string();
    assert!(refuse(&["discard", &id, "--officer", "can-bo.minh"]).contains("--reason"));
    assert!(
        refuse(&["discard", &id, "--officer", "can-bo.minh", "--reason", "x"])
            .contains("no record")
    );
    assert!(refuse(&["retry", "not-an-id"]).contains("id"));
}

#[test]
fn a_tablet_installs_a_catalogue_file_before_its_first_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tablet.db");
    let store = store.to_str().unwrap();
    let file = dir.path().join("catalogue.json");
    std::fs::write(
        &file,
        r#"{"procedures":[
            {"code":"1.001193","name":"Đăng ký khai sinh","sector":"Hộ tịch","processing":{"working_days":1},
             "form":{"fields":[{"name":"child_name","label":"Họ tên trẻ","type":"text","required":true}]},"version":4},
            {"code":"1.000894","name":"Đăng ký kết hôn","sector":"Hộ tịch","processing_days":5},
            {"code":"2.000908","name":"Chứng thực bản sao từ bản chính","sector":"Chứng thực","processing":{"working_hours":4}}],
          "calendar":[{"day":"2027-02-20","working":true,"reason":"Làm bù"}]}"#,
    )
    .unwrap();
    let installed = run(
        &[
            "device",
            "--store",
            store,
            "catalogue",
            "import",
            file.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(installed["procedures"], 3);
    let found = run(
        &[
            "device",
            "--store",
            store,
            "catalogue",
            "search",
            "khai sinh",
        ],
        dir.path(),
    );
    assert_eq!(found["code"], "1.001193");
    assert_eq!(found["version"], 4);
    let sectors = run(
        &["device", "--store", store, "catalogue", "sectors"],
        dir.path(),
    );
    assert_eq!(sectors["sector"], "Hộ tịch");
    assert_eq!(sectors["procedures"], 2);

    // A bad file is refused with its reason and changes nothing.
    std::fs::write(&file, r#"{"procedures":[{"code":"1","name":"x"}]}"#).unwrap();
    let refused = Command::new(BIN)
        .args(["device", "--store", store, "catalogue", "import"])
        .arg(&file)
        .env("COMMUNESYNC_STORE_KEY", "11".repeat(32))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no processing time"));
    let found = run(
        &["device", "--store", store, "catalogue", "search", "ket hon"],
        dir.path(),
    );
    assert_eq!(found["code"], "1.000894");
}

#[test]
fn an_operator_rotates_a_store_key_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tablet.db");
    let store = store.to_str().unwrap();
    let device = |key: &str, args: &[&str]| {
        Command::new(BIN)
            .args(["device", "--store", store])
            .args(args)
            .env("COMMUNESYNC_STORE_KEY", key)
            .env_remove("COMMUNESYNC_NEW_STORE_KEY")
            .output()
            .unwrap()
    };
    let (old, new) = ("11".repeat(32), "22".repeat(32));
    // An empty store is enough: it has a device id and the schema to re-encrypt.
    assert!(device(&old, &["export"]).status.success());

    let new_key_file = dir.path().join("new.key");
    std::fs::write(&new_key_file, format!("{new}\n")).unwrap();
    let missing = device(&old, &["rekey"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no new key"));
    std::fs::write(dir.path().join("short.key"), "abcd").unwrap();
    let short = device(&old, &["rekey", "--new-key-file", "short.key"]);
    assert!(!short.status.success());

    let rekeyed = Command::new(BIN)
        .args(["device", "--store", store, "rekey", "--new-key-file"])
        .arg(&new_key_file)
        .env("COMMUNESYNC_STORE_KEY", &old)
        .output()
        .unwrap();
    assert!(
        rekeyed.status.success(),
        "{}",
        String::from_utf8_lossy(&rekeyed.stderr)
    );
    let with_old = device(&old, &["export"]);
    assert!(
        !with_old.status.success(),
        "the old key still opens the store"
    );
    assert!(device(&new, &["export"]).status.success());

    // From the environment too, and back.
    let back = Command::new(BIN)
        .args(["device", "--store", store, "rekey"])
        .env("COMMUNESYNC_STORE_KEY", &new)
        .env("COMMUNESYNC_NEW_STORE_KEY", &old)
        .output()
        .unwrap();
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    assert!(device(&old, &["export"]).status.success());
    assert!(!device(&new, &["export"]).status.success());
}
