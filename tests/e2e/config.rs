//! Configuration files and `carrier config`: precedence, errors that name the file line,
//! secrets that never print, and a real `carrier run` configured by a file alone.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use carrier_tests::{carrier_bin, http_get, CarrierProcess, TestEnv};

/// `carrier <args>` in `dir`, with no configuration from the environment but `env`.
fn carrier_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(carrier_bin());
    command.current_dir(dir).args(args).env("NO_COLOR", "1").env("XDG_CONFIG_HOME", dir.join("xdg"));
    for name in
        ["CARRIER_CONFIG", "NATS_URL", "NATS_TOKEN", "NATS_PASSWORD", "CARRIER_API_KEY", "CARRIER_REDB_CACHE_MB"]
    {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("carrier runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `carrier config --json <line>`'s setting `key`.
fn setting(json: &serde_json::Value, key: &str) -> serde_json::Value {
    json["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .find(|s| s["key"] == key)
        .unwrap_or_else(|| panic!("no setting {key} in {json}"))
        .clone()
}

#[test]
fn flags_beat_the_environment_which_beats_the_file_which_beats_the_defaults() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Line numbers matter: the output names them.
    let file = "\
batch-max = 100
poison_threshold = 5
redb-cache-mb = 16

[run]
batch-max = 200
contexts = [\"baskets\", \"stores\"]
";
    std::fs::write(dir.path().join("carrier.toml"), file).expect("write");
    let out = carrier_in(dir.path(), &["config", "--json", "run"], &[("CARRIER_REDB_CACHE_MB", "32")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["command"], "run");
    assert_eq!(json["file"], "carrier.toml", "the default file in the working directory is read");
    // The section wins over the top.
    let batch = setting(&json, "batch-max");
    assert_eq!((batch["value"].as_str(), batch["source"].as_str()), (Some("200"), Some("file")), "{batch}");
    assert_eq!(batch["detail"], "carrier.toml line 6");
    // snake_case keys are the same setting.
    let poison = setting(&json, "poison-threshold");
    assert_eq!((poison["value"].as_str(), poison["detail"].as_str()), (Some("5"), Some("carrier.toml line 2")));
    // The environment wins over the file.
    let cache = setting(&json, "redb-cache-mb");
    assert_eq!(
        (cache["value"].as_str(), cache["source"].as_str(), cache["detail"].as_str()),
        (Some("32"), Some("environment"), Some("CARRIER_REDB_CACHE_MB"))
    );
    assert_eq!(setting(&json, "contexts")["value"], serde_json::json!(["baskets", "stores"]));
    let defaulted = setting(&json, "data-dir");
    assert_eq!((defaulted["value"].as_str(), defaulted["source"].as_str()), (Some("./carrier-data"), Some("default")));
    assert_eq!(setting(&json, "nats-user")["source"], "not set");

    // A flag wins over everything; the top-level key reaches another subcommand (bench).
    let out = carrier_in(dir.path(), &["config", "--json", "run", "--batch-max", "7"], &[]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let batch = setting(&json, "batch-max");
    assert_eq!((batch["value"].as_str(), batch["source"].as_str()), (Some("7"), Some("flag")), "{batch}");
    let out = carrier_in(dir.path(), &["config", "--json", "bench"], &[]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(setting(&json, "batch-max")["detail"], "carrier.toml line 1");

    // The TOML form is a file for that subcommand, each line saying where its value came from.
    let out = carrier_in(dir.path(), &["config", "run"], &[]);
    let shown = text(&out.stdout);
    assert!(shown.contains("[run]\n"), "{shown}");
    let line = shown.lines().find(|l| l.starts_with("batch-max =")).expect("batch-max line");
    assert!(line.contains("batch-max = 200") && line.contains("# file: carrier.toml line 6"), "{line}");
    let body: String = shown.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
    std::fs::write(dir.path().join("again.toml"), body).expect("write");
    let again = carrier_in(dir.path(), &["--config", "again.toml", "config", "--json", "run"], &[]);
    assert!(again.status.success(), "carrier config's output reads back as a file: {}", text(&again.stderr));
    let json: serde_json::Value = serde_json::from_slice(&again.stdout).expect("JSON");
    assert_eq!(setting(&json, "batch-max")["value"], "200");
    assert_eq!(setting(&json, "contexts")["value"], serde_json::json!(["baskets", "stores"]));
}

#[test]
fn a_bad_file_stops_the_command_with_its_file_line_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: [(&str, &[&str]); 7] = [
        (
            "log-format = \"json\"\n\n[run]\nbatchmax = 3\n",
            &["line 4", "unknown key `batchmax`", "did you mean `batch-max`?"],
        ),
        ("[run]\ncontexts = [\"stores\"]\nbatch-max = 0\n", &["line 3", "`batch-max` = 0", "0 is not in 1..=10000"]),
        ("log-format = \"xml\"\n", &["line 1", "`log-format`", "possible values: pretty, json"]),
        ("[runn]\nbatch-max = 1\n", &["line 1", "unknown section [runn]", "[run]"]),
        ("no-dashboard = \"yes\"\n", &["line 1", "`no-dashboard`", "true or false"]),
        ("\n\nbatch-max = \n", &["line 3", "not valid TOML"]),
        ("[dlq.list]\nlimit = 1\n", &["line 1", "one level deep"]),
    ];
    for (file, expected) in cases {
        std::fs::write(dir.path().join("bad.toml"), file).expect("write");
        let out = carrier_in(dir.path(), &["--config", "bad.toml", "run", "--no-dashboard"], &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file:?}: {stderr}");
        assert!(stderr.starts_with("error: bad.toml line"), "{file:?}: {stderr}");
        for needle in expected {
            assert!(stderr.contains(needle), "{file:?}: {needle:?} missing from {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    // A named file that does not exist is an error, not silently nothing.
    let out = carrier_in(dir.path(), &["--config", "missing.toml", "config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read the configuration file missing.toml"), "{}", text(&out.stderr));
    let out = carrier_in(dir.path(), &["config"], &[("CARRIER_CONFIG", "nowhere.toml")]);
    assert!(text(&out.stderr).contains("nowhere.toml"), "{}", text(&out.stderr));
    // Actions from a file still need a key: refused before anything starts.
    std::fs::write(dir.path().join("actions.toml"), "[run]\ndashboard-actions = true\n").expect("write");
    let out = carrier_in(dir.path(), &["--config", "actions.toml", "run", "--nats-url", "nats://127.0.0.1:9"], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("dashboard-actions needs an api-key"), "{}", text(&out.stderr));
}

#[test]
fn secrets_from_the_file_or_the_environment_never_print() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = "\
nats-url = \"nats://ann:urlsecret-1@127.0.0.1:4999\"
nats-password = \"filesecret-2\"
[run]
api-key = \"keysecret-3-0123456789\"
";
    std::fs::write(dir.path().join("carrier.toml"), file).expect("write");
    let secrets = ["urlsecret-1", "filesecret-2", "keysecret-3", "envsecret-4"];
    let env = [("NATS_TOKEN", "envsecret-4")];
    for args in [&["config", "run"][..], &["config", "--json", "run"], &["run", "--help"], &["config", "demo"]] {
        let out = carrier_in(dir.path(), args, &env);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        for secret in secrets {
            assert!(!all.contains(secret), "{args:?} printed {secret}:\n{all}");
        }
    }
    let out = carrier_in(dir.path(), &["config", "--json", "run"], &env);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(setting(&json, "nats-password")["value"], "********");
    assert_eq!(setting(&json, "api-key")["value"], "********");
    let token = setting(&json, "nats-token");
    assert_eq!((token["value"].as_str(), token["source"].as_str()), (Some("********"), Some("environment")));
    let url = setting(&json, "nats-url");
    assert_eq!(url["value"], "nats://127.0.0.1:4999", "{url}");
    assert_eq!(url["note"], "user information hidden");
}

#[test]
fn carrier_run_takes_every_setting_from_a_file_alone() {
    let env = TestEnv::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let file = format!(
        "nats-url = {:?}\n[run]\ncontexts = [\"stores\"]\ndata-dir = {:?}\ndashboard-addr = \"127.0.0.1:0\"\n",
        env.url(),
        data.display().to_string()
    );
    let config = dir.path().join("service.toml");
    std::fs::write(&config, file).expect("write");
    let config = config.to_string_lossy().to_string();
    let mut carrier = CarrierProcess::spawn(&["--config", &config, "run"]);
    let dashboard = carrier.dashboard_url(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&format!("{dashboard}/readyz")).0 != 200 {
        assert!(Instant::now() < deadline, "/readyz not 200 within 30 s:\n{}", carrier.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(data.join("stores.redb").exists(), "the file's data-dir and contexts are used");
    assert!(!data.join("baskets.redb").exists(), "only the file's contexts run");
    carrier.signal("TERM");
    assert_eq!(carrier.wait_exit(Duration::from_secs(15)), Ok(Some(0)), "{}", carrier.output());
}

#[test]
fn the_configuration_reference_in_the_docs_is_current() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).expect("docs");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = carrier_in(dir.path(), &["config", "--reference"], &[]);
    assert!(out.status.success());
    let reference = text(&out.stdout);
    assert!(reference.contains("| `batch-max` |") && reference.contains("`NATS_CREDS`"), "{reference}");
    assert!(
        docs.contains(&reference),
        "docs/configuration.md is stale: replace its 'Every setting' tables with `carrier config --reference`"
    );
}
