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
            handler: Queries { context, db: db.clone(), answer: answer.clone(), query: PhantomData },
            fence: None,
        };
        async move {
            let (actor, _) =
                Actor::spawn_linked(None, Responder::<Queries<D, Q, F>>::default(), args, supervisor).await?;
            Ok(actor.get_cell())
        }
    })
}

/// Answers a context's queries from its file.
struct Queries<D, Q, F> {
    context: &'static str,
    db: Arc<D>,
    answer: Arc<F>,
    query: PhantomData<fn() -> Q>,
}

impl<D, Q, R, F> Answer for Queries<D, Q, F>
where
    D: Send + Sync + 'static,
    Q: DeserializeOwned + Send + 'static,
    R: QueryReply,
    F: Fn(&D, Q) -> R + Send + Sync + 'static,
{
    async fn answer(&self, request: &IncomingRequest, content_type: ContentType) -> Vec<u8> {
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
