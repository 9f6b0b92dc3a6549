//! Who is asking: the identity and roles carried by the API's token.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    User,
    Manager,
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "User" => Some(Self::User),
            "Manager" => Some(Self::Manager),
            "Admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub email: String,
    pub roles: Vec<Role>,
}

impl Caller {
    pub fn new(email: impl Into<String>, roles: Vec<Role>) -> Self {
        Self {
            email: email.into(),
            roles,
        }
    }

    /// The daemon itself (timers, monitoring, cleanup).
    pub fn system() -> Self {
        Self::new("system", vec![Role::Admin])
    }

    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    /// Manager or Admin.
    pub fn is_manager(&self) -> bool {
        self.roles.contains(&Role::Manager) || self.is_admin()
    }
}
