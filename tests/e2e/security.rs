//! NATS security: every way of authenticating the `nats` CLI knows (user and password, token,
//! NKey, a `.creds` file on a server in operator mode, TLS with a custom CA and client
//! certificates, saved contexts), each against a real
//! nats-server configured for it, and secrets never shown: not in errors, logs or the dashboard.

use std::path::Path;
use std::process::{Command, Output};

use carrier_actors::LocalNatsServer;
use carrier_tests::{carrier_bin, http_get, CarrierProcess};

const STORE: &str = r#"{"id":"s-1","name":"Corner Shop","location":"North wing"}"#;

/// `carrier publish` of one event with `args` and `env`, as a producer would run it.
fn publish(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(carrier_bin());
    command.args(["publish", "stores.StoreCreated", STORE, "--aggregate-version", "1"]).args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("carrier runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Published: exit 0 and the stream sequence printed.
fn assert_published(out: &Output, how: &str) {
    assert!(out.status.success() && text(out).contains("stream seq"), "{how}: {}", text(out));
}

/// Refused: exit 1, one line naming `what`, none of `secrets` anywhere.
fn assert_refused(out: &Output, what: &str, secrets: &[&str]) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let lines: Vec<&str> = all.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{all}");
    assert!(lines[0].starts_with("error: cannot connect to NATS at nats://127.0.0.1:"), "{all}");
    assert!(lines[0].contains(what), "{what:?} in {all}");
    for secret in secrets {
        assert!(!all.contains(secret), "{secret:?} shown: {all}");
    }
}

fn server(config: &str) -> LocalNatsServer {
    carrier_tests::init_tracing();
    LocalNatsServer::start_temporary_with_config(config).expect("nats-server starts with the config")
}

#[test]
fn user_and_password_in_the_url_in_flags_and_in_the_environment() {
    let nats = server(r#"authorization { user: "u", password: "secretpw" }"#);
    let port = nats.port();
    let with = format!("nats://u:secretpw@127.0.0.1:{port}");
    let plain = nats.url();
    assert_published(&publish(&["--nats-url", &with], &[]), "URL");
    assert_published(
        &publish(&["--nats-url", &plain, "--nats-user", "u", "--nats-password", "secretpw"], &[]),
        "flags",
    );
    assert_published(
        &publish(&[], &[("NATS_URL", &plain), ("NATS_USER", "u"), ("NATS_PASSWORD", "secretpw")]),
        "environment",
    );
    let wrong = format!("nats://u:wrongpw@127.0.0.1:{port}");
    assert_refused(&publish(&["--nats-url", &wrong], &[]), "refused user \"u\"", &["wrongpw", "secretpw"]);
    assert_refused(&publish(&["--nats-url", &plain], &[]), "requires credentials and none were given", &[]);
}

#[test]
fn a_token_in_the_url_or_the_environment() {
    let nats = server(r#"authorization { token: "s3cr3t-token" }"#);
    let port = nats.port();
    assert_published(&publish(&["--nats-url", &format!("nats://s3cr3t-token@127.0.0.1:{port}")], &[]), "URL");
    assert_published(&publish(&["--nats-url", &nats.url()], &[("NATS_TOKEN", "s3cr3t-token")]), "NATS_TOKEN");
    let wrong = format!("nats://not-the-token@127.0.0.1:{port}");
    assert_refused(&publish(&["--nats-url", &wrong], &[]), "refused a token", &["not-the-token", "s3cr3t"]);
}

#[test]
fn an_nkey_seed_file() {
    let user = nkeys::KeyPair::new_user();
    let nats = server(&format!(r#"authorization {{ users = [ {{ nkey: "{}" }} ] }}"#, user.public_key()));
    let dir = tempfile::tempdir().expect("dir");
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, user.seed().expect("seed")).expect("write seed");
    let seed = seed_file.to_string_lossy().to_string();
    assert_published(&publish(&["--nats-url", &nats.url(), "--nats-nkey", &seed], &[]), "--nats-nkey");
    assert_published(&publish(&["--nats-url", &nats.url()], &[("NATS_NKEY", &seed)]), "NATS_NKEY");
    let other = nkeys::KeyPair::new_user();
    let other_file = dir.path().join("other.nk");
    std::fs::write(&other_file, other.seed().expect("seed")).expect("write seed");
    let out = publish(&["--nats-url", &nats.url(), "--nats-nkey", &other_file.to_string_lossy()], &[]);
    assert_refused(&out, "refused the NKey seed in", &[&other.seed().expect("seed")]);
    let missing = dir.path().join("missing.nk");
    let out = publish(&["--nats-url", &nats.url(), "--nats-nkey", &missing.to_string_lossy()], &[]);
    assert_refused(&out, "cannot read the NKey seed file", &[]);
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).expect("write pem");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    write("ca.pem", ca_cert.pem());
    for (name, names) in [("server", vec!["127.0.0.1".to_string(), "localhost".to_string()]), ("client", vec![])] {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(names).expect("params");
        let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("signed");
        write(&format!("{name}.pem"), cert.pem());
        write(&format!("{name}-key.pem"), key.serialize_pem());
    }
}

#[test]
fn tls_with_a_custom_ca_and_client_certificates() {
    let dir = tempfile::tempdir().expect("dir");
    certificates(dir.path());
    let file = |name: &str| dir.path().join(name).to_string_lossy().to_string();
    let nats = server(&format!(
        r#"tls {{ cert_file: "{}", key_file: "{}", ca_file: "{}", verify: true, timeout: 2 }}"#,
        file("server.pem"),
        file("server-key.pem"),
        file("ca.pem")
    ));
    let url = nats.url();
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client-key.pem"));
    assert_published(
        &publish(&["--nats-url", &url, "--nats-ca", &ca, "--nats-cert", &cert, "--nats-key", &key], &[]),
        "mTLS flags",
    );
    assert_published(
        &publish(&["--nats-url", &url], &[("NATS_CA", &ca), ("NATS_CERT", &cert), ("NATS_KEY", &key)]),
        "mTLS environment",
    );
    // The server verifies clients: without a client certificate it refuses the handshake.
    let out = publish(&["--nats-url", &url, "--nats-ca", &ca], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // Without the CA the server's certificate is not trusted.
    let out = publish(&["--nats-url", &url, "--nats-cert", &cert, "--nats-key", &key], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot connect to NATS"), "{}", text(&out));
    let out = publish(&["--nats-url", &url, "--nats-ca", &ca, "--nats-cert", &cert], &[]);
    assert_refused(&out, "a client certificate needs its key", &[]);
}

#[test]
fn a_context_saved_by_the_nats_cli() {
    let nats = server(r#"authorization { user: "ctx-user", password: "ctx-secret" }"#);
    let config = tempfile::tempdir().expect("dir");
    let contexts = config.path().join("nats").join("context");
    std::fs::create_dir_all(&contexts).expect("dir");
    // As `nats context save prod --server ... --user ... --password ...` writes it.
    let saved = serde_json::json!({
        "description": "", "url": nats.url(), "token": "", "user": "ctx-user", "password": "ctx-secret",
        "creds": "", "nkey": "", "cert": "", "key": "", "ca": "", "nsc": "", "jetstream_domain": "",
        "jetstream_api_prefix": "", "jetstream_event_prefix": "", "inbox_prefix": "", "user_jwt": ""
    });
    std::fs::write(contexts.join("prod.json"), saved.to_string()).expect("write context");
    let home = config.path().to_string_lossy().to_string();
    let xdg = [("XDG_CONFIG_HOME", home.as_str())];
    assert_published(&publish(&["--nats-context", "prod"], &xdg), "--nats-context");
    assert_published(&publish(&[], &[xdg[0], ("NATS_CONTEXT", "prod")]), "NATS_CONTEXT");
    // A flag wins over the context.
    let out = publish(&["--nats-context", "prod", "--nats-password", "flag-wins"], &xdg);
    assert_refused(&out, "refused user \"ctx-user\"", &["flag-wins", "ctx-secret"]);
    let out = publish(&["--nats-context", "staging"], &xdg);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--nats-context staging: cannot read") && text(&out).contains("staging.json"));
}

#[test]
fn a_running_carrier_never_shows_its_credentials() {
    let nats = server(r#"authorization { user: "svc", password: "run-secret-pw" }"#);
    let url = format!("nats://svc:run-secret-pw@127.0.0.1:{}", nats.port());
    let data = tempfile::tempdir().expect("dir");
    let (carrier, dashboard) = CarrierProcess::run_ready(&url, data.path(), "stores,baskets", &[]);
    for path in ["/api/snapshot", "/api/config", "/api/health", "/api/consumers", "/metrics", "/"] {
        let (status, body) = http_get(&format!("{dashboard}{path}"));
        assert_eq!(status, 200, "{path}");
        assert!(!body.contains("run-secret-pw"), "{path} shows the password");
    }
    let out = carrier.output();
    assert!(out.contains("carrier is running"), "{out}");
    assert!(!out.contains("run-secret-pw"), "the log shows the password:\n{out}");
}

/// A JWT for `claims` (its `nats` part), issued by `issuer` for `subject`, as nsc would write it.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let claims = serde_json::json!({
        "jti": format!("{:X}", iat.wrapping_mul(2654435761) ^ subject.len() as u64),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = b64.encode(serde_json::to_vec(&claims).expect("json"));
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).expect("signs");
    format!("{signed}.{}", b64.encode(signature))
}

#[test]
fn a_creds_file_against_a_server_in_operator_mode() {
    // An operator, an account with JetStream, and a user of it: what `nsc` makes.
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt =
        jwt(&operator, &operator.public_key(), "carrier-test", serde_json::json!({ "type": "operator", "version": 2 }));
    let limits = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "shop",
        serde_json::json!({ "limits": limits, "type": "account", "version": 2 }),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "producer",
        serde_json::json!({ "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2 }),
    );
    // JetStream in operator mode needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt =
        jwt(&operator, &system.public_key(), "SYS", serde_json::json!({ "type": "account", "version": 2 }));
    let nats = server(&format!(
        "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{ {sys}: {system_jwt}, {acc}: {account_jwt} }}\n",
        sys = system.public_key(),
        acc = account.public_key()
    ));
    let dir = tempfile::tempdir().expect("dir");
    let creds = |jwt: &str, seed: &str| {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    };
    let file = dir.path().join("producer.creds");
    let seed = user.seed().expect("seed");
    std::fs::write(&file, creds(&user_jwt, &seed)).expect("write creds");
    let path = file.to_string_lossy().to_string();
    assert_published(&publish(&["--nats-url", &nats.url(), "--nats-creds", &path], &[]), "--nats-creds");
    assert_published(&publish(&["--nats-url", &nats.url()], &[("NATS_CREDS", &path)]), "NATS_CREDS");

    // A user of an account the server does not know is refused, its seed never shown.
    let stranger_account = nkeys::KeyPair::new_account();
    let stranger = nkeys::KeyPair::new_user();
    let stranger_jwt = jwt(
        &stranger_account,
        &stranger.public_key(),
        "stranger",
        serde_json::json!({ "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2 }),
    );
    let other = dir.path().join("stranger.creds");
    let stranger_seed = stranger.seed().expect("seed");
    std::fs::write(&other, creds(&stranger_jwt, &stranger_seed)).expect("write creds");
    let out = publish(&["--nats-url", &nats.url(), "--nats-creds", &other.to_string_lossy()], &[]);
    assert_refused(&out, "the credentials file", &[&stranger_seed]);
}
