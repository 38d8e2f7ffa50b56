//! End-to-end tests: real `tollgate serve` and `tollgate mock` processes,
//! real TCP on loopback, exact bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod auth;
mod ebpf;
mod failover;
mod harness;
mod ledger;
mod tls;

use std::time::{Duration, Instant};

use harness::*;

const BASIC_MODELS: &str = r#"
[[models]]
name = "gpt-4o"
aliases = ["gpt4o", "omni"]
targets = [{ upstream = "mock", model = "gpt-4o-2024-08-06" }]

[[models]]
name = "llama-*"
targets = [{ upstream = "mock" }]

[[models]]
name = "llama-3-70b-special*"
targets = [{ upstream = "mock", model = "special" }]

[[models]]
name = "text-embedding-3-small"
targets = [{ upstream = "mock" }]
"#;

fn basic() -> (Proc, Proc) {
    let m = mock(&[]);
    let g = gateway(&config_for(&m, "", BASIC_MODELS), &[]);
    (m, g)
}

#[test]
fn routes_by_model_with_aliases_globs_and_rewrite() {
    let (_m, g) = basic();
    for (asked, served) in [
        ("gpt-4o", "gpt-4o-2024-08-06"),
        ("gpt4o", "gpt-4o-2024-08-06"),
        ("omni", "gpt-4o-2024-08-06"),
        ("llama-3-8b", "llama-3-8b"),
        ("llama-3-70b-special-v2", "special"),
    ] {
        let r = request(
            g.addr,
            &chat(&format!(
                r#"{{"model":"{asked}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":3}}"#
            )),
        );
        assert_eq!(r.status, 200, "{asked}: {}", r.text());
        // The mock answers with the model it received: the rewrite reached it.
        assert_eq!(r.json()["model"], served, "{asked}");
        assert_eq!(r.header("x-tollgate-model"), Some(served));
        assert_eq!(r.header("x-tollgate-upstream"), Some("mock"));
        assert_eq!(r.json()["usage"]["completion_tokens"], 3);
    }
    // Escaped model name and nested decoy keys.
    let body = r#"{"messages":[{"role":"user","content":"x","model":"nope"}],"model":"gpt\u002d4o","max_tokens":2}"#;
    let r = request(g.addr, &chat(body));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "gpt-4o-2024-08-06");
}

