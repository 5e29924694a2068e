//! Children that serve a context's commands and queries over request/reply.

use ractor::Actor;

use carrier_messages::request::{command_subject, query_subject};
use serde::de::DeserializeOwned;

use crate::bus::Bus;
use crate::owner::{ContextCommands, Decide};
use crate::responder::{Answer, Responder, ResponderArgs};
use crate::supervisor::ChildSpec;

/// The `commands` child: serves `cmd.<context>` with `decide`.
pub(crate) fn commands<C, E>(context: &'static str, bus: Bus, decide: Decide<C, E>) -> ChildSpec
where
    C: DeserializeOwned + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    ChildSpec::new("commands", move |supervisor, _siblings| {
        let args = ResponderArgs {
            bus: bus.clone(),
            subject: command_subject(context),
            queue_group: context.to_string(),
            handler: ContextCommands { decide: decide.clone() },
        };
        async move {
            let (actor, _) =
                Actor::spawn_linked(None, Responder::<ContextCommands<C, E>>::default(), args, supervisor).await?;
            Ok(actor.get_cell())
        }
    })
}

/// The `queries` child: serves `query.<context>` with a handler made by `handler`.
pub(crate) fn queries<H: Answer>(
    context: &'static str,
    bus: Bus,
    handler: impl Fn() -> H + Send + Sync + 'static,
) -> ChildSpec {
    ChildSpec::new("queries", move |supervisor, _siblings| {
        let args = ResponderArgs {
            bus: bus.clone(),
            subject: query_subject(context),
            queue_group: context.to_string(),
            handler: handler(),
        };
        async move {
            let (actor, _) = Actor::spawn_linked(None, Responder::<H>::default(), args, supervisor).await?;
            Ok(actor.get_cell())
        }
    })
}
