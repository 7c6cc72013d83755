//! The client library and the CLI from an application's side, against real `quickv` processes
//! (real QUIC, real mutual TLS, SIGKILL/SIGSTOP): pair failover reads, deadlines, cancellation,
//! batches, and values/keys of any bytes through the CLI.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quickv_client::protocol::Reply;
use quickv_client::{Client, ClientConfig, ClientError, ReadFrom, Source};

use common::{bin, free_addr, fresh_certs, Pair, ServerProc, Stopped};

/// A client that notices a dead server within about a second.
fn quick_config(certs: &Path, read_from: ReadFrom) -> ClientConfig {
    ClientConfig::builder(certs)
        .idle_timeout(Duration::from_millis(900))
        .connect_timeout(Duration::from_millis(900))
        .timeout(Duration::from_secs(8))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .read_from(read_from)
        .build()
}

#[tokio::test]
async fn pair_client_reads_from_the_backup_only_when_allowed_and_says_so() {
    let mut pair = Pair::start(&[]).await;
    let (p, b) = (pair.primary_addr.to_string(), pair.backup_addr.to_string());
    let certs = pair.certs.path().to_path_buf();

    // The addresses swapped: refused in words, not silently writing to the backup.
    let swapped = Client::connect_pair(&b, &p, &quick_config(&certs, ReadFrom::Primary)).await;
    match swapped {
        Err(ClientError::Connection(msg)) => assert!(msg.contains("order"), "{msg}"),
        other => panic!("swapped addresses accepted: {other:?}"),
    }

    let fallback =
        Client::connect_pair(&p, &b, &quick_config(&certs, ReadFrom::BackupIfPrimaryDown))
            .await
            .expect("connect pair");
    let strict = Client::connect_pair(&p, &b, &quick_config(&certs, ReadFrom::Primary))
        .await
        .expect("connect pair");
    fallback.insert("k", "v1").await.expect("insert");
    let read = fallback.read("k").await.expect("read");
    assert_eq!(read.value.as_deref(), Some(&b"v1"[..]));
    assert_eq!(read.from, Source::Primary);
    assert_eq!(strict.read("k").await.expect("read").from, Source::Primary);

    // The pair as the client sees it.
    assert!(fallback.status().await.expect("status").is_primary());
    let backup_status = fallback.backup_status().await.expect("backup status");
    let backup_status = backup_status.expect("a pair client knows its backup");
    assert!(backup_status.is_backup());
    assert_eq!(backup_status.current(), Some(true));

    pair.kill_primary();

    // Opted in: the backup answers, and says it is the backup.
    let read = fallback.read("k").await.expect("read falls back");
    assert_eq!(read.from, Source::Backup);
    assert_eq!(read.value.as_deref(), Some(&b"v1"[..]));
    let missing = fallback.read("absent").await.expect("read falls back");
    assert_eq!((missing.value, missing.from), (None, Source::Backup));
    // `get` is the linearizable read: never from the backup.
    assert!(
        fallback.get("k").await.is_err(),
        "get answered without a primary"
    );
    // Writes never go to the backup.
    match fallback.insert("k2", "x").await {
        Err(ClientError::Connection(_) | ClientError::Indeterminate(_)) => {}
        other => panic!("a write without a primary: {other:?}"),
    }
    // Not opted in: an error, never a backup answer.
    for _ in 0..3 {
        match strict.read("k").await {
            Err(ClientError::Connection(_) | ClientError::Timeout(_)) => {}
            other => panic!("strict read without a primary gave {other:?}"),
        }
    }

    // The primary comes back (taking the backup's data): the client finds it by itself.
    pair.start_primary();
    pair.wait_sync().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let read = fallback.read("k").await.expect("read");
        assert_eq!(read.value.as_deref(), Some(&b"v1"[..]));
        if read.from == Source::Primary {
            break;
        }
        assert!(Instant::now() < deadline, "never went back to the primary");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fallback
        .insert("k3", "after")
        .await
        .expect("write after reconnect");
    assert_eq!(
        strict.read("k3").await.expect("strict read").from,
        Source::Primary
    );
}

