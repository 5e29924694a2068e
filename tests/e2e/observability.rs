//! Observability at the binary's edge: spans exported over OTLP/HTTP to a collector, and JSON
//! log lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

use carrier_tests::{carrier_bin, TestEnv};

/// One request a collector received: path, content type, body.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A stand-in OTLP/HTTP collector on a loopback port: answers 200 to every POST and keeps it.
fn collector() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let received: Received = Arc::default();
    let keep = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let keep = keep.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut stream = stream;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (mut length, mut content_type) = (0usize, String::new());
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            match name.trim().to_ascii_lowercase().as_str() {
                                "content-length" => length = value.trim().parse().unwrap_or(0),
                                "content-type" => content_type = value.trim().to_string(),
                                _ => {}
                            }
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    keep.lock().expect("lock").push((path, content_type, body));
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (url, received)
}

#[test]
fn the_demo_exports_its_spans_over_otlp_and_logs_json() {
    let env = TestEnv::start();
    let (endpoint, received) = collector();
    let out = Command::new(carrier_bin())
        .args(["demo", "--no-dashboard", "--log-format", "json", "--otlp-endpoint", &endpoint])
        .args(["--nats-url", &env.url(), "--data-dir"])
        .arg(env.data_dir())
        .output()
        .expect("carrier runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));

    // The demo flushes the exporter before it exits: everything has arrived.
    let received = received.lock().expect("lock");
    assert!(!received.is_empty(), "the collector received nothing");
    for (path, content_type, _) in received.iter() {
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/x-protobuf");
    }
    let bodies: Vec<u8> = received.iter().flat_map(|(_, _, b)| b.clone()).collect();
    let contains = |needle: &str| bodies.windows(needle.len()).any(|w| w == needle.as_bytes());
    for span in [
        "ordering apply baskets.BasketCheckedOut",
        "depot apply ordering.OrderCreated",
        "payments publish payments.InvoicePaid",
        "carrier.correlation_id",
    ] {
        assert!(contains(span), "no {span:?} among the exported spans");
    }

    // Every log line is one JSON object.
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert!(lines.len() > 10, "the flow log comes as JSON lines:\n{stdout}");
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["level"].is_string() && value["fields"]["message"].is_string(), "{line}");
    }
}
