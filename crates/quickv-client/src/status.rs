//! [`Status`]: the server's status document, typed.

use serde::Deserialize;

/// The server's `status` document (docs/operations.md lists every field).
///
/// The fields every server sends are typed; the replication fields are `None` on a standalone
/// server. Fields this client version does not know are still there: index the status by name
/// (`status["lanes"]`) or take the whole document with [`Status::raw`].
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let certs_dir = std::path::Path::new("certs");
/// # let (addr, primary_addr, backup_addr) = ("127.0.0.1:4470", "127.0.0.1:4470", "127.0.0.1:4471");
/// use quickv_client::{Client, ClientConfig};
///
/// let client = Client::connect(&addr, &ClientConfig::new(certs_dir)).await?;
/// client.insert("a", "1").await?;
/// let status = client.status().await?;
/// assert_eq!(status.role, "standalone");
/// assert_eq!(status.keys, 1);
/// assert_eq!(status.current, None); // no replication on a standalone server
/// assert_eq!(status["keys"], 1);    // the raw document, by field name
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// `primary`, `backup` or `standalone`.
    pub role: String,
    /// Replication state (`cold_start`, `warm_start`, `bootstrap`, `sync`, `shutting_down`), or
    /// `serving` on a standalone server.
    pub state: String,
    /// Keys held.
    pub keys: u64,
    /// Address the server listens on.
    #[serde(default)]
    pub listen: String,
    /// The peer's address, if any.
    #[serde(default)]
    pub peer: Option<String>,
    /// The HTTP gateway's address, if any.
    #[serde(default)]
    pub http: Option<String>,
    /// This process's run id (hex); changes on every restart.
    #[serde(default)]
    pub run_id: String,
    /// Server version.
    #[serde(default)]
    pub version: String,
    /// Seconds since start.
    #[serde(default)]
    pub uptime_s: u64,
    /// Client connections open now.
    #[serde(default)]
    pub connections: u64,
    /// Requests served since start.
    #[serde(default)]
    pub requests: u64,
    /// Whether the replication link is up (pairs only).
    #[serde(default)]
    pub link_up: Option<bool>,
    /// Whether this store is known current (pairs only): false right after a restart until the
    /// pair synced. A pair client reads from the backup only while this is true there.
    #[serde(default)]
    pub current: Option<bool>,
    /// Writes sent to the backup and not yet acknowledged (pairs only).
    #[serde(default)]
    pub lag: Option<u64>,
    /// The 32 bucket digests (pairs only); equal on both servers at quiescence.
    #[serde(default)]
    pub digests: Option<Vec<String>>,
    /// The whole document as sent.
    #[serde(skip)]
    raw: serde_json::Value,
}

impl Status {
    /// Parses a status document.
    pub fn from_json(raw: serde_json::Value) -> Result<Status, serde_json::Error> {
        let mut status = Status::deserialize(&raw)?;
        status.raw = raw;
        Ok(status)
    }

    /// The whole document, including fields not typed here.
    pub fn raw(&self) -> &serde_json::Value {
        &self.raw
    }

    /// The whole document, by value.
    pub fn into_raw(self) -> serde_json::Value {
        self.raw
    }

    /// True on the primary of a pair.
    pub fn is_primary(&self) -> bool {
        self.role == "primary"
    }

    /// True on the backup of a pair.
    pub fn is_backup(&self) -> bool {
        self.role == "backup"
    }
}

/// `status["field"]`: a field of the raw document (`Null` if absent).
impl std::ops::Index<&str> for Status {
    type Output = serde_json::Value;

    fn index(&self, field: &str) -> &serde_json::Value {
        &self.raw[field]
    }
}

/// The raw document as compact JSON.
impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.raw)
    }
}
