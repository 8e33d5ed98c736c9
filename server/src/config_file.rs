//! Every `communesync serve` setting from three places: the command line, the environment and
//! a TOML file, in that order of precedence (a flag wins over `COMMUNESYNC_*`, which wins over
//! the file, which wins over the built-in default).
//!
//! - Environment: each flag `--some-flag` is also `COMMUNESYNC_SOME_FLAG` (several values of a
//!   repeatable flag separated by commas). Flags added later get theirs the same way.
//! - File: `serve --config FILE` (or `COMMUNESYNC_CONFIG=FILE`) reads top-level keys named as the
//!   flags without their dashes (`listen = "0.0.0.0:8480"`, `max-connections = 4096`, or with
//!   underscores: `max_connections`); a repeatable flag takes an array. An unknown key, a table or
//!   a value of another type is an error that names it: a typo never silently leaves a default.
//!   The file is read once, at start, and is at most [`MAX_CONFIG_BYTES`].
//! - `serve --print-config` prints the settings in force (the database without its password) as
//!   JSON and exits without opening the database: how an operator, or a test of a systemd unit,
//!   checks what a deployment will run with.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use clap::Command;

/// Largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Arguments of `serve` that are not settings (no environment variable, not in the file).
const NOT_SETTINGS: &[&str] = &["config", "print_config", "help", "version"];

/// The name of a `serve` argument's environment variable.
fn env_name(long: &str) -> String {
    format!("COMMUNESYNC_{}", long.to_uppercase().replace('-', "_"))
}

/// `cli` with environment variables for every `serve` setting and the file's values (if a
/// configuration file is named by `args` or the environment) as their defaults.
pub fn configure(mut cli: Command, args: &[OsString]) -> anyhow::Result<Command> {
    let file = config_path(args);
    let values = match &file {
        Some(path) => read_file(path)?,
        None => Vec::new(),
    };
    let Some(serve) = cli.find_subcommand_mut("serve") else {
        return Ok(cli);
    };
    let mut known: Vec<String> = Vec::new();
    let ids: Vec<(String, String, bool)> = serve
        .get_arguments()
        .filter(|arg| !NOT_SETTINGS.contains(&arg.get_id().as_str()))
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let many = matches!(arg.get_action(), clap::ArgAction::Append);
            Some((arg.get_id().to_string(), long.to_owned(), many))
        })
        .collect();
    let mut command = std::mem::take(serve);
    for (id, long, many) in &ids {
        known.push(long.clone());
        let from_file = values.iter().find(|(key, _)| key == long).map(|(_, v)| v);
        // The strings live as long as the process: a few, once, at start.
        let env: &'static str = Box::leak(env_name(long).into_boxed_str());
        command = command.mut_arg(id.as_str(), |mut arg| {
            if arg.get_env().is_none() {
                arg = arg.env(env);
            }
            if *many {
                arg = arg.value_delimiter(',');
            }
            if let Some(values) = from_file {
                let leaked: Vec<&'static str> = values
                    .iter()
                    .map(|v| &*Box::leak(v.clone().into_boxed_str()))
                    .collect();
                arg = arg.default_values(leaked);
            }
            arg
        });
    }
    *serve = command;
    if let Some(path) = &file {
        for (key, _) in &values {
            if !known.contains(key) {
                bail!(
                    "{}: unknown setting `{key}` (known: {})",
                    path.display(),
                    known.join(", ")
                );
            }
        }
    }
    Ok(cli)
}

/// The configuration file named by `serve --config FILE` / `--config=FILE`, else by
/// `COMMUNESYNC_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let serve_at = args.iter().position(|a| a == "serve")?;
    let mut rest = args[serve_at + 1..].iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return rest.next().map(PathBuf::from);
        }
        if let Some(value) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(PathBuf::from(value));
        }
    }
    std::env::var_os("COMMUNESYNC_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The file's settings: (flag name, values as the command line would give them).
fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading the configuration {}", path.display()))?
        .len();
    if size > MAX_CONFIG_BYTES {
        bail!(
            "{}: over {MAX_CONFIG_BYTES} bytes: not a configuration file",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration {}", path.display()))?;
    parse(&text).with_context(|| format!("in the configuration {}", path.display()))
}

/// Parses a configuration file's text (see the module doc).
pub fn parse(text: &str) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let table: toml::Table = text.parse().map_err(|e| anyhow!("{e}"))?;
    let mut settings = Vec::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        let values = match value {
            toml::Value::Array(items) => items
                .into_iter()
                .map(|item| scalar(&key, item))
                .collect::<anyhow::Result<Vec<_>>>()?,
            other => vec![scalar(&key, other)?],
        };
        settings.push((name, values));
    }
    Ok(settings)
}

fn scalar(key: &str, value: toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(s) => s,
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!("`{key}`: a {} is not a setting's value", other.type_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_give_strings_as_the_command_line_would() {
        let settings = parse(
            "listen = \"0.0.0.0:8480\"\nmax_connections = 10\ndevice-rate = 2.5\n\
             trusted-proxy = [\"10.0.0.1\", \"10.1.0.0/16\"]\n",
        )
        .unwrap();
        assert!(settings.contains(&("listen".into(), vec!["0.0.0.0:8480".into()])));
        assert!(settings.contains(&("max-connections".into(), vec!["10".into()])));
        assert!(settings.contains(&("device-rate".into(), vec!["2.5".into()])));
        assert!(settings.contains(&(
            "trusted-proxy".into(),
            vec!["10.0.0.1".into(), "10.1.0.0/16".into()]
        )));
        assert!(parse("[serve]\nlisten = 1\n").is_err());
        assert!(parse("listen = ").is_err());
    }

    #[test]
    fn the_config_flag_is_found_after_serve_only() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&args(&["communesync", "serve", "--config", "a.toml"])),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            config_path(&args(&["communesync", "serve", "--config=b.toml"])),
            Some(PathBuf::from("b.toml"))
        );
        assert_eq!(env_name("admin-token-file"), "COMMUNESYNC_ADMIN_TOKEN_FILE");
    }
}
