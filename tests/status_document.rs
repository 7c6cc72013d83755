//! The status document from the user's side: real servers (a standalone one and a pair, over
//! QUIC and over the HTTP gateway) are asked for `status`, the answer is read as plain JSON, and
//! its fields are checked against the table in docs/operations.md ("The status document"), which
//! external clients implement from. Both directions: every documented field is there with its
//! documented type, and every field sent is documented. A renamed, dropped or retyped field in
//! the server's `Status` fails here before it reaches a client.

mod common;

use std::collections::BTreeSet;

use serde_json::Value;

use common::http::get;
use common::{free_addr, free_tcp_addr, fresh_certs, Pair, ServerProc};

/// One row of the documented table.
#[derive(Debug)]
struct Field {
    /// `keys`, `certificates.reloads`, `lanes[].offset`.
    path: String,
    /// `integer`, `string or null`, …
    kind: String,
    /// On a pair's servers only.
    pair_only: bool,
}

/// The rows of the table under "## The status document" in docs/operations.md.
fn documented() -> Vec<Field> {
    let doc = include_str!("../docs/operations.md");
    let section = doc
        .split("\n## The status document\n")
        .nth(1)
        .expect("docs/operations.md has a section \"The status document\"");
    let section = section.split("\n## ").next().unwrap_or(section);
    let fields: Vec<Field> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            Field {
                path: cells[1].trim_matches('`').to_string(),
                kind: cells[2].to_string(),
                pair_only: match cells[3] {
                    "pair" => true,
                    "all" => false,
                    other => panic!("row {row}: `on` is {other:?}, not all or pair"),
                },
            }
        })
        .collect();
    assert!(fields.len() > 40, "the table was not found: {fields:?}");
    fields
}

/// Whether `value` has the documented type.
fn has_kind(value: &Value, kind: &str) -> bool {
    kind.split(" or ")
        .flat_map(|k| k.split(", "))
        .any(|k| match k {
            "integer" => value.is_u64(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "object" => value.is_object(),
            "array" => value.is_array(),
            "null" => value.is_null(),
            other => panic!("undocumented type word {other:?} in {kind:?}"),
        })
}

/// The values at `path` (`lanes[].offset` gives one per lane); none when a parent is `null`.
fn values_at<'a>(doc: &'a Value, path: &str) -> Vec<Option<&'a Value>> {
    let mut at = vec![Some(doc)];
    for step in path.split('.') {
        let (name, each) = match step.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (step, false),
        };
        at = at
            .into_iter()
            .flat_map(|v| match v {
                Some(Value::Null) => vec![],
                Some(v) => {
                    let child = v.get(name);
                    match (each, child) {
                        (true, Some(Value::Array(items))) => items.iter().map(Some).collect(),
                        _ => vec![child],
                    }
                }
                None => vec![None],
            })
            .collect();
    }
    at
}

/// Every field path in `doc`, arrays of objects as `name[].field`.
fn paths_in(doc: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    let Value::Object(fields) = doc else { return };
    for (name, value) in fields {
        let path = format!("{prefix}{name}");
        out.insert(path.clone());
        match value {
            Value::Object(_) => paths_in(value, &format!("{path}."), out),
            Value::Array(items) => {
                for item in items {
                    paths_in(item, &format!("{path}[]."), out);
                }
            }
            _ => {}
        }
    }
}

/// Checks one server's document against the table, both ways, and the typed round trip.
fn check(doc: &Value, pair: bool, who: &str) {
    let fields = documented();
    for f in &fields {
        let values = values_at(doc, &f.path);
        if f.pair_only && !pair {
            assert!(
                values.iter().all(Option::is_none),
                "{who}: {} is documented for a pair's servers only, but is sent: {doc}",
                f.path
            );
            continue;
        }
        for v in values {
            let v =
                v.unwrap_or_else(|| panic!("{who}: documented field {} missing: {doc}", f.path));
            assert!(
                has_kind(v, &f.kind),
                "{who}: {} is {v}, documented as {}",
                f.path,
                f.kind
            );
        }
    }
    let mut sent = BTreeSet::new();
    paths_in(doc, "", &mut sent);
    let known: BTreeSet<String> = fields.into_iter().map(|f| f.path).collect();
    let undocumented: Vec<_> = sent.difference(&known).collect();
    assert!(
        undocumented.is_empty(),
        "{who}: fields sent but not in docs/operations.md: {undocumented:?}"
    );

    // The client's typed status holds every field: parsed and written back, the document is the
    // same value (so the type the server fills and the client reads is one and complete).
    let typed: quickv_client::Status = serde_json::from_value(doc.clone()).expect("typed parse");
    assert_eq!(
        serde_json::to_value(&typed).expect("serialise"),
        *doc,
        "{who}: the typed status loses or changes fields"
    );
}

#[tokio::test]
async fn a_standalone_server_sends_the_documented_fields() {
    let certs = fresh_certs();
    let http = free_tcp_addr();
    let http_arg = http.to_string();
    let server = ServerProc::start(
        "standalone",
        free_addr(),
        certs.path(),
        &["--http", &http_arg],
    );
    let client = server.client().await;
    client.insert("k", "v").await.expect("insert");
    let doc = client.status_json().await.expect("status");
    assert_eq!(doc["role"], "standalone");
    assert_eq!(doc["state"], "serving");
    assert_eq!(doc["keys"], 1);
    assert_eq!(doc["http"], http_arg.as_str());
    check(&doc, false, "standalone (QUIC)");
    check(
        &get(http, "/kvman/status").await.json(),
        false,
        "standalone (HTTP)",
    );
    let typed = client.status().await.expect("typed status");
    assert_eq!((typed.keys, typed.replication), (1, None));
}

#[tokio::test]
async fn a_pairs_servers_send_the_documented_fields() {
    let pair = Pair::start_with_http(&[]).await;
    let p = pair.primary_client().await;
    p.insert("k", "v").await.expect("insert");
    for (who, client, http) in [
        ("primary", p, pair.primary_http),
        ("backup", pair.backup_client().await, pair.backup_http),
    ] {
        let doc = client.status_json().await.expect("status");
        assert_eq!(doc["role"], who);
        assert_eq!(doc["state"], "sync");
        assert_eq!(doc["lanes"].as_array().map(Vec::len), Some(32), "{doc}");
        assert!(doc["last_transition"].is_object(), "{doc}");
        check(&doc, true, who);
        let http = http.expect("the pair has gateways");
        check(&get(http, "/kvman/status").await.json(), true, who);
        let typed = client.status().await.expect("typed status");
        let repl = typed.replication.expect("a pair's status");
        assert!(repl.link_up && repl.current, "{repl:?}");
        assert_eq!(repl.digests.len(), 32);
    }
}
