//! The classic harness, the way its users run it: the pair started and stopped through the
//! wrappers in `tests/classic/bin` (`start_server -p|-b` runs a server in the foreground, started
//! "Exec style": launched, never waited for), every operation over the HTTP gateway, each script
//! ended with `/kvman/shutdown` on both servers and the next script's servers started at once, the
//! final dumps of both servers compared with a model; and `quickv up --http`.
//!
//! Ports are free ones handed to the wrappers through their environment variables; the wrappers'
//! defaults (4470/8088, 4471/8089) are for the original tester. The pressure run is in
//! `tests/classic_pressure.rs`.

mod common;
#[path = "classic/kit.rs"]
mod kit;

use std::collections::BTreeMap;

use hyper::Method;

use common::{free_addr, free_tcp_addr};
use kit::{assert_dumps, json, reap, Kit, BACKUP, PRIMARY};

/// The classic harness's loop, 20 times: a short script over HTTP (writes on the primary, reads
/// on both, a restart of one side between its blocks, the final dumps of both), then
/// `/kvman/shutdown` on both and, as soon as both answered, `bin/start_server -p` and `-b` for
/// the next script. Every start must succeed: a server that still held its ports after
/// answering the shutdown makes the next start fail with "address already in use".
#[tokio::test]
async fn shutdown_then_immediate_restart_twenty_times() {
    let kit = Kit::new();
    let mut procs = [kit.start(PRIMARY), kit.start(BACKUP)];
    kit.wait_pair(&mut procs).await;
    let [p, b] = kit.http;
    for round in 0..20 {
        let mut model = BTreeMap::new();
        assert_dumps(&kit, &model, &format!("round {round}, a fresh pair")).await;
        for k in 0..3 {
            let (key, value) = (format!("r{round}-k{k}"), format!("v{round}.{k}"));
            let ok = json(
                p,
                Method::POST,
                "/kv/insert",
                &format!("key={key}&value={value}"),
            )
            .await;
            assert_eq!(ok["success"], "true", "round {round}: insert {key}: {ok}");
            model.insert(key, value);
        }
        // A restart of one side between blocks (alternating), through the wrappers.
        let side = round % 2;
        kit.stop(side);
        let _ = procs[side].wait();
        procs[side] = kit.start(side);
        kit.wait_pair(&mut procs).await;
        for (key, value) in &model {
            for server in [p, b] {
                let read = json(server, Method::POST, "/kv/get", &format!("key={key}")).await;
                assert_eq!(
                    read["value"],
                    value.as_str(),
                    "round {round}: {key} on {server}"
                );
            }
        }
        assert_dumps(&kit, &model, &format!("round {round}, end of script")).await;

        // End of script: shutdown on both (alternating the order), then at once the next
        // script's servers.
        let order = if round % 2 == 0 { [p, b] } else { [b, p] };
        for server in order {
            let bye = json(server, Method::GET, "/kvman/shutdown", "").await;
            assert_eq!(
                bye["success"], "true",
                "round {round}: shutdown of {server}"
            );
        }
        let old = std::mem::replace(&mut procs, [kit.start(PRIMARY), kit.start(BACKUP)]);
        for mut child in old {
            let status = child.wait().expect("wait");
            assert!(
                status.success(),
                "round {round}: a server exited with {status}"
            );
        }
        kit.wait_pair(&mut procs).await;
    }
    kit.stop(PRIMARY);
    kit.stop(BACKUP);
    reap(&mut procs);
}

/// `quickv up --http` (here with explicit addresses, as tests must not use the fixed defaults
/// 8088/8089) gives each child its gateway: a write on the primary's is read on the backup's.
#[tokio::test]
async fn quickv_up_gives_each_server_a_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, b) = (free_addr(), free_addr());
    let (ph, bh) = (free_tcp_addr(), free_tcp_addr());
    let mut up = common::Up::spawn(
        dir.path(),
        &[
            "--primary",
            &p.to_string(),
            "--backup",
            &b.to_string(),
            "--primary-http",
            &ph.to_string(),
            "--backup-http",
            &bh.to_string(),
        ]
        .map(String::from),
    );
    let outcome = async {
        up.wait_line("pair in sync")?;
        let seen = &up.seen;
        if !seen
            .iter()
            .any(|l| l.contains(&format!("http://{ph}")) && l.contains(&format!("http://{bh}")))
        {
            return Err(format!("no gateway line: {seen:?}"));
        }
        let ok = json(ph, Method::POST, "/kv/insert", "key=up&value=gateway").await;
        if ok["success"] != "true" {
            return Err(format!("insert: {ok}"));
        }
        let read = json(bh, Method::POST, "/kv/get", "key=up").await;
        if read["value"] != "gateway" {
            return Err(format!("backup read: {read}"));
        }
        Ok(())
    }
    .await;
    common::signal(up.child.id(), "TERM");
    let status = up.child.wait().expect("wait");
    outcome.expect("quickv up --http");
    assert!(status.success(), "quickv up exit status {status:?}");
}
