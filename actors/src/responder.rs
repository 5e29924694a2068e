//! The request/reply actor: listens on a subject in a queue group and answers each request with a
//! handler. Commands and queries of every context are served this way.

use std::future::Future;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use carrier_messages::header;
use carrier_messages::ContentType;

use crate::bus::{Bus, IncomingRequest, RequestStream};

/// How long one poll waits for a request before checking its mailbox again.
const POLL_WAIT: Duration = Duration::from_millis(250);

/// Requests answered at once. Answering one at a time would serialize every client behind each
/// command's commit and defeat the writer's group commit (commands that arrive together share
/// one transaction); answering without a bound would let a burst queue unboundedly.
pub const IN_FLIGHT: usize = 256;

/// What a [`Responder`] does with one request: the reply body, in the request's encoding.
pub trait Answer: Send + Sync + 'static {
    /// Answers `request`, whose body is in `content_type` (JSON when the header is absent).
    fn answer(&self, request: &IncomingRequest, content_type: ContentType) -> impl Future<Output = Vec<u8>> + Send;
}

/// Serves one subject with an [`Answer`].
pub struct Responder<H>(std::marker::PhantomData<fn() -> H>);

impl<H> Default for Responder<H> {
    fn default() -> Self {
        Responder(std::marker::PhantomData)
    }
}

/// The responder's only message.
pub enum ResponderMsg {
    /// Take the next request.
    Poll,
}

/// What a [`Responder`] is started with.
pub struct ResponderArgs<H> {
    /// The connection.
    pub bus: Bus,
    /// The subject, e.g. `cmd.stores`.
    pub subject: String,
    /// The queue group: instances of one context share the requests.
    pub queue_group: String,
    /// What answers.
    pub handler: H,
    /// While set, the responder leaves the queue group, so that the other instances (the one
    /// holding the context's lease) get every request: a fenced context's commands.
    pub fence: Option<std::sync::Arc<crate::fence::Fence>>,
}

/// The responder's state.
pub struct ResponderState<H> {
    bus: Bus,
    subject: String,
    queue_group: String,
    /// Requests being answered (at most [`IN_FLIGHT`]).
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    /// The subscription; `None` while fenced.
    requests: Option<RequestStream>,
    handler: std::sync::Arc<H>,
    fence: Option<std::sync::Arc<crate::fence::Fence>>,
}

impl<H: Answer> Actor for Responder<H> {
    type Msg = ResponderMsg;
    type State = ResponderState<H>;
    type Arguments = ResponderArgs<H>;

    async fn pre_start(
        &self,
        myself: ActorRef<ResponderMsg>,
        args: ResponderArgs<H>,
    ) -> Result<ResponderState<H>, ActorProcessingErr> {
        let fenced = args.fence.as_ref().is_some_and(|f| f.is_fenced());
        let requests = if fenced { None } else { Some(args.bus.serve(&args.subject, &args.queue_group).await?) };
        myself.send_message(ResponderMsg::Poll)?;
        Ok(ResponderState {
            bus: args.bus,
            subject: args.subject,
            queue_group: args.queue_group,
            requests,
            handler: std::sync::Arc::new(args.handler),
            fence: args.fence,
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ResponderMsg>,
        _msg: ResponderMsg,
        state: &mut ResponderState<H>,
    ) -> Result<(), ActorProcessingErr> {
        let fenced = state.fence.as_ref().is_some_and(|f| f.is_fenced());
        if fenced && state.requests.is_some() {
            state.requests = None;
            tracing::warn!(subject = %state.subject, "left the queue group while the context is fenced");
        } else if !fenced && state.requests.is_none() {
            state.requests = Some(state.bus.serve(&state.subject, &state.queue_group).await?);
            tracing::warn!(subject = %state.subject, "serving again: the context's fence is lifted");
        }
        let Some(requests) = state.requests.as_mut() else {
            myself.send_after(POLL_WAIT, || ResponderMsg::Poll);
            return Ok(());
        };
        // A slot before the next request: at most IN_FLIGHT are being answered.
        let slot = state.in_flight.clone().acquire_owned().await?;
        if let Some(request) = requests.next(POLL_WAIT).await? {
            let content_type =
                request.header(header::CONTENT_TYPE).and_then(ContentType::parse).unwrap_or(ContentType::Json);
            let (handler, bus) = (state.handler.clone(), state.bus.clone());
            tokio::spawn(async move {
                let body = handler.answer(&request, content_type).await;
                if let Err(error) = bus.respond(&request, content_type.as_str(), body).await {
                    tracing::warn!(subject = %request.subject, %error, "a reply could not be sent");
                }
                drop(slot);
            });
        }
        myself.send_message(ResponderMsg::Poll)?;
        Ok(())
    }
}
