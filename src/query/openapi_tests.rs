//! `docs/openapi.json` against the code: every route of `app()` is in it and every path in it is
//! a route; and a property test that fuzzes every endpoint from it against `app()` served on a
//! real socket: no 5xx but the documented 503s, no hang past the request's deadline, every error
//! a JSON body with a documented `code`, every status documented for its path.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::Value;

use super::tests::{fixture, get};
use super::{app, OPENAPI};
use crate::config::QuerySettings;
use crate::coordination::assignor::PartitionOwners;
use crate::engine::Role;

fn doc() -> Value {
    serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON")
}

/// The paths `app()` routes, read from its source (`.route("...", ...)` calls).
fn routes_in_code() -> BTreeSet<String> {
    let src = include_str!("mod.rs");
    src.split(".route(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_path_is_routed() {
    let doc = doc();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    let code = routes_in_code();
    assert!(code.len() >= 8, "found routes: {code:?}");
    assert_eq!(
        code, documented,
        "routes of app() vs paths of docs/openapi.json"
    );
    // Documented paths really answer (nothing falls through to route_not_found).
    let f = fixture(Role::Active, true);
    for path in &documented {
        let (_, body) = get(&f.state, &path.replace("{id}", "O-000001"), false).await;
        assert_ne!(body["code"], "route_not_found", "{path}");
    }
    let (status, served) = get(&f.state, "/openapi.json", false).await;
    assert_eq!((status, &served), (axum::http::StatusCode::OK, &doc));
}

/// One generated request: endpoint index, method, id, and per parameter a choice.
#[derive(Debug, Clone)]
struct Case {
    path: usize,
    method: &'static str,
    id: String,
    /// Per documented parameter: 0 absent, 1 valid from its schema, 2 junk.
    choices: Vec<(u8, u32, String)>,
    extra: Option<(String, String)>,
}

fn case() -> impl Strategy<Value = Case> {
    let id = prop_oneof![
        Just("O-000001".to_owned()),
        "O-[0-9]{6}",
        ".{0,300}",
        "[%/?#&= \\\\]{1,8}",
    ];
    (
        0usize..64,
        prop_oneof![8 => Just("GET"), 1 => Just("POST"), 1 => Just("DELETE")],
        id,
        proptest::collection::vec((0u8..3, any::<u32>(), ".{0,12}"), 5),
        proptest::option::weighted(0.1, ("[a-z_]{1,8}", ".{0,8}")),
    )
        .prop_map(|(path, method, id, choices, extra)| Case {
            path,
            method,
            id,
            choices,
            extra,
        })
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A valid value of `schema` (enum member, integer in range, boolean), picked by `pick`.
fn valid(schema: &Value, pick: u32) -> String {
    if let Some(options) = schema["enum"].as_array() {
        return options[pick as usize % options.len()]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    match schema["type"].as_str() {
        Some("boolean") => (pick % 2 == 1).to_string(),
        Some("integer") => {
            let lo = schema["minimum"].as_u64().unwrap_or(0);
            // Keep long-polls short: the property is about bounds, not patience.
            let hi = schema["maximum"].as_u64().unwrap_or(1_000_000).min(600);
            (lo + u64::from(pick) % (hi - lo + 1)).to_string()
        }
        _ => pick.to_string(),
    }
}

/// The URL path and query of `case` against the documented endpoint it picks.
fn request_of(doc: &Value, case: &Case) -> (String, String, Value) {
    let paths = doc["paths"].as_object().expect("paths");
    let (template, item) = paths.iter().nth(case.path % paths.len()).expect("a path");
    let op = item["get"].clone();
    let path = template.replace("{id}", &encode(&case.id));
    let mut query = Vec::new();
    let params = op["parameters"].as_array().cloned().unwrap_or_default();
    for (param, (choice, pick, junk)) in params
        .iter()
        .filter(|p| p["in"] == "query")
        .zip(&case.choices)
    {
        let name = param["name"].as_str().unwrap_or_default();
        match choice {
            1 => query.push(format!(
                "{name}={}",
                encode(&valid(&param["schema"], *pick))
            )),
            2 => query.push(format!("{name}={}", encode(junk))),
            _ => {}
        }
    }
    if let Some((k, v)) = &case.extra {
        query.push(format!("{}={}", encode(k), encode(v)));
    }
    (path, query.join("&"), op)
}

/// The deadline the server must keep for `query` (what `deadline::deadline_of` computes).
fn deadline_of(query: &str, default: Duration) -> Duration {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("timeout_ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms <= 60_000)
        .map_or(default, Duration::from_millis)
}

fn check(doc: &Value, case: &Case, resp: Answer, op: &Value, deadline: Duration) {
    let Answer {
        status,
        retry_after,
        body,
        elapsed,
    } = resp;
    let codes: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("error codes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        elapsed < deadline + Duration::from_millis(1_000),
        "{case:?}: answered after {elapsed:?} (deadline {deadline:?})"
    );
    let code = body
        .as_ref()
        .and_then(|b| b["code"].as_str().map(str::to_owned));
    if status >= 500 {
        assert_eq!(status, 503, "{case:?}: {status} {body:?}");
        assert!(retry_after, "{case:?}: 503 without Retry-After");
    }
    if status >= 400 && !(status == 503 && op["operationId"] == "getHealth") {
        let code = code.unwrap_or_else(|| panic!("{case:?}: {status} without a JSON code"));
        assert!(
            codes.contains(&code.as_str()),
            "{case:?}: undocumented code {code}"
        );
    }
    let documented = op["responses"]
        .as_object()
        .is_some_and(|r| r.contains_key(&status.to_string()));
    assert!(
        documented,
        "{case:?}: status {status} not documented for it"
    );
}

struct Answer {
    status: u16,
    retry_after: bool,
    body: Option<Value>,
    elapsed: Duration,
}

async fn send(client: &reqwest::Client, method: &str, url: &str) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let started = Instant::now();
    let resp = client
        .request(method, url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    let bytes = resp.bytes().await.expect("body");
    Answer {
        status,
        retry_after,
        body: serde_json::from_slice(&bytes).ok(),
        elapsed: started.elapsed(),
    }
}

#[test]
fn fuzzing_every_documented_endpoint_gives_no_5xx_no_hang_and_json_errors() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let doc = doc();
    let mut f = fixture(Role::Active, true);
    // Short bounds so a case that must wait (a dead or hung peer) costs little.
    f.state.limits = QuerySettings {
        query_timeout: Duration::from_millis(400),
        peer_timeout: Duration::from_millis(150),
        ..QuerySettings::default()
    };
    let own = paystream_topology::partition_for_key(b"O-000001", 12);
    let (addr, hung) = rt.block_on(async {
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hung_addr = hung.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = hung.accept().await {
                held.push(s);
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        f.state.self_addr = addr.to_string();
        let router = app(f.state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (addr, hung_addr)
    });
    // Other partitions: a dead active and a hung standby.
    f.state.routing.update(
        1,
        (0..12)
            .map(|p| {
                let owners = if p == own {
                    PartitionOwners {
                        active: addr.to_string(),
                        standbys: vec![],
                    }
                } else {
                    PartitionOwners {
                        active: "127.0.0.1:9".into(),
                        standbys: vec![hung.clone()],
                    }
                };
                (p, owners)
            })
            .collect(),
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let default = f.state.limits.query_timeout;
    let config = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(case in case())| {
        let (path, query, op) = request_of(&doc, &case);
        let url = if query.is_empty() {
            format!("http://{addr}{path}")
        } else {
            format!("http://{addr}{path}?{query}")
        };
        let answer = rt.block_on(send(&client, case.method, &url));
        check(&doc, &case, answer, &op, deadline_of(&query, default));
    });
}
