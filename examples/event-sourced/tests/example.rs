//! The example's own binary, run as its users would: a ticket opened and closed through the
//! event store, read back from the board at the command's position, its notice written once by
//! the declared bus handler, and the board rebuilt from the stream.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use carrier_tests::{http_get, http_json, CarrierProcess, TestEnv};
use serde_json::{json, Value};

const KEY: &str = "example-key-0123456789abcdef";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_event-sourced"))
}

fn cli(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("the event-sourced binary runs")
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

#[test]
fn a_ticket_is_projected_at_its_position_and_its_notice_written_once() {
    let env = TestEnv::start();
    let (url, data) = (env.url(), env.data_dir().to_string_lossy().to_string());
    let args = ["run", "--nats-url", &url, "--data-dir", &data, "--dashboard-addr", "127.0.0.1:0"];
    let mut carrier =
        CarrierProcess::spawn_program(&bin(), &[&args[..], &["--dashboard-actions", "--api-key", KEY]].concat());
    let dashboard = carrier.dashboard_url(Duration::from_secs(30));
    wait(Duration::from_secs(30), "/readyz says ready", || http_get(&format!("{dashboard}/readyz")).0 == 200);

    let command = |body: Value| cli(&["command", "tickets", &body.to_string(), "--nats-url", &url]);
    let opened = ok_json(command(json!({"command": "open", "id": "t-1", "title": "Fix the door"})));
    let position = opened["position"].as_str().expect("the answer carries its position").to_string();
    assert!(position.starts_with("TICKETS:"), "{position}");
    // Read your write: the board answers once it has applied the command's event.
    let query = json!({"query": "get_card", "id": "t-1", "min_position": position}).to_string();
    let card = ok_json(cli(&["query", "board", &query, "--nats-url", &url]));
    assert_eq!(card["found"], json!({"title": "Fix the door", "closed": false}));
    ok_json(command(json!({"command": "close", "id": "t-1"})));
    assert!(!command(json!({"command": "close", "id": "t-1"})).status.success(), "closed once");

    // The bus's handler runs inside `run`, and every tool knows it as a context.
    let get = json!({"query": "get_card", "id": "t-1"}).to_string();
    wait(Duration::from_secs(30), "the board shows the ticket closed", || {
        ok_json(cli(&["query", "board", &get, "--nats-url", &url]))["found"]["closed"] == json!(true)
    });
    let status = ok_json(cli(&["status", "--url", &dashboard, "--json"]));
    assert_eq!(status["health"]["contexts"]["notices"]["status"], json!("healthy"), "{status:#}");
    let panels = http_json(&format!("{dashboard}/api/snapshot"))["panels"].clone();
    assert!(panels.to_string().contains("notices-closed"), "the bus's panel: {panels}");
    let dlq = cli(&["dlq", "list", "notices", "--nats-url", &url]);
    assert!(String::from_utf8_lossy(&dlq.stdout).contains("no dead letters for notices"));

    // The board is rebuilt from the stream, blue/green.
    let rebuilt = cli(&["rebuild", "board", "--url", &dashboard, "--api-key", KEY]);
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    assert_eq!(ok_json(cli(&["query", "board", &get, "--nats-url", &url]))["found"]["closed"], json!(true));

    // Stopped, the bus's file holds one notice for the one closed ticket.
    wait(Duration::from_secs(30), "the handler wrote the notice", || {
        http_json(&format!("{dashboard}/api/snapshot"))["panels"].to_string().contains("handled 2")
    });
    drop(carrier);
    let dump = ok_json(cli(&["inspect", "notices", "--data-dir", &data, "--json"]));
    let notices = dump["tables"].as_array().expect("tables").iter().find(|t| t["table"] == json!("notices"));
    assert_eq!(notices.expect("notices")["entries"], json!([["t-1", "ticket t-1 was closed"]]));
}
