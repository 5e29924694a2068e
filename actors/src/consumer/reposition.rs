//! An operator's seek or skip, carried out between batches.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorProcessingErr;

use carrier_messages::DomainEvent;

use super::*;

pub(crate) async fn read_checkpoint<E: 'static>(
    writer: &Arc<dyn WriterPort<E>>,
    durable: &str,
) -> Result<u64, ActorProcessingErr> {
    let (writer, durable) = (writer.clone(), durable.to_string());
    Ok(tokio::task::spawn_blocking(move || writer.checkpoint(&durable)).await??)
}

/// Carries out a seek or skip (see [`crate::offsets`]): works out the new position, has the
/// cache actor set the checkpoint to it, and recreates the durable there.
pub(crate) async fn reposition<E: DomainEvent>(
    state: &mut ConsumerState<E>,
    change: crate::offsets::Reposition,
) -> Result<crate::offsets::Repositioned, crate::offsets::RepositionError> {
    use crate::offsets::{Reposition, RepositionError, SeekTo, SkippedEvent};
    let storage = |e: ActorProcessingErr| RepositionError::Storage(e.to_string());
    let durable = state.spec.durable.clone();
    let checkpoint = read_checkpoint(&state.writer, &durable).await.map_err(storage)?;
    let (first_retained, last_seq) = state.bus.stream_bounds(&state.spec.stream).await?;
    let mut skipped = Vec::new();
    let new_checkpoint = match change {
        Reposition::Seek(SeekTo::Sequence(0)) => return Err(RepositionError::ZeroSequence),
        Reposition::Seek(SeekTo::Sequence(seq)) if seq > last_seq + 1 => {
            return Err(RepositionError::BeyondEnd {
                stream: state.spec.stream.clone(),
                requested: seq,
                last: last_seq,
            })
        }
        Reposition::Seek(SeekTo::Sequence(seq)) => seq - 1,
        Reposition::Seek(SeekTo::Time(at)) => {
            match state.bus.first_sequence_at(&state.spec.stream, &state.spec.filter_subject, at).await? {
                Some(seq) => seq - 1,
                None => last_seq,
            }
        }
        Reposition::Skip { count } if count == 0 || count > crate::offsets::MAX_SKIP => {
            return Err(RepositionError::Count(count))
        }
        Reposition::Skip { count } => {
            let mut reader = state
                .bus
                .replay(&state.spec.stream, &state.spec.filter_subject, checkpoint + 1, count as usize)
                .await?;
            let mut through = checkpoint;
            while skipped.len() < count as usize && through < last_seq {
                let batch = reader.next_batch(Duration::from_secs(2)).await?;
                if batch.is_empty() {
                    break;
                }
                for delivery in batch.iter().take(count as usize - skipped.len()) {
                    state
                        .bus
                        .dead_letter(
                            state.context,
                            delivery,
                            "skipped",
                            "skipped by an operator (carrier consumer skip)",
                        )
                        .await?;
                    state.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    skipped.push(SkippedEvent { stream_seq: delivery.stream_seq, subject: delivery.subject.clone() });
                    through = delivery.stream_seq;
                }
            }
            if skipped.is_empty() {
                return Err(RepositionError::NothingToSkip { durable, next: checkpoint + 1 });
            }
            through
        }
    };
    // The checkpoint first: a crash after it recreates the durable from it on restart.
    let (tx, rx) = ractor::concurrency::oneshot();
    let message = ApplyBatch {
        consumer: durable.clone(),
        batch: Vec::new(),
        through: new_checkpoint,
        reposition: true,
        reply: tx.into(),
    };
    if !state.writer.apply(message) {
        return Err(RepositionError::Storage("the cache actor is not running".into()));
    }
    match rx.await {
        Ok(Ok(_)) => {}
        Ok(Err(ApplyFailed { error, .. })) => return Err(RepositionError::Storage(error.to_string())),
        Err(_) => return Err(RepositionError::Storage("the cache actor stopped before answering".into())),
    }
    state.consumer = None;
    state.bus.delete_consumer(&state.spec.stream, &durable).await?;
    if !state.control.holds_back() {
        state.consumer = Some(state.bus.durable(&state.spec, new_checkpoint).await?);
    }
    state.stats.acked_stream_seq.store(new_checkpoint, Ordering::Relaxed);
    state.stats.acked.notify_waiters();
    tracing::warn!(
        consumer = %durable,
        from = checkpoint + 1,
        to = new_checkpoint + 1,
        skipped = skipped.len(),
        "position moved by an operator"
    );
    Ok(crate::offsets::Repositioned {
        durable,
        from: checkpoint + 1,
        to: new_checkpoint + 1,
        first_retained,
        last_seq,
        skipped,
    })
}