#[tokio::test]
async fn backup_reads_are_refused_while_the_backup_is_not_current() {
    // A backup that never synced (its primary never ran) holds nothing trustworthy.
    let certs = fresh_certs();
    let (p, b) = (free_addr(), free_addr());
    let _backup = ServerProc::start("backup", b, certs.path(), &["--peer", &p.to_string()]);
    let client = Client::connect_pair(
        &p.to_string(),
        &b.to_string(),
        &quick_config(certs.path(), ReadFrom::BackupIfPrimaryDown),
    )
    .await
    .expect("a pair client may start on the backup when backup reads are allowed");
    match client.read("k").await {
        Err(ClientError::Unavailable(msg)) => assert!(msg.contains("current"), "{msg}"),
        other => panic!("read from a backup that is not current: {other:?}"),
    }
    // Without the opt-in, an unreachable primary is a connect error.
    let strict = Client::connect_pair(
        &p.to_string(),
        &b.to_string(),
        &quick_config(certs.path(), ReadFrom::Primary),
    )
    .await;
    assert!(
        matches!(strict, Err(ClientError::Connection(_))),
        "{strict:?}"
    );
}

#[tokio::test]
async fn deadline_fires_on_a_stopped_server_and_the_client_carries_on() {
    let (_certs, server, client, before) = common::standalone_with_client(|certs| {
        ClientConfig::builder(certs)
            .streams(1)
            .timeout(Duration::from_millis(300))
            .build()
    })
    .await;

    let pid = server.child.id();
    let resume = Stopped::stop(pid);
    // A read past its deadline times out; a write past its deadline may have been applied.
    assert!(
        matches!(client.get("k").await, Err(ClientError::Timeout(_))),
        "read on a stopped server"
    );
    match client.update("k", "w").await {
        Err(ClientError::Indeterminate(msg)) => assert!(msg.contains("deadline"), "{msg}"),
        other => panic!("write on a stopped server: {other:?}"),
    }
    // A shorter deadline for one call, on the same connection.
    assert!(matches!(
        client.with_timeout(Duration::from_millis(50)).count().await,
        Err(ClientError::Timeout(_))
    ));
    // The cancelled calls hold no slot.
    assert_eq!(client.in_flight(), 0);
    drop(resume);

    // The late answers to the cancelled calls arrive and are discarded; the same connection
    // serves on (no reconnection: the server counted no new connection).
    for _ in 0..20 {
        assert!(client.get("k").await.expect("get after SIGCONT").is_some());
    }
    let after = client.status().await.expect("status");
    assert_eq!(
        after.connections_total, before,
        "the client had to reconnect"
    );
}

#[tokio::test]
async fn a_dropped_call_frees_its_slot_and_does_not_disturb_the_client() {
    let (_certs, server, client, before) = common::standalone_with_client(|certs| {
        ClientConfig::builder(certs).streams(2).no_timeout().build()
    })
    .await;

    let pid = server.child.id();
    let resume = Stopped::stop(pid);
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    c.get("k").await.map(|_| ())
                } else {
                    c.update("k", format!("v{i}")).await
                }
            })
        })
        .collect();
    // Wait (bounded) until all eight are written and waiting for the stopped server.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.in_flight() < 8 {
        assert!(Instant::now() < deadline, "calls never went out");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for call in &calls {
        call.abort();
    }
    for call in calls {
        assert!(call.await.expect_err("aborted").is_cancelled());
    }
    assert_eq!(client.in_flight(), 0, "dropped calls still hold slots");
    drop(resume);

    for _ in 0..20 {
        client.ping("p").await.expect("ping after SIGCONT");
    }
    assert_eq!(
        client.status().await.expect("status").connections_total,
        before,
        "the late answers broke the connection"
    );
}

