//! The example's own binary, run as its users would: a greeter started after the owner's stream
//! lost some events greets an account it never saw (asking the owner, then keeping it), and
//! refuses a closed one (the owner's tombstone).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use carrier_tests::{http_get, CarrierProcess, TestEnv};
use serde_json::{json, Value};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cache-miss"))
}

fn cli(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("the cache-miss binary runs")
}

fn ok_json(out: Output) -> Value {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn wait(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(url: &str, data: &Path, contexts: &str) -> CarrierProcess {
    let data = data.to_string_lossy().to_string();
    let args =
        ["run", "--contexts", contexts, "--nats-url", url, "--data-dir", &data, "--dashboard-addr", "127.0.0.1:0"];
    let mut process = CarrierProcess::spawn_program(&bin(), &args);
    let dashboard = process.dashboard_url(Duration::from_secs(30));
    wait(Duration::from_secs(30), "/readyz says ready", || http_get(&format!("{dashboard}/readyz")).0 == 200);
    process
}

#[test]
fn a_cache_fills_a_miss_from_its_owner_and_forgets_a_closed_account() {
    let env = TestEnv::start();
    let url = env.url();
    let owner_dir = tempfile::tempdir().expect("dir");
    let owner = run(&url, owner_dir.path(), "accounts");
    for (id, name) in [("a-1", "Ann"), ("a-2", "Bob"), ("a-3", "Cid")] {
        let open = json!({"command": "open", "id": id, "name": name}).to_string();
        ok_json(cli(&["command", "accounts", &open, "--nats-url", &url]));
    }
    ok_json(cli(&["command", "accounts", r#"{"command":"close","id":"a-3"}"#, "--nats-url", &url]));

    // The stream loses everything but Ann's opening (trimmed, or lost): the greeter never sees Bob or Cid.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let js = async_nats::jetstream::new(env.plain_client().await);
        let mut stream = js.get_stream("ACCOUNTS").await.expect("the owner's stream");
        let deadline = Instant::now() + Duration::from_secs(30);
        while stream.info().await.expect("info").state.messages < 4 {
            assert!(Instant::now() < deadline, "the four events reach the stream");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for seq in 2..=4 {
            stream.delete_message(seq).await.expect("deleted");
        }
    });

    let greeter_dir = tempfile::tempdir().expect("dir");
    let greeter = run(&url, greeter_dir.path(), "greeter");
    let greet = |id: &str| cli(&["command", "greeter", &json!({"id": id}).to_string(), "--nats-url", &url]);
    let text = |out: Output| ok_json(out)["event"]["data"]["text"].clone();
    assert_eq!(text(greet("a-1")), json!("Hello, Ann!"));
    assert_eq!(text(greet("a-2")), json!("Hello, Bob!"), "a miss is filled from the owner");
    let closed = greet("a-3");
    let stderr = String::from_utf8_lossy(&closed.stdout).to_string() + &String::from_utf8_lossy(&closed.stderr);
    assert!(!closed.status.success() && stderr.contains("not_found"), "a closed account reads as gone: {stderr}");
    let nobody = greet("nobody");
    assert!(!nobody.status.success(), "an account the owner does not know is not found");

    // Stopped, the greeter's file holds Ann (from the stream) and Bob (from the owner), not Cid.
    drop((greeter, owner));
    let dump = ok_json(cli(&["inspect", "greeter", "--data-dir", &greeter_dir.path().to_string_lossy(), "--json"]));
    let names =
        dump["tables"].as_array().expect("tables").iter().find(|t| t["table"] == json!("names")).expect("names");
    assert_eq!(names["entries"], json!([["a-1", "Ann"], ["a-2", "Bob"]]));
}
