//! Finding a NATS server: the one given, or a local child process.

use anyhow::Context;
use carrier_actors::LocalNatsServer;
use carrier_actors::NatsOptions;

/// A server, and the child process behind it when we started one.
pub struct Nats {
    /// Where it is, without credentials: what may be printed.
    pub url: String,
    /// How to connect to it.
    pub options: NatsOptions,
    /// Kept alive until dropped.
    pub _local: Option<LocalNatsServer>,
}

/// Uses `given` when given; otherwise starts `nats-server` on a free loopback port with its store
/// in `store_dir` (or a temporary directory).
pub fn nats_or_local(given: Option<NatsOptions>, store_dir: Option<&std::path::Path>) -> anyhow::Result<Nats> {
    if let Some(options) = given {
        return Ok(Nats { url: options.display_url(), options, _local: None });
    }
    let server = match store_dir {
        Some(dir) => LocalNatsServer::start_in(&dir.join("nats"), None),
        None => LocalNatsServer::start_temporary(),
    }
    .context("no --nats-url given, so carrier tried to start nats-server itself")?;
    Ok(Nats { url: server.url(), options: NatsOptions::new(server.url()), _local: Some(server) })
}
