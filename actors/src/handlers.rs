//! An event bus of handlers, declared like a context: [`BoundedContext::handlers`].
//!
//! ```no_run
//! # use carrier_actors::BoundedContext;
//! # carrier_messages::domain_events! {
//! #     /// Users.
//! #     enum UsersEvent, context "users", stream "USERS", subjects "users.>";
//! #     UserCreated => "user", "users.user.created";
//! # }
//! # #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
//! # struct UserCreated { id: String }
//! # impl carrier_messages::Validate for UserCreated {}
//! let mail = BoundedContext::handlers("mail")
//!     .handle::<UsersEvent>("welcome", |event, txn| {
//!         // write what the handler did with `txn`: it commits with the record of the event
//!         Ok(())
//!     })
//!     .build();
//! ```
//!
//! In the list of declarations it runs inside `run` like any context: on the one instance that
//! holds its lease (`bus.<name>`; every other instance that runs it stands by), with its file
//! (`<name>.bus.redb`, `inspect <name>`), its dead letters (`DLQ_<NAME>`, `dlq list <name>`), its
//! supervisor (`carrier/<name>`) and health, its panel on the dashboard and in `status`, and its
//! metrics. Its handle is the [`EventBus`] (`CarrierSystem::handle::<EventBus>()`), to read what
//! the handlers wrote and to wait for them. See [`crate::event_bus`] for how handlers run.

use std::any::Any;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use carrier_messages::{Decoded, DomainEvent};
use carrier_storage::WriteTransaction;

use crate::context::{BoundedContext, SourceStream, StartEnv, StartFn, Started};
use crate::event_bus::{EventBus, EventBusError, EventBusSettings, HandlerError};
use crate::observe::ObservedContext;
use crate::start_error::StartError;
use crate::supervisor::{ChildSpec, RestartPolicy, SupervisorArgs};

type Subscribe = Arc<dyn Fn(&EventBus) -> Result<(), EventBusError> + Send + Sync>;

impl BoundedContext {
    /// An event bus of handlers, declared like a context (see `crate::handlers`): add each
    /// handler with [`handle`](HandlersDecl::handle), then [`build`](HandlersDecl::build). It
    /// runs on the instance holding its lease and shows in every operator tool under `name`.
    pub fn handlers(name: &'static str) -> HandlersDecl {
        HandlersDecl::named(name)
    }
}

/// The declaration of an event bus of handlers under construction; see
/// [`BoundedContext::handlers`].
pub struct HandlersDecl {
    name: &'static str,
    settings: EventBusSettings,
    reads: Vec<SourceStream>,
    subscriptions: Vec<Subscribe>,
}

impl HandlersDecl {
    fn named(name: &'static str) -> HandlersDecl {
        HandlersDecl { name, settings: EventBusSettings::named(name), reads: Vec::new(), subscriptions: Vec::new() }
    }

    /// Runs `handler` on every event of `E`'s stream, as subscription `subscription` (its durable
    /// is `<bus>-<subscription>`). The handler writes its effects with the transaction it is
    /// given, which commits with the record that the event was handled (exactly once for what it
    /// writes there); an `Err` keeps none of them and the event is retried, then dead-lettered.
    pub fn handle<E: DomainEvent>(
        mut self,
        subscription: &'static str,
        handler: impl Fn(&Decoded<E>, &WriteTransaction) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> Self {
        if !self.reads.iter().any(|s| s.stream == E::STREAM) {
            self.reads.push(SourceStream::of::<E>());
        }
        let handler = Arc::new(handler);
        self.subscriptions.push(Arc::new(move |bus: &EventBus| {
            let handler = handler.clone();
            bus.subscribe::<E>(subscription, move |event, txn| handler(event, txn))
        }));
        self
    }

    /// Changes how its handlers run (workers, attempts, backoff, retention); the name stays.
    pub fn settings(mut self, change: impl FnOnce(&mut EventBusSettings)) -> Self {
        change(&mut self.settings);
        self.settings.name = self.name.to_string();
        self
    }

    /// The declaration.
    pub fn build(self) -> BoundedContext {
        let HandlersDecl { name, settings, reads, subscriptions } = self;
        let subscriptions = Arc::new(subscriptions);
        let start: StartFn = Arc::new(move |env: StartEnv| {
            let (settings, subscriptions) = (settings.clone(), subscriptions.clone());
            Box::pin(async move {
                let failed = |e: EventBusError| StartError::EventBus { bus: name.to_string(), reason: e.to_string() };
                let bus = EventBus::open(env.bus.clone(), &env.data_dir, settings).await.map_err(failed)?;
                for subscribe in subscriptions.iter() {
                    subscribe(&bus).map_err(failed)?;
                }
                bus.start().await.map_err(failed)?;
                let runner = {
                    let bus = bus.clone();
                    ChildSpec::new("handlers", move |supervisor, _siblings| {
                        let bus = bus.clone();
                        async move {
                            let (actor, _) = Actor::spawn_linked(None, HandlersRunner, bus, supervisor).await?;
                            Ok(actor.get_cell())
                        }
                    })
                };
                let args = SupervisorArgs {
                    path: env.path.clone(),
                    children: vec![runner],
                    policy: RestartPolicy::context(),
                    tree: env.tree.clone(),
                };
                let panel = bus.clone();
                let handles = bus.handles();
                let observed = ObservedContext {
                    name,
                    fence: env.fence.clone(),
                    file: None,
                    consumers: Vec::new(),
                    lookups: None,
                    fallbacks: Vec::new(),
                    stream: None,
                    rebuild: None,
                    resync: None,
                    dead_letters: true,
                    panels: vec![(format!("Event bus {name}"), Arc::new(move || panel.panel_rows()))],
                };
                Ok(Started {
                    args,
                    handle: Arc::new(bus) as Arc<dyn Any + Send + Sync>,
                    observed,
                    consumers: Vec::new(),
                    file_refs: Box::new(handles),
                })
            })
        });
        BoundedContext::of_handlers(name, reads, start)
    }
}

/// Holds a running bus in the context's supervision tree, and stops it (handlers in flight
/// finish, bounded by its stop timeout; its lease is given up) when the system stops.
struct HandlersRunner;

impl Actor for HandlersRunner {
    type Msg = ();
    type State = EventBus;
    type Arguments = EventBus;

    async fn pre_start(&self, _myself: ActorRef<()>, bus: EventBus) -> Result<EventBus, ActorProcessingErr> {
        Ok(bus)
    }

    async fn post_stop(&self, _myself: ActorRef<()>, bus: &mut EventBus) -> Result<(), ActorProcessingErr> {
        bus.stop().await;
        Ok(())
    }
}
