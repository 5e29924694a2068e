//! Children that serve a context's commands and queries over request/reply.

use std::marker::PhantomData;
use std::sync::Arc;

use ractor::Actor;

use carrier_messages::request::{command_subject, decode_request, encode_body, QueryReply};
use carrier_messages::ContentType;
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
/// `query.<context>.entity`), answering each query of type `Q` with `answer` on a blocking
/// thread (it reads redb) against `db`.
pub(crate) fn queries<D, Q, R, F>(
    child: &'static str,
    subject: String,
    context: &'static str,
    bus: Bus,
    db: Arc<D>,
    answer: Arc<F>,
    wait: Option<WaitFn>,
) -> ChildSpec
where
    D: Send + Sync + 'static,
    Q: DeserializeOwned + Send + 'static,
    R: QueryReply,
    F: Fn(&D, Q) -> R + Send + Sync + 'static,
{
    ChildSpec::new(child, move |supervisor, _siblings| {
        let args = ResponderArgs {
            bus: bus.clone(),
            subject: subject.clone(),
            queue_group: context.to_string(),
            handler: Queries {
                context,
                db: db.clone(),
                answer: answer.clone(),
                query: PhantomData,
                wait: wait.clone(),
            },
            fence: None,
        };
        async move {
            let (actor, _) =
                Actor::spawn_linked(None, Responder::<Queries<D, Q, F>>::default(), args, supervisor).await?;
            Ok(actor.get_cell())
        }
    })
}

/// Waits until a context has applied a position (read your writes).
pub(crate) type WaitFn = Arc<
    dyn Fn(
            crate::Position,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), crate::PositionWait>> + Send>>
        + Send
        + Sync,
>;

/// Answers a context's queries from its file.
struct Queries<D, Q, F> {
    context: &'static str,
    db: Arc<D>,
    answer: Arc<F>,
    query: PhantomData<fn() -> Q>,
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
    use carrier_messages::request::MIN_POSITION_HEADER;
    request
        .header(MIN_POSITION_HEADER)
        .map(str::to_string)
        .or_else(|| decode_request::<MinPosition>(content_type, &request.payload).ok().and_then(|m| m.min_position))
}

impl<D, Q, R, F> Answer for Queries<D, Q, F>
where
    D: Send + Sync + 'static,
    Q: DeserializeOwned + Send + 'static,
    R: QueryReply,
    F: Fn(&D, Q) -> R + Send + Sync + 'static,
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
                return encode_body(content_type, &refusal);
            }
        }
        let reply = match decode_request::<Q>(content_type, &request.payload) {
            Err(reason) => R::failed("bad_request", format!("not a {} query: {reason}", self.context)),
            Ok(query) => {
                let (db, answer) = (self.db.clone(), self.answer.clone());
                match tokio::task::spawn_blocking(move || answer(&db, query)).await {
                    Ok(reply) => reply,
                    Err(e) => R::failed("unavailable", e.to_string()),
                }
            }
        };
        encode_body(content_type, &reply)
    }
}
