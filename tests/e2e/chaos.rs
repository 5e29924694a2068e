//! The chaos checker on fixed seeds: instances SIGKILLed and the server restarted while a
//! producer publishes (some events twice under another message id), then every event counted on
//! the stream and in every instance's file. `scripts/chaos.sh` runs any seed by hand.

use std::process::Command;

use carrier_tests::workspace_bin;

/// Runs one seed and returns its line, asserting it passed with every fault done.
fn check(seed: u64, extra: &[&str]) -> String {
    let output = Command::new(workspace_bin("carrier-chaos"))
        .args(["check", "--seed", &seed.to_string()])
        .args(extra)
        .output()
        .expect("carrier-chaos runs");
    let line = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "seed {seed} failed: {line}\n{stderr}");
    assert!(line.starts_with("PASS "), "{line}");
    line
}

fn field(line: &str, name: &str) -> Vec<u64> {
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix(&format!("{name}=")))
        .map(|v| v.parse().expect("a number"))
        .collect()
}

#[test]
fn seeded_kills_and_server_restarts_lose_double_and_reorder_nothing() {
    for seed in [1, 2] {
        let line = check(seed, &["--events", "3000", "--instances", "2", "--kills", "4", "--nats-restarts", "1"]);
        // The stream and both instances each counted every event once, and every fault happened.
        assert_eq!(field(&line, "ok"), vec![3000; 3], "{line}");
        for name in ["lost", "doubled", "reordered", "bad_sums"] {
            assert_eq!(field(&line, name), vec![0; 3], "{name}: {line}");
        }
        assert_eq!(field(&line, "kills"), vec![4], "{line}");
        assert_eq!(field(&line, "nats_restarts"), vec![1], "{line}");
        assert!(field(&line, "republished")[0] > 0, "some events were published twice: {line}");
    }
}
