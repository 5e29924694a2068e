//! OpenTelemetry export over OTLP/HTTP, behind `--otlp-endpoint`: the spans of
//! `carrier_actors::telemetry` go to a collector (Jaeger, Tempo, the OpenTelemetry Collector).

use anyhow::Context;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The flag, shared by `run` and `demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct OtlpArgs {
    /// Export spans over OTLP/HTTP (protobuf) to this collector, e.g. http://127.0.0.1:4318;
    /// `/v1/traces` is added when the URL has no path. Off when not given.
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

/// A running exporter; flushes on [`Exporter::shutdown`].
pub struct Exporter(SdkTracerProvider);

impl Exporter {
    /// Flushes what is buffered and stops.
    pub async fn shutdown(self) {
        // The HTTP client blocks: keep it off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || self.0.shutdown()).await;
    }
}

/// Starts exporting when an endpoint is given.
pub async fn start(args: &OtlpArgs) -> anyhow::Result<Option<Exporter>> {
    let Some(endpoint) = args.otlp_endpoint.clone() else { return Ok(None) };
    let url = traces_url(&endpoint)?;
    let provider = tokio::task::spawn_blocking(move || -> anyhow::Result<SdkTracerProvider> {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .build()
            .context("--otlp-endpoint: cannot build the OTLP exporter")?;
        Ok(carrier_actors::telemetry::install(exporter, true))
    })
    .await??;
    tracing::info!(%endpoint, "exporting spans over OTLP/HTTP");
    Ok(Some(Exporter(provider)))
}

/// The collector's traces URL: `<endpoint>/v1/traces` unless a path is given.
fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .with_context(|| format!("--otlp-endpoint {endpoint:?}: expected an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        anyhow::bail!("--otlp-endpoint {endpoint:?}: no host");
    }
    Ok(match rest.find('/') {
        Some(i) if rest.len() > i + 1 => endpoint.to_string(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_traces_path_is_added_only_when_missing() {
        assert_eq!(super::traces_url("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(super::traces_url("http://127.0.0.1:4318/").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(super::traces_url("https://c:4318/custom/traces").unwrap(), "https://c:4318/custom/traces");
        assert!(super::traces_url("127.0.0.1:4318").is_err());
        assert!(super::traces_url("http://").is_err());
    }
}
