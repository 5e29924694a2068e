//! Children that serve a context's commands and queries over request/reply.

use std::marker::PhantomData;
use std::sync::Arc;

use ractor::Actor;

use carrier_messages::ContentType;
use carrier_messages::{command_subject, decode_request, encode_reply, QueryReply};
use serde::de::DeserializeOwned;

use crate::bus::{Bus, IncomingRequest};
use crate::commands::{ContextCommands, Decide};
use crate::responder::{Answer, Responder, ResponderArgs};
use crate::supervisor::ChildSpec;

/// The `commands` child: serves `cmd.<context>` with `decide`.
pub(crate) fn commands<C, E>(
    context: &'static str,
    bus: Bus,
    decide: Decide<C, E>,
    fence: std::sync::Arc<crate::fence::Fence>,
) -> ChildSpec
where
    C: DeserializeOwned + Send + Sync + 'static,
    E: carrier_messages::DomainEvent + Send + Sync + 'static,
{
    ChildSpec::new("commands", move |supervisor, _siblings| {
        let args = ResponderArgs {
            bus: bus.clone(),
            subject: command_subject(context),
            queue_group: context.to_string(),
            handler: ContextCommands { decide: decide.clone() },
            fence: Some(fence.clone()),
        };
        async move {
            let (actor, _) =
                Actor::spawn_linked(None, Responder::<ContextCommands<C, E>>::default(), args, supervisor).await?;
            Ok(actor.get_cell())
        }
    })
}

/// A child named `child` that serves `subject` (`query.<context>`, or the entity endpoint
/// `query.<context>.entity`), answering each query of type `Q` with `answer`.
pub(crate) fn queries<A, Q, R>(
    child: &'static str,
    subject: String,
    context: &'static str,
    bus: Bus,
    answer: A,
    wait: Option<WaitFn>,
) -> ChildSpec
where
    A: AnswerQuery<Q, R> + Clone,
    Q: DeserializeOwned + Send + 'static,
    R: QueryReply,
{
    ChildSpec::new(child, move |supervisor, _siblings| {
        let args = ResponderArgs {
            bus: bus.clone(),
            subject: subject.clone(),
            queue_group: context.to_string(),
            handler: Queries { context, answer: answer.clone(), query: PhantomData, wait: wait.clone() },
            fence: None,
        };
        async move {
            let (actor, _) =
                Actor::spawn_linked(None, Responder::<Queries<A, Q, R>>::default(), args, supervisor).await?;
            Ok(actor.get_cell())
        }
    })
}

/// How a decoded query of type `Q` is answered with an `R`.
pub(crate) trait AnswerQuery<Q, R>: Send + Sync + 'static {
    /// The answer to `query`.
    fn answer(&self, query: Q) -> impl std::future::Future<Output = R> + Send;
}

/// Answers from a context's file with a plain function, on a blocking thread (it reads redb).
pub(crate) struct FromFile<D, F> {
    pub(crate) db: Arc<D>,
    pub(crate) answer: Arc<F>,
}

impl<D, F> Clone for FromFile<D, F> {
    fn clone(&self) -> Self {
        FromFile { db: self.db.clone(), answer: self.answer.clone() }
    }
}

impl<D, Q, R, F> AnswerQuery<Q, R> for FromFile<D, F>
where
    D: Send + Sync + 'static,
    Q: Send + 'static,
    R: QueryReply,
    F: Fn(&D, Q) -> R + Send + Sync + 'static,
{
    async fn answer(&self, query: Q) -> R {
        let (db, answer) = (self.db.clone(), self.answer.clone());
        match tokio::task::spawn_blocking(move || answer(&db, query)).await {
            Ok(reply) => reply,
            Err(e) => R::failed("unavailable", e.to_string()),
        }
    }
}

/// Answers with an async function given the context's handle, for answers that look entities
/// up (a cache miss asks the owner) or read other contexts' handles.
pub(crate) struct WithHandle<H, F> {
    pub(crate) handle: H,
    pub(crate) answer: Arc<F>,
}

impl<H: Clone, F> Clone for WithHandle<H, F> {
    fn clone(&self) -> Self {
        WithHandle { handle: self.handle.clone(), answer: self.answer.clone() }
    }
}

impl<H, Q, R, F, Fut> AnswerQuery<Q, R> for WithHandle<H, F>
where
    H: Clone + Send + Sync + 'static,
    Q: Send + 'static,
    R: QueryReply,
    F: Fn(H, Q) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + Send,
{
    async fn answer(&self, query: Q) -> R {
        (self.answer)(self.handle.clone(), query).await
    }
}

/// Waits until a context has applied a position (read your writes).
pub(crate) type WaitFn = Arc<
    dyn Fn(
            crate::Position,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), crate::PositionWait>> + Send>>
        + Send
        + Sync,
>;

/// Answers a context's queries: waits for a position the query asks to read from, decodes it,
/// answers it.
struct Queries<A, Q, R> {
    context: &'static str,
    answer: A,
    query: PhantomData<fn() -> (Q, R)>,
    wait: Option<WaitFn>,
}

/// A query body's `min_position`, read beside the query itself.
#[derive(serde::Deserialize)]
struct MinPosition {
    #[serde(default)]
    min_position: Option<String>,
}

/// The position a query asks to read from: its `Carrier-Min-Position` header, else its body's
/// `min_position`.
fn min_position(request: &IncomingRequest, content_type: ContentType) -> Option<String> {
    use carrier_messages::MIN_POSITION_HEADER;
    request
        .header(MIN_POSITION_HEADER)
        .map(str::to_string)
        .or_else(|| decode_request::<MinPosition>(content_type, &request.payload).ok().and_then(|m| m.min_position))
}

impl<A, Q, R> Answer for Queries<A, Q, R>
where
    A: AnswerQuery<Q, R>,
    Q: DeserializeOwned + Send + 'static,
    R: QueryReply,
{
    async fn answer(&self, request: &IncomingRequest, content_type: ContentType) -> Vec<u8> {
        if let (Some(wait), Some(position)) = (&self.wait, min_position(request, content_type)) {
            let refusal = match position.parse::<crate::Position>() {
                Err(problem) => Some(R::failed("bad_request", format!("min_position: {problem}"))),
                Ok(position) => match wait(position.clone()).await {
                    Ok(()) => None,
                    Err(e) => Some(R::failed(e.code(), format!("{} has not applied {position}: {e}", self.context))),
                },
            };
            if let Some(refusal) = refusal {
                return encode_reply(content_type, &refusal);
            }
        }
        let reply = match decode_request::<Q>(content_type, &request.payload) {
            Err(reason) => R::failed("bad_request", format!("not a {} query: {reason}", self.context)),
            Ok(query) => self.answer.answer(query).await,
        };
        encode_reply(content_type, &reply)
    }
}
