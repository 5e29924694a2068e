//! The `users` context's write side: the [`User`] aggregate, whose state is the fold of its
//! events on `users.user.<id>`.

use carrier_actors::Aggregate;
use carrier_storage::CommandError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::events::{UserContactUpdated, UserCreated, UserDeleted, UserProfileUpdated, UsersEvent};

/// The `users` context's commands, on `cmd.users` (JSON or CBOR, tagged by `command`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum UsersCommand {
    /// Registers a user under a new id (the HTTP API makes one).
    CreateUser {
        /// The new user's id (letters, digits, `-`, `_`).
        id: String,
        /// Their name.
        name: String,
        /// Their e-mail address.
        email: String,
        /// Their phone number.
        #[serde(default)]
        phone: String,
        /// Their address.
        #[serde(default)]
        address: String,
    },
    /// Changes a user's name and address.
    UpdateProfile {
        /// The user.
        id: String,
        /// Their name.
        name: String,
        /// Their address.
        #[serde(default)]
        address: String,
    },
    /// Changes a user's e-mail and phone.
    UpdateContact {
        /// The user.
        id: String,
        /// Their e-mail address.
        email: String,
        /// Their phone number.
        #[serde(default)]
        phone: String,
    },
    /// Deletes a user (soft: later commands about them are refused).
    DeleteUser {
        /// The user.
        id: String,
    },
}

/// A user, as their events made them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Whether they were created.
    pub exists: bool,
    /// Whether they were deleted.
    pub deleted: bool,
    /// Their name.
    pub name: String,
    /// Their e-mail address.
    pub email: String,
    /// Their phone number.
    pub phone: String,
    /// Their address.
    pub address: String,
}

fn deleted(id: &str) -> CommandError {
    CommandError::Refused {
        code: "user_deleted",
        message: format!("user {id:?} was deleted"),
        details: serde_json::json!({ "id": id }),
    }
}

impl Aggregate for User {
    type Event = UsersEvent;
    type Command = UsersCommand;
    const KIND: &'static str = "user";

    fn aggregate_id(command: &UsersCommand) -> &str {
        match command {
            UsersCommand::CreateUser { id, .. }
            | UsersCommand::UpdateProfile { id, .. }
            | UsersCommand::UpdateContact { id, .. }
            | UsersCommand::DeleteUser { id } => id,
        }
    }

    fn decide(&self, command: &UsersCommand) -> Result<Vec<UsersEvent>, CommandError> {
        let id = User::aggregate_id(command).to_string();
        if let UsersCommand::CreateUser { name, email, phone, address, .. } = command {
            if self.exists {
                return Err(CommandError::AlreadyExists { kind: "user", id });
            }
            let event = UserCreated {
                id,
                name: name.trim().to_string(),
                email: email.trim().to_string(),
                phone: phone.trim().to_string(),
                address: address.trim().to_string(),
            };
            return Ok(vec![UsersEvent::UserCreated(event)]);
        }
        if !self.exists {
            return Err(CommandError::NotFound { kind: "user", id });
        }
        if self.deleted {
            return Err(deleted(&id));
        }
        let event = match command {
            UsersCommand::CreateUser { .. } => unreachable!("handled above"),
            UsersCommand::UpdateProfile { name, address, .. } => UsersEvent::UserProfileUpdated(UserProfileUpdated {
                id,
                name: name.trim().to_string(),
                address: address.trim().to_string(),
            }),
            UsersCommand::UpdateContact { email, phone, .. } => UsersEvent::UserContactUpdated(UserContactUpdated {
                id,
                email: email.trim().to_string(),
                phone: phone.trim().to_string(),
            }),
            UsersCommand::DeleteUser { .. } => UsersEvent::UserDeleted(UserDeleted { id }),
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &UsersEvent) {
        match event {
            UsersEvent::UserCreated(e) => {
                *self = User {
                    exists: true,
                    deleted: false,
                    name: e.name.clone(),
                    email: e.email.clone(),
                    phone: e.phone.clone(),
                    address: e.address.clone(),
                }
            }
            UsersEvent::UserProfileUpdated(e) => {
                self.name = e.name.clone();
                self.address = e.address.clone();
            }
            UsersEvent::UserContactUpdated(e) => {
                self.email = e.email.clone();
                self.phone = e.phone.clone();
            }
            UsersEvent::UserDeleted(_) => self.deleted = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(id: &str) -> UsersCommand {
        UsersCommand::CreateUser {
            id: id.into(),
            name: " Ana ".into(),
            email: "ana@example.com".into(),
            phone: String::new(),
            address: String::new(),
        }
    }

    #[test]
    fn a_user_is_created_once_and_a_deleted_one_refuses_commands() {
        let mut user = User::default();
        assert!(matches!(
            user.decide(&UsersCommand::DeleteUser { id: "u1".into() }),
            Err(CommandError::NotFound { .. })
        ));
        for event in user.decide(&create("u1")).unwrap() {
            user.apply(&event);
        }
        assert_eq!(user.name, "Ana");
        assert!(matches!(user.decide(&create("u1")), Err(CommandError::AlreadyExists { .. })));
        for event in user.decide(&UsersCommand::DeleteUser { id: "u1".into() }).unwrap() {
            user.apply(&event);
        }
        let refused =
            user.decide(&UsersCommand::UpdateContact { id: "u1".into(), email: "a@b.co".into(), phone: String::new() });
        assert!(matches!(refused, Err(CommandError::Refused { code: "user_deleted", .. })));
    }
}
