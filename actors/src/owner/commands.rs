//! Commands over NATS request/reply on `cmd.<context>`, passed to the owner.

use ractor::ActorRef;

use carrier_messages::codec::Causality;
use carrier_messages::envelope::header;
use carrier_messages::request::{decode_request, encode_body, CommandReply, RecordedEvent};
use carrier_messages::ContentType;
use carrier_storage::{CommandError, OwnerKind};

use crate::bus::IncomingRequest;
use crate::owner::actor::OwnerMsg;
use crate::responder::Answer;

/// Answers commands sent by any NATS client by passing them to the owner.
pub struct Commands<K: OwnerKind> {
    /// The owner that decides commands.
    pub owner: ActorRef<OwnerMsg<K>>,
}

impl<K: OwnerKind> Answer for Commands<K> {
    async fn answer(&self, request: &IncomingRequest, content_type: ContentType) -> Vec<u8> {
        encode_body(content_type, &self.reply(request, content_type).await)
    }
}

impl<K: OwnerKind> Commands<K> {
    async fn reply(&self, request: &IncomingRequest, content_type: ContentType) -> CommandReply {
        let command: K::Command = match decode_request(content_type, &request.payload) {
            Ok(command) => command,
            Err(reason) => {
                return CommandReply::failed("bad_request", format!("not a command of this context: {reason}"))
            }
        };
        // These ids go into the recorded event's headers, which every consumer checks: refuse a bad
        // one here rather than record an event that every consumer would dead-letter.
        let mut ids = [None, None];
        for (slot, name) in ids.iter_mut().zip([header::CORRELATION_ID, header::CAUSATION_ID]) {
            if let Some(value) = request.header(name) {
                let value = value.trim();
                if value.is_empty() || value.len() > carrier_messages::envelope::MAX_ID_LEN {
                    let limit = carrier_messages::envelope::MAX_ID_LEN;
                    return CommandReply::failed("bad_request", format!("header {name} must be 1 to {limit} bytes"));
                }
                *slot = Some(value.to_string());
            }
        }
        let [correlation_id, causation_id] = ids;
        let causality = Causality { correlation_id, causation_id };
        let result = ractor::call!(self.owner, |reply| OwnerMsg::Execute { command, causality, reply });
        match result {
            Err(_) => CommandReply::failed("unavailable", "the owner is restarting; try again"),
            Ok(Ok(decoded)) => CommandReply {
                ok: true,
                event: Some(RecordedEvent {
                    event_id: decoded.envelope.event_id.to_string(),
                    event_type: decoded.envelope.event_type.clone(),
                    aggregate_id: decoded.envelope.aggregate_id.clone(),
                    aggregate_version: decoded.envelope.aggregate_version,
                }),
                error: None,
            },
            Ok(Err(error)) => {
                let code = match &error {
                    CommandError::NotFound { .. } => "not_found",
                    CommandError::AlreadyExists { .. } => "already_exists",
                    CommandError::Rejected(_) => "rejected",
                    CommandError::Invalid(_) => "invalid",
                    CommandError::Storage(_) => "unavailable",
                };
                CommandReply::failed(code, error.to_string())
            }
        }
    }
}
