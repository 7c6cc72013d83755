//! Many requests in flight at once: `insert_many`, `get_many` and a mixed `pipeline`, each with
//! one result per item.
//!
//! ```sh
//! cargo run -p quickv-client --example pipeline -- 127.0.0.1:4470 certs
//! ```

use quickv_client::protocol::Reply;
use quickv_client::{Client, ClientConfig, ClientError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:4470".into());
    let certs = args.next().unwrap_or_else(|| "certs".into());
    let client = Client::connect(&addr, &ClientConfig::new(certs)).await?;

    // 1000 inserts, all queued before the first answer is awaited.
    let pairs = (0..1000).map(|i| (format!("item:{i}"), format!("{}", i * i)));
    let results = client.insert_many(pairs).await;
    let fresh = results.iter().filter(|r| r.is_ok()).count();
    let existed = results
        .iter()
        .filter(|r| matches!(r, Err(ClientError::Exists)))
        .count();
    println!("inserted {fresh}, already present {existed}");
    if let Some(Err(e)) = results
        .iter()
        .find(|r| !matches!(r, Ok(()) | Err(ClientError::Exists)))
    {
        return Err(e.clone());
    }

    // Read some of them back, plus one that does not exist; answers come in the order asked.
    let keys = ["item:3", "item:999", "no-such-item"];
    for (key, value) in keys.iter().zip(client.get_many(keys).await) {
        match value? {
            Some(v) => println!("{key} = {}", String::from_utf8_lossy(&v)),
            None => println!("{key} is absent"),
        }
    }

    // Mixed requests: raw replies, one per request.
    let replies = client
        .pipeline()
        .update("item:1", "one")
        .delete("item:2")
        .get("item:1")
        .run()
        .await;
    for reply in replies {
        match reply? {
            Reply::Value(v) => println!("value {}", String::from_utf8_lossy(&v)),
            other => println!("{other:?}"),
        }
    }
    client.close().await;
    Ok(())
}
