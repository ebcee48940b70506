//! Every input in `fuzz/regressions/<target>/` is replayed (a crash once, fixed since), the
//! seed corpus is checked, the harness is shown to catch what it must, and the real binary
//! runs a short fuzz of every target (the CI smoke run, shorter).

use std::collections::BTreeSet;
use std::time::Duration;

use shoal_fuzz::runner::{self, Budget, Options};
use shoal_fuzz::{targets, Target, Verdict};

#[test]
fn every_regression_input_replays_clean() {
    let names: BTreeSet<&str> = targets::all().iter().map(|t| t.name).collect();
    let dir = runner::crate_dir().join("regressions");
    for entry in std::fs::read_dir(&dir).expect("fuzz/regressions exists") {
        let entry = entry.unwrap();
        if entry.path().is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                names.contains(name.as_str()),
                "regressions/{name} names no target"
            );
        }
    }
    let mut replayed = 0;
    for target in targets::all() {
        for (path, bytes) in runner::regressions(target.name).unwrap() {
            if let Err(reason) = runner::run_one(&target, &bytes, true) {
                panic!("{} crashes {}: {reason}", path.display(), target.name);
            }
            replayed += 1;
        }
    }
    println!("replayed {replayed} regression inputs");
}

#[test]
fn the_seed_corpus_is_valid() {
    for target in targets::all() {
        for (i, seed) in target.hand_seeds().iter().enumerate() {
            assert_eq!(
                runner::run_one(&target, seed, true),
                Ok(Verdict::Accepted),
                "hand seed {i} of {}",
                target.name
            );
        }
        // The structure-aware ones need not all fit the target's limits, but most must, and
        // none may crash.
        let corpus = target.corpus(runner::GENERATED_SEEDS);
        if !target.has_generator() {
            assert!(
                !corpus.is_empty(),
                "{} has no generator and no seeds",
                target.name
            );
            continue;
        }
        assert!(
            corpus.len() >= runner::GENERATED_SEEDS / 2,
            "{}: {} seeds",
            target.name,
            corpus.len()
        );
        let mut accepted = 0;
        for input in &corpus {
            match runner::run_one(&target, input, true) {
                Ok(Verdict::Accepted) => accepted += 1,
                Ok(Verdict::Rejected) => {}
                Err(reason) => panic!("a seed of {} crashes it: {reason}", target.name),
            }
        }
        assert!(
            accepted * 2 >= corpus.len(),
            "{}: only {accepted} of {} seeds accepted",
            target.name,
            corpus.len()
        );
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-fuzz-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    dir
}

#[test]
fn a_planted_panic_is_found_saved_and_replayed() {
    // Panics on inputs starting 0xde 0xad; its seed is one byte-edit away.
    let target = Target::new("planted", "a decoder with a bug", |b: &[u8]| {
        if b.starts_with(&[0xde, 0xad]) {
            panic!("planted bug");
        }
        Verdict::Rejected
    })
    .seeds(|| vec![vec![0xde, 0x00, 0x01]]);
    let dir = temp_dir("planted");
    let opts = Options {
        budget: Budget::Iterations(200_000),
        seed: 7,
        crash_dir: dir.clone(),
        hang: Duration::from_secs(60),
    };
    let stats = runner::fuzz(&target, &opts, Vec::new());
    let crash = stats.crash.expect("the planted bug is found");
    assert!(crash.reason.contains("planted bug"), "{}", crash.reason);
    assert!(
        crash.reason.contains("tests/regressions.rs"),
        "the panic's place: {}",
        crash.reason
    );
    let file = crash.file.expect("the input is saved");
    assert!(file.starts_with(&dir));
    assert!(file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("planted-"));
    let saved = std::fs::read(&file).unwrap();
    assert_eq!(saved, crash.input);
    assert!(saved.starts_with(&[0xde, 0xad]));
    // The file replays the crash.
    let again = runner::run_one(&target, &saved, true).unwrap_err();
    assert!(again.contains("planted bug"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_allocation_out_of_proportion_is_a_crash() {
    let target = Target::new("greedy", "believes a length prefix", |b: &[u8]| {
        let announced = b.first().map_or(0, |n| usize::from(*n) << 16);
        let buf = vec![0u8; announced];
        std::hint::black_box(&buf);
        Verdict::Accepted
    });
    // 16 bytes may hold 64 * 16 + 4 MiB: 63 << 16 is within, 255 << 16 is not.
    let mut input = vec![63u8; 16];
    assert_eq!(
        runner::run_one(&target, &input, true),
        Ok(Verdict::Accepted)
    );
    input[0] = 255;
    let reason = runner::run_one(&target, &input, true).unwrap_err();
    assert!(reason.contains("held 16711680 bytes"), "{reason}");
}

#[test]
fn the_binary_fuzzes_every_target_and_replays() {
    let dir = temp_dir("binary");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal-fuzz"))
        .args(["--iterations", "300", "--seed", "5", "--crashes"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for target in targets::all() {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(target.name) && l.contains(" 300 inputs")),
            "{} did not run: {stdout}",
            target.name
        );
    }
    assert!(!dir.exists(), "no crash, no crash file");
    // A replay of a valid input says so and succeeds.
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hello");
    std::fs::write(&file, &targets::find("hello").unwrap().hand_seeds()[0]).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal-fuzz"))
        .arg("--replay")
        .arg(&file)
        .arg("hello")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello: accepted"));
    std::fs::remove_dir_all(&dir).unwrap();
}
