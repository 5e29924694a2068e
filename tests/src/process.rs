//! The `carrier` binary as a child process, its output captured as it comes, and a plain HTTP
//! client for its dashboard.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `carrier` child; stopped with SIGTERM (then killed) when dropped.
pub struct CarrierProcess {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl CarrierProcess {
    /// `carrier run --contexts <contexts> --nats-url <url> --data-dir <data>` with its dashboard
    /// on a free port, and `extra`; returns once `/readyz` answers 200, with the dashboard's URL.
    pub fn run_ready(url: &str, data: &std::path::Path, contexts: &str, extra: &[&str]) -> (CarrierProcess, String) {
        let data = data.to_string_lossy().to_string();
        let mut args = vec!["run", "--contexts", contexts, "--nats-url", url, "--data-dir", &data];
        args.extend(["--dashboard-addr", "127.0.0.1:0"]);
        args.extend(extra);
        let mut carrier = CarrierProcess::spawn(&args);
        let dashboard = carrier.dashboard_url(Duration::from_secs(30));
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::http_get(&format!("{dashboard}/readyz")).0 != 200 {
            assert!(Instant::now() < deadline, "/readyz not 200 within 30 s:\n{}", carrier.output());
            std::thread::sleep(Duration::from_millis(50));
        }
        (carrier, dashboard)
    }

    /// Starts `carrier <args>`, capturing stdout and stderr together.
    pub fn spawn(args: &[&str]) -> CarrierProcess {
        CarrierProcess::spawn_program(&crate::carrier_bin(), args)
    }

    /// Starts `program` (a binary built on Carrier's CLI, such as an example's) with `args`.
    pub fn spawn_program(program: &std::path::Path, args: &[&str]) -> CarrierProcess {
        CarrierProcess::spawn_program_env(program, args, &[])
    }

    /// Starts `carrier <args>` with extra environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> CarrierProcess {
        CarrierProcess::spawn_program_env(&crate::carrier_bin(), args, env)
    }

    /// Starts `program` with `args` and extra environment variables.
    pub fn spawn_program_env(program: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> CarrierProcess {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("carrier starts");
        let output = Arc::new(Mutex::new(String::new()));
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout piped")),
            Box::new(child.stderr.take().expect("stderr piped")),
        ];
        for pipe in pipes {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut out) = output.lock() {
                        out.push_str(&line);
                        out.push('\n');
                    }
                }
            });
        }
        CarrierProcess { child, output }
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Waits until its output holds `needle`; panics with the output after `limit`, or when the
    /// process exits first.
    pub fn wait_for_output(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.output();
            if out.contains(needle) {
                return out;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader threads finish the last lines.
                std::thread::sleep(Duration::from_millis(100));
                panic!("carrier exited ({status}) before printing {needle:?}:\n{}", self.output());
            }
            assert!(Instant::now() < deadline, "carrier did not print {needle:?} within {limit:?}:\n{out}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The dashboard's base URL (`http://127.0.0.1:<port>`), from what it printed at start.
    pub fn dashboard_url(&mut self, limit: Duration) -> String {
        let out = self.wait_for_output("http://127.0.0.1:", limit);
        let start = out.find("http://127.0.0.1:").expect("found above");
        let rest = &out[start..];
        let end = rest.find(|c: char| c.is_whitespace() || c == '"').unwrap_or(rest.len());
        rest[..end].trim_end_matches('/').to_string()
    }

    /// The first URL it printed after `label=` (e.g. `http=http://127.0.0.1:41234`).
    pub fn url_after(&mut self, label: &str, limit: Duration) -> String {
        let needle = format!("{label}=http://");
        let out = self.wait_for_output(&needle, limit);
        let start = out.find(&needle).expect("found above") + label.len() + 1;
        let rest = &out[start..];
        let end = rest.find(|c: char| c.is_whitespace() || c == '"').unwrap_or(rest.len());
        rest[..end].trim_end_matches('/').to_string()
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends it `signal` (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{signal} {}", self.child.id());
    }

    /// Waits up to `limit` for it to exit: its exit code (`None` for a signal), or `Err` with
    /// its output when it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<Option<i32>, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                return Err(self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CarrierProcess {
    fn drop(&mut self) {
        // One that already exited (a test killed it) needs no signal: `kill` would only print
        // "No such process" into the test's output.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(std::process::Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// GETs `url`: (status, body).
pub fn http_get(url: &str) -> (u16, String) {
    let mut response = agent().get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap_or_else(|e| panic!("GET {url} body: {e}")))
}

/// GETs `url` and parses its JSON body; panics unless the status is 200.
pub fn http_json(url: &str) -> serde_json::Value {
    let (status, body) = http_get(url);
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url} is not JSON ({e}): {body}"))
}

/// POSTs a JSON `body` to `url` with an optional bearer token: (status, body).
pub fn http_post(url: &str, bearer: Option<&str>, body: &serde_json::Value) -> (u16, String) {
    let mut request = agent().post(url).header("Content-Type", "application/json");
    if let Some(token) = bearer {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.send(body.to_string()).unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap_or_default())
}

/// A response: status, headers (names lower-case) and body.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lower-case) and values.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Sends `method url` with `headers` and a `body` (sent as JSON when given): any status is an
/// answer, not an error.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> HttpResponse {
    let request = ureq::http::Request::builder().method(method).uri(url);
    let request = headers.iter().fold(request, |r, (k, v)| r.header(*k, *v));
    let request = match body {
        Some(_) => request.header("Content-Type", "application/json"),
        None => request,
    };
    let request = request.body(body.unwrap_or_default().to_string()).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let mut response = agent().run(request).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    HttpResponse { status, headers, body: response.body_mut().read_to_string().unwrap_or_default() }
}

/// POSTs a `body` too large for the server to read: the server may answer and close before the
/// body is sent, which HTTP clients report as a broken pipe, so this writes what it can and then
/// reads the answer. Returns the status line's code and the body.
pub fn http_post_oversized(url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    use std::io::Write;
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("{url}: http only"));
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(authority).unwrap_or_else(|e| panic!("connect {authority}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap_or_else(|e| panic!("write to {url}: {e}"));
    // The server may close its side after answering: a failed write is expected.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
