//! Reads that keep working while the primary is down, and say so.
//!
//! ```sh
//! quickv up                      # a local pair
//! cargo run -p quickv-client --example pair_failover -- 127.0.0.1:4470 127.0.0.1:4471 certs
//! # now stop the primary (Ctrl-C `quickv up` stops both; or kill the primary's process):
//! # the reads go on from the backup, marked "(from the backup: may be stale)".
//! ```
//!
//! Writes always go to the primary; `Client::get` too. Only `Client::read` with
//! `ReadFrom::BackupIfPrimaryDown` may answer from the backup, and its answer names the source.

use std::time::Duration;

use quickv_client::{Client, ClientConfig, ClientError, ReadFrom, Source};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let primary = args.next().unwrap_or_else(|| "127.0.0.1:4470".into());
    let backup = args.next().unwrap_or_else(|| "127.0.0.1:4471".into());
    let certs = args.next().unwrap_or_else(|| "certs".into());

    let config = ClientConfig::builder(certs)
        .read_from(ReadFrom::BackupIfPrimaryDown)
        // Notice a dead primary within about a second.
        .idle_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3))
        .build();
    let client = Client::connect_pair(&primary, &backup, &config).await?;
    match client
        .insert("failover-demo", "written through the primary")
        .await
    {
        Ok(()) | Err(ClientError::Exists) => {}
        Err(e) => eprintln!("write refused: {e}"),
    }

    // Ten reads, one a second (bounded): stop the primary meanwhile to see the fallback.
    for _ in 0..10 {
        match client.read("failover-demo").await {
            Ok(read) => {
                let value = read
                    .value
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_else(|| "<absent>".into());
                match read.from {
                    Source::Primary => println!("{value}"),
                    Source::Backup => println!("{value} (from the backup: may be stale)"),
                }
            }
            Err(e) => println!("no answer: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    client.close().await;
    Ok(())
}
