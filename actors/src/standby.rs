//! Hot standby for a context that follows itself ([`ContextDecl::follows_itself`]): a second
//! instance of the context starts and waits, instead of refusing to start, and takes over
//! when the instance holding the context's lease dies.
//!
//! While another instance holds the lease, this one is fenced (commands refused, out of the
//! command queue group) and folds the context's own stream into its own file with
//! [`Follows`], so its rows are the published state. Every [`CLAIM_EVERY`] it tries the lease;
//! once the holder's lease has expired (or was released) the claim works, and it reads how far
//! the stream goes, catches up to there (the old holder can publish nothing more: its lease is
//! gone and its own fence has held it back since [`crate::instance::FENCE_AFTER`]), lifts its
//! fence and decides commands on the rows it followed, each entity's version going on from the
//! last published one.
//!
//! An instance that starts to stand by begins with an empty file: what its old file held and
//! never published (a holder killed before its outbox relay sent a decision) is no longer the
//! truth once another instance decides. Those rows go to the context's dead-letter stream with
//! the reason `deposed`, so an operator can see which decisions never reached anyone.
//!
//! [`ContextDecl::follows_itself`]: crate::context::ContextDecl::follows_itself

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carrier_messages::DomainEvent;
use carrier_storage::{ContextDb, FileWriter, Follows, Inbound};

use crate::bus::{Bus, DurableConsumer};
use crate::context::ContextHandle;
use crate::instance::Leases;

/// How often an instance standing by tries to take the context's lease.
pub const CLAIM_EVERY: Duration = Duration::from_secs(2);
/// Events folded per transaction while following.
const FOLLOW_BATCH: usize = 1024;

/// Where instances standing by for `context` answer, so that its holder knows one exists
/// (core NATS: "no responders" means none).
pub fn standby_subject(context: &str) -> String {
    format!("carrier.standby.{context}")
}

/// On every instance of a context that follows itself: while this one holds the context and
/// another stands by, commands are answered only once published (see
/// [`ContextHandle::decide_once`]); asked every [`CLAIM_EVERY`].
pub(crate) async fn watch_standbys(
    context: &'static str,
    bus: Bus,
    fence: Arc<crate::fence::Fence>,
    answers_when_published: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let subject = standby_subject(context);
    let mut failing = false;
    loop {
        // Only "no responders" says nobody stands by; a request that gets no answer at all (NATS
        // away) leaves the answer as it was: a holder cut off from NATS may be taken over. Until
        // the first answer, a standby may exist (the handle starts so).
        let standby = if fence.is_standing_by() {
            false
        } else {
            match bus.request(&subject, &[], Vec::new(), Duration::from_secs(1)).await {
                Ok(_) => true,
                Err(e) if e.is_no_responders() => false,
                Err(error) => {
                    if !failing {
                        tracing::warn!(%context, %error, "cannot tell whether another instance stands by; answering as before");
                    }
                    failing = true;
                    tokio::time::sleep(CLAIM_EVERY).await;
                    continue;
                }
            }
        };
        failing = false;
        if answers_when_published.swap(standby, Ordering::Relaxed) != standby {
            tracing::info!(
                %context,
                standby,
                "{}",
                if standby {
                    "another instance stands by: commands are answered once their events are published"
                } else {
                    "no instance stands by: commands are answered when committed"
                }
            );
        }
        tokio::time::sleep(CLAIM_EVERY).await;
    }
}

