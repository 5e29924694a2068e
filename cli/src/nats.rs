//! The NATS connection flags every subcommand takes, under the names the `nats` CLI gives their
//! environment variables, and the `nats` CLI's saved contexts.
//!
//! The flags are prefixed `--nats-` (the `nats` CLI's own are `--user`, `--creds`, ...) because
//! in Carrier `--contexts` names bounded contexts; the environment variables are the `nats`
//! CLI's, so a shell already set up for `nats` works unchanged. Precedence: a flag, then its
//! environment variable, then the saved context (`--nats-context`), then the default URL.

use std::path::{Path, PathBuf};

use anyhow::Context;
use carrier_actors::NatsOptions;

/// The default server when nothing names one.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// How to reach NATS.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NatsArgs {
    /// NATS server URL, several comma separated; `nats://user:password@host:port` and
    /// `nats://token@host:port` carry credentials, `tls://` requires TLS [default:
    /// nats://127.0.0.1:4222].
    #[arg(long, global = true, env = "NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// User name (with --nats-password).
    #[arg(long, global = true, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// Password of --nats-user (prefer the environment: a flag shows in the process list).
    #[arg(long, global = true, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Token authentication.
    #[arg(long, global = true, env = "NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// A .creds file (user JWT and NKey seed) for servers in operator mode.
    #[arg(long, global = true, env = "NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// A file holding an NKey seed (SU...).
    #[arg(long, global = true, env = "NATS_NKEY", value_name = "FILE")]
    pub nats_nkey: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify clients (mTLS), with --nats-key.
    #[arg(long, global = true, env = "NATS_CERT", value_name = "FILE")]
    pub nats_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "NATS_KEY", value_name = "FILE")]
    pub nats_key: Option<PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate; turns TLS on.
    #[arg(long, global = true, env = "NATS_CA", value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
    /// A context saved by the nats CLI (`nats context save NAME`), read from
    /// $XDG_CONFIG_HOME/nats/context/NAME.json (~/.config/nats/context by default).
    #[arg(long, global = true, env = "NATS_CONTEXT", value_name = "NAME")]
    pub nats_context: Option<String>,
}

/// The fields of a `nats` CLI context file that Carrier uses (the file has more).
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SavedContext {
    url: String,
    user: String,
    password: String,
    token: String,
    creds: String,
    nkey: String,
    cert: String,
    key: String,
    ca: String,
}

impl NatsArgs {
    /// Whether anything names a server (a URL or a saved context): the demo starts its own
    /// server otherwise.
    pub fn names_a_server(&self) -> bool {
        self.nats_url.is_some() || self.nats_context.is_some()
    }

    /// The effective options: flags and environment over the saved context over the default.
    pub fn options(&self) -> anyhow::Result<NatsOptions> {
        let saved = match &self.nats_context {
            Some(name) => read_context(name)?,
            None => SavedContext::default(),
        };
        let text = |flag: &Option<String>, saved: String| flag.clone().or_else(|| non_empty(saved));
        let path = |flag: &Option<PathBuf>, saved: String| flag.clone().or_else(|| non_empty(saved).map(expand_home));
        Ok(NatsOptions {
            url: text(&self.nats_url, saved.url).or_else(local_server_url).unwrap_or_else(|| DEFAULT_URL.to_string()),
            user: text(&self.nats_user, saved.user),
            password: text(&self.nats_password, saved.password),
            token: text(&self.nats_token, saved.token),
            creds: path(&self.nats_creds, saved.creds),
            nkey: path(&self.nats_nkey, saved.nkey),
            tls_cert: path(&self.nats_cert, saved.cert),
            tls_key: path(&self.nats_key, saved.key),
            tls_ca: path(&self.nats_ca, saved.ca),
        })
    }
}

/// The server `run --local-nats` (or `demo`) started for the data directory (`CARRIER_DATA_DIR`,
/// or `./carrier-data`), while it runs: so that `command`, `query` and the rest find it when
/// nothing names a server, instead of trying the default port.
fn local_server_url() -> Option<String> {
    let data = std::env::var_os("CARRIER_DATA_DIR").filter(|v| !v.is_empty()).map(PathBuf::from);
    let data = data.unwrap_or_else(|| PathBuf::from("./carrier-data"));
    carrier_actors::LocalNatsServer::recorded_url(&data.join("nats"))
}

/// Where the nats CLI keeps its contexts.
fn context_dir() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"));
    config.join("nats").join("context")
}

fn read_context(name: &str) -> anyhow::Result<SavedContext> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        anyhow::bail!("--nats-context {name:?}: a context is named, not a path (nats context ls lists them)");
    }
    let path = context_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--nats-context {name}: cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("--nats-context {name}: {} is not a nats context", path.display()))
}

fn non_empty(value: String) -> Option<String> {
    (!value.trim().is_empty()).then_some(value)
}

/// `~/x` → `$HOME/x`, as the nats CLI writes paths in contexts.
fn expand_home(path: String) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(path),
    }
}
