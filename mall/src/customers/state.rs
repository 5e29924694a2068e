//! The customers context's own state (the source of truth for customers).

use serde::{Deserialize, Serialize};

use carrier_messages::Causality;
use carrier_messages::{DomainEvent, Envelope};
use carrier_storage::{
    CommandError, ContextFile, ContextKind, Decides, Emitter, Follows, Rows, StorageError, WriteTransaction,
};

use super::events::*;

const CUSTOMERS: Rows<CustomerRow> = Rows::new("customers");

/// A customer, as its owner knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRow {
    /// Display name.
    pub name: String,
    /// Where notifications go.
    pub sms_number: String,
    /// Whether they may order.
    pub enabled: bool,
    /// Version of their last event.
    pub version: u64,
}

/// `customers.redb`: customers and the outbox.
pub type CustomersDb = ContextFile<Customers>;

/// The customers context's state and rules: an owner, deciding commands and reacting to nothing.
pub struct Customers;

impl ContextKind for Customers {
    const NAME: &'static str = "customers";
    type Event = CustomersEvent;

    fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
        CUSTOMERS.create(txn)?;
        Ok(())
    }
}

impl Decides<CustomersCommand> for Customers {
    fn command_name(command: &CustomersCommand) -> &'static str {
        command.name()
    }

    fn decide(
        txn: &WriteTransaction,
        emit: &mut Emitter<'_, CustomersEvent>,
        command: &CustomersCommand,
        causality: &Causality,
    ) -> Result<(), CommandError> {
        use CustomersCommand as C;
        let mut table = CUSTOMERS.open(txn)?;
        let current: Option<CustomerRow> = {
            let id = match command {
                C::RegisterCustomer { id, .. }
                | C::ChangeSmsNumber { id, .. }
                | C::EnableCustomer { id }
                | C::DisableCustomer { id } => id,
            };
            table.get(id)?
        };
        let existing = |id: &str| -> Result<CustomerRow, CommandError> {
            current.clone().ok_or_else(|| CommandError::NotFound { kind: "customer", id: id.to_string() })
        };
        let (event, row) = match command.clone() {
            C::RegisterCustomer { id, name, sms_number } => {
                if current.is_some() {
                    return Err(CommandError::AlreadyExists { kind: "customer", id });
                }
                let row = CustomerRow { name: name.clone(), sms_number: sms_number.clone(), enabled: true, version: 1 };
                (CustomersEvent::CustomerRegistered(CustomerRegistered { id, name, sms_number }), row)
            }
            C::ChangeSmsNumber { id, sms_number } => {
                let mut row = existing(&id)?;
                row.sms_number = sms_number.clone();
                row.version += 1;
                (CustomersEvent::CustomerSmsChanged(CustomerSmsChanged { id, sms_number }), row)
            }
            C::EnableCustomer { id } => {
                let mut row = existing(&id)?;
                if row.enabled {
                    return Err(CommandError::Rejected(format!("customer {id:?} is already enabled")));
                }
                row.enabled = true;
                row.version += 1;
                (CustomersEvent::CustomerEnabled(CustomerEnabled { id }), row)
            }
            C::DisableCustomer { id } => {
                let mut row = existing(&id)?;
                if !row.enabled {
                    return Err(CommandError::Rejected(format!("customer {id:?} is already disabled")));
                }
                row.enabled = false;
                row.version += 1;
                (CustomersEvent::CustomerDisabled(CustomerDisabled { id }), row)
            }
        };
        event.validate()?;
        table.put(event.aggregate_id(), &row)?;
        emit.record(event, row.version, causality)?;
        Ok(())
    }
}

impl Follows for Customers {
    fn follow(txn: &WriteTransaction, envelope: &Envelope, event: &CustomersEvent) -> Result<(), StorageError> {
        let mut table = CUSTOMERS.open(txn)?;
        let id = envelope.aggregate_id.as_str();
        let current: Option<CustomerRow> = table.get(id)?;
        let version = envelope.aggregate_version;
        if current.as_ref().is_some_and(|r| r.version >= version) {
            return Ok(());
        }
        let row = match (event, current) {
            (CustomersEvent::CustomerRegistered(e), _) => {
                CustomerRow { name: e.name.clone(), sms_number: e.sms_number.clone(), enabled: true, version }
            }
            (CustomersEvent::CustomerSmsChanged(e), Some(row)) => {
                CustomerRow { sms_number: e.sms_number.clone(), version, ..row }
            }
            (CustomersEvent::CustomerEnabled(_), Some(row)) => CustomerRow { enabled: true, version, ..row },
            (CustomersEvent::CustomerDisabled(_), Some(row)) => CustomerRow { enabled: false, version, ..row },
            (_, None) => {
                return Err(StorageError::Corrupt {
                    table: "customers",
                    reason: format!("{id:?} changed (version {version}) before it was registered"),
                })
            }
        };
        table.put(id, &row)?;
        Ok(())
    }
}

