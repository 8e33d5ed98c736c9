//! The main job as a newcomer runs it (`communesync demo`, loopback link): it must run to its
//! end, and what it shows must be true — a dossier numbered at intake, its receipt verified
//! offline by another commune's tablet and online by the server, an altered copy refused.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn the_demo_runs_to_its_end_with_a_numbered_dossier_and_a_verified_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_communesync"))
        .args(["demo", "--fast", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let intake = stdout
        .lines()
        .find(|line| line.starts_with("intake at the desk: dossier "))
        .unwrap_or_else(|| panic!("no intake line:\n{stdout}"));
    let number = intake
        .trim_start_matches("intake at the desk: dossier ")
        .split(' ')
        .next()
        .unwrap();
    // A number from the tablet's block (the default format), not a fallback.
    let parts: Vec<&str> = number.split('-').collect();
    assert_eq!(parts.len(), 3, "{number}");
    assert!(
        parts[2].len() == 6 && parts[2].chars().all(|c| c.is_ascii_digit()),
        "{number}"
    );
    assert!(dir.path().join(format!("receipt-{number}.pdf")).exists());
    assert!(stdout.contains("verifies it offline: genuine"), "{stdout}");
    assert!(
        stdout.contains("an altered copy is refused: bad_signature"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the server verifies it online: genuine"),
        "{stdout}"
    );
    assert!(stdout.contains("signatures: verified"), "{stdout}");
}
