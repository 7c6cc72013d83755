//! The role vocabulary: what a client certificate may do, and how the role rides in its subject
//! (see [`crate::pki`], which re-exports it). Shared by certificate generation (the default
//! client is `admin`) and identity management, below both.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Prefix of the subject's organizational unit that carries a client's role.
pub const ROLE_UNIT_PREFIX: &str = "quickv-role=";

/// What a client may do; each role includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// `get`, `count`, `dump`, `status`, `ping`.
    Read,
    /// `read` + `insert`, `update`, `delete`.
    Write,
    /// `write` + `shutdown`.
    Admin,
}

impl Access {
    /// The lowercase name used on the command line, in certificates and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Access {
    type Err = Error;
    fn from_str(s: &str) -> Result<Access> {
        match s {
            "read" => Ok(Access::Read),
            "write" => Ok(Access::Write),
            "admin" => Ok(Access::Admin),
            other => Err(Error::Config(format!(
                "unknown role {other:?}: pick read, write or admin"
            ))),
        }
    }
}

/// The subject unit that carries `access`.
pub fn role_unit(access: Access) -> String {
    format!("{ROLE_UNIT_PREFIX}{access}")
}
