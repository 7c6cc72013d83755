//! The client subcommands (`insert`, `get`, `status`, …): one connection, one request, the answer
//! printed.

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;

use super::args::{Command, ReadArgs, WriteArgs};
use super::print_status;
use quickv_client::{Client, ClientConfig, ClientError};
use quickv_proto::Limits;

pub(super) async fn client_command(
    server: &str,
    certs: PathBuf,
    command: Command,
) -> anyhow::Result<()> {
    // One request per invocation: one stream is enough.
    let mut config = ClientConfig::new(&certs);
    config.streams = 1;
    let client = Client::connect(server, &config)
        .await
        .with_context(|| format!("cannot reach {server}"))?;
    let shown = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    match command {
        Command::Insert(args) => {
            let (key, value) = args.key_and_value(&config.limits)?;
            client.insert(key, value).await?
        }
        Command::Update(args) => {
            let (key, value) = args.key_and_value(&config.limits)?;
            client.update(key, value).await?
        }
        Command::Delete(args) => {
            match client.delete(parse_key(&args.key, args.key_hex)?).await {
                Ok(old) => print_value(&old, &args)?,
                // Deleted (by an earlier attempt): a success without the value.
                Err(e) if e.took_effect() => eprintln!("{e}"),
                Err(e) => return Err(e.into()),
            }
        }
        Command::Get(args) => match client.get(parse_key(&args.key, args.key_hex)?).await? {
            Some(v) => print_value(&v, &args)?,
            None => return Err(ClientError::NotFound.into()),
        },
        Command::Count => say!("{}", client.count().await?),
        Command::Dump => {
            let map: serde_json::Map<String, serde_json::Value> = client
                .dump()
                .await?
                .iter()
                .map(|(k, v)| (shown(k), serde_json::Value::String(shown(v))))
                .collect();
            say!("{}", serde_json::to_string_pretty(&map)?);
        }
        Command::Status { json } => {
            if json {
                // The document as sent, fields this version does not know included.
                let status = client.status_json().await?;
                say!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&client.status().await?);
            }
        }
        Command::Ping => {
            let started = std::time::Instant::now();
            client.ping(Bytes::from_static(b"ping")).await?;
            say!(
                "pong from {} in {:?}",
                client.server_info(),
                started.elapsed()
            );
        }
        Command::Shutdown => {
            client.shutdown().await?;
            say!("{server} is shutting down");
        }
        Command::Up(_)
        | Command::Server(_)
        | Command::Certs(_)
        | Command::Test(_)
        | Command::Bench(_) => {}
    }
    client.close().await;
    Ok(())
}

impl WriteArgs {
    /// The key and the value, wherever they come from.
    fn key_and_value(&self, limits: &Limits) -> anyhow::Result<(Bytes, Bytes)> {
        let key = parse_key(&self.key, self.key_hex)?;
        let value = match (&self.value, &self.value_file) {
            (_, Some(path)) => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("cannot open the value file {}", path.display()))?;
                read_value(file, limits.max_value)
                    .with_context(|| format!("cannot read the value file {}", path.display()))?
            }
            (Some(v), None) if v == "-" => read_value(std::io::stdin().lock(), limits.max_value)
                .context("cannot read the value from stdin")?,
            (Some(v), None) => Bytes::from(v.clone().into_bytes()),
            (None, None) => anyhow::bail!("give a VALUE, `-` for stdin, or --value-file PATH"),
        };
        Ok((key, value))
    }
}

/// Reads a whole value, refusing one longer than `max` bytes without holding more than that.
fn read_value(source: impl std::io::Read, max: usize) -> anyhow::Result<Bytes> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    let cap = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    source.take(cap).read_to_end(&mut buf)?;
    if buf.len() > max {
        anyhow::bail!("the value is longer than {max} bytes, the largest value quickv accepts");
    }
    Ok(Bytes::from(buf))
}

/// A key from the command line: its UTF-8 bytes, or hexadecimal with `--key-hex`.
fn parse_key(key: &str, hex: bool) -> anyhow::Result<Bytes> {
    if !hex {
        return Ok(Bytes::from(key.to_owned().into_bytes()));
    }
    let digits = key.as_bytes();
    let nibble = |c: u8| -> anyhow::Result<u8> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => anyhow::bail!("--key-hex: {key:?} is not hexadecimal"),
        }
    };
    let bytes = digits
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Ok((nibble(*hi)? << 4) | nibble(*lo)?),
            _ => anyhow::bail!("--key-hex: {key:?} has an odd number of hex digits"),
        })
        .collect::<anyhow::Result<Vec<u8>>>()?;
    Ok(Bytes::from(bytes))
}

/// Prints a value as asked: raw bytes, hexadecimal, or text with a newline (a value that is not
/// UTF-8 is then shown with replacement characters, and stderr says so).
fn print_value(value: &Bytes, args: &ReadArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if args.raw {
        out.write_all(value)?;
    } else if args.hex {
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(out, "{hex}")?;
    } else {
        if std::str::from_utf8(value).is_err() {
            eprintln!("quickv: the value is not UTF-8; shown lossily (use --raw or --hex)");
        }
        out.write_all(String::from_utf8_lossy(value).as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
