//! The chaos soak in CI (issue 12 item 7): two minutes (`$SHOAL_CHAOS_MINUTES` to change it;
//! one more minute with membership by SWIM)
//! of the mixed workload of `scripts/chaos` on a lab of five nodes while nodes are killed,
//! restarted, frozen, isolated and partitioned at random; zero wrong results, zero hangs,
//! zero leaks, and only failures of the kinds these semantics allow. The seed is printed
//! (`$SHOAL_CHAOS_SEED` to run one again). Needs the lab (root, `ip`, `nft`): skips without
//! it unless `$SHOAL_NETLAB_REQUIRED` is set, and the `chaos_driver` example, which
//! `cargo test --workspace` builds.

use std::time::Duration;

use shoal_tests::chaos::{self, ChaosOptions};
use shoal_tests::netlab::skip_unless_available;

#[test]
fn chaos_soak_has_no_wrong_results_hangs_or_leaks() {
    soak("chaos", 2.0, false);
}

/// The same soak with membership by SWIM (`--membership swim`): the killed, frozen, isolated
/// and partitioned peers are found by probes, and come back by refuting.
#[test]
fn chaos_soak_under_swim_membership_has_no_wrong_results_hangs_or_leaks() {
    soak("chaos-swim", 1.0, true);
}

fn soak(what: &str, default_minutes: f64, swim: bool) {
    if !skip_unless_available(what) {
        return;
    }
    // One soak at a time: each loads the machine on purpose.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let minutes: f64 = std::env::var("SHOAL_CHAOS_MINUTES")
        .ok()
        .map(|m| m.parse().expect("$SHOAL_CHAOS_MINUTES is a number"))
        .unwrap_or(default_minutes);
    let seed: u64 = std::env::var("SHOAL_CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("$SHOAL_CHAOS_SEED is a number"))
        .unwrap_or_else(chaos::seed_from_time);
    let driver = shoal_tests::example_bin("chaos_driver").expect("the chaos_driver example");
    let mut options = ChaosOptions::new(5, Duration::from_secs_f64(minutes * 60.0), seed, driver);
    options.swim = swim;
    // A reference unresolved for a minute is a hang here: the failure timeout is 3 s, and
    // the whole test must stay well under four minutes even when it fails.
    options.bound = Duration::from_secs(60);
    let summary = chaos::run(&options).expect("the soak ran");
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    assert!(
        summary.passed(),
        "{what} soak with seed {seed} (SHOAL_CHAOS_SEED={seed} runs it again) failed: {:#?}",
        summary.violations
    );
}