#[tokio::test]
async fn batches_answer_per_item_in_order() {
    let certs = fresh_certs();
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let client = server.client().await;
    client.insert("dup", "old").await.expect("insert");

    let pairs: Vec<(String, String)> = (0..500)
        .map(|i| (format!("key{i}"), format!("value{i}")))
        .chain([("dup".to_string(), "new".to_string())])
        .collect();
    let inserted = client.insert_many(pairs.clone()).await;
    assert_eq!(inserted.len(), 501);
    assert!(inserted[..500].iter().all(Result::is_ok), "{inserted:?}");
    assert_eq!(inserted[500], Err(ClientError::Exists));

    let keys: Vec<String> = (0..500)
        .rev()
        .map(|i| format!("key{i}"))
        .chain(["missing".to_string(), "dup".to_string()])
        .collect();
    let values = client.get_many(keys.clone()).await;
    assert_eq!(values.len(), keys.len());
    for (i, v) in (0..500).rev().zip(&values) {
        assert_eq!(v, &Ok(Some(Bytes::from(format!("value{i}")))));
    }
    assert_eq!(values[500], Ok(None));
    assert_eq!(values[501], Ok(Some(Bytes::from("old"))));

    let replies = client
        .pipeline()
        .update("key1", "changed")
        .update("nope", "x")
        .delete("key2")
        .delete("key2-gone")
        .get("key1")
        .insert("key3", "again")
        .run()
        .await;
    assert_eq!(
        replies,
        vec![
            Ok(Reply::Ok),
            Ok(Reply::NotFound),
            Ok(Reply::Value(Bytes::from("value2"))),
            Ok(Reply::NotFound),
            Ok(Reply::Value(Bytes::from("changed"))),
            Ok(Reply::Exists),
        ]
    );
    assert_eq!(client.count().await.expect("count"), 500);
}

