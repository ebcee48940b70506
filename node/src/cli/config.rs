//! One configuration for `shoal node`: a TOML file, `SHOAL_*` environment variables and
//! flags set the same options, with flags over the environment over the file over the
//! defaults. `shoal config show` prints the result and where each value came from.
//!
//! The file's keys are the node's flags with `_` for `-` (`store_bytes = "8G"`,
//! `resources = { gpu = 1 }`, `listen = ["/ip4/0.0.0.0/tcp/7447"]`, `no_mdns = true`). Each
//! value the file gives, and neither a flag nor the environment does, becomes that flag, and
//! the command line is parsed again: so a value from the file is checked exactly as the flag
//! would be, and an error names the file and the line. The file read is `--config FILE`,
//! else `/etc/shoal/shoal.toml` when it exists, else the per-user one
//! (`$XDG_CONFIG_HOME/shoal/shoal.toml`, else `~/.config/shoal/shoal.toml`) when it exists.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// The system-wide configuration file.
pub(crate) const SYSTEM_FILE: &str = "/etc/shoal/shoal.toml";

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Nobody set it.
    Default,
    /// The configuration file, at this line.
    File(PathBuf, usize),
    /// This environment variable.
    Env(String),
    /// A command-line flag.
    Flag,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p, line) => write!(f, "{} line {line}", p.display()),
            Origin::Env(v) => write!(f, "environment {v}"),
            Origin::Flag => f.write_str("command line"),
        }
    }
}

/// The per-user configuration file.
pub(crate) fn user_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("shoal").join("shoal.toml"))
}

/// The file to read: `explicit`, else the system one, else the user's, when they exist.
pub(crate) fn file_to_read(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let system = PathBuf::from(SYSTEM_FILE);
    if system.is_file() {
        return Some(system);
    }
    user_file().filter(|p| p.is_file())
}

/// One option the file sets: the flag's arguments, and the line.
struct FromFile {
    id: String,
    args: Vec<OsString>,
    line: usize,
}

/// The line (from 1) where `key` is set in `text`: a `key =` line, or a `[key]` table.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.trim_end() == format!("[{key}]")
        })
        .map_or(1, |i| i + 1)
}

/// A TOML scalar as a flag's value.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        _ => None,
    }
}

/// Reads the options `file` sets, checked against the flags of `node` (the `shoal node`
/// command).
fn read(file: &Path, node: &Command) -> Result<Vec<FromFile>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the configuration {}", file.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| anyhow!("{}: {e}", file.display()))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let line = line_of(&text, key);
        let at = || format!("{} line {line}", file.display());
        let arg = node
            .get_arguments()
            .find(|a| a.get_id().as_str() == key && a.get_long().is_some())
            .filter(|_| key != "config" && key != "help")
            .ok_or_else(|| {
                let known: Vec<&str> = node
                    .get_arguments()
                    .filter(|a| a.get_long().is_some() && a.get_id() != "config")
                    .map(|a| a.get_id().as_str())
                    .collect();
                anyhow!("{}: no option `{key}`; options: {}", at(), known.join(", "))
            })?;
        let flag = OsString::from(format!("--{}", arg.get_long().unwrap_or(key)));
        let takes_value = arg.get_action().takes_values();
        let mut args = Vec::new();
        match value {
            toml::Value::Boolean(b) if !takes_value => {
                if *b {
                    args.push(flag);
                }
            }
            toml::Value::Array(items) if takes_value => {
                for item in items {
                    let v = scalar(item).ok_or_else(|| {
                        anyhow!("{}: `{key}` takes a list of strings or numbers", at())
                    })?;
                    args.push(flag.clone());
                    args.push(v.into());
                }
            }
            toml::Value::Table(t) if takes_value => {
                // `resources = { gpu = 1 }`: NAME=AMOUNT each.
                for (name, amount) in t {
                    let v = scalar(amount)
                        .ok_or_else(|| anyhow!("{}: `{key}.{name}` must be a number", at()))?;
                    args.push(flag.clone());
                    args.push(format!("{name}={v}").into());
                }
            }
            v if takes_value => match scalar(v) {
                Some(s) => {
                    args.push(flag);
                    args.push(s.into());
                }
                None => bail!("{}: `{key}` takes a string or a number", at()),
            },
            _ => bail!("{}: `{key}` is a switch: true or false", at()),
        }
        out.push(FromFile {
            id: key.clone(),
            args,
            line,
        });
    }
    Ok(out)
}

/// Where the value of `id` came from in `matches`.
fn origin_of(matches: &ArgMatches, node: &Command, id: &str) -> Origin {
    match matches.value_source(id) {
        Some(ValueSource::CommandLine) => Origin::Flag,
        Some(ValueSource::EnvVariable) => {
            let var = node
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default();
            Origin::Env(var)
        }
        _ => Origin::Default,
    }
}

