//! A cache that fills a miss from its owner. `accounts` owns accounts (opened, closed) and
//! answers its entity endpoint; `greeter` keeps their names (`.caches`), and its `greet` command
//! looks the name up: from its own table, or, for an account whose events it never saw, from the
//! owner (then kept). A closed account is a tombstone: the greeter forgets it.
#![allow(missing_docs)]

use carrier::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountOpened {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountClosed {
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Greeted {
    pub id: String,
    pub text: String,
}

impl Validate for AccountOpened {}
impl Validate for AccountClosed {}
impl Validate for Greeted {}

domain_events! {
    /// What the accounts owner publishes.
    enum AccountsEvent, context "accounts", stream "ACCOUNTS", subjects "accounts.>";
    AccountOpened => "account", "accounts.account.opened";
    AccountClosed => "account", "accounts.account.closed";
}

domain_events! {
    /// What the greeter publishes.
    enum GreeterEvent, context "greeter", stream "GREETER", subjects "greeter.>";
    Greeted => "greeting", "greeter.greeting.sent";
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum AccountsCommand {
    Open { id: String, name: String },
    Close { id: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub version: u64,
    pub closed: bool,
}

const ACCOUNTS: Rows<Account> = Rows::new("accounts");

pub struct Accounts;

impl ContextKind for Accounts {
    const NAME: &'static str = "accounts";
    type Event = AccountsEvent;
}

impl Decides<AccountsCommand> for Accounts {
    fn decide(
        txn: &WriteTransaction,
        emit: &mut Emitter<'_, AccountsEvent>,
        command: &AccountsCommand,
        causality: &Causality,
    ) -> Result<(), CommandError> {
        let mut accounts = ACCOUNTS.open(txn)?;
        let (id, event, mut account) = match command.clone() {
            AccountsCommand::Open { id, name } => {
                if accounts.get(&id)?.is_some() {
                    return Err(CommandError::AlreadyExists { kind: "account", id });
                }
                let event = AccountsEvent::AccountOpened(AccountOpened { id: id.clone(), name: name.clone() });
                (id, event, Account { name, version: 0, closed: false })
            }
            AccountsCommand::Close { id } => {
                let open = accounts.get(&id)?.filter(|a| !a.closed);
                let mut a = open.ok_or_else(|| CommandError::NotFound { kind: "account", id: id.clone() })?;
                a.closed = true;
                (id.clone(), AccountsEvent::AccountClosed(AccountClosed { id }), a)
            }
        };
        // The library numbers each account's events; the row keeps the version for its answers.
        account.version = emit.event(event, causality)?;
        Ok(accounts.put(&id, &account)?)
    }
}

/// The greeter's copy of the names, by account id.
pub const NAMES: Rows<String> = Rows::new("names");

pub struct Greeter;

impl ContextKind for Greeter {
    const NAME: &'static str = "greeter";
    type Event = GreeterEvent;
}

impl Reacts<AccountsEvent> for Greeter {
    type Tables<'txn> = RowsMut<'txn, String>;

    fn open<'txn>(txn: &'txn WriteTransaction) -> Result<RowsMut<'txn, String>, StorageError> {
        NAMES.open(txn)
    }

    fn react(
        names: &mut RowsMut<'_, String>,
        _emit: &mut Emitter<'_, GreeterEvent>,
        _envelope: &Envelope,
        event: &AccountsEvent,
    ) -> Result<(), ReactError> {
        match event {
            AccountsEvent::AccountOpened(e) => names.put(&e.id, &e.name)?,
            AccountsEvent::AccountClosed(e) => names.remove(&e.id)?,
        }
        Ok(())
    }
}

impl Adopts<AccountsEvent> for Greeter {
    /// The owner's row; the greeter keeps its name.
    type State = Account;
    const TABLES: &'static [(&'static str, &'static str)] = &[("account", "names")];

    fn adopt(names: &mut RowsMut<'_, String>, _aggregate: &str, id: &str, state: Account) -> Result<(), StorageError> {
        names.put(id, &state.name)
    }

    fn forget(names: &mut RowsMut<'_, String>, _aggregate: &str, id: &str) -> Result<(), StorageError> {
        names.remove(id)
    }
}

/// The greeter's command, on `cmd.greeter`: `{"id": "a-1"}`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Greet {
    pub id: String,
}

/// A greeting: the account's id and its name, looked up beforehand (never inside the write).
/// Each account's greetings are a log the library numbers: 1, 2, 3, ...
impl Decides<(String, String)> for Greeter {
    fn decide(
        _txn: &WriteTransaction,
        emit: &mut Emitter<'_, GreeterEvent>,
        (id, name): &(String, String),
        causality: &Causality,
    ) -> Result<(), CommandError> {
        let greeted = Greeted { id: id.clone(), text: format!("Hello, {name}!") };
        emit.event(GreeterEvent::Greeted(greeted), causality)?;
        Ok(())
    }
}

/// Both contexts, the owner first.
pub fn contexts() -> Vec<BoundedContext> {
    vec![
        // The entity endpoint: an open account at its version, a closed one as a tombstone.
        BoundedContext::of::<Accounts>()
            .decides::<AccountsCommand>()
            .entities(|db, _aggregate, id| {
                Ok(db.read(|txn| ACCOUNTS.get(txn, id))?.map(|a| match a.closed {
                    true => Entity::deleted(a.version),
                    false => Entity::of(a.version, &a),
                }))
            })
            .build(),
        BoundedContext::of::<Greeter>()
            .caches::<AccountsEvent>()
            .commands(|handle: ContextHandle<Greeter>, Greet { id }, causality| async move {
                let name = handle.lookup::<AccountsEvent, _>("account", NAMES, &id).await?;
                let name = name.ok_or_else(|| CommandError::NotFound { kind: "account", id: id.clone() })?;
                handle.execute((id, name), causality).await.map_err(CommandError::from)
            })
            .build(),
    ]
}