/// What the customers context's file answers of its customers.
pub trait CustomersFile {
    /// One customer.
    fn customer(&self, id: &str) -> Result<Option<CustomerRow>, StorageError>;
    /// Every customer, by id.
    fn customers(&self) -> Result<Vec<(String, CustomerRow)>, StorageError>;
}

impl CustomersFile for ContextFile<Customers> {
    fn customer(&self, id: &str) -> Result<Option<CustomerRow>, StorageError> {
        self.read(|txn| CUSTOMERS.get(txn, id))
    }

    fn customers(&self) -> Result<Vec<(String, CustomerRow)>, StorageError> {
        self.read(|txn| CUSTOMERS.all(txn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_of_the_published_events_ends_with_the_deciders_rows() {
        let dir = tempfile::tempdir().expect("dir");
        let decider = carrier_storage::FileWriter::<Customers>::open(dir.path().join("a.redb")).expect("open");
        let follower = carrier_storage::FileWriter::<Customers>::open(dir.path().join("b.redb")).expect("open");
        let c = Causality::default();
        for command in [
            CustomersCommand::RegisterCustomer { id: "c".into(), name: "Ada".into(), sms_number: "+4411".into() },
            CustomersCommand::ChangeSmsNumber { id: "c".into(), sms_number: "+4422".into() },
            CustomersCommand::DisableCustomer { id: "c".into() },
            CustomersCommand::RegisterCustomer { id: "d".into(), name: "Bo".into(), sms_number: "+4433".into() },
        ] {
            decider.execute(&command, &c).expect("decided");
        }
        let published = crate::outbox_as_delivered(&decider);
        follower.follow("customers-self", &published, 0).expect("followed");
        follower.follow("customers-self", &published[1..], 0).expect("a batch again changes nothing");
        assert_eq!(follower.file().customers().expect("rows"), decider.file().customers().expect("rows"));
        // An event for a customer the follower never saw registered is an error, not a guess.
        let orphan = &published[1..2];
        let fresh = carrier_storage::FileWriter::<Customers>::open(dir.path().join("c.redb")).expect("open");
        assert!(fresh.follow("customers-self", orphan, 0).is_err());
    }

    #[test]
    fn customers_register_change_and_toggle_with_versions_and_rules() {
        let dir = tempfile::tempdir().expect("dir");
        let db = carrier_storage::FileWriter::<Customers>::open(dir.path().join("customers.redb")).expect("open");
        let c = Causality::default();
        let register =
            CustomersCommand::RegisterCustomer { id: "c".into(), name: "Ada".into(), sms_number: "+4411".into() };
        assert_eq!(db.execute(&register, &c).expect("ok").envelope.aggregate_version, 1);
        assert!(matches!(db.execute(&register, &c), Err(CommandError::AlreadyExists { .. })));
        let change = CustomersCommand::ChangeSmsNumber { id: "c".into(), sms_number: "+4422".into() };
        assert_eq!(db.execute(&change, &c).expect("ok").envelope.aggregate_version, 2);
        let enable = CustomersCommand::EnableCustomer { id: "c".into() };
        assert!(matches!(db.execute(&enable, &c), Err(CommandError::Rejected(_))));
        let disable = CustomersCommand::DisableCustomer { id: "c".into() };
        assert_eq!(db.execute(&disable, &c).expect("ok").envelope.aggregate_version, 3);
        let bad = CustomersCommand::ChangeSmsNumber { id: "c".into(), sms_number: "nope".into() };
        assert!(matches!(db.execute(&bad, &c), Err(CommandError::Invalid(_))));
        let row = db.customer("c").expect("read").expect("row");
        assert_eq!((row.sms_number.as_str(), row.enabled, row.version), ("+4422", false, 3));
        assert_eq!(db.outbox_len().expect("outbox"), 3, "one outbox row per accepted command");
    }
}