/// The resolved options of `shoal node`: the arguments to parse them from (the command line,
/// then what the file adds), and where each option came from.
pub(crate) struct Resolved {
    /// The command line to parse (with the file's options as flags).
    pub(crate) argv: Vec<OsString>,
    /// Each option's origin, by id.
    pub(crate) origins: Vec<(String, Origin)>,
    /// The file read, if any.
    pub(crate) file: Option<PathBuf>,
}

/// Resolves the options of `node` (the node command) given on the command line `argv` (its
/// `matches`), with the configuration `file`.
pub(crate) fn resolve(
    argv: Vec<OsString>,
    node: &Command,
    matches: &ArgMatches,
    file: Option<PathBuf>,
) -> Result<Resolved> {
    let mut argv = argv;
    let mut origins: Vec<(String, Origin)> = node
        .get_arguments()
        .filter(|a| a.get_long().is_some() && a.get_id() != "help")
        .map(|a| {
            let id = a.get_id().as_str().to_string();
            let o = origin_of(matches, node, &id);
            (id, o)
        })
        .collect();
    if let Some(path) = &file {
        for f in read(path, node)? {
            let Some(slot) = origins.iter_mut().find(|(id, _)| *id == f.id) else {
                continue;
            };
            if matches!(slot.1, Origin::Flag | Origin::Env(_)) {
                // A flag or the environment says otherwise.
                continue;
            }
            // Checked alone first, so a bad value names its line.
            let mut alone = vec![OsString::from("node")];
            alone.extend(f.args.iter().cloned());
            if let Err(e) = node.clone().try_get_matches_from(&alone) {
                let e = e.render().to_string();
                let first = e.lines().next().unwrap_or("").trim_start_matches("error: ");
                bail!("{} line {}: `{}`: {first}", path.display(), f.line, f.id);
            }
            if !f.args.is_empty() {
                slot.1 = Origin::File(path.clone(), f.line);
            }
            argv.extend(f.args);
        }
    }
    Ok(Resolved {
        argv,
        origins,
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Command {
        Command::new("node")
            .arg(clap::Arg::new("cpus").long("cpus"))
            .arg(
                clap::Arg::new("resources")
                    .long("resource")
                    .action(clap::ArgAction::Append),
            )
            .arg(
                clap::Arg::new("no_mdns")
                    .long("no-mdns")
                    .action(clap::ArgAction::SetTrue),
            )
            .arg(
                clap::Arg::new("store_bytes")
                    .long("store-bytes")
                    .value_parser(clap::value_parser!(u64)),
            )
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("shoal.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A directory of this test's own (the tests run at once).
    fn tmp(test: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("shoal-config-test-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tmp("precedence");
        let file = write(
            &dir,
            "# a comment\ncpus = 4\nno_mdns = true\nresources = { gpu = 1 }\n",
        );
        let argv: Vec<OsString> = ["node", "--cpus", "2"].map(OsString::from).to_vec();
        let m = node().get_matches_from(&argv);
        let r = resolve(argv, &node(), &m, Some(file.clone())).unwrap();
        let get = |id: &str| r.origins.iter().find(|(i, _)| i == id).unwrap().1.clone();
        assert_eq!(get("cpus"), Origin::Flag);
        assert_eq!(get("no_mdns"), Origin::File(file.clone(), 3));
        assert_eq!(get("resources"), Origin::File(file.clone(), 4));
        assert_eq!(get("store_bytes"), Origin::Default);
        let m = node().get_matches_from(&r.argv);
        assert_eq!(m.get_one::<String>("cpus").unwrap(), "2");
        assert!(m.get_flag("no_mdns"));
        assert_eq!(
            m.get_many::<String>("resources")
                .unwrap()
                .collect::<Vec<_>>(),
            ["gpu=1"]
        );
    }

    #[test]
    fn bad_files_name_the_line() {
        let dir = tmp("bad");
        let argv: Vec<OsString> = vec!["node".into()];
        let m = node().get_matches_from(&argv);
        for (text, want) in [
            ("cpus = 1\ncolour = \"red\"\n", "line 2: no option `colour`"),
            (
                "cpus = 1\n\nstore_bytes = \"lots\"\n",
                "line 3: `store_bytes`",
            ),
            ("no_mdns = \"yes\"\n", "line 1: `no_mdns` is a switch"),
            ("cpus = [\n", "line 1"),
        ] {
            let file = write(&dir, text);
            let e = resolve(argv.clone(), &node(), &m, Some(file))
                .err()
                .unwrap_or_else(|| panic!("{text:?} was taken"));
            let e = format!("{e:#}");
            assert!(e.contains(want), "{text:?}: {e}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
