//! End-to-end tests of the HTTP/JSON gateway and `/metrics`: real server processes (a real pair
//! where replication matters), the tools' HTTP/1.1 client (`tests/common/http.rs`), raw TCP for
//! broken requests, and the strict Prometheus parser of `tests/common/prometheus.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use common::http::{get, post, raw, request, try_send, Response};
use common::prometheus::scrape;
use common::{free_addr, free_tcp_addr, fresh_certs, wait_state, Pair, ServerProc};
use quickv::http::{encode, FORM};

#[tokio::test]
async fn classic_api_end_to_end_on_a_pair_then_shutdown_over_http() {
    let mut pair = Pair::start_with_http(&[]).await;
    let p = pair.primary_http.expect("primary http");
    let b = pair.backup_http.expect("backup http");
    let tricky = "a value & more = 100% +plus \u{2713}";

    let ok = post(p, "/kv/insert", &[("key", "k1"), ("value", tricky)]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, r#"{"success":"true"}"#, "the classic shape");
    let again = post(p, "/kv/insert", &[("key", "k1"), ("value", "x")]).await;
    assert_eq!(again.expect_refusal(), "the key already exists");
    assert_eq!(
        get(p, "/kv/get?key=k1").await.json(),
        json!({"success": "true", "value": tricky})
    );

    let odd_key = "key with spaces/&?=";
    let path = format!("/kv/get?key={}", encode(odd_key));
    post(p, "/kv/insert", &[("key", odd_key), ("value", "v2")]).await;
    assert_eq!(
        get(p, &path).await.json(),
        json!({"success": "true", "value": "v2"})
    );

    let upd = post(p, "/kv/update", &[("key", "k1"), ("value", "updated")]).await;
    assert_eq!(upd.json(), json!({"success": "true"}));
    let missing = post(p, "/kv/update", &[("key", "nope"), ("value", "x")]).await;
    assert_eq!(missing.expect_refusal(), "the key does not exist");
    assert_eq!(
        get(p, "/kv/get?key=nope").await.expect_refusal(),
        "the key does not exist"
    );

    let del = post(p, "/kv/delete", &[("key", odd_key)]).await;
    assert_eq!(del.json(), json!({"success": "true", "value": "v2"}));
    assert_eq!(
        get(p, &path).await.expect_refusal(),
        "the key does not exist"
    );
    let del = post(p, "/kv/delete", &[("key", odd_key)]).await;
    assert_eq!(del.expect_refusal(), "the key does not exist");

    assert_eq!(
        get(p, "/kvman/countkey").await.json(),
        json!({"result": "1"})
    );
    assert_eq!(get(p, "/kvman/dump").await.json(), json!({"k1": "updated"}));
    let status = get(p, "/kvman/status").await.json();
    assert_eq!(status["role"], "primary");
    assert_eq!(status["state"], "sync");
    assert_eq!(status["keys"], 1);
    assert_eq!(status["http"], p.to_string());

    // The backup: it already applied every acknowledged write, serves reads, refuses writes.
    assert_eq!(
        get(b, "/kv/get?key=k1").await.json(),
        json!({"success": "true", "value": "updated"})
    );
    let refused = post(b, "/kv/insert", &[("key", "b1"), ("value", "x")]).await;
    let reason = refused.expect_refusal();
    assert!(
        reason.starts_with("unavailable:") && reason.contains("backup"),
        "{reason}"
    );
    let refused = post(b, "/kv/delete", &[("key", "k1")]).await;
    assert!(refused.expect_refusal().starts_with("unavailable:"));
    assert_eq!(
        get(b, "/kvman/countkey").await.json(),
        json!({"result": "1"})
    );
    assert_eq!(get(b, "/kvman/dump").await.json(), json!({"k1": "updated"}));
    assert_eq!(get(b, "/kvman/status").await.json()["role"], "backup");

    // HTTP and QUIC see the same store.
    let quic = pair.primary_client().await;
    assert_eq!(
        quic.get("k1").await.expect("quic get"),
        Some(Bytes::from("updated"))
    );
    assert_eq!(quic.get("b1").await.expect("quic get"), None);
    pair.assert_converged().await;

    // Shutdown over HTTP: answered, then the process exits cleanly.
    let bye = get(p, "/kvman/shutdown").await;
    assert_eq!(bye.json(), json!({"success": "true"}));
    let primary = pair.primary.as_mut().expect("primary");
    let exit = primary.wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "the primary exited with {exit:?}");
    assert!(
        TcpStream::connect(p).await.is_err(),
        "the gateway's port is closed after shutdown"
    );
}

