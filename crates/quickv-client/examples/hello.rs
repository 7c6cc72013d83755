//! Connect, write, read, delete: the four calls most applications need.
//!
//! ```sh
//! quickv up    # in another terminal: a local pair on 127.0.0.1:4470/4471, certificates in ./certs
//! cargo run -p quickv-client --example hello -- 127.0.0.1:4470 certs
//! ```
//!
//! Arguments (optional): the server address (default `127.0.0.1:4470`) and the certificate
//! directory (default `certs`). Exits non-zero with the reason if a call fails.

use std::time::Duration;

use quickv_client::{Client, ClientConfig, ClientError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:4470".into());
    let certs = args.next().unwrap_or_else(|| "certs".into());

    // Defaults plus a 2 s deadline per call.
    let config = ClientConfig::builder(certs)
        .timeout(Duration::from_secs(2))
        .build();
    let client = Client::connect(&addr, &config).await?;
    println!("connected to {}", client.server_info());

    match client.insert("hello", "world").await {
        Ok(()) | Err(ClientError::Exists) => {}
        Err(e) => return Err(e),
    }
    client.update("hello", "quickv").await?;
    if let Some(value) = client.get("hello").await? {
        println!("hello = {}", String::from_utf8_lossy(&value));
    }
    let status = client.status().await?;
    println!(
        "{} holds {} keys (state {})",
        status.role, status.keys, status.state
    );
    let old = client.delete("hello").await?;
    println!("deleted hello (was {})", String::from_utf8_lossy(&old));
    client.close().await;
    Ok(())
}
