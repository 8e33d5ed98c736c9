//! The deployment material runs: `communesync serve` takes every setting from a flag, a
//! `COMMUNESYNC_*` variable or the `--config` TOML file, in that order of precedence (checked
//! with `--print-config` on the real binary); a typo in the file or a bad value stops the start
//! with a message naming it; the systemd units of `server/deploy/` pass `systemd-analyze verify`
//! (where systemd is installed) and the service's `ExecStart` line, with the example
//! `server.toml`, parses with the real binary.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use communesync_tests::process::communesync_binary;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/deploy")
}

fn run(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary);
    command.args(args).env("RUST_LOG", "warn");
    // Only the variables this test sets reach the child.
    for (key, _) in std::env::vars() {
        if key.starts_with("COMMUNESYNC_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn settings(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn serve_settings_come_from_flags_then_environment_then_file() {
    let binary = communesync_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    std::fs::write(
        &file,
        r#"
database = "host=10.0.0.1,10.0.0.2 port=5432,5432 user=cs password=hunter2 dbname=cs target_session_attrs=read-write"
listen = "127.0.0.1:1111"
max_connections = 10
header-timeout-secs = 5
idle-timeout-secs = 33
trusted-proxy = ["10.0.0.1", "10.1.0.0/16"]
"#,
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();
    let output = run(
        &binary,
        &[
            "serve",
            "--config",
            file_arg,
            "--max-connections",
            "20",
            "--print-config",
        ],
        &[
            ("COMMUNESYNC_LISTEN", "127.0.0.1:2222"),
            ("COMMUNESYNC_MAX_CONNECTIONS", "15"),
            ("COMMUNESYNC_HEADER_TIMEOUT_SECS", "7"),
        ],
    );
    let s = settings(&output);
    // Flag over environment over file.
    assert_eq!(s["max-connections"], 20);
    // Environment over file.
    assert_eq!(s["listen"], "127.0.0.1:2222");
    assert_eq!(s["header-timeout-secs"], 7);
    // File over default.
    assert_eq!(s["idle-timeout-secs"], 33);
    assert_eq!(
        s["trusted-proxy"],
        serde_json::json!(["10.0.0.1/32", "10.1.0.0/16"])
    );
    // Default.
    assert_eq!(s["device-burst"], 20);
    // The password never reaches the output.
    let database = s["database"].as_str().unwrap();
    assert!(database.contains("host=10.0.0.1,10.0.0.2") && !database.contains("hunter2"));

    // The file named by the environment; a repeatable flag from a comma list.
    let s = settings(&run(
        &binary,
        &["serve", "--print-config"],
        &[
            ("COMMUNESYNC_CONFIG", file_arg),
            ("COMMUNESYNC_TRUSTED_PROXY", "192.0.2.1,198.51.100.0/24"),
        ],
    ));
    assert_eq!(s["idle-timeout-secs"], 33);
    assert_eq!(
        s["trusted-proxy"],
        serde_json::json!(["192.0.2.1/32", "198.51.100.0/24"])
    );
}

#[test]
fn a_typo_or_a_bad_value_in_the_file_stops_the_start_naming_it() {
    let binary = communesync_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("lisen = \"127.0.0.1:1\"\n", "lisen"),
        ("max-connections = \"many\"\n", "many"),
        ("[serve]\nlisten = \"127.0.0.1:1\"\n", "serve"),
        ("listen = \n", "server.toml"),
    ];
    for (text, named) in cases {
        let file = dir.path().join("server.toml");
        std::fs::write(&file, text).unwrap();
        let output = run(
            &binary,
            &[
                "serve",
                "--config",
                file.to_str().unwrap(),
                "--print-config",
            ],
            &[],
        );
        assert!(!output.status.success(), "{text:?} was accepted");
        assert!(output.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{text:?}: {stderr}");
    }
    let output = run(
        &binary,
        &[
            "serve",
            "--config",
            "/nonexistent/server.toml",
            "--print-config",
        ],
        &[],
    );
    assert!(!output.status.success());
}

#[test]
fn the_systemd_units_verify_and_the_service_command_parses() {
    let binary = communesync_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let binary_str = binary.to_str().unwrap();
    let example_config = deploy_dir().join("server.toml");
    let mut units = Vec::new();
    for name in [
        "communesync.service",
        "communesync-backup.service",
        "communesync-backup.timer",
    ] {
        let text = std::fs::read_to_string(deploy_dir().join(name)).unwrap();
        let local = text.replace("/usr/local/bin/communesync", binary_str);
        let path = dir.path().join(name);
        std::fs::write(&path, local).unwrap();
        units.push(path);
    }

    // The service's command line, with the example configuration file.
    let unit = std::fs::read_to_string(&units[0]).unwrap();
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .unwrap()
        .replace(
            "/etc/communesync/server.toml",
            example_config.to_str().unwrap(),
        );
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[0], binary_str);
    let mut args: Vec<&str> = words[1..].to_vec();
    args.push("--print-config");
    let s = settings(&run(&binary, &args, &[]));
    assert_eq!(s["database"], "sqlite:/var/lib/communesync/server.db");
    assert_eq!(s["listen"], "0.0.0.0:8480");
    assert_eq!(s["admin-token-file"], "/var/lib/communesync/admin-token");

    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: unit syntax not verified");
        return;
    };
    let output = Command::new(analyze)
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    // Unknown or malformed settings are only warnings (exit 0): any output is a failure.
    assert!(
        output.status.success() && output.stderr.is_empty() && output.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or(())
}