/// The classic server read parameters as Go's `FormValue` does: from a form body or the query
/// string, whatever the method; classic clients (its tester among them) send `POST /kv/get` with a
/// form body, and writes with the fields in the query string.
#[tokio::test]
async fn parameters_are_read_like_go_form_value() {
    let pair = Pair::start_with_http(&[]).await;
    let p = pair.primary_http.expect("primary http");
    let b = pair.backup_http.expect("backup http");

    // A write with its fields in the query string and no body.
    let ok = request(
        p,
        Method::POST,
        "/kv/insert?key=q&value=from-query",
        None,
        String::new(),
    )
    .await;
    assert_eq!(ok.json(), json!({"success": "true"}));
    // A write with one field in each place.
    let ok = request(
        p,
        Method::POST,
        "/kv/insert?value=mixed",
        Some(FORM),
        "key=m".into(),
    )
    .await;
    assert_eq!(ok.json(), json!({"success": "true"}));
    // The body wins over the query string, as in Go.
    let ok = request(
        p,
        Method::POST,
        "/kv/update?key=q&value=loser",
        Some(FORM),
        "value=winner".into(),
    )
    .await;
    assert_eq!(ok.json(), json!({"success": "true"}));

    // Reads: POST with a form body, POST with a query string, GET with a query string, on both
    // servers.
    for server in [p, b] {
        let read = post(server, "/kv/get", &[("key", "q")]).await;
        assert_eq!(read.json(), json!({"success": "true", "value": "winner"}));
        let read = request(
            server,
            Method::POST,
            "/kv/get?key=m",
            Some(FORM),
            String::new(),
        )
        .await;
        assert_eq!(read.json(), json!({"success": "true", "value": "mixed"}));
        let read = get(server, "/kv/get?key=m").await;
        assert_eq!(read.json(), json!({"success": "true", "value": "mixed"}));
        let missing = post(server, "/kv/get", &[("key", "absent")]).await;
        assert_eq!(missing.expect_refusal(), "the key does not exist");
        assert_eq!(
            post(server, "/kvman/countkey", &[]).await.json(),
            json!({"result": "2"})
        );
        assert_eq!(
            post(server, "/kvman/dump", &[]).await.json(),
            json!({"m": "mixed", "q": "winner"})
        );
    }

    // A GET must not write; a GET's body is not read (as in Go).
    let wrong = get(p, "/kv/insert?key=g&value=1").await;
    assert_eq!(wrong.allow.as_deref(), Some("POST"));
    assert_eq!(wrong.status, 405);
    let ignored = request(p, Method::GET, "/kv/get", Some(FORM), "key=q".into()).await;
    assert!(
        ignored
            .expect_error(400, "bad_request")
            .contains("missing field `key`"),
        "{ignored:?}"
    );
    // A field given twice in one place is refused rather than guessed.
    let twice = post(p, "/kv/get", &[("key", "q"), ("key", "m")]).await;
    assert!(twice
        .expect_error(400, "bad_request")
        .contains("more than once"));
}

