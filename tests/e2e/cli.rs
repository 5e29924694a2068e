//! The `carrier` binary, driven as a user would drive it.

use std::process::{Command, Stdio};
use std::time::Duration;

use carrier_tests::{carrier_bin, wait_until, TestEnv};

#[test]
fn the_demo_exits_zero_when_the_caches_agree() {
    let env = TestEnv::start();
    let out = Command::new(carrier_bin())
        .args(["demo", "--nats-url", &env.url(), "--data-dir"])
        .arg(env.data_dir())
        .env("NO_COLOR", "1")
        .output()
        .expect("carrier runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("--> Stores.CreateStore"), "flow log shown:\n{stdout}");
    assert!(stdout.contains("--> Baskets.Store.On(stores.StoreCreated)"));
    assert!(stdout.contains("<-- Stores.IntegrationEvents.On(stores.ProductRemoved)"));
    assert!(stdout.contains("OK: the baskets caches agree with the stores owner."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_applies_a_published_event_stops_on_sigterm_and_inspect_shows_it() {
    let env = TestEnv::start();
    let mut service = Command::new(carrier_bin())
        .args(["run", "--contexts", "baskets", "--nats-url", &env.url(), "--data-dir"])
        .arg(env.data_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("carrier run starts");

    let published = Command::new(carrier_bin())
        .args(["publish", "stores.StoreCreated", r#"{"id":"cli-store","name":"From The CLI","location":"Gate 3"}"#])
        .args(["--aggregate-version", "1", "--nats-url", &env.url()])
        .output()
        .expect("carrier publish runs");
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    assert!(String::from_utf8_lossy(&published.stdout).contains("stream seq 1"));

    // Applied means acknowledged: the durable's ack floor reaches the event.
    let js = async_nats::jetstream::new(env.plain_client().await);
    wait_until(Duration::from_secs(30), "baskets acknowledges the event", || {
        let js = js.clone();
        async move {
            let Ok(stream) = js.get_stream("STORES").await else { return false };
            let Ok(mut consumer) =
                stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>("baskets-stores").await
            else {
                return false;
            };
            consumer.info().await.map(|i| i.ack_floor.stream_sequence >= 1).unwrap_or(false)
        }
    })
    .await;

    let pid = service.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs").success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = service.try_wait().expect("waitable") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "carrier run did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "carrier run exited with {status}");

    let inspect = Command::new(carrier_bin())
        .args(["inspect", "baskets", "--data-dir"])
        .arg(env.data_dir())
        .output()
        .expect("inspect runs");
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    assert!(text.contains("cli-store") && text.contains("From The CLI"), "inspect shows the cached store:\n{text}");
    assert!(
        text.contains("baskets-stores") && text.contains("last committed stream seq 1"),
        "and the checkpoint:\n{text}"
    );
}

#[test]
fn an_unreachable_server_is_one_clear_line_not_a_panic() {
    let out = Command::new(carrier_bin())
        .args(["run", "--nats-url", "nats://127.0.0.1:1", "--data-dir"])
        .arg(tempfile::tempdir().expect("dir").path())
        .output()
        .expect("carrier runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("cannot connect to NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );
}

#[test]
fn a_payload_that_breaks_the_contract_names_the_field() {
    let out = Command::new(carrier_bin())
        .args(["publish", "stores.ProductPriceIncreased", r#"{"id":"p","delta":0}"#, "--aggregate-version", "2"])
        .output()
        .expect("carrier runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("field `delta` must be greater than zero"), "{stderr}");
}
