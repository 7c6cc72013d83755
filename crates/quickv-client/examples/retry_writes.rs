//! What to do with a write whose fate is unknown (`ClientError::Indeterminate`): today's pattern.
//!
//! ```sh
//! cargo run -p quickv-client --example retry_writes -- 127.0.0.1:4470 certs
//! ```
//!
//! A write is indeterminate when the connection died, or its deadline passed, after it was sent:
//! the server may or may not have applied it. Until exactly-once sessions land (docs/client.md,
//! "Sessions"), the application resolves it itself: retry with backoff, and read the key to tell
//! "my earlier attempt was applied" (`Exists` with my value) from "someone else's write"
//! (`Exists` with another value). That is sound only for values unique to this writer, as here.
//!
//! TODO(exactly-once, docs/client.md "Sessions"): with a session id and a sequence number per
//! write, the retry itself returns the original answer and this read-back disappears.

use std::time::Duration;

use quickv_client::{Client, ClientConfig, ClientError};

/// Attempts before giving up (bounded, like every loop talking to a server).
const ATTEMPTS: u32 = 8;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:4470".into());
    let certs = args.next().unwrap_or_else(|| "certs".into());
    let config = ClientConfig::builder(certs)
        .timeout(Duration::from_secs(2))
        .build();
    let client = Client::connect(&addr, &config).await?;

    let key = "order:42";
    let value = format!("paid by pid {}", std::process::id());
    match insert_once(&client, key, &value).await {
        Ok(outcome) => println!("{key}: {outcome}"),
        Err(e) => println!("{key}: gave up: {e}"),
    }
    client.close().await;
    Ok(())
}

/// Inserts `key = value`, turning indeterminate answers into definite ones by retrying and, on
/// `Exists`, reading back whose value is there.
async fn insert_once(client: &Client, key: &str, value: &str) -> Result<&'static str, ClientError> {
    let mut backoff = Duration::from_millis(50);
    let mut uncertain = false;
    for _ in 0..ATTEMPTS {
        match client.insert(key.to_owned(), value.to_owned()).await {
            Ok(()) => return Ok("inserted"),
            Err(ClientError::Exists) => {
                let current = client.get(key.to_owned()).await?;
                return Ok(match current.as_deref() {
                    Some(v) if uncertain && v == value.as_bytes() => {
                        "inserted (by an earlier attempt whose answer was lost)"
                    }
                    _ => "already present with another value",
                });
            }
            // Not applied: safe to retry. Unknown: retry, and remember to read back on Exists.
            Err(ClientError::Unavailable(_) | ClientError::Connection(_)) => {}
            Err(ClientError::Indeterminate(_)) => uncertain = true,
            Err(other) => return Err(other),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    Err(ClientError::Unavailable(format!(
        "no definite answer after {ATTEMPTS} attempts"
    )))
}