#[tokio::test]
async fn with_the_backup_killed_writes_are_refused_with_a_reason_and_reads_served() {
    let mut pair = Pair::start_with_http(&[]).await;
    let p = pair.primary_http.expect("primary http");
    assert_eq!(
        post(p, "/kv/insert", &[("key", "a"), ("value", "1")])
            .await
            .json(),
        json!({"success": "true"})
    );
    pair.kill_backup();
    wait_state(pair.primary_addr, pair.certs.path(), "cold_start").await;

    let before = scrape(p).await;
    for (path, fields) in [
        ("/kv/insert", vec![("key", "b"), ("value", "2")]),
        ("/kv/update", vec![("key", "a"), ("value", "9")]),
        ("/kv/delete", vec![("key", "a")]),
    ] {
        let reason = post(p, path, &fields).await.expect_refusal();
        assert!(
            reason.starts_with("unavailable:") && reason.contains("not in sync"),
            "{path}: {reason}"
        );
    }
    assert_eq!(
        get(p, "/kv/get?key=a").await.json(),
        json!({"success": "true", "value": "1"}),
        "reads are still served, and the refused update never took effect"
    );
    assert_eq!(
        get(p, "/kv/get?key=b").await.expect_refusal(),
        "the key does not exist",
        "a refused insert never takes effect"
    );
    assert_eq!(
        get(p, "/kvman/countkey").await.json(),
        json!({"result": "1"})
    );

    let after = scrape(p).await;
    for op in ["insert", "update", "delete"] {
        let delta = after.value("quickv_ops_total", &[("op", op), ("result", "unavailable")])
            - before.value("quickv_ops_total", &[("op", op), ("result", "unavailable")]);
        assert_eq!(delta, 1.0, "{op}");
    }
    assert_eq!(
        after.value("quickv_replication_state", &[("state", "cold_start")]),
        1.0
    );
    assert_eq!(
        after.value("quickv_replication_state", &[("state", "sync")]),
        0.0
    );
    assert_eq!(after.sum("quickv_replication_state"), 1.0, "one-hot");
    assert_eq!(after.value("quickv_replication_link_up", &[]), 0.0);
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_json_errors_and_the_server_carries_on() {
    let certs = fresh_certs();
    let http = free_tcp_addr();
    let http_arg = http.to_string();
    let mut server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &[
            "--http",
            &http_arg,
            "--max-key",
            "64",
            "--max-value",
            "1024",
        ],
    );
    let mut four_xx = 0.0;
    let mut expect = |answer: Response, status: u16, code: &str| -> String {
        four_xx += 1.0;
        answer.expect_error(status, code)
    };

    let r = expect(get(http, "/kv/get?key=%zz").await, 400, "bad_request");
    assert!(r.contains("percent escape"), "{r}");
    let r = expect(get(http, "/kv/get").await, 400, "bad_request");
    assert!(r.contains("missing field `key`"), "{r}");
    let r = expect(get(http, "/kv/get?key=a&key=b").await, 400, "bad_request");
    assert!(r.contains("more than once"), "{r}");
    let r = expect(
        post(http, "/kv/insert", &[("key", "k")]).await,
        400,
        "bad_request",
    );
    assert!(r.contains("missing field `value`"), "{r}");
    let bad_body = request(
        http,
        Method::POST,
        "/kv/delete",
        Some(FORM),
        "key=%4".into(),
    )
    .await;
    expect(bad_body, 400, "bad_request");
    let text = request(
        http,
        Method::POST,
        "/kv/delete",
        Some("text/plain"),
        "key=a".into(),
    )
    .await;
    expect(text, 415, "unsupported_media_type");

    let wrong = get(http, "/kv/insert").await;
    assert_eq!(wrong.allow.as_deref(), Some("POST"));
    expect(wrong, 405, "method_not_allowed");
    let wrong = request(http, Method::PUT, "/kvman/countkey", None, String::new()).await;
    assert_eq!(wrong.allow.as_deref(), Some("GET, POST"));
    expect(wrong, 405, "method_not_allowed");
    expect(get(http, "/kv/nothing").await, 404, "not_found");

    // Limits: the boundary is accepted, one byte more is refused before routing.
    let at_limit = "v".repeat(1024);
    let ok = post(http, "/kv/insert", &[("key", "big"), ("value", &at_limit)]).await;
    assert_eq!(ok.json(), json!({"success": "true"}));
    let over = "v".repeat(1025);
    let r = expect(
        post(http, "/kv/insert", &[("key", "big2"), ("value", &over)]).await,
        413,
        "value_too_large",
    );
    assert!(r.contains("1025") && r.contains("1024"), "{r}");
    let long_key = "k".repeat(65);
    expect(
        post(http, "/kv/update", &[("key", &long_key), ("value", "v")]).await,
        413,
        "key_too_large",
    );
    expect(
        get(http, &format!("/kv/get?key={long_key}")).await,
        413,
        "key_too_large",
    );
    let huge_query = format!("/kv/get?key={}", "q".repeat(3 * 64 + 4096 + 1));
    expect(get(http, &huge_query).await, 414, "too_large");

    // A body declared larger than the cap is refused before it is sent.
    let (status, body) = raw(
        http,
        format!("POST /kv/insert HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    four_xx += 1.0;
    assert_eq!(status, 413, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(doc["error"], "too_large");
    // Not HTTP at all: hyper refuses it (a bare 400, below our JSON layer), nothing breaks.
    let (status, _) = raw(http, b"HELLO THERE\r\n\r\n").await;
    assert_eq!(status, 400);

    // Still serving, with exactly the one accepted write, and every refusal counted.
    assert_eq!(
        get(http, "/kvman/countkey").await.json(),
        json!({"result": "1"})
    );
    let page = scrape(http).await;
    assert_eq!(
        page.value("quickv_http_responses_total", &[("class", "4xx")]),
        four_xx
    );
    assert_eq!(
        page.value("quickv_ops_total", &[("op", "insert"), ("result", "ok")]),
        1.0
    );
    assert_eq!(
        page.sum("quickv_ops_total"),
        2.0,
        "refused requests never reach the router: one insert, one count"
    );
    assert_eq!(page.value("quickv_store_bytes", &[]), (3 + 1024) as f64);
    assert!(page.value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(
        !page
            .samples
            .keys()
            .any(|k| k.starts_with("quickv_replication")),
        "a standalone server has no replication metrics"
    );

    let bye = get(http, "/kvman/shutdown").await;
    assert_eq!(bye.json(), json!({"success": "true"}));
    let exit = server.wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "exited with {exit:?}");
}

#[tokio::test]
async fn the_tls_gateway_demands_a_client_certificate() {
    let certs = fresh_certs();
    let http = free_tcp_addr();
    let http_arg = http.to_string();
    let _server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &["--http", &http_arg, "--http-tls"],
    );
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let dir = certs.path();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.pem")).expect("ca.pem") {
        roots.add(cert.expect("ca cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots.clone())
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("client.pem"))
        .expect("client.pem")
        .collect::<Result<_, _>>()
        .expect("client cert");
    let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).expect("client.key");
    let with_cert = builder()
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    let without_cert = builder().with_no_client_auth();

    let call = |config: rustls::ClientConfig| async move {
        let tcp = TcpStream::connect(http).await.expect("connect");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        try_send(
            tls,
            "localhost",
            Method::GET,
            "/kvman/countkey",
            None,
            String::new(),
        )
        .await
    };
    let answer = call(with_cert)
        .await
        .expect("a client certificate is accepted");
    assert_eq!(answer.json(), json!({"result": "0"}));
    assert!(
        call(without_cert).await.is_err(),
        "a client without a certificate must be refused"
    );
    // Plain HTTP to the TLS port gets nothing useful either.
    let tcp = TcpStream::connect(http).await.expect("connect");
    let plain = try_send(
        tcp,
        "x",
        Method::GET,
        "/kvman/countkey",
        None,
        String::new(),
    )
    .await;
    assert!(plain.is_err(), "{plain:?}");
}
