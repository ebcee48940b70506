//! The commands that manage a mesh's keys and statements (`shoal mesh …`, `shoal publisher
//! …`, `shoal sign`) print one JSON object with `--json`, whose fields are what the text
//! form prints, and which the next command takes as is.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use shoal_tests::{shoal_bin, TestDir};

/// Runs `shoal ARGS --json` with `$XDG_CONFIG_HOME` in `home`; its one JSON object.
fn json(home: &Path, args: &[&str]) -> Value {
    let out = Command::new(shoal_bin().unwrap())
        .args(args)
        .arg("--json")
        .env("XDG_CONFIG_HOME", home)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "shoal {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn is_hex_key(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn key_and_statement_commands_print_json() {
    let dir = TestDir::new("cli-json");
    let home = dir.path();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();

    let init = json(
        home,
        &["mesh", "init", "--mesh", "jsonmesh", "--out", &p("a.key")],
    );
    assert_eq!(init["mesh"], "jsonmesh");
    assert_eq!(init["authority_file"], p("a.key").as_str());
    assert!(is_hex_key(&init["public_key"]), "{init}");

    let invite = json(
        home,
        &[
            "mesh",
            "invite",
            "--authority",
            &p("a.key"),
            "--role",
            "client",
            "--expires",
            "2h",
        ],
    );
    let token = invite["token"].as_str().unwrap();
    assert!(token.starts_with("shoal-join-1-"), "{invite}");
    assert_eq!(invite["role"], "client");
    assert!(is_hex_key(&invite["invite_key"]), "{invite}");
    let (from, until) = (invite["valid_from"].as_u64(), invite["expires_at"].as_u64());
    assert_eq!(until.unwrap() - from.unwrap(), 2 * 3600 + 60, "{invite}");

    let revoke = json(
        home,
        &[
            "mesh",
            "revoke",
            "--authority",
            &p("a.key"),
            "--invite",
            invite["invite_key"].as_str().unwrap(),
        ],
    );
    assert_eq!(revoke["revoked"], invite["invite_key"]);
    assert!(revoke["statement"]
        .as_str()
        .unwrap()
        .starts_with("shoal-revoke-1-"));

    let publisher = json(home, &["publisher", "init", "--key", &p("pub.key")]);
    assert_eq!(publisher["made"], true);
    assert!(is_hex_key(&publisher["public_key"]));
    let again = json(home, &["publisher", "init", "--key", &p("pub.key")]);
    assert_eq!(again["made"], false);
    assert_eq!(again["public_key"], publisher["public_key"]);
    let shown = json(home, &["publisher", "show", "--key", &p("pub.key")]);
    assert_eq!(shown["public_key"], publisher["public_key"]);

    let grant = json(
        home,
        &[
            "mesh",
            "trust-publisher",
            "--authority",
            &p("a.key"),
            publisher["public_key"].as_str().unwrap(),
        ],
    );
    assert_eq!(grant["publisher"], publisher["public_key"]);
    let statement = grant["statement"].as_str().unwrap();
    assert!(statement.starts_with("shoal-publisher-grant-1-"), "{grant}");

    // A node's data directory, with its identity.
    let data = p("data");
    let id = json(home, &["mesh", "id", "--data-dir", &data]);
    assert!(
        id["peer_id"].as_str().unwrap().starts_with("12D3Koo"),
        "{id}"
    );
    // The same identity the next time.
    assert_eq!(
        json(home, &["mesh", "id", "--data-dir", &data])["peer_id"],
        id["peer_id"]
    );

    // Published to the node's data directory: appended to its statements file.
    let published = json(home, &["mesh", "publish", statement, "--data-dir", &data]);
    let file = published["file"].as_str().unwrap();
    assert!(std::fs::read_to_string(file).unwrap().contains(statement));

    let renewed = json(home, &["mesh", "renew", token, "--data-dir", &data]);
    let kept = std::fs::read_to_string(renewed["file"].as_str().unwrap()).unwrap();
    assert_eq!(kept.trim(), token);

    let swarm = json(home, &["mesh", "swarm-key", "--out", &p("swarm.key")]);
    assert_eq!(swarm["file"], p("swarm.key").as_str());
    assert!(!swarm["fingerprint"].as_str().unwrap().is_empty());

    // Any file signs; the manifest lands beside it.
    let binary = p("prog");
    std::fs::write(&binary, b"not really a program").unwrap();
    let signed = json(home, &["sign", &binary, "--key", &p("pub.key")]);
    assert_eq!(signed["publisher"], publisher["public_key"]);
    assert!(is_hex_key(&signed["blake3"]), "{signed}");
    assert!(Path::new(signed["manifest"].as_str().unwrap()).exists());
    assert!(!signed["target"].as_str().unwrap().is_empty());
}
