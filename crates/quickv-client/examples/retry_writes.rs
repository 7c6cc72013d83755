//! Exactly-once writes with sessions: the client retries a write whose fate is unknown by itself.
//!
//! ```sh
//! cargo run -p quickv-client --example retry_writes -- 127.0.0.1:4470 certs
//! ```
//!
//! Every write carries this client's session id and a sequence number. If the connection dies
//! after a write was sent, or the backup's ack never comes, or the primary is SIGKILLed and
//! restarted from the backup's data, the client resends the same write with the same stamp until
//! the pair answers — and the pair answers a write it already applied with the original answer
//! instead of applying it twice (docs/client.md, "Sessions and retries"). So an `insert` here
//! ends `Ok` or `Exists` (someone else's key), an `update` `Ok` or `NotFound`, a `delete` the
//! removed value or `NotFound`, even across a primary restart: kill the primary while this runs
//! and start it again within the deadline. Only a deadline that passes before the pair answers
//! leaves a write `Indeterminate`.

use std::time::Duration;

use quickv_client::{Client, ClientConfig, ClientError};

/// Writes this example makes (bounded, like every loop talking to a server).
const WRITES: u32 = 50;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:4470".into());
    let certs = args.next().unwrap_or_else(|| "certs".into());
    let config = ClientConfig::builder(certs)
        // Long enough to ride out a primary restart; retries happen within it.
        .timeout(Duration::from_secs(30))
        .idle_timeout(Duration::from_secs(2))
        .retry_writes(true)
        .build();
    let client = Client::connect(&addr, &config).await?;
    println!("session {:016x}", client.session_id());

    let pid = std::process::id();
    for i in 0..WRITES {
        let key = format!("order:{pid}:{i}");
        // Each call is one write, applied once, whatever happens to the connection meanwhile.
        let inserted = client.insert(key.clone(), "placed").await;
        let updated = client.update(key.clone(), "paid").await;
        let removed = client.delete(key.clone()).await;
        match (inserted, updated, removed) {
            (Ok(()), Ok(()), Ok(old)) if old == "paid" => {}
            (Err(e @ ClientError::Indeterminate(_)), ..)
            | (_, Err(e @ ClientError::Indeterminate(_)), _)
            | (.., Err(e @ ClientError::Indeterminate(_))) => {
                println!("{key}: no definite answer within the deadline: {e}");
            }
            other => println!("{key}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{WRITES} orders placed, paid and removed; {} write attempts were resent",
        client.write_retries()
    );
    client.close().await;
    Ok(())
}
