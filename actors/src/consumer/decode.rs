//! Deliveries to events; what can never decode goes to the dead-letter stream, here only.

use std::sync::atomic::Ordering;

use ractor::ActorProcessingErr;

use carrier_messages::{Decoded, DomainEvent};
use carrier_storage::Inbound;

use crate::bus::Delivery;

use super::*;

/// One delivery's events, each with the delivery's stream sequence: a message holds one event,
/// or one command's several (an event store's commit), applied in order in one transaction.
pub(crate) fn decode_delivery<E: DomainEvent>(
    d: &Delivery,
) -> Result<impl Iterator<Item = Inbound<E>> + '_, carrier_messages::DecodeError> {
    let events = Decoded::<E>::decode_all(&d.subject, |name| d.header(name), &d.payload)?;
    Ok(events.into_iter().map(move |decoded| Inbound { stream_seq: d.stream_seq, decoded }))
}

/// A replay's batch (a rebuild, a standby following its own stream): what cannot decode is
/// skipped, since the context's consumer dead-lettered it when it was first delivered.
pub(crate) fn decode_replayed<E: DomainEvent>(deliveries: &[Delivery]) -> Vec<Inbound<E>> {
    deliveries.iter().filter_map(|d| decode_delivery(d).ok()).flatten().collect()
}

/// Decodes a batch; copies what cannot decode to the dead-letter stream. Returns the positions of
/// those poison deliveries and the decoded events.
pub(crate) async fn decode_batch<E: DomainEvent>(
    state: &ConsumerState<E>,
    deliveries: &[Delivery],
) -> Result<(Vec<usize>, Vec<Inbound<E>>), ActorProcessingErr> {
    let mut poison = Vec::new();
    let mut batch = Vec::with_capacity(deliveries.len());
    for (index, d) in deliveries.iter().enumerate() {
        match decode_delivery(d) {
            Ok(events) => batch.extend(events),
            Err(error) => {
                tracing::warn!(
                    context = state.context,
                    stream.seq = d.stream_seq,
                    subject = %d.subject,
                    reason = error.code(),
                    %error,
                    "dead-lettering an event that cannot be applied"
                );
                state.bus.dead_letter(state.context, d, error.code(), &error.to_string()).await?;
                state.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                if let Some(metrics) = crate::metrics::get() {
                    metrics.record_dead_letter(state.context, "undecodable");
                }
                poison.push(index);
            }
        }
    }
    Ok((poison, batch))
}