/// Answers [`standby_subject`] until dropped (aborted).
async fn say_standing_by(context: &'static str, bus: Bus) {
    let subject = standby_subject(context);
    loop {
        let mut requests = match bus.serve(&subject, "carrier-standby").await {
            Ok(requests) => requests,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            match requests.next(Duration::from_secs(5)).await {
                Ok(Some(request)) => {
                    let _ = bus.respond(&request, "text/plain", b"standing by".to_vec()).await;
                }
                Ok(None) => {}
                Err(_) => break,
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The name under which a follower's position in its own stream is checkpointed.
pub fn follower_checkpoint(context: &str) -> String {
    format!("{context}-self")
}

/// What an instance standing by needs from the system.
#[derive(Clone)]
pub(crate) struct Standby {
    /// This instance's data directory (its `instance.id` names it in the lease).
    pub data_dir: PathBuf,
    /// Who held the lease when this instance started.
    pub holder: String,
    /// Where a lease taken over is kept, to be renewed and released at shutdown.
    pub leases: Arc<Mutex<Vec<Leases>>>,
}

/// Moves what the file's outbox never published to the dead-letter stream (reason `deposed`)
/// and removes the file, so that an instance about to stand by starts from the stream alone.
pub(crate) async fn start_afresh<K: carrier_storage::ContextKind>(
    bus: &Bus,
    path: &std::path::Path,
    cache_bytes: usize,
) -> Result<(), crate::start_error::StartError> {
    if !path.exists() {
        return Ok(());
    }
    let pending = {
        let file = FileWriter::<K>::open_with_cache(path, cache_bytes)?;
        file.outbox_pending(usize::MAX)?
    };
    let why = "decided on this instance but never published before another instance took the context's \
               lease; the context's state is what was published";
    for (_, event) in &pending {
        bus.dead_letter_unpublished(K::NAME, event, "deposed", why).await?;
    }
    if !pending.is_empty() {
        tracing::warn!(
            context = K::NAME,
            count = pending.len(),
            "decisions this instance never published went to the dead-letter stream (reason deposed)"
        );
    }
    std::fs::remove_file(path).map_err(|e| {
        crate::start_error::StartError::Actors(format!("cannot start {} afresh ({}): {e}", K::NAME, path.display()))
    })?;
    Ok(())
}

/// Follows the context's own stream into its file until this instance holds the context's
/// lease and has caught up; then lifts the fence and returns.
pub(crate) async fn run<K: Follows>(handle: ContextHandle<K>, bus: Bus, standby: Standby) {
    let fence = handle.fence.clone();
    let context = K::NAME;
    let checkpoint_name = follower_checkpoint(context);
    let stream = <K::Event as DomainEvent>::STREAM;
    let subjects = <K::Event as DomainEvent>::STREAM_SUBJECTS;
    fence.stand_by(format!("standing by: another instance holds its lease ({})", standby.holder));
    let _saying = AbortOnDrop(tokio::spawn(say_standing_by(context, bus.clone())));
    tracing::info!(%context, holder = %standby.holder, "standing by: following the context's own stream");
    let mut replay: Option<DurableConsumer> = None;
    let mut next_claim = Instant::now() + CLAIM_EVERY;
    let mut target: Option<u64> = None;
    loop {
        let at = ContextDb::checkpoint(&*handle.db, &checkpoint_name).unwrap_or(0);
        if let Some(target) = target {
            if at >= target {
                fence.take_over();
                tracing::warn!(%context, through = at, "this instance took the context over from the stream");
                return;
            }
        } else if Instant::now() >= next_claim {
            next_claim = Instant::now() + CLAIM_EVERY;
            match crate::instance::acquire(&bus, &standby.data_dir, &[(context, fence.clone())]).await {
                Ok(leases) => {
                    standby.leases.lock().unwrap_or_else(|e| e.into_inner()).push(leases);
                    fence.stand_by("taking over: catching up with the context's stream".into());
                    loop {
                        match bus.last_sequence(stream).await {
                            Ok(last) => break target = Some(last),
                            Err(e) => {
                                tracing::warn!(%context, error = %e, "cannot read how far the stream goes; trying again");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                    tracing::info!(%context, target = ?target, "this instance holds the lease; catching up");
                    continue;
                }
                Err(crate::start_error::StartError::AlreadyRunning { holder, .. }) => {
                    fence.stand_by(format!("standing by: another instance holds its lease ({holder})"));
                }
                Err(error) => tracing::warn!(%context, %error, "cannot claim the context's lease; trying again"),
            }
        }
        let consumer = match replay.as_mut() {
            Some(consumer) => consumer,
            None => match bus.replay(stream, subjects, at + 1, FOLLOW_BATCH).await {
                Ok(consumer) => replay.insert(consumer),
                Err(error) => {
                    tracing::warn!(%context, %error, "cannot follow the context's stream; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let deliveries = match consumer.next_batch(Duration::from_millis(500)).await {
            Ok(deliveries) => deliveries,
            Err(error) => {
                tracing::warn!(%context, %error, "following the context's stream failed; starting again");
                replay = None;
                continue;
            }
        };
        let Some(through) = deliveries.last().map(|d| d.stream_seq) else { continue };
        let batch: Vec<Inbound<K::Event>> = crate::consumer::decode_replayed(&deliveries);
        let name = checkpoint_name.clone();
        match handle.write(move |db| db.follow(&name, &batch, through)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::error!(%context, %error, "cannot fold the context's own events; following again from the checkpoint");
                replay = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => {
                // The writer is restarting: follow again from what it committed.
                replay = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
