//! `communesync device register import` as an operator uses it on a tablet's store: a register
//! exported as CSV imported with each dossier's state, a summary with the lines refused, and a
//! re-run that imports nothing again.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_communesync");

fn communesync(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("COMMUNESYNC_STORE_KEY", "11".repeat(32))
        .output()
        .unwrap()
}

fn run(args: &[&str], dir: &std::path::Path) -> serde_json::Value {
    let output = communesync(args, dir);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn a_register_is_imported_with_a_summary_and_a_rerun_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tablet.db");
    let store = store.to_str().unwrap();
    let catalogue = dir.path().join("catalogue.json");
    std::fs::write(
        &catalogue,
        r#"{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","sector":"Hộ tịch","processing_days":1}]}"#,
    )
    .unwrap();
    run(
        &[
            "device",
            "--store",
            store,
            "catalogue",
            "import",
            catalogue.to_str().unwrap(),
        ],
        dir.path(),
    );
    let register = dir.path().join("so-tiep-nhan.csv");
    std::fs::write(
        &register,
        "external_id,procedure_code,applicant_name,status,received_at,returned_at,original_reference\n\
         SK-1,1.001193,Lò Văn Pọm,returned,14/03/2025 09:30,17/03/2025 15:00,12/HT-2025\n\
         SK-2,1.001193,Lò Thị Xuân,in_progress,2025-11-03,,\n\
         SK-3,1.001193,Quàng Văn Ún,finished,2025-11-03,,\n",
    )
    .unwrap();
    let args = [
        "device",
        "--store",
        store,
        "register",
        "import",
        register.to_str().unwrap(),
        "--commune",
        "DB-MUONGPHANG",
        "--officer",
        "can-bo.lan",
    ];
    let summary = run(&args, dir.path());
    assert_eq!(summary["imported"], 2, "{summary}");
    assert_eq!(summary["already_present"], 0);
    assert_eq!(summary["errors"][0]["line"], 4);
    assert_eq!(summary["errors"][0]["external_id"], "SK-3");
    assert!(
        summary["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("finished")
    );
    let again = run(&args, dir.path());
    assert_eq!(again["imported"], 0);
    assert_eq!(again["already_present"], 2);

    let listed = communesync(
        &["device", "--store", store, "list", "--status", "returned"],
        dir.path(),
    );
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("Lò Văn Pọm"));

    // A file without a required column imports nothing, and says which.
    std::fs::write(&register, "external_id,applicant_name\nSK-9,X\n").unwrap();
    let refused = communesync(&args, dir.path());
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("procedure_code"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
