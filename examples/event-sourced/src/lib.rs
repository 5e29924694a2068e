//! An event-sourced aggregate with a projection and a declared bus handler. `tickets` keeps no
//! state but its events (one subject per ticket, appended with optimistic concurrency); `board`
//! is a read model that projects them (rebuildable) and answers queries, waiting for a
//! command's position when asked; `notices` is an event bus whose handler writes a notice per
//! closed ticket, exactly once, on the instance holding its lease.
#![allow(missing_docs)]

use carrier::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TicketOpened {
    pub id: String,
    pub title: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TicketClosed {
    pub id: String,
}

impl Validate for TicketOpened {
    fn validate(&self) -> Result<(), ValidationError> {
        check::name("title", &self.title)
    }
}
impl Validate for TicketClosed {}

domain_events! {
    /// What the tickets context records, one subject per ticket.
    enum TicketsEvent, context "tickets", stream "TICKETS", subjects "tickets.>";
    TicketOpened => "ticket", "tickets.ticket.*";
    TicketClosed => "ticket", "tickets.ticket.*";
}

/// The tickets' commands, on `cmd.tickets`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum TicketCommand {
    Open { id: String, title: String },
    Close { id: String },
}

/// A ticket: the fold of its events.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Ticket {
    opened: bool,
    closed: bool,
}

impl Aggregate for Ticket {
    type Event = TicketsEvent;
    type Command = TicketCommand;
    const KIND: &'static str = "ticket";

    fn aggregate_id(command: &TicketCommand) -> &str {
        match command {
            TicketCommand::Open { id, .. } | TicketCommand::Close { id } => id,
        }
    }

    fn decide(&self, command: &TicketCommand) -> Result<Vec<TicketsEvent>, CommandError> {
        match command.clone() {
            TicketCommand::Open { id, .. } if self.opened => Err(CommandError::AlreadyExists { kind: "ticket", id }),
            TicketCommand::Open { id, title } => Ok(vec![TicketsEvent::TicketOpened(TicketOpened { id, title })]),
            TicketCommand::Close { id } if !self.opened || self.closed => {
                Err(CommandError::NotFound { kind: "open ticket", id })
            }
            TicketCommand::Close { id } => Ok(vec![TicketsEvent::TicketClosed(TicketClosed { id })]),
        }
    }

    fn apply(&mut self, event: &TicketsEvent) {
        match event {
            TicketsEvent::TicketOpened(_) => self.opened = true,
            TicketsEvent::TicketClosed(_) => self.closed = true,
        }
    }
}

/// A ticket as the board lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Card {
    pub title: String,
    pub closed: bool,
}

const CARDS: Rows<Card> = Rows::new("cards");

/// The board: a read model of the tickets.
pub struct Board;

impl ContextKind for Board {
    const NAME: &'static str = "board";
    type Event = NoEvents;
}

impl Reacts<TicketsEvent> for Board {
    type Tables<'txn> = RowsMut<'txn, Card>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<RowsMut<'txn, Card>, StorageError> {
        CARDS.open(txn)
    }

    fn react(
        cards: &mut RowsMut<'_, Card>,
        _emit: &mut Emitter<'_, NoEvents>,
        _envelope: &Envelope,
        event: &TicketsEvent,
    ) -> Result<(), ReactError> {
        match event {
            TicketsEvent::TicketOpened(e) => cards.put(&e.id, &Card { title: e.title.clone(), closed: false })?,
            TicketsEvent::TicketClosed(e) => _ = cards.update(&e.id, |c| c.closed = true)?,
        }
        Ok(())
    }
}

/// The board's query, on `query.board`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum BoardQuery {
    GetCard { id: String },
}

/// The notices the handler wrote, by ticket id.
pub const NOTICES: Rows<String> = Rows::new("notices");

/// The three contexts.
pub fn contexts() -> Vec<BoundedContext> {
    vec![
        BoundedContext::aggregate::<Ticket>().build(),
        BoundedContext::of::<Board>()
            .projects::<TicketsEvent>(&["cards"], &["ticket"])
            .queries(|db, BoardQuery::GetCard { id }| Found::answer(db.read(|txn| CARDS.get(txn, &id))))
            .read_model()
            .build(),
        BoundedContext::handlers("notices")
            .handle::<TicketsEvent>("closed", |event, txn| {
                if let TicketsEvent::TicketClosed(e) = &event.event {
                    NOTICES.open(txn)?.put(&e.id, &format!("ticket {} was closed", e.id))?;
                }
                Ok(())
            })
            .build(),
    ]
}
