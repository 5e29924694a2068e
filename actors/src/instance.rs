//! One running instance of each context per NATS server (or account), unless told otherwise.
//!
//! A context's durable consumers are named after the context and the stream (`baskets-stores`),
//! so two processes running the same context share each durable, and JetStream hands each of
//! them part of the events: each redb file misses what the other applied, and both look
//! healthy. So a starting context claims a lease, a key in the KV bucket
//! [`LEASE_BUCKET`] named after it, holding who runs it. Another instance finds the key taken
//! and refuses to start, naming the holder. The holder renews the key every
//! [`RENEW_EVERY`]; a holder that dies (SIGKILL, lost host) stops renewing and its key expires
//! after [`LEASE_TTL`], and the same instance (the same data directory, whose `instance.id`
//! names it) takes its own lease back at once when it restarts.
//!
//! A context declared a [read model](crate::context::ContextDecl::read_model) takes no lease:
//! every instance runs it, each reading every stream through durables of its own
//! (`<context>-<source>-<suffix>`, [`durable_suffix`]), so each keeps a complete copy. Any other
//! context has effects that must happen once (events it publishes, commands it decides, texts it
//! sends), and runs on the one instance holding its lease, fenced ([`Fence`]) whenever that
//! lease may be someone else's.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bus::{Bus, Claimed, LeaseBucket};
use crate::fence::Fence;
use crate::start_error::StartError;

pub use crate::fence::{Holder, LEASE_BUCKET, LEASE_TTL};

/// How often a holder renews its leases.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How long a lease may go unrenewed before its holder fences the context: a third of the
/// lease's life before another instance could claim it, so a holder whose clock or scheduler
/// runs late is fenced before anyone else can start. A renewal may fail for up to 15 s (a
/// bucket leader lost and elected anew, a client reconnecting) before this bites.
pub const FENCE_AFTER: Duration = Duration::from_secs(20);
/// The longest one lease operation may take in the renewal loop.
const LEASE_OP_LIMIT: Duration = Duration::from_secs(2);

/// The leases a system holds, renewed in the background until released.
pub struct Leases {
    bucket: LeaseBucket,
    held: Arc<Mutex<Vec<Held>>>,
    renewer: tokio::task::JoinHandle<()>,
}

/// One lease: its key, the revision last written, when, and the context's fence.
#[derive(Clone)]
struct Held {
    key: String,
    revision: u64,
    renewed: std::time::Instant,
    fence: Arc<Fence>,
}

/// The id of the instance whose data directory is `data_dir`, made on its first start.
pub fn instance_id(data_dir: &Path) -> Result<String, StartError> {
    let path = data_dir.join("instance.id");
    let io = |e: std::io::Error| StartError::Actors(format!("cannot read or write {}: {e}", path.display()));
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if uuid::Uuid::parse_str(id).is_ok() {
            return Ok(id.to_string());
        }
    }
    // Written beside it and renamed into place, so that a process killed mid-write leaves no
    // torn id (a torn one was never used: the process died making it).
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let id = uuid::Uuid::now_v7().to_string();
    let writing = data_dir.join("instance.id.writing");
    let mut file = std::fs::File::create(&writing).map_err(io)?;
    std::io::Write::write_all(&mut file, format!("{id}\n").as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&writing, &path).map_err(io)?;
    Ok(id)
}

/// The part of an instance id that names its own durables: the last 12 characters, which are
/// random (a v7 id begins with its creation time, shared by instances made together).
pub fn durable_suffix(instance: &str) -> String {
    let id: String = instance.chars().filter(char::is_ascii_alphanumeric).collect();
    id[id.len().saturating_sub(12)..].to_ascii_lowercase()
}

/// Claims the lease of every context in `contexts` for the instance of `data_dir`, or says who
/// holds one already (and claims none).
pub async fn acquire(bus: &Bus, data_dir: &Path, contexts: &[(&str, Arc<Fence>)]) -> Result<Leases, StartError> {
    let instance = instance_id(data_dir)?;
    let holder = Holder {
        instance: instance.clone(),
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        pid: std::process::id(),
        data_dir: data_dir.display().to_string(),
        since: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    };
    let value = serde_json::to_vec(&holder).unwrap_or_default();
    let bucket = bus.lease_bucket(LEASE_BUCKET, LEASE_TTL).await?;
    let mine = |bytes: &[u8]| serde_json::from_slice::<Holder>(bytes).is_ok_and(|h| h.instance == instance);
    let mut held = Vec::new();
    for (context, fence) in contexts {
        match bucket.claim(context, value.clone(), mine).await? {
            Claimed::Held(revision) => held.push(Held {
                key: context.to_string(),
                revision,
                renewed: std::time::Instant::now(),
                fence: fence.clone(),
            }),
            Claimed::Taken(bytes) => {
                for lease in held {
                    let _ = bucket.release(&lease.key, lease.revision).await;
                }
                let holder = serde_json::from_slice::<Holder>(&bytes)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                return Err(StartError::AlreadyRunning {
                    context: context.to_string(),
                    holder,
                    lease_seconds: LEASE_TTL.as_secs(),
                });
            }
        }
    }
    let held = Arc::new(Mutex::new(held));
    let renewer = tokio::spawn(renew(bucket.clone(), held.clone(), value));
    Ok(Leases { bucket, held, renewer })
}

