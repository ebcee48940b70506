//! One configuration for `shoal node`: a TOML file, `SHOAL_*` variables and flags, with
//! flags over the environment over the file over the defaults; `shoal config show` says
//! where each value came from; a bad file is an error naming its line; a node started with
//! the file runs with it.

use std::process::Command;

use serde_json::Value;
use shoal_tests::process::TestDir;
use shoal_tests::{shoal_bin, NodeOptions, NodeProcess};

fn show(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(shoal_bin().unwrap())
        .args(["config", "show"])
        .args(args)
        .env_remove("SHOAL_CONFIG")
        .env_remove("SHOAL_STORE_BYTES")
        .env_remove("SHOAL_CPUS")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let dir = TestDir::new("config");
    let file = dir.join("shoal.toml");
    std::fs::write(
        &file,
        "# a node\ncpus = 3\nresources = { gpu = 2 }\nstore_bytes = \"32M\"\nno_mdns = true\nmetrics = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let f = file.display().to_string();
    let out = show(
        &["--config", &f, "--cpus", "5", "--json"],
        &[("SHOAL_STORE_BYTES", "16M")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let o = &v["options"];
    assert_eq!(v["file"], f.as_str());
    assert_eq!(o["cpus"]["value"], "5");
    assert_eq!(o["cpus"]["from"], "command line");
    assert_eq!(o["store_bytes"]["value"], "16M");
    assert_eq!(o["store_bytes"]["from"], "environment SHOAL_STORE_BYTES");
    assert_eq!(o["resources"]["value"], "gpu=2");
    assert_eq!(o["resources"]["from"], format!("{f} line 3"));
    assert_eq!(o["no_mdns"]["from"], format!("{f} line 5"));
    assert_eq!(o["metrics"]["from"], format!("{f} line 6"));
    assert_eq!(o["failure_timeout"]["value"], "3");
    assert_eq!(o["failure_timeout"]["from"], "default");
    // The text form says the same.
    let out = show(&["--config", &f], &[]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("configuration file: {f}")), "{text}");
    let cpus = text.lines().find(|l| l.starts_with("cpus ")).unwrap();
    assert!(
        cpus.contains(" 3 ") && cpus.ends_with(&format!("({f} line 2)")),
        "{text}"
    );

    // A node started with the file runs with it (the test's flags win where they overlap).
    let name = format!("config-{}", std::process::id());
    let mut node =
        NodeProcess::start(NodeOptions::new().mesh(&name).arg("--config").arg(&f)).unwrap();
    let status = node.status();
    assert_eq!(status["resources"]["total"]["gpu"], 2.0, "{status}");
    assert!(status["metrics"].as_str().is_some(), "{status}");
    node.kill_9().unwrap();
}

#[test]
fn a_bad_file_is_an_error_naming_its_line() {
    let dir = TestDir::new("config-bad");
    for (text, want) in [
        ("cpus = 2\ncolour = \"red\"\n", "line 2: no option `colour`"),
        (
            "cpus = 2\n\nstore_bytes = \"lots\"\n",
            "line 3: `store_bytes`",
        ),
        ("cpus = \"many\"\n", "line 1: `cpus`"),
        ("cpus = [\n", "line 1"),
    ] {
        let file = dir.join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let f = file.display().to_string();
        for args in [
            vec!["config", "show", "--config", &f],
            vec!["node", "--no-mesh", "--config", &f],
        ] {
            let out = Command::new(shoal_bin().unwrap())
                .args(&args)
                .env_remove("SHOAL_CONFIG")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} took {text:?}");
            assert!(
                err.contains(want) && err.contains(&f),
                "{args:?} {text:?}: {err}"
            );
        }
    }
}
