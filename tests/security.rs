//! Security end to end, against real `quickv` processes over real QUIC and TLS: client roles on
//! QUIC and on the HTTPS gateway, revocation of a connected client, rotation of the server
//! certificate under a write load (tests/security_reload.rs), and the refusal of an
//! unauthenticated non-loopback gateway.

mod common;

use std::process::Command;

use bytes::Bytes;
use common::identity::{connect_as, http_call, https_config, identity_dir, issue, WAIT};
use common::{bin, cli, free_addr, free_tcp_addr, fresh_certs, ServerProc};

use hyper::Method;
use quickv_client::ClientError;

const ROLES: [&str; 3] = ["read", "write", "admin"];

fn allowed(role: &str, need: &str) -> bool {
    let rank = |r: &str| ROLES.iter().position(|x| *x == r).expect("role");
    rank(role) >= rank(need)
}

/// Checks one write-or-shutdown answer against the role: success when allowed, `forbidden`
/// otherwise. Returns whether it was refused.
fn judge<T: std::fmt::Debug>(
    role: &str,
    need: &str,
    what: &str,
    got: Result<T, ClientError>,
) -> bool {
    if allowed(role, need) {
        assert!(got.is_ok(), "{role} {what}: {got:?}");
        false
    } else {
        match got {
            Err(ClientError::Forbidden(msg)) => {
                assert!(msg.contains(need), "{role} {what}: {msg}");
                true
            }
            other => panic!("{role} {what} must be forbidden, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn each_role_over_quic_gets_exactly_its_operations_and_refusals_change_nothing() {
    let certs = fresh_certs();
    let dir = certs.path();
    for role in ROLES {
        issue(dir, &format!("app-{role}"), role);
    }
    let http = free_tcp_addr();
    let http_arg = http.to_string();
    let mut server = ServerProc::start("standalone", free_addr(), dir, &["--http", &http_arg]);
    let admin = server.client().await;
    for role in ROLES {
        for key in ["u", "d"] {
            admin
                .insert(format!("{key}-{role}"), "orig")
                .await
                .expect("seed");
        }
    }
    let mut refused = 0;
    let mut ids = Vec::new();
    for role in ROLES {
        let id = identity_dir(dir, &format!("app-{role}"));
        let c = connect_as(server.addr, id.path()).await.expect("connect");
        // Reads: every role.
        assert_eq!(
            c.get(format!("u-{role}")).await.expect("get"),
            Some(Bytes::from("orig"))
        );
        assert!(c.count().await.expect("count") >= 6);
        assert!(c.dump().await.expect("dump").len() >= 6);
        assert!(c.status_json().await.expect("status")["role"].is_string());
        c.ping(Bytes::from_static(b"p")).await.expect("ping");
        // Writes.
        let new_key = format!("new-{role}");
        refused += usize::from(judge(
            role,
            "write",
            "insert",
            c.insert(new_key.clone(), "v").await,
        ));
        refused += usize::from(judge(
            role,
            "write",
            "update",
            c.update(format!("u-{role}"), "changed").await,
        ));
        refused += usize::from(judge(
            role,
            "write",
            "delete",
            c.delete(format!("d-{role}")).await,
        ));
        let w = allowed(role, "write");
        assert_eq!(
            admin.get(new_key).await.expect("get").is_some(),
            w,
            "{role}"
        );
        assert_eq!(
            admin.get(format!("u-{role}")).await.expect("get"),
            Some(Bytes::from(if w { "changed" } else { "orig" })),
            "{role}"
        );
        assert_eq!(
            admin.get(format!("d-{role}")).await.expect("get").is_none(),
            w
        );
        // Shutdown, except for admin (last, below).
        if role != "admin" {
            refused += usize::from(judge(role, "admin", "shutdown", c.shutdown().await));
            admin.ping(Bytes::new()).await.expect("still serving");
        }
        c.close().await;
        ids.push(id);
    }
    assert_eq!(refused, 5, "read: 4 refusals, write: 1");

    // The CLI says forbidden and exits 1; an allowed read exits 0.
    let (code, _, err) = cli(server.addr, ids[0].path(), &["insert", "cli-key", "v"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("forbidden"), "{err}");
    let (code, out, err) = cli(server.addr, ids[0].path(), &["get", "u-read"]);
    assert_eq!((code, out.trim()), (0, "orig"), "{err}");
    assert_eq!(admin.get("cli-key").await.expect("get"), None);

    // Counted in status and in /metrics.
    let doc = admin.status_json().await.expect("status");
    assert_eq!(doc["forbidden"], 6, "{doc}");
    let (code, page) = http_call(http, None, Method::GET, "/metrics", "")
        .await
        .expect("metrics");
    assert_eq!(code, 200);
    let forbidden: f64 = page
        .lines()
        .filter(|l| l.starts_with("quickv_ops_total{") && l.contains("result=\"forbidden\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(forbidden, 6.0, "{page}");

    // Admin may shut the server down.
    let c = connect_as(server.addr, ids[2].path())
        .await
        .expect("connect");
    c.shutdown().await.expect("admin shutdown");
    assert!(server.wait_exit(WAIT).success());
}

#[tokio::test]
async fn each_role_over_https_gets_exactly_its_operations_and_refusals_change_nothing() {
    let certs = fresh_certs();
    let dir = certs.path();
    for role in ROLES {
        issue(dir, &format!("web-{role}"), role);
    }
    let http = free_tcp_addr();
    let http_arg = http.to_string();
    let mut server = ServerProc::start(
        "standalone",
        free_addr(),
        dir,
        &["--http", &http_arg, "--http-tls"],
    );
    let admin = server.client().await;
    for role in ROLES {
        for key in ["u", "d"] {
            admin
                .insert(format!("{key}-{role}"), "orig")
                .await
                .expect("seed");
        }
    }
    let mut refused = 0;
    for role in ROLES {
        let cfg = Some(https_config(dir, &format!("web-{role}")));
        let call = |method: Method, path: String, form: String| {
            let cfg = cfg.clone();
            async move {
                http_call(http, cfg, method, &path, &form)
                    .await
                    .expect("https")
            }
        };
        for path in ["/kvman/countkey", "/kvman/dump", "/kvman/status"] {
            let (code, body) = call(Method::GET, path.into(), String::new()).await;
            assert_eq!(code, 200, "{role} {path}: {body}");
        }
        let (code, body) = call(Method::GET, format!("/kv/get?key=u-{role}"), String::new()).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("orig"), "{body}");
        let w = allowed(role, "write");
        for (path, form) in [
            ("/kv/insert", format!("key=new-{role}&value=v")),
            ("/kv/update", format!("key=u-{role}&value=changed")),
            ("/kv/delete", format!("key=d-{role}")),
        ] {
            let (code, body) = call(Method::POST, path.into(), form).await;
            if w {
                assert_eq!(code, 200, "{role} {path}: {body}");
                assert!(
                    body.contains("\"success\":\"true\""),
                    "{role} {path}: {body}"
                );
            } else {
                assert_eq!(code, 403, "{role} {path}: {body}");
                assert!(body.contains("forbidden"), "{body}");
                refused += 1;
            }
        }
        assert_eq!(
            admin
                .get(format!("new-{role}"))
                .await
                .expect("get")
                .is_some(),
            w
        );
        assert_eq!(
            admin.get(format!("u-{role}")).await.expect("get"),
            Some(Bytes::from(if w { "changed" } else { "orig" }))
        );
        assert_eq!(
            admin.get(format!("d-{role}")).await.expect("get").is_none(),
            w
        );
        if role != "admin" {
            let (code, body) = call(Method::GET, "/kvman/shutdown".into(), String::new()).await;
            assert_eq!(code, 403, "{role}: {body}");
            refused += 1;
            admin.ping(Bytes::new()).await.expect("still serving");
        }
    }
    let doc = admin.status_json().await.expect("status");
    assert_eq!(doc["forbidden"].as_u64(), Some(refused), "{doc}");
    assert_eq!(refused, 5);
    let (code, _) = http_call(
        http,
        Some(https_config(dir, "web-admin")),
        Method::GET,
        "/kvman/shutdown",
        "",
    )
    .await
    .expect("admin shutdown");
    assert_eq!(code, 200);
    assert!(server.wait_exit(WAIT).success());
}

#[test]
fn plain_http_on_a_non_loopback_address_is_refused_naming_the_flags() {
    let certs = fresh_certs();
    let out = Command::new(bin())
        .args(["server", "--role", "standalone", "--listen"])
        .arg(free_addr().to_string())
        .arg("--certs")
        .arg(certs.path())
        .args(["--http", "0.0.0.0:0"])
        .output()
        .expect("run server");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--http-tls") && err.contains("--http-insecure"),
        "{err}"
    );
    assert!(err.contains("0.0.0.0"), "{err}");
}