/// Renews every held lease every [`RENEW_EVERY`], all at once. A renewal
/// that fails is followed by a claim: the key may have expired or been deleted (then this
/// instance takes it back), or be another's (then the context is fenced until it is free again).
/// A watchdog, checked every second whatever the renewals are doing, fences a context whose
/// lease has gone [`FENCE_AFTER`] without a renewal, before another instance could claim it at
/// [`LEASE_TTL`]; the fence lifts at the first renewal or claim that works.
async fn renew(bucket: LeaseBucket, held: Arc<Mutex<Vec<Held>>>, value: Vec<u8>) {
    // Ours only if it is exactly what this process wrote: another process with the same
    // instance id (a cloned data directory) must not take it back and forth with us.
    let mine = |bytes: &[u8]| bytes == value.as_slice();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let current: Vec<Held> = held.lock().map(|h| h.clone()).unwrap_or_default();
        for lease in &current {
            let unrenewed = lease.renewed.elapsed();
            if unrenewed >= FENCE_AFTER && !lease.fence.lease_fenced() {
                let reason = format!(
                    "its lease could not be renewed for {} s; another instance may claim it once it expires",
                    unrenewed.as_secs()
                );
                tracing::error!(context = %lease.key, %reason, "fencing the context: its consumers hold back and its commands are refused");
                lease.fence.set(reason);
            }
        }
        let due: Vec<Held> =
            current.into_iter().filter(|l| l.renewed.elapsed() >= RENEW_EVERY || l.fence.lease_fenced()).collect();
        if due.is_empty() {
            continue;
        }
        let attempts = due.iter().map(|lease| {
            let (bucket, value) = (bucket.clone(), value.clone());
            async move {
                let renewed =
                    tokio::time::timeout(LEASE_OP_LIMIT, bucket.renew(&lease.key, value.clone(), lease.revision));
                match renewed.await {
                    Ok(Ok(revision)) => Ok(Claimed::Held(revision)),
                    _ => match tokio::time::timeout(LEASE_OP_LIMIT, bucket.claim(&lease.key, value, mine)).await {
                        Ok(Ok(claimed)) => Ok(claimed),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {LEASE_OP_LIMIT:?}")),
                    },
                }
            }
        });
        let outcomes = futures::future::join_all(attempts).await;
        for (lease, outcome) in due.iter().zip(outcomes) {
            let context = lease.key.as_str();
            match outcome {
                Ok(Claimed::Held(revision)) => {
                    if let Ok(mut h) = held.lock() {
                        if let Some(entry) = h.iter_mut().find(|e| e.key == lease.key) {
                            entry.revision = revision;
                            entry.renewed = std::time::Instant::now();
                        }
                    }
                    if lease.fence.lease_fenced() {
                        tracing::warn!(%context, "this instance holds the context's lease again; its fence is lifted");
                        lease.fence.clear();
                    }
                }
                Ok(Claimed::Taken(bytes)) => {
                    if !lease.fence.lease_fenced() {
                        let holder = serde_json::from_slice::<Holder>(&bytes)
                            .map(|h| h.to_string())
                            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                        let reason = format!("its lease is held by another instance ({holder})");
                        tracing::error!(%context, %reason, "fencing the context: its consumers hold back and its commands are refused");
                        lease.fence.set(reason);
                    }
                }
                Err(error) => tracing::warn!(%context, %error, "could not renew the context's lease; trying again"),
            }
        }
    }
}

impl Drop for Leases {
    /// A system dropped without [`CarrierSystem::shutdown`](crate::CarrierSystem::shutdown)
    /// stops renewing; its leases expire after [`LEASE_TTL`].
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl Leases {
    /// Stops renewing and gives every lease up, so another instance may start at once.
    pub async fn release(self) {
        self.renewer.abort();
        let held: Vec<Held> = self.held.lock().map(|mut h| std::mem::take(&mut *h)).unwrap_or_default();
        for lease in held {
            let _ = tokio::time::timeout(LEASE_OP_LIMIT, self.bucket.release(&lease.key, lease.revision)).await;
        }
    }
}