#[test]
fn rewrite_keeps_the_rest_of_the_body_byte_for_byte() {
    let m = mock(&[]);
    let g = gateway(&config_for(&m, "", BASIC_MODELS), &[]);
    // Odd spacing and number formats must reach the upstream unchanged; the
    // mock echoes the request headers, and its usage proves it parsed the
    // messages we sent.
    let body = "{ \"model\" :\t\"gpt-4o\" , \"max_tokens\": 4 , \"temperature\": 1.50, \"messages\": [{\"role\":\"user\",\"content\":\"hello there\"}] }";
    let r = request(
        g.addr,
        &post("/v1/chat/completions", body, "x-mock-echo: 1\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let expected_len = body.len() - "gpt-4o".len() + "gpt-4o-2024-08-06".len();
    assert_eq!(j["mock_echo"]["content-length"], expected_len.to_string());
    let direct = request(m.addr, &chat(&body.replace("gpt-4o", "gpt-4o-2024-08-06")));
    assert_eq!(j["usage"], direct.json()["usage"]);
    assert_eq!(j["choices"], direct.json()["choices"]);
}

#[test]
fn weighted_targets_follow_their_weights() {
    let m = mock(&[]);
    let models = r#"
[[models]]
name = "split"
targets = [
  { upstream = "mock", model = "a", weight = 3 },
  { upstream = "mock", model = "b", weight = 1 },
]
"#;
    let g = gateway(&config_for(&m, "", models), &[]);
    let mut counts = std::collections::HashMap::<String, u32>::new();
    let mut conns: Vec<Conn> = (0..4).map(|_| Conn::open(g.addr)).collect();
    for i in 0..400 {
        let c = &mut conns[i % 4];
        c.send(&chat(r#"{"model":"split","max_tokens":1}"#));
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200);
        *counts
            .entry(r.header("x-tollgate-model").unwrap().to_string())
            .or_default() += 1;
    }
    // Smooth WRR is exact per worker; two workers each drift by at most
    // one cycle, so the split is within 4 of 300/100.
    let a = counts["a"];
    let b = counts["b"];
    assert_eq!(a + b, 400);
    assert!((296..=304).contains(&a), "a={a} b={b}");
}

#[test]
fn upstream_key_is_injected_and_client_credentials_never_forwarded() {
    let m = mock(&["--api-key", "upstream-secret"]);
    let cfg = format!(
        "[server]\nlisten = \"{{listen}}\"\n[log]\naccess = false\n\
         [[upstreams]]\nname = \"keyed\"\nbase_url = \"http://{a}/v1\"\napi_key_env = \"E2E_UPSTREAM_KEY\"\n\
         [[upstreams]]\nname = \"keyless\"\nbase_url = \"http://{a}/v1\"\n\
         [[models]]\nname = \"good\"\ntargets = [{{ upstream = \"keyed\" }}]\n\
         [[models]]\nname = \"bad\"\ntargets = [{{ upstream = \"keyless\" }}]\n",
        a = m.addr
    );
    let g = gateway(&cfg, &[("E2E_UPSTREAM_KEY", "upstream-secret")]);
    let extra = "Authorization: Bearer client-key\r\nx-api-key: client-key\r\nOpenAI-Organization: org-1\r\nx-mock-echo: 1\r\n";
    let r = request(
        g.addr,
        &post(
            "/v1/chat/completions",
            r#"{"model":"good","max_tokens":1}"#,
            extra,
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = &r.json()["mock_echo"];
    assert_eq!(echo["authorization"], "Bearer upstream-secret");
    assert!(echo.get("x-api-key").is_none(), "{echo}");
    assert_eq!(echo["openai-organization"], "org-1");
    assert_eq!(echo["host"], m.addr.to_string());
    // Without a configured key the client's is not used either; the
    // upstream's 401 is the gateway's problem, reported as a 502.
    let r = request(
        g.addr,
        &post("/v1/chat/completions", r#"{"model":"bad"}"#, extra),
    );
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_auth_failed");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("keyless")
    );
    assert!(!g.stderr().contains("client-key"));
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let (_m, g) = basic();
    let extra = "Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\nKeep-Alive: timeout=5\r\nX-Custom: yes\r\nAccept-Encoding: gzip\r\nx-mock-echo: 1\r\n";
    let r = request(
        g.addr,
        &post(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","max_tokens":1}"#,
            extra,
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json()["mock_echo"].clone();
    for h in ["x-hop", "te", "keep-alive", "connection", "accept-encoding"] {
        assert!(echo.get(h).is_none(), "{h} forwarded: {echo}");
    }
    assert_eq!(echo["x-custom"], "yes");
    assert!(echo["x-request-id"].as_str().is_some_and(|s| !s.is_empty()));
}

#[test]
fn request_ids_are_kept_or_generated() {
    let (_m, g) = basic();
    let r = request(
        g.addr,
        &post(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","max_tokens":1}"#,
            "X-Request-Id: my-id-42\r\nx-mock-echo: 1\r\n",
        ),
    );
    assert_eq!(r.header("x-request-id"), Some("my-id-42"));
    assert_eq!(r.json()["mock_echo"]["x-request-id"], "my-id-42");
    let a = request(g.addr, &chat(r#"{"model":"gpt-4o","max_tokens":1}"#));
    let b = request(g.addr, &chat(r#"{"model":"nope"}"#));
    let (a, b) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert_eq!(a.len(), 24);
    assert_ne!(a, b);
}

#[test]
fn client_errors_are_openai_shaped() {
    let m = mock(&[]);
    let g = gateway(
        &config_for(
            &m,
            "max_body_bytes = 2048\nmax_header_bytes = 1024\n",
            BASIC_MODELS,
        ),
        &[],
    );
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (chat(""), 400, "empty_body"),
        (chat("   "), 400, "empty_body"),
        (chat("{\"model\": \"gpt-4o\""), 400, "invalid_json"),
        (chat("[1]"), 400, "invalid_json"),
        (chat(r#"{"messages":[]}"#), 400, "missing_model"),
        (chat(r#"{"model":42}"#), 400, "invalid_model"),
        (chat(r#"{"model":"a","model":"b"}"#), 400, "duplicate_model"),
        (chat(r#"{"model":"gpt-5-unknown"}"#), 404, "model_not_found"),
        (get("/v1/chat/completions"), 405, "method_not_allowed"),
        (post("/v1/nothing", "{}", ""), 404, "not_found"),
        (get("/nothing"), 404, "not_found"),
        (chat(&format!(r#"{{"model":"gpt-4o","pad":"{}"}}"#, "x".repeat(4000))), 413, "body_too_large"),
        (post("/v1/chat/completions", "{}", &format!("X-Big: {}\r\n", "y".repeat(2000))), 431, "headers_too_large"),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            501,
            "not_implemented",
        ),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
    ];
    for (raw, status, code) in cases {
        let r = request(g.addr, &raw);
        assert_eq!(r.status, status, "{code}: {}", r.text());
        assert_eq!(r.error_code(), code);
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    // The 404 tells how to get the list.
    let r = request(g.addr, &chat(r#"{"model":"gpt-5-unknown"}"#));
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/models")
    );
}

#[test]
fn errors_after_a_complete_body_keep_the_connection() {
    let (_m, g) = basic();
    let mut c = Conn::open(g.addr);
    c.send(&chat(r#"{"model":"unknown"}"#));
    assert_eq!(c.read_response().unwrap().status, 404);
    c.send(&chat("{bad"));
    assert_eq!(c.read_response().unwrap().status, 400);
    c.send(&chat(r#"{"model":"gpt-4o","max_tokens":1}"#));
    assert_eq!(c.read_response().unwrap().status, 200);
}

#[test]
fn slow_clients_get_408_and_idle_ones_are_closed() {
    let m = mock(&[]);
    let g = gateway(
        &config_for(
            &m,
            "header_timeout = \"300ms\"\nidle_timeout = \"400ms\"\nbody_timeout = \"300ms\"\n",
            BASIC_MODELS,
        ),
        &[],
    );
    let mut c = Conn::open(g.addr);
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(r.error_code(), "request_timeout");
    let mut c = Conn::open(g.addr);
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"model\"");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 408);
    let mut idle = Conn::open(g.addr);
    let t0 = Instant::now();
    assert!(idle.closed_within(Duration::from_secs(5)));
    assert!(
        t0.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t0.elapsed()
    );
}

/// One `/metrics` sample by its exact series text (`missing` when absent),
/// polled until `want(value)` or 5 s; returns the last value read.
fn sample_until(admin: u16, series: &str, missing: u64, want: impl Fn(u64) -> bool) -> u64 {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let key = format!("{series} ");
    let mut last = missing;
    eventually(Duration::from_secs(5), || {
        let text = request(addr, &get("/metrics")).text();
        last = text
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(missing);
        want(last)
    });
    last
}

/// A gauge, polled until `want(value)`.
fn gauge(admin: u16, name: &str, want: impl Fn(u64) -> bool) -> u64 {
    sample_until(admin, name, u64::MAX, want)
}

#[test]
fn idle_connections_park_and_answer_their_next_request() {
    let m = mock(&[]);
    let admin = free_port();
    let g = gateway(
        &config_for(
            &m,
            &format!(
                "admin_listen = \"127.0.0.1:{admin}\"\nidle_buffer_release = \"50ms\"\nidle_timeout = \"30s\"\n"
            ),
            BASIC_MODELS,
        ),
        &[],
    );
    let req = chat(r#"{"model":"gpt-4o","max_tokens":3}"#);
    let mut conns: Vec<Conn> = (0..3).map(|_| Conn::open(g.addr)).collect();
    for c in &mut conns {
        c.send(&req);
        assert_eq!(c.read_response().unwrap().status, 200);
    }
    assert_eq!(gauge(admin, "tollgate_client_connections", |v| v == 3), 3);
    // Idle past the release time: every one parks (its read buffer freed).
    assert_eq!(
        gauge(admin, "tollgate_client_connections_parked", |v| v == 3),
        3
    );
    // A parked connection reads its next request whole, however it comes.
    conns[0].send(&req);
    assert_eq!(conns[0].read_response().unwrap().status, 200);
    let (a, b) = req.split_at(7);
    conns[1].send(a);
    conns[1].send(b);
    assert_eq!(conns[1].read_response().unwrap().status, 200);
    // A client that leaves while parked is closed and uncounted.
    conns.pop();
    assert_eq!(gauge(admin, "tollgate_client_connections", |v| v == 2), 2);
    // The two that answered park again once idle.
    assert_eq!(
        gauge(admin, "tollgate_client_connections_parked", |v| v == 2),
        2
    );
    conns[0].send(&req);
    assert_eq!(conns[0].read_response().unwrap().status, 200);
}

#[test]
fn chunked_request_bodies_and_expect_continue() {
    let (_m, g) = basic();
    let body =
        r#"{"model":"gpt-4o","max_tokens":2,"messages":[{"role":"user","content":"chunked"}]}"#;
    let (a, b) = body.split_at(20);
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let r = request(g.addr, raw.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 2);

    // Framing overhead counts against the limit too: tiny chunks with long
    // extensions cannot make the gateway buffer without bound.
    let mut c = Conn::open(g.addr);
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    let ext = "e".repeat(16 * 1024);
    // Without the bound all 2,000 chunks (32 MiB of framing) would be
    // swallowed while waiting for the body's end. With it the gateway
    // answers 413 and closes after ~16 MiB: a later write fails or the
    // answer is readable.
    let mut ended = false;
    for _ in 0..2000 {
        if std::io::Write::write_all(&mut c.s, format!("1;{ext}\r\nx\r\n").as_bytes()).is_err() {
            ended = true;
            break;
        }
        c.s.set_nonblocking(true).unwrap();
        let mut peek = [0u8; 1];
        let ready = c.s.peek(&mut peek).is_ok_and(|n| n > 0);
        c.s.set_nonblocking(false).unwrap();
        if ready {
            ended = true;
            break;
        }
    }
    // The kernel may take all of it before the gateway has read 16 MiB
    // (a loopback receive buffer grows to 32 MiB here), so the writes
    // need not fail: the answer must still come, and be the 413, long
    // before the body timeout (30 s) that would end an unbounded read.
    match c.read_response() {
        Ok(r) => assert_eq!(r.status, 413, "the gateway kept reading framing overhead"),
        Err(e) => assert!(ended, "no answer and no failed write: {e}"),
    }

    // Expect: 100-continue: the gateway says 100 before the body is sent.
    let mut c = Conn::open(g.addr);
    c.send(format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
    let (status, _) = c.read_head(false).unwrap();
    assert_eq!(status, 100);
    c.send(body.as_bytes());
    assert_eq!(c.read_response().unwrap().status, 200);
}

#[test]
fn upstream_failures_map_to_502_and_504() {
    let dead = free_port();
    let m = mock(&[]);
    let cfg = format!(
        "[server]\nlisten = \"{{listen}}\"\n[log]\naccess = false\n\
         [[upstreams]]\nname = \"dead\"\nbase_url = \"http://127.0.0.1:{dead}/v1\"\n\
         [[upstreams]]\nname = \"slow\"\nbase_url = \"http://{}/v1\"\nresponse_timeout = \"300ms\"\n\
         [[models]]\nname = \"dead\"\ntargets = [{{ upstream = \"dead\" }}]\n\
         [[models]]\nname = \"slow\"\ntargets = [{{ upstream = \"slow\" }}]\n",
        m.addr
    );
    let g = gateway(&cfg, &[]);
    let r = request(g.addr, &chat(r#"{"model":"dead"}"#));
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_connect_failed");
    let t0 = Instant::now();
    let r = request(
        g.addr,
        &post(
            "/v1/chat/completions",
            r#"{"model":"slow"}"#,
            "x-mock-stall: 1\r\n",
        ),
    );
    assert_eq!(r.status, 504);
    assert_eq!(r.error_code(), "upstream_timeout");
    assert!(t0.elapsed() < Duration::from_secs(3));
    // Upstream error statuses are relayed as they are (failover is later).
    let r = request(
        g.addr,
        &post(
            "/v1/chat/completions",
            r#"{"model":"slow"}"#,
            "x-mock-status: 503\r\n",
        ),
    );
    assert_eq!(r.status, 503);
    // An upstream reset mid-stream ends the stream cleanly with an
    // OpenAI-shaped error event: never a silent truncation that looks
    // complete, never a half event.
    let mut c = Conn::open(g.addr);
    c.send(&post(
        "/v1/chat/completions",
        r#"{"model":"slow","stream":true,"max_tokens":50}"#,
        "x-mock-reset-after: 1500\r\n",
    ));
    let r = c.read_response().unwrap();
    let text = r.text();
    assert!(!text.contains("[DONE]"));
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    let last: serde_json::Value =
        serde_json::from_str(events.last().unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_cut", "{text}");
    for e in &events[..events.len() - 1] {
        let v: serde_json::Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
    }
    // A non-streaming body cut mid-way cannot be ended cleanly: the
    // connection closes and the client sees the truncation.
    let mut c = Conn::open(g.addr);
    c.send(&post(
        "/v1/chat/completions",
        r#"{"model":"slow","max_tokens":50}"#,
        "x-mock-reset-after: 200\r\n",
    ));
    assert!(c.read_response().is_err());
}

/// Reads a streamed response through the gateway and directly from the
/// mock; with usage injection off the gateway is a pure pass-through, so
/// the bytes (chunk framing included) must be identical, whatever the
/// write pattern.
#[test]
fn streams_pass_every_byte_in_order() {
    let m = mock(&[]);
    let cfg = config_for(&m, "", BASIC_MODELS)
        .replace("base_url = ", "stream_usage = false\nbase_url = ");
    let g = gateway(&cfg, &[]);
    let body = r#"{"model":"llama-3-8b","stream":true,"max_tokens":40,"messages":[{"role":"user","content":"stream me"}]}"#;
    for faults in [
        "",
        "x-mock-split: 1\r\n",
        "x-mock-split: 7\r\nx-mock-crlf: 1\r\n",
        "x-mock-chunk-delay-ms: 5\r\nx-mock-split: 13\r\n",
    ] {
        let via = request(g.addr, &post("/v1/chat/completions", body, faults));
        let direct = request(m.addr, &post("/v1/chat/completions", body, faults));
        assert_eq!(via.status, 200);
        assert_eq!(
            via.header("content-type"),
            Some("text/event-stream; charset=utf-8")
        );
        assert_eq!(
            String::from_utf8_lossy(&via.raw_body),
            String::from_utf8_lossy(&direct.raw_body),
            "faults {faults:?}"
        );
        let text = via.text();
        assert_eq!(text.matches("data: ").count(), 40 + 3);
        assert!(text.ends_with("data: [DONE]\n\n") || text.ends_with("data: [DONE]\r\n\r\n"));
    }
}

/// With usage injection on (the default), the gateway asks the provider for
/// usage and removes the usage-only chunk the client did not ask for: the
/// client sees the events it would have seen without the gateway, except
/// for the `"usage":null` field providers put in every chunk once usage is
/// on (harmless: SDKs model `usage` as optional).
#[test]
fn a_long_fast_stream_arrives_whole_as_relayed_and_as_rewritten() {
    // 5,000 events sent at once: the relay's reads fill their buffer and it
    // grows; the stream must still match the provider's byte for byte.
    let m = mock(&[]);
    let body = r#"{"model":"llama-3-8b","stream":true,"max_tokens":5000,"messages":[{"role":"user","content":"a long one"}]}"#;
    let direct = request(m.addr, &post("/v1/chat/completions", body, ""));
    assert_eq!(direct.text().matches("data: ").count(), 5000 + 3);
    // `stream_usage = false`: relayed as it comes; default: the gateway
    // asks for usage and removes the usage chunk again.
    for usage in [false, true] {
        let cfg = config_for(&m, "", BASIC_MODELS).replace(
            "base_url = ",
            &format!("stream_usage = {usage}\nbase_url = "),
        );
        let g = gateway(&cfg, &[]);
        let via = request(g.addr, &post("/v1/chat/completions", body, ""));
        assert_eq!(via.status, 200);
        // (The provider adds `"usage":null` to every event when asked for
        // usage.)
        assert!(
            via.text().replace(",\"usage\":null", "") == direct.text(),
            "stream_usage = {usage}: the bodies differ"
        );
        assert!(!via.text().contains("\"usage\":{"), "usage leaked");
        if !usage {
            assert!(via.raw_body == direct.raw_body, "chunk framing changed");
        }
    }
}

#[test]
fn injected_usage_chunk_is_invisible_to_the_client() {
    let (m, g) = basic();
    let body = r#"{"model":"llama-3-8b","stream":true,"max_tokens":25,"messages":[{"role":"user","content":"hidden usage"}]}"#;
    for faults in [
        "",
        "x-mock-split: 1\r\n",
        "x-mock-split: 5\r\nx-mock-crlf: 1\r\n",
        // Whole CRLF events: the content deltas are taken from the scan.
        "x-mock-crlf: 1\r\n",
        "x-mock-chunk-delay-ms: 3\r\n",
    ] {
        let via = request(g.addr, &post("/v1/chat/completions", body, faults));
        let direct = request(m.addr, &post("/v1/chat/completions", body, faults));
        assert_eq!(via.status, 200);
        assert_eq!(
            via.text().replace(",\"usage\":null", ""),
            direct.text(),
            "faults {faults:?}"
        );
        assert!(
            !via.text().contains("\"usage\":{"),
            "usage leaked: {faults:?}"
        );
    }
}

fn admin_config(m: &Proc, admin: u16) -> String {
    config_for(
        m,
        &format!("admin_listen = \"127.0.0.1:{admin}\"\n"),
        BASIC_MODELS,
    )
}

/// Reads one counter from `/metrics`, polling until `want(value)` or 5 s.
fn metric(admin: u16, model: &str, kind: &str, source: &str, want: impl Fn(u64) -> bool) -> u64 {
    let series =
        format!("tollgate_tokens_total{{model=\"{model}\",kind=\"{kind}\",source=\"{source}\"}}");
    sample_until(admin, &series, 0, want)
}

#[test]
fn provider_usage_is_counted_and_prompt_estimate_is_exact() {
    let m = mock(&[]);
    let admin = free_port();
    let g = gateway(&admin_config(&m, admin), &[]);
    let body = r#"{"model":"gpt-4o","max_tokens":7,"messages":[{"role":"system","content":"Be brief."},{"role":"user","name":"ann","content":"Count my tokens, exactly. 日本語 and emoji 👩‍👩‍👧‍👦 too."}]}"#;
    let r = request(g.addr, &chat(body));
    assert_eq!(r.status, 200, "{}", r.text());
    let usage = r.json()["usage"].clone();
    // The estimate made before forwarding equals what the provider reports.
    assert_eq!(
        r.header("x-tollgate-prompt-tokens")
            .map(|v| v.parse::<u64>().unwrap()),
        usage["prompt_tokens"].as_u64()
    );
    let served = "gpt-4o-2024-08-06";
    assert_eq!(
        metric(admin, served, "completion", "provider", |v| v == 7),
        7
    );
    let p = usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(metric(admin, served, "prompt", "provider", |v| v == p), p);
    // Streams: the usage comes from the (hidden) usage chunk.
    let r = request(
        g.addr,
        &chat(&body.replace("\"max_tokens\":7", "\"max_tokens\":9,\"stream\":true")),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        metric(admin, served, "completion", "provider", |v| v == 16),
        16
    );
    assert_eq!(
        metric(admin, served, "completion", "estimated", |_| true),
        0
    );
}

#[test]
fn client_asked_usage_arrives_even_when_the_provider_sends_none() {
    let m = mock(&[]);
    let admin = free_port();
    let g = gateway(&admin_config(&m, admin), &[]);
    let body = r#"{"model":"llama-3-8b","stream":true,"stream_options":{"include_usage":true},"max_tokens":30,"messages":[{"role":"user","content":"usage please"}]}"#;
    // Provider usage passes through untouched.
    let r = request(g.addr, &chat(body));
    let direct = request(m.addr, &chat(body));
    assert_eq!(r.text(), direct.text());
    // Provider without usage: the gateway adds an estimated usage chunk
    // before [DONE]; the mock's text is exactly max_tokens tokens.
    for faults in [
        "x-mock-omit-usage: 1\r\n",
        "x-mock-omit-usage: 1\r\nx-mock-crlf: 1\r\n",
        "x-mock-omit-usage: 1\r\nx-mock-split: 1\r\nx-mock-crlf: 1\r\n",
    ] {
        let r = request(g.addr, &post("/v1/chat/completions", body, faults));
        assert_eq!(r.status, 200);
        let text = r.text();
        let events: Vec<&str> = text
            .split(['\n', '\r'])
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(events.last(), Some(&"[DONE]"), "{faults:?}");
        let usage: serde_json::Value = serde_json::from_str(events[events.len() - 2]).unwrap();
        assert_eq!(
            usage["usage"]["completion_tokens"], 30,
            "{faults:?}: {usage}"
        );
        assert_eq!(
            usage["usage"]["prompt_tokens"].as_u64(),
            r.header("x-tollgate-prompt-tokens")
                .map(|v| v.parse().unwrap())
        );
        assert_eq!(usage["choices"], serde_json::json!([]));
    }
    assert_eq!(
        metric(admin, "llama-3-8b", "completion", "estimated", |v| v == 90),
        90
    );
}

#[test]
fn prompt_estimate_matches_the_provider_with_tools_too() {
    let (_m, g) = basic();
    let body = r#"{"model":"gpt-4o","max_tokens":1,"messages":[{"role":"user","content":"weather?"}],
        "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather for a city.",
        "parameters":{"type":"object","properties":{"city":{"type":"string","description":"City name"},
        "unit":{"type":"string","enum":["c","f"]}},"required":["city"]}}}]}"#;
    let r = request(g.addr, &chat(body));
    assert_eq!(r.status, 200, "{}", r.text());
    let p = r.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(p > 20, "tools were counted: {p}");
    assert_eq!(
        r.header("x-tollgate-prompt-tokens"),
        Some(p.to_string().as_str())
    );
}

#[test]
fn tokenizer_setting_per_model() {
    let m = mock(&[]);
    let models = "[[models]]\nname = \"counted\"\ntokenizer = \"o200k_base\"\ntargets = [{ upstream = \"mock\", model = \"llama-x\" }]\n\
                  [[models]]\nname = \"uncounted\"\ntokenizer = \"none\"\ntargets = [{ upstream = \"mock\" }]\n";
    let g = gateway(&config_for(&m, "", models), &[]);
    let body = r#"{"model":"counted","max_tokens":1,"messages":[{"role":"user","content":"日本語のテキスト"}]}"#;
    let r = request(g.addr, &chat(body));
    // The mock counts llama-x with cl100k; the configured o200k differs on CJK.
    let o200k =
        tollgate::tokens::chat_prompt_tokens(tollgate::tokens::Encoding::O200k, body.as_bytes())
            .unwrap();
    assert_eq!(
        r.header("x-tollgate-prompt-tokens"),
        Some(o200k.to_string().as_str())
    );
    assert_ne!(r.json()["usage"]["prompt_tokens"].as_u64(), Some(o200k));
    let r = request(g.addr, &chat(&body.replace("\"counted\"", "\"uncounted\"")));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-tollgate-prompt-tokens"), None);
    let (code, err, _) = check_config(
        "[[upstreams]]\nname = \"a\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[[models]]\nname = \"m\"\ntokenizer = \"gpt2\"\ntargets = [{ upstream = \"a\" }]\n",
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("models[0].tokenizer") && err.contains("unknown tokenizer"),
        "{err}"
    );
}

#[test]
fn non_streaming_response_without_usage_is_estimated_exactly() {
    let m = mock(&[]);
    let admin = free_port();
    let g = gateway(&admin_config(&m, admin), &[]);
    let r = request(
        g.addr,
        &post(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","max_tokens":11,"messages":[{"role":"user","content":"x"}]}"#,
            "x-mock-omit-usage: 1\r\n",
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        metric(admin, "gpt-4o-2024-08-06", "completion", "estimated", |v| v
            == 11),
        11
    );
}

#[test]
fn a_client_that_leaves_mid_stream_is_billed_for_what_was_produced() {
    let m = mock(&[]);
    let admin = free_port();
    let g = gateway(&admin_config(&m, admin), &[]);
    let mut c = Conn::open(g.addr);
    c.send(&post(
        "/v1/chat/completions",
        r#"{"model":"llama-3-8b","stream":true,"max_tokens":1000,"messages":[{"role":"user","content":"long"}]}"#,
        "x-mock-chunk-delay-ms: 10\r\n",
    ));
    let (status, _) = c.read_head(true).unwrap();
    assert_eq!(status, 200);
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    while String::from_utf8_lossy(&got).matches("data: ").count() < 20 {
        let n = std::io::Read::read(&mut c.s, &mut tmp).unwrap();
        got.extend_from_slice(&tmp[..n]);
    }
    drop(c);
    let billed = metric(admin, "llama-3-8b", "completion", "estimated", |v| v > 0);
    assert!((15..1000).contains(&billed), "billed {billed}");
}

#[test]
fn stream_events_are_not_delayed_by_the_gateway() {
    let (_m, g) = basic();
    // 10 events 150 ms apart: each must reach the client as it is sent, so
    // the first event arrives long before the stream ends.
    let mut c = Conn::open(g.addr);
    c.send(&post(
        "/v1/chat/completions",
        r#"{"model":"llama-3-8b","stream":true,"max_tokens":8}"#,
        "x-mock-chunk-delay-ms: 150\r\n",
    ));
    let t0 = Instant::now();
    let (status, _) = c.read_head(true).unwrap();
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    let mut tmp = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = std::io::Read::read(&mut c.s, &mut tmp).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&tmp[..n]);
    }
    let first = t0.elapsed();
    let rest = c.read_response();
    // The whole stream takes >= 9 * 150 ms; the first event came early.
    assert!(
        first < Duration::from_millis(600),
        "first event after {first:?}"
    );
    drop(rest);
}

#[test]
fn client_disconnect_mid_stream_frees_the_upstream() {
    let (m, g) = basic();
    let baseline = mock_stats(&m).1;
    for faults in ["x-mock-chunk-delay-ms: 20\r\n", "x-mock-stall: 1\r\n"] {
        let mut c = Conn::open(g.addr);
        c.send(&post(
            "/v1/chat/completions",
            r#"{"model":"llama-3-8b","stream":true,"max_tokens":1000}"#,
            faults,
        ));
        // Wait until the upstream connection exists, then leave.
        assert!(eventually(Duration::from_secs(5), || mock_stats(&m).1 > baseline));
        if faults.contains("delay") {
            let (status, _) = c.read_head(true).unwrap();
            assert_eq!(status, 200);
        }
        let t0 = Instant::now();
        drop(c);
        // The stream would run 20 s; the upstream connection must be closed
        // by the gateway right away (stalled upstream included).
        assert!(
            eventually(Duration::from_secs(3), || mock_stats(&m).1 <= baseline),
            "upstream still open ({faults:?}): {:?}",
            mock_stats(&m)
        );
        assert!(t0.elapsed() < Duration::from_secs(3));
    }
    // The gateway still serves.
    assert_eq!(
        request(g.addr, &chat(r#"{"model":"gpt-4o","max_tokens":1}"#)).status,
        200
    );
}

#[test]
fn keep_alive_connections_are_reused_upstream() {
    let m = mock(&[]);
    let cfg = config_for(&m, "", BASIC_MODELS).replace("workers = 2", "workers = 1");
    let g = gateway(&cfg, &[]);
    let (accepted0, _, _) = mock_stats(&m);
    let mut c = Conn::open(g.addr);
    for i in 0..50 {
        let stream = i % 2 == 0;
        c.send(&chat(&format!(
            r#"{{"model":"gpt-4o","max_tokens":2,"stream":{stream}}}"#
        )));
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200);
    }
    let (accepted1, _, _) = mock_stats(&m);
    // One upstream connection for 50 requests; the other accept is the
    // second stats call itself.
    assert_eq!(
        accepted1 - accepted0,
        2,
        "upstream connections were not reused"
    );
}

#[test]
fn models_endpoint_lists_names_and_aliases() {
    let (_m, g) = basic();
    let r = request(g.addr, &get("/v1/models"));
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["object"], "list");
    let ids: Vec<&str> = j["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in ["gpt-4o", "gpt4o", "omni", "text-embedding-3-small"] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    assert!(!ids.iter().any(|i| i.contains('*')));
    assert!(
        j["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["object"] == "model")
    );
    let one = request(g.addr, &get("/v1/models/gpt4o"));
    assert_eq!(one.json()["id"], "gpt4o");
    assert_eq!(request(g.addr, &get("/v1/models/zzz")).status, 404);
    assert_eq!(request(g.addr, &get("/healthz")).status, 200);
}

#[test]
fn completions_and_embeddings_are_routed() {
    let (_m, g) = basic();
    let r = request(
        g.addr,
        &post(
            "/v1/completions",
            r#"{"model":"gpt4o","prompt":"hi","max_tokens":3}"#,
            "",
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "text_completion");
    let r = request(
        g.addr,
        &post(
            "/v1/embeddings",
            r#"{"model":"text-embedding-3-small","input":["a","b"]}"#,
            "",
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
}

#[test]
fn graceful_shutdown_finishes_streams_then_exits() {
    let (_m, mut g) = basic();
    let mut c = Conn::open(g.addr);
    c.send(&post(
        "/v1/chat/completions",
        r#"{"model":"llama-3-8b","stream":true,"max_tokens":20}"#,
        "x-mock-chunk-delay-ms: 40\r\n",
    ));
    let (status, _) = c.read_head(true).unwrap();
    assert_eq!(status, 200);
    g.terminate();
    // New connections are refused once the listeners are gone.
    assert!(eventually(Duration::from_secs(3), || {
        std::net::TcpStream::connect(g.addr).is_err()
    }));
    // The stream in flight still completes.
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut c.s, &mut rest).unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("data: [DONE]"));
    let status = g
        .wait_exit(Duration::from_secs(10))
        .expect("gateway did not exit");
    assert!(status.success(), "{status}: {}", g.stderr());
}

#[test]
fn check_config_names_file_key_and_reason() {
    let (code, err, path) = check_config(
        r#"
[server]
listen = "127.0.0.1:1"
[[upstreams]]
name = "a"
base_url = "ftp://x"
[[models]]
name = "m"
targets = [{ upstream = "zz" }]
[[models]]
name = "m"
targets = [{ upstream = "a" }]
"#,
    );
    assert_eq!(code, 2);
    let file = path.display().to_string();
    for needle in [
        format!("{file}: upstreams[0].base_url:"),
        format!("{file}: models[0].targets[0].upstream: unknown upstream `zz`"),
        format!("{file}: models[1].name: duplicate model name `m`"),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    let (code, err, _) = check_config("[store]\nkind = \"redis\"\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("store.url: kind = \"redis\" needs url"),
        "{err}"
    );
    let (code, err, _) = check_config("[server]\nlisten = \"127.0.0.1:1\"\nwokers = 3\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("server") && err.contains("unknown field `wokers`"),
        "{err}"
    );
    let (code, err, _) = check_config("[server]\nidle_buffer_release = \"250\"\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("server.idle_buffer_release: `250` has no unit"),
        "{err}"
    );
    let (code, err, _) = check_config("[server]\nio_uring_task_run = \"eager\"\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("server.io_uring_task_run: unknown mode `eager`"),
        "{err}"
    );
    let (code, _, _) = check_config(
        "[[upstreams]]\nname = \"a\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[[models]]\nname = \"m\"\ntargets = [{ upstream = \"a\" }]\n",
    );
    assert_eq!(code, 0);
}

#[test]
fn tls_upstream_with_a_private_ca() {
    let server = tls::Server::start();
    let ca = std::env::temp_dir().join(format!("tollgate-e2e-ca-{}.pem", free_port()));
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let cfg = format!(
        "[server]\nlisten = \"{{listen}}\"\n[log]\naccess = false\n\
         [[upstreams]]\nname = \"secure\"\nbase_url = \"https://localhost:{p}/v1\"\nca_file = \"{ca}\"\n\
         [[upstreams]]\nname = \"untrusted\"\nbase_url = \"https://localhost:{p}/v1\"\n\
         [[models]]\nname = \"secure\"\ntargets = [{{ upstream = \"secure\" }}]\n\
         [[models]]\nname = \"untrusted\"\ntargets = [{{ upstream = \"untrusted\" }}]\n",
        p = server.port,
        ca = ca.display()
    );
    let g = gateway(&cfg, &[]);
    let mut c = Conn::open(g.addr);
    for _ in 0..3 {
        c.send(&chat(r#"{"model":"secure","max_tokens":1}"#));
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["tls_path"], "/v1/chat/completions");
    }
    // Keep-alive works over TLS too: one handshake for three requests.
    assert_eq!(server.connections(), 1);
    let r = request(g.addr, &chat(r#"{"model":"untrusted"}"#));
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_tls_failed");
}

#[test]
fn shipped_example_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (file, envs) in [
        ("examples/quickstart.toml", vec![]),
        (
            "examples/production.toml",
            vec![
                ("OPENAI_API_KEY", "k"),
                ("VLLM_API_KEY", "k"),
                ("TOLLGATE_ADMIN_TOKEN", "an-admin-token-of-32-characters"),
                ("ACME_PROD_KEY", "tg-acme-prod-example"),
            ],
        ),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["check-config", &root.join(file).to_string_lossy()])
            .envs(envs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_restarted_upstream_does_not_fail_requests_on_stale_pooled_connections() {
    let m = mock(&[]);
    let addr = m.addr;
    let cfg = config_for(&m, "", BASIC_MODELS).replace("workers = 2", "workers = 1");
    let g = gateway(&cfg, &[]);
    let mut c = Conn::open(g.addr);
    for _ in 0..3 {
        c.send(&chat(r#"{"model":"gpt-4o","max_tokens":1}"#));
        assert_eq!(c.read_response().unwrap().status, 200);
    }
    // The pooled upstream connection dies with the old process.
    drop(m);
    let m2 = mock_on(addr, &[]);
    for _ in 0..3 {
        c.send(&chat(r#"{"model":"gpt-4o","max_tokens":1}"#));
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(mock_stats(&m2).2 >= 3);
}

#[test]
fn idle_pooled_connections_expire() {
    let m = mock(&[]);
    let cfg = format!(
        "[server]\nlisten = \"{{listen}}\"\nworkers = 1\n[log]\naccess = false\n\
         [[upstreams]]\nname = \"mock\"\nbase_url = \"http://{}/v1\"\nidle_timeout = \"1s\"\n{BASIC_MODELS}",
        m.addr
    );
    let g = gateway(&cfg, &[]);
    let (a0, _, _) = mock_stats(&m);
    assert_eq!(
        request(g.addr, &chat(r#"{"model":"gpt-4o","max_tokens":1}"#)).status,
        200
    );
    // Within the idle timeout the connection is reused...
    assert_eq!(
        request(g.addr, &chat(r#"{"model":"gpt-4o","max_tokens":1}"#)).status,
        200
    );
    let (a1, _, _) = mock_stats(&m);
    assert_eq!(a1 - a0, 2, "one upstream connection plus the stats call");
    // ...after it, a new one is opened.
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        request(g.addr, &chat(r#"{"model":"gpt-4o","max_tokens":1}"#)).status,
        200
    );
    let (a2, _, _) = mock_stats(&m);
    assert_eq!(
        a2 - a1,
        2,
        "a fresh upstream connection plus the stats call"
    );
}