/// Runs the CLI with `stdin` bytes; returns (exit code, stdout bytes, stderr).
fn cli_bytes(server: &ServerProc, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = Command::new(bin())
        .args(["--server", &server.addr.to_string(), "--certs"])
        .arg(&server.certs)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quickv");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        // The CLI may exit without reading (usage errors): a broken pipe is fine then.
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait quickv");
    feeder.join().expect("stdin feeder");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// 16 MiB of bytes that are not UTF-8 (every byte value, in a varying pattern).
fn big_value() -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..16 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn cli_moves_a_16_mib_value_from_stdin_and_from_a_file_byte_exact() {
    let certs = fresh_certs();
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let value = big_value();
    assert!(std::str::from_utf8(&value).is_err());

    let (code, _, err) = cli_bytes(&server, &["insert", "big", "-"], &value);
    assert_eq!(code, 0, "insert from stdin: {err}");
    let (code, out, err) = cli_bytes(&server, &["get", "big", "--raw"], b"");
    assert_eq!(code, 0, "{err}");
    assert!(
        out == value,
        "stdin value changed on the way ({} bytes back)",
        out.len()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("value.bin");
    let mut reversed = value.clone();
    reversed.reverse();
    std::fs::write(&path, &reversed).expect("write value file");
    let path_arg = path.to_str().expect("utf-8 temp path");
    let (code, _, err) = cli_bytes(&server, &["update", "big", "--value-file", path_arg], b"");
    assert_eq!(code, 0, "update from file: {err}");
    let (code, out, err) = cli_bytes(&server, &["get", "big", "--raw"], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out == reversed, "file value changed on the way");
    // The library sees the same bytes.
    let client = server.client().await;
    let stored = client.get("big").await.expect("get").expect("present");
    assert!(stored[..] == reversed[..]);

    // One byte over the limit: a clear error, nothing stored.
    let mut over = value.clone();
    over.push(0);
    let (code, _, err) = cli_bytes(&server, &["insert", "over", "-"], &over);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("longer than"), "{err}");
    assert_eq!(client.get("over").await.expect("get"), None);
    // Both VALUE and --value-file: a usage error.
    let (code, _, err) = cli_bytes(
        &server,
        &["insert", "x", "v", "--value-file", path_arg],
        b"",
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli_bytes(
        &server,
        &["insert", "x", "--value-file", "/nonexistent/v"],
        b"",
    );
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/v"), "{err}");
}

#[tokio::test]
async fn cli_round_trips_keys_and_values_that_are_not_utf8() {
    let certs = fresh_certs();
    let server = ServerProc::start("standalone", free_addr(), certs.path(), &[]);
    let key: &[u8] = &[0xff, 0x00, 0x80, b'k', 0xc3];
    let value: &[u8] = &[0xfe, 0xff, 0x00, b'\n', 0xc0, 0x80];

    let (code, _, err) = cli_bytes(&server, &["insert", "--key-hex", "FF00806bc3", "-"], value);
    assert_eq!(code, 0, "{err}");
    // The library finds exactly these bytes under exactly that key.
    let client = server.client().await;
    let got = client.get(Bytes::from_static(key)).await.expect("get");
    assert_eq!(got.as_deref(), Some(value));

    let (code, out, err) = cli_bytes(&server, &["get", "--key-hex", "ff00806bc3", "--raw"], b"");
    assert_eq!((code, out.as_slice()), (0, value), "{err}");
    let (code, out, _) = cli_bytes(&server, &["get", "--key-hex", "ff00806bc3", "--hex"], b"");
    assert_eq!((code, out), (0, b"feff000ac080\n".to_vec()));
    // Plain output says on stderr that it cannot show the value as text.
    let (code, _, err) = cli_bytes(&server, &["get", "--key-hex", "ff00806bc3"], b"");
    assert_eq!(code, 0);
    assert!(err.contains("not UTF-8"), "{err}");

    let (code, out, err) = cli_bytes(
        &server,
        &["delete", "--key-hex", "ff00806bc3", "--raw"],
        b"",
    );
    assert_eq!((code, out.as_slice()), (0, value), "{err}");
    assert_eq!(client.count().await.expect("count"), 0);

    for bad in ["f", "zz", "0g"] {
        let (code, _, err) = cli_bytes(&server, &["get", "--key-hex", bad], b"");
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("--key-hex"), "{err}");
    }
    // A UTF-8 key still works as before, and an absent key is a refusal (exit 1).
    let (code, _, _) = cli_bytes(&server, &["insert", "plain", "text value"], b"");
    assert_eq!(code, 0);
    let (code, out, _) = cli_bytes(&server, &["get", "plain"], b"");
    assert_eq!((code, out), (0, b"text value\n".to_vec()));
    let (code, _, _) = cli_bytes(&server, &["get", "absent"], b"");
    assert_eq!(code, 1);
}

#[tokio::test]
async fn a_lost_server_is_redialled_with_backoff_and_found_again() {
    let certs = fresh_certs();
    let addr = free_addr();
    let mut server = ServerProc::start("standalone", addr, certs.path(), &[]);
    let config = ClientConfig::builder(certs.path())
        .idle_timeout(Duration::from_millis(900))
        .connect_timeout(Duration::from_millis(500))
        .backoff(Duration::from_millis(300), Duration::from_millis(600))
        .timeout(Duration::from_secs(5))
        .build();
    let client = Client::connect(&addr.to_string(), &config)
        .await
        .expect("connect");
    client.insert("k", "v").await.expect("insert");
    server.kill();

    // Calls fail in words; between two dials (the backoff) they fail at once, saying when the
    // next attempt is, instead of each waiting for another connect timeout.
    let mut paced = false;
    for _ in 0..20 {
        match client.get("k").await {
            Err(ClientError::Connection(msg)) if msg.contains("next attempt in") => {
                paced = true;
                break;
            }
            Err(ClientError::Connection(_) | ClientError::Timeout(_)) => {}
            other => panic!("get from a killed server: {other:?}"),
        }
    }
    assert!(paced, "no call was refused by the backoff");

    // The server comes back on the same address (empty: it keeps nothing across a kill); the
    // same client finds it by itself.
    let _server = ServerProc::start("standalone", addr, certs.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client.get("k").await {
            Ok(value) => {
                assert_eq!(value, None, "a fresh standalone server holds nothing");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never reconnected: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .insert("k", "again")
        .await
        .expect("write after reconnect");
    // A single-server client's `read` is the primary's answer.
    let read = client.read("k").await.expect("read");
    assert_eq!(
        (read.value.as_deref(), read.from),
        (Some(&b"again"[..]), Source::Primary)
    );
}
