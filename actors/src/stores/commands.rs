//! The stores command server: `StoresCommand`s over NATS request/reply on `cmd.stores`.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use carrier_messages::codec::Causality;
use carrier_messages::envelope::header;
use carrier_messages::request::{decode_request, encode_body, CommandReply, RecordedEvent};
use carrier_messages::stores::StoresCommand;
use carrier_messages::ContentType;
use carrier_storage::CommandError;

use crate::bus::{Bus, IncomingRequest, RequestStream};
use crate::stores::owner::StoresOwnerMsg;

/// How long one poll waits for a request before checking its mailbox again.
const POLL_WAIT: Duration = Duration::from_millis(250);

/// Answers commands sent by any NATS client, by passing them to the owner.
pub struct CommandServer;

/// The command server's only message.
pub enum CommandServerMsg {
    /// Take the next request.
    Poll,
}

/// What [`CommandServer`] is started with.
pub struct CommandServerArgs {
    /// The connection.
    pub bus: Bus,
    /// The owner that decides commands.
    pub owner: ActorRef<StoresOwnerMsg>,
}

/// The command server's state.
pub struct CommandServerState {
    bus: Bus,
    owner: ActorRef<StoresOwnerMsg>,
    requests: RequestStream,
}

impl Actor for CommandServer {
    type Msg = CommandServerMsg;
    type State = CommandServerState;
    type Arguments = CommandServerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CommandServerArgs,
    ) -> Result<CommandServerState, ActorProcessingErr> {
        let subject = carrier_messages::request::command_subject(super::CONTEXT);
        let requests = args.bus.serve(&subject, super::CONTEXT).await?;
        myself.send_message(CommandServerMsg::Poll)?;
        Ok(CommandServerState { bus: args.bus, owner: args.owner, requests })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        _msg: CommandServerMsg,
        state: &mut CommandServerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(request) = state.requests.next(POLL_WAIT).await? {
            let content_type =
                request.header(header::CONTENT_TYPE).and_then(ContentType::parse).unwrap_or(ContentType::Json);
            let reply = answer(&state.owner, &request, content_type).await;
            state.bus.respond(&request, content_type.as_str(), encode_body(content_type, &reply)).await?;
        }
        myself.send_message(CommandServerMsg::Poll)?;
        Ok(())
    }
}

async fn answer(
    owner: &ActorRef<StoresOwnerMsg>,
    request: &IncomingRequest,
    content_type: ContentType,
) -> CommandReply {
    let command: StoresCommand = match decode_request(content_type, &request.payload) {
        Ok(command) => command,
        Err(reason) => return CommandReply::failed("bad_request", format!("not a stores command: {reason}")),
    };
    let causality = Causality {
        correlation_id: request.header(header::CORRELATION_ID).map(str::to_string),
        causation_id: request.header(header::CAUSATION_ID).map(str::to_string),
    };
    let result = ractor::call!(owner, |reply| StoresOwnerMsg::Execute { command, causality, reply });
    match result {
        Err(_) => CommandReply::failed("unavailable", "the stores owner is restarting; try again"),
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
