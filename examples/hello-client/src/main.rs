//! The smallest application of `quickv-client`: insert a key, read it back.
//!
//! ```sh
//! quickv up                                   # in another terminal: a local pair, certs in ./certs
//! cargo run --manifest-path examples/hello-client/Cargo.toml -- 127.0.0.1:4470 certs greeting hello
//! ```
//!
//! Arguments (all optional): the server address (default `127.0.0.1:4470`, the primary of
//! `quickv up`), the certificate directory holding `ca.pem`, `client.pem` and `client.key`
//! (default `certs`), the key (default `greeting`) and the value (default `hello`). Prints
//! `KEY = VALUE` as read back from the server; exits non-zero with the reason if the server refused
//! the insert (the key exists, the backup is down, ...) or could not be reached.

use std::process::ExitCode;

use quickv_client::{Client, ClientConfig, ClientError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:4470".into());
    let certs = args.next().unwrap_or_else(|| "certs".into());
    let key = args.next().unwrap_or_else(|| "greeting".into());
    let value = args.next().unwrap_or_else(|| "hello".into());
    match run(&addr, &certs, key, value).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello-client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(addr: &str, certs: &str, key: String, value: String) -> Result<(), ClientError> {
    let client = Client::connect(addr, &ClientConfig::new(certs)).await?;
    println!("connected to {}", client.server_info());
    client.insert(key.clone(), value).await?;
    let read = client.get(key.clone()).await?;
    client.close().await;
    match read {
        Some(v) => {
            println!("{key} = {}", String::from_utf8_lossy(&v));
            Ok(())
        }
        None => Err(ClientError::Protocol(format!(
            "{key} was inserted but reads as absent"
        ))),
    }
}
