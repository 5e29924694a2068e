//! The operator commands that act on a running carrier (`rebuild`, `consumer`) reach it through
//! its dashboard's API, because the running process alone may write its contexts' files.

use std::time::Duration;

use anyhow::{bail, Context};

/// Where the running carrier's dashboard is, and its actions key.
#[derive(clap::Args, Clone, Debug)]
pub struct DashboardClientArgs {
    /// The dashboard of the running `carrier run` that owns the context's file.
    #[arg(long, env = "CARRIER_DASHBOARD_URL", default_value = "http://127.0.0.1:7878")]
    pub url: String,
    /// The API key the dashboard was started with (`--dashboard-actions --api-key`).
    #[arg(long, env = "CARRIER_API_KEY", hide_env_values = true)]
    pub api_key: String,
}

impl DashboardClientArgs {
    /// The dashboard's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }

    /// An HTTP client that returns error statuses as answers, not errors.
    pub fn agent(&self, timeout: Duration) -> ureq::Agent {
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into()
    }

    /// POSTs `body` to `path` with the key; the answer's status and JSON, or one line saying
    /// what the dashboard refused (its `error`) for any status but `expect`.
    pub fn post(
        &self,
        agent: &ureq::Agent,
        path: &str,
        body: Option<&serde_json::Value>,
        expect: u16,
        what: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let base = self.base();
        let request = agent.post(&format!("{base}{path}")).header("Authorization", &format!("Bearer {}", self.api_key));
        let sent = match body {
            Some(body) => request.send_json(body),
            None => request.send_empty(),
        };
        let mut response = sent.with_context(|| {
            format!("cannot reach the dashboard at {base} (is `{} run` serving it?)", crate::binary_name())
        })?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        if status != expect {
            let error = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            bail!("the dashboard refused the {what} ({status}): {error}");
        }
        serde_json::from_str(&text).context("the dashboard's answer")
    }
}
