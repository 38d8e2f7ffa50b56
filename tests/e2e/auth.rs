//! Keys, tenants and limits end to end: real gateways, the mock upstream,
//! real Redis for the shared cases.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::*;

const KEY_A: &str = "tg-test-key-a-0123456789";
const KEY_B: &str = "tg-test-key-b-0123456789";
const ADMIN: &str = "admin-token-0123456789";

fn sha(s: &str) -> String {
    tollgate::auth::keys::to_hex(&tollgate::auth::keys::hash(s.as_bytes()))
}

fn base(mock: &Proc, admin: Option<u16>, store: &str, rest: &str) -> String {
    let admin = admin.map_or(String::new(), |p| {
        format!("admin_listen = \"127.0.0.1:{p}\"\n")
    });
    format!(
        "[server]\nlisten = \"{{listen}}\"\nworkers = 2\n{admin}[log]\naccess = true\n{store}\n\
         [[upstreams]]\nname = \"mock\"\nbase_url = \"http://{}/v1\"\n\n\
         [[models]]\nname = \"gpt-4o\"\ntargets = [{{ upstream = \"mock\" }}]\n\
         price = {{ input = 2.5, output = 10.0 }}\n\
         [[models]]\nname = \"claude-3\"\ntargets = [{{ upstream = \"mock\" }}]\n\n{rest}",
        mock.addr
    )
}

fn with_key(body: &str, key: &str) -> Vec<u8> {
    post(
        "/v1/chat/completions",
        body,
        &format!("Authorization: Bearer {key}\r\n"),
    )
}

const HI: &str =
    r#"{"model":"gpt-4o","max_tokens":20,"messages":[{"role":"user","content":"hi"}]}"#;

/// One admin API call (the admin listener is up before the gateway answers).
fn admin_call(addr: SocketAddr, method: &str, path: &str, body: &str, token: Option<&str>) -> Resp {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: a\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    request(addr, raw.as_bytes())
}

#[test]
fn keys_gate_every_api_call_and_never_reach_the_logs() {
    let m = mock(&[]);
    let cfg = base(
        &m,
        None,
        "",
        &format!(
            "[[keys]]\nid = \"acme-prod\"\ntenant = \"acme\"\nkey_sha256 = \"{}\"\nmodels = [\"gpt-4o*\"]\n\
             [[keys]]\nid = \"beta\"\ntenant = \"beta\"\nkey_env = \"BETA_KEY\"\n",
            sha(KEY_A)
        ),
    );
    let g = gateway(&cfg, &[("BETA_KEY", KEY_B)]);
    // No key, wrong key: 401 in OpenAI's shape.
    let r = request(g.addr, &chat(HI));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.error_code(), "invalid_api_key");
    let r = request(g.addr, &with_key(HI, "tg-wrong"));
    assert_eq!(r.status, 401);
    // The model list needs a key too; health does not.
    assert_eq!(request(g.addr, &get("/v1/models")).status, 401);
    assert_eq!(request(g.addr, &get("/healthz")).status, 200);
    // Bearer and x-api-key both work.
    let r = request(g.addr, &with_key(HI, KEY_A));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(
        g.addr,
        &post(
            "/v1/chat/completions",
            HI,
            &format!("x-api-key: {KEY_B}\r\n"),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A model outside the key's list: 403; the other key may use it.
    let claude = r#"{"model":"claude-3","messages":[{"role":"user","content":"hi"}]}"#;
    let r = request(g.addr, &with_key(claude, KEY_A));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.error_code(), "model_not_allowed");
    assert_eq!(request(g.addr, &with_key(claude, KEY_B)).status, 200);
    // The model list shows what the key may use.
    let list = request(
        g.addr,
        format!("GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY_A}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(list.status, 200);
    let ids: Vec<String> = list.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["gpt-4o"]);
    let one = |id: &str, key: &str| {
        request(
            g.addr,
            format!("GET /v1/models/{id} HTTP/1.1\r\nHost: t\r\nx-api-key: {key}\r\n\r\n")
                .as_bytes(),
        )
        .status
    };
    assert_eq!(one("claude-3", KEY_A), 404);
    assert_eq!(one("claude-3", KEY_B), 200);
    // Auth comes before body checks: a bad body with no key is a 401.
    assert_eq!(request(g.addr, &chat("{")).status, 401);
    assert_eq!(request(g.addr, &with_key("{", KEY_A)).status, 400);
    // The key never appears in the logs; its id does.
    // (Log lines are written by a background thread: wait for them.)
    assert!(eventually(Duration::from_secs(5), || g
        .stderr()
        .contains("acme-prod")));
    let log = g.stderr();
    assert!(!log.contains(KEY_A) && !log.contains(KEY_B), "{log}");
    assert!(!log.contains("auth is off"), "{log}");
}

#[test]
fn without_keys_auth_is_off_and_says_so() {
    let m = mock(&[]);
    let g = gateway(&base(&m, None, "", ""), &[]);
    assert_eq!(request(g.addr, &chat(HI)).status, 200);
    assert!(g.stderr().contains("auth is off"), "{}", g.stderr());
}

#[test]
fn requests_per_minute_are_refused_at_the_limit_with_openai_headers() {
    let m = mock(&[]);
    let cfg = base(
        &m,
        None,
        "",
        &format!(
            "[[keys]]\nid = \"k\"\ntenant = \"t\"\nkey_sha256 = \"{}\"\nlimits = {{ rpm = 5 }}\n\
             [[keys]]\nid = \"k2\"\ntenant = \"t\"\nkey_sha256 = \"{}\"\n\
             [[tenants]]\nid = \"t\"\nlimits = {{ rpm = 7 }}\n",
            sha(KEY_A),
            sha(KEY_B)
        ),
    );
    let g = gateway(&cfg, &[]);
    let mut c = Conn::open(g.addr);
    for i in 0..5u64 {
        c.send(&with_key(HI, KEY_A));
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("5"));
        let left: u64 = r
            .header("x-ratelimit-remaining-requests")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(left, 4 - i);
        assert!(
            r.header("x-ratelimit-reset-requests")
                .unwrap()
                .ends_with('s')
        );
    }
    c.send(&with_key(HI, KEY_A));
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.error_code(), "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "requests");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    // The tenant's 7 per minute are shared by its keys: k2 gets 2 more.
    assert_eq!(request(g.addr, &with_key(HI, KEY_B)).status, 200);
    assert_eq!(request(g.addr, &with_key(HI, KEY_B)).status, 200);
    let r = request(g.addr, &with_key(HI, KEY_B));
    assert_eq!(r.status, 429);
    assert!(r.text().contains("tenant:t"), "{}", r.text());
    // The connection stays usable after a refusal.
    c.send(&get("/healthz"));
    assert_eq!(c.read_response().unwrap().status, 200);
}

#[test]
fn tokens_per_minute_reserve_the_prompt_and_max_tokens_then_settle() {
    let m = mock(&[]);
    let cfg = base(
        &m,
        None,
        "",
        &format!(
            "[[keys]]\nid = \"k\"\ntenant = \"t\"\nkey_sha256 = \"{}\"\nlimits = {{ tpm = 300 }}\n",
            sha(KEY_A)
        ),
    );
    let g = gateway(&cfg, &[]);
    // Larger than the whole limit: refused before forwarding.
    let (_, _, before) = mock_stats(&m);
    let big = r#"{"model":"gpt-4o","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = request(g.addr, &with_key(big, KEY_A));
    assert_eq!(r.status, 429);
    assert!(r.text().contains("Request too large"), "{}", r.text());
    let (_, _, after) = mock_stats(&m);
    // The mock counts every request, its own stats calls included: only
    // the second stats call may be new.
    assert_eq!(
        after,
        before + 1,
        "a refused request must not reach the upstream"
    );
    let mut used = 0u64;
    let mut ok = 0;
    loop {
        let r = request(g.addr, &with_key(HI, KEY_A));
        if r.status == 429 {
            assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("300"));
            let left: u64 = r
                .header("x-ratelimit-remaining-tokens")
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(left, 300 - used);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        let prompt: u64 = r
            .header("x-tollgate-prompt-tokens")
            .unwrap()
            .parse()
            .unwrap();
        // At admission: everything settled before, plus this reservation.
        let left: u64 = r
            .header("x-ratelimit-remaining-tokens")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(left, 300 - used - (prompt + 20));
        used += r.json()["usage"]["total_tokens"].as_u64().unwrap();
        ok += 1;
        assert!(ok < 100);
    }
    assert!(ok >= 2 && used <= 300, "{ok} requests, {used} tokens");
}

#[test]
fn concurrent_streams_are_capped_and_freed() {
    let m = mock(&[]);
    let cfg = base(
        &m,
        None,
        "",
        &format!(
            "[[keys]]\nid = \"k\"\ntenant = \"t\"\nkey_sha256 = \"{}\"\nlimits = {{ max_streams = 1 }}\n",
            sha(KEY_A)
        ),
    );
    let g = gateway(&cfg, &[]);
    let stream = r#"{"model":"gpt-4o","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let slow = post(
        "/v1/chat/completions",
        stream,
        &format!("Authorization: Bearer {KEY_A}\r\nx-mock-chunk-delay-ms: 150\r\n"),
    );
    let mut first = Conn::open(g.addr);
    first.send(&slow);
    // The first stream's head is in: it holds the slot.
    let (status, _) = first.read_head(true).unwrap();
    assert_eq!(status, 200);
    let r = request(g.addr, &with_key(stream, KEY_A));
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("concurrent streams"), "{}", r.text());
    // Non-streaming requests are not streams.
    assert_eq!(request(g.addr, &with_key(HI, KEY_A)).status, 200);
    drop(first);
    assert!(
        eventually(Duration::from_secs(5), || request(
            g.addr,
            &with_key(stream, KEY_A)
        )
        .status
            == 200),
        "the slot was not freed when the first stream ended"
    );
}

#[test]
fn budgets_in_tokens_and_dollars_run_out() {
    let m = mock(&[]);
    let cfg = base(
        &m,
        None,
        "",
        &format!(
            "[[keys]]\nid = \"tok\"\ntenant = \"t1\"\nkey_sha256 = \"{}\"\nlimits = {{ budget_tokens = 100, budget_period = \"day\" }}\n\
             [[keys]]\nid = \"usd\"\ntenant = \"t2\"\nkey_sha256 = \"{}\"\nlimits = {{ budget_usd = 0.001 }}\n",
            sha(KEY_A),
            sha(KEY_B)
        ),
    );
    let g = gateway(&cfg, &[]);
    for key in [KEY_A, KEY_B] {
        let mut ok = 0;
        let r = loop {
            let r = request(g.addr, &with_key(HI, key));
            if r.status != 200 {
                break r;
            }
            ok += 1;
            assert!(ok < 100, "budget never ran out");
        };
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.error_code(), "insufficient_quota");
        assert!(ok >= 1, "the first request must pass");
        // 100 tokens at ~30 per request; $0.001 at 2.5/10 $ per M tokens
        // (~0.00023 $ per request) is 4 requests.
        assert!(ok <= 4, "{key}: {ok} requests passed");
    }
}

#[test]
fn admin_api_creates_rotates_and_revokes_keys() {
    let m = mock(&[]);
    let admin = free_port();
    let cfg = base(
        &m,
        Some(admin),
        "[auth]\nmode = \"keys\"\nadmin_token_env = \"TG_ADMIN\"\n",
        "",
    );
    let g = gateway(&cfg, &[("TG_ADMIN", ADMIN)]);
    let a: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    assert_eq!(admin_call(a, "GET", "/admin/keys", "", None).status, 401);
    assert_eq!(
        admin_call(a, "GET", "/admin/keys", "", Some("nope-nope-nope-nope")).status,
        401
    );
    let r = admin_call(
        a,
        "POST",
        "/admin/keys",
        r#"{"id":"live","tenant":"acme","models":["gpt-4o"],"limits":{"rpm":100}}"#,
        Some(ADMIN),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("tg-"));
    assert_eq!(request(g.addr, &with_key(HI, &key)).status, 200);
    // Listing shows the key without its secret.
    let list = admin_call(a, "GET", "/admin/keys", "", Some(ADMIN));
    assert!(list.text().contains("\"live\"") && !list.text().contains(&key));
    // Duplicate id, bad limits: clear errors.
    let dup = admin_call(
        a,
        "POST",
        "/admin/keys",
        r#"{"id":"live","tenant":"acme"}"#,
        Some(ADMIN),
    );
    assert_eq!(dup.status, 409);
    let bad = admin_call(
        a,
        "POST",
        "/admin/keys",
        r#"{"tenant":"acme","limits":{"rpm":0}}"#,
        Some(ADMIN),
    );
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("limits.rpm"), "{}", bad.text());
    // Limits state names the scope.
    let lim = admin_call(a, "GET", "/admin/limits", "", Some(ADMIN));
    assert!(lim.text().contains("key:live"), "{}", lim.text());
    // Rotate: the old secret stops at once, the new one works.
    let r = admin_call(a, "POST", "/admin/keys/live/rotate", "", Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.text());
    let new_key = r.json()["key"].as_str().unwrap().to_string();
    assert_eq!(request(g.addr, &with_key(HI, &key)).status, 401);
    assert_eq!(request(g.addr, &with_key(HI, &new_key)).status, 200);
    // Revoke.
    assert_eq!(
        admin_call(a, "DELETE", "/admin/keys/live", "", Some(ADMIN)).status,
        200
    );
    assert_eq!(request(g.addr, &with_key(HI, &new_key)).status, 401);
    assert_eq!(
        admin_call(a, "DELETE", "/admin/keys/live", "", Some(ADMIN)).status,
        404
    );
    // Refusals are counted by reason, never by key.
    let metrics = request(a, &get("/metrics")).text();
    assert!(
        metrics.contains("tollgate_auth_rejections_total{reason=\"invalid_key\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("live"), "{metrics}");
}

/// Waits, when less than 15 s of the current UTC minute are left, for
/// the next one, so a per-minute window cannot roll over mid-test.
fn fresh_minute() {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if secs > 45 {
        std::thread::sleep(Duration::from_secs(61 - secs));
    }
}

fn limits_mode(admin: SocketAddr) -> String {
    admin_call(admin, "GET", "/admin/limits", "", Some(ADMIN)).json()["mode"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn with_redis_down_fail_open_enforces_limits_per_node_and_pushes_usage_when_back() {
    let port = free_port();
    let url_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let m = mock(&[]);
    let admin = free_port();
    let a: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let cfg = base(
        &m,
        Some(admin),
        &format!(
            "[store]\nkind = \"redis\"\nurl = \"redis://{url_addr}\"\n[auth]\nadmin_token_env = \"TG_ADMIN\"\n"
        ),
        &format!(
            "[[keys]]\nid = \"k\"\ntenant = \"t\"\nkey_sha256 = \"{}\"\nlimits = {{ rpm = 3 }}\n",
            sha(KEY_A)
        ),
    );
    fresh_minute();
    let g = gateway(&cfg, &[("TG_ADMIN", ADMIN)]);
    assert!(eventually(Duration::from_secs(3), || limits_mode(a) == "local"));
    for _ in 0..3 {
        let r = request(g.addr, &with_key(HI, KEY_A));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(request(g.addr, &with_key(HI, KEY_A)).status, 429);
    assert!(g.stderr().contains("store unreachable"), "{}", g.stderr());
    // Redis comes up on that address: limits are shared again and the
    // three requests admitted meanwhile are in the store's count.
    let redis = redis_on(url_addr);
    assert!(eventually(Duration::from_secs(3), || limits_mode(a) == "shared"));
    let client = redis::Client::open(format!("redis://{}", redis.addr)).unwrap();
    let mut c = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:limit:key:k:rpm:*")
        .query(&mut c)
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let n: u64 = redis::cmd("GET").arg(&keys[0]).query(&mut c).unwrap();
    assert!(n >= 3, "store count {n}");
}

#[test]
fn with_redis_down_fail_closed_refuses_limited_keys_only() {
    let port = free_port();
    let m = mock(&[]);
    let admin = free_port();
    let a: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let cfg = base(
        &m,
        Some(admin),
        &format!(
            "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\non_store_error = \"fail_closed\"\n[auth]\nadmin_token_env = \"TG_ADMIN\"\n"
        ),
        &format!(
            "[[keys]]\nid = \"limited\"\ntenant = \"t\"\nkey_sha256 = \"{}\"\nlimits = {{ rpm = 100 }}\n\
             [[keys]]\nid = \"free\"\ntenant = \"u\"\nkey_sha256 = \"{}\"\n",
            sha(KEY_A),
            sha(KEY_B)
        ),
    );
    let g = gateway(&cfg, &[("TG_ADMIN", ADMIN)]);
    assert!(eventually(Duration::from_secs(3), || limits_mode(a) == "closed"));
    let r = request(g.addr, &with_key(HI, KEY_A));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), "store_unavailable");
    assert_eq!(request(g.addr, &with_key(HI, KEY_B)).status, 200);
}

fn shared_node(m: &Proc, redis: &Proc, admin: u16, rest: &str) -> String {
    base(
        m,
        Some(admin),
        &format!(
            "[store]\nkind = \"redis\"\nurl = \"redis://{}\"\n[auth]\nmode = \"keys\"\nadmin_token_env = \"TG_ADMIN\"\nlease_fraction = 0.05\n",
            redis.addr
        ),
        rest,
    )
}

#[test]
fn two_nodes_share_one_rpm_limit_through_redis() {
    let redis = redis();
    let m = mock(&[]);
    let rest = format!(
        "[[keys]]\nid = \"k\"\ntenant = \"t\"\nkey_sha256 = \"{}\"\nlimits = {{ rpm = 40 }}\n\
         [[keys]]\nid = \"tk\"\ntenant = \"u\"\nkey_sha256 = \"{}\"\nlimits = {{ tpm = 600 }}\n",
        sha(KEY_A),
        sha(KEY_B)
    );
    let a = gateway(
        &shared_node(&m, &redis, free_port(), &rest),
        &[("TG_ADMIN", ADMIN)],
    );
    let b = gateway(
        &shared_node(&m, &redis, free_port(), &rest),
        &[("TG_ADMIN", ADMIN)],
    );
    fresh_minute();
    let mut ok = 0;
    let mut refused = 0;
    for i in 0..120 {
        let node = if i % 2 == 0 { &a } else { &b };
        match request(node.addr, &with_key(HI, KEY_A)).status {
            200 => ok += 1,
            429 => refused += 1,
            s => panic!("status {s}"),
        }
    }
    // Bound: the limit plus one lease (5% of 40 = 2) per node.
    assert!((40..=44).contains(&ok), "{ok} admitted, {refused} refused");
    assert_eq!(ok + refused, 120);
    // Tokens: each request reserves and spends prompt + 20; the nodes
    // together stay within 600 plus one lease (30) each.
    let mut spent = 0;
    let mut refusals = 0;
    for i in 0..80 {
        let node = if i % 2 == 0 { &a } else { &b };
        let r = request(node.addr, &with_key(HI, KEY_B));
        match r.status {
            200 => spent += r.json()["usage"]["total_tokens"].as_u64().unwrap(),
            429 => refusals += 1,
            s => panic!("status {s}"),
        }
    }
    assert!(
        refusals > 0,
        "600 tokens per minute never ran out ({spent} spent)"
    );
    assert!((540..=660).contains(&spent), "{spent} tokens admitted");
}

#[test]
fn a_key_revoked_on_one_node_stops_working_on_the_other_within_a_second() {
    let redis = redis();
    let m = mock(&[]);
    let (pa, pb) = (free_port(), free_port());
    let a = gateway(&shared_node(&m, &redis, pa, ""), &[("TG_ADMIN", ADMIN)]);
    let b = gateway(&shared_node(&m, &redis, pb, ""), &[("TG_ADMIN", ADMIN)]);
    let admin_a: SocketAddr = format!("127.0.0.1:{pa}").parse().unwrap();
    let r = admin_call(
        admin_a,
        "POST",
        "/admin/keys",
        r#"{"tenant":"acme"}"#,
        Some(ADMIN),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["key"].as_str().unwrap().to_string();
    let id = r.json()["id"].as_str().unwrap().to_string();
    // Usable on the node that made it at once, on the other within a second.
    assert_eq!(request(a.addr, &with_key(HI, &key)).status, 200);
    assert!(eventually(Duration::from_secs(1), || request(
        b.addr,
        &with_key(HI, &key)
    )
    .status
        == 200));
    let t0 = Instant::now();
    let r = admin_call(
        admin_a,
        "DELETE",
        &format!("/admin/keys/{id}"),
        "",
        Some(ADMIN),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(request(a.addr, &with_key(HI, &key)).status, 401);
    assert!(
        eventually(Duration::from_secs(1), || request(
            b.addr,
            &with_key(HI, &key)
        )
        .status
            == 401),
        "still accepted on the other node after 1 s"
    );
    assert!(t0.elapsed() < Duration::from_millis(1500));
}

#[test]
fn bad_auth_config_names_the_key_and_reason() {
    let m = mock(&[]);
    let cases = [
        (
            "[[keys]]\nid = \"k\"\ntenant = \"t\"\nkey_sha256 = \"xyz\"\n",
            "keys[0].key_sha256",
        ),
        (
            "[[keys]]\nid = \"k\"\ntenant = \"t\"\nkey_env = \"TG_NOT_SET_ANYWHERE\"\n",
            "keys[0].key_env",
        ),
        (
            &format!(
                "[[keys]]\nid = \"k\"\ntenant = \"t\"\nkey_sha256 = \"{}\"\nmodel_limits = {{ nope = {{ rpm = 1 }} }}\n",
                sha(KEY_A)
            ),
            "keys[0].model_limits.nope",
        ),
        (
            &format!(
                "[[keys]]\nid = \"k\"\ntenant = \"t\"\nkey_sha256 = \"{}\"\nlimits = {{ budget_period = \"week\" }}\n",
                sha(KEY_A)
            ),
            "keys[0].limits.budget_period",
        ),
        ("[auth]\nmode = \"maybe\"\n", "auth.mode"),
    ];
    for (rest, key) in cases {
        let (code, err, path) = check_config(&base(&m, None, "", rest));
        assert_ne!(code, 0, "{rest}");
        assert!(
            err.contains(&format!("{}: {key}:", path.display())),
            "{rest}\n{err}"
        );
    }
}

#[test]
fn the_ledger_bills_each_tenant_its_usage_at_the_model_price() {
    let m = mock(&[]);
    let admin = free_port();
    let cfg = base(
        &m,
        Some(admin),
        &format!("[store]\nflush_interval = \"10ms\"\n{ADMIN_AUTH}"),
        &format!(
            "[[keys]]\nid = \"a\"\ntenant = \"acme\"\nkey_sha256 = \"{}\"\n\
             [[keys]]\nid = \"b\"\ntenant = \"beta\"\nkey_sha256 = \"{}\"\n",
            sha(KEY_A),
            sha(KEY_B)
        ),
    );
    let g = gateway(&cfg, &[]);
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let (mut prompt, mut completion, mut n) = (0u64, 0u64, 0u64);
    for i in 0..9u64 {
        let key = if i % 3 == 0 { KEY_B } else { KEY_A };
        let body = format!(
            r#"{{"model":"gpt-4o","max_tokens":{},"messages":[{{"role":"user","content":"hello number {i}"}}]}}"#,
            5 + i
        );
        let r = request(g.addr, &with_key(&body, key));
        assert_eq!(r.status, 200, "{}", r.text());
        if key == KEY_A {
            prompt += r.json()["usage"]["prompt_tokens"].as_u64().unwrap();
            completion += r.json()["usage"]["completion_tokens"].as_u64().unwrap();
            n += 1;
        }
    }
    // gpt-4o costs 2.5 / 10 dollars per million tokens: micro-dollars per
    // token; each record rounds up to a whole micro-dollar.
    let mut acme = serde_json::Value::Null;
    assert!(
        eventually(Duration::from_secs(5), || {
            let u = admin_get(admin, "/admin/usage?tenant=acme").json();
            acme = u["tenants"][0]["totals"].clone();
            acme["requests"] == n
        }),
        "{acme}"
    );
    assert_eq!(acme["prompt_tokens"], prompt);
    assert_eq!(acme["completion_tokens"], completion);
    let cost = acme["cost_micros"].as_u64().unwrap();
    let exact = prompt as f64 * 2.5 + completion as f64 * 10.0;
    assert!(
        cost as f64 >= exact && (cost as f64) < exact + n as f64,
        "{cost} vs {exact}"
    );
    // Without the token the usage is not readable.
    assert_eq!(request(admin, &get("/admin/usage")).status, 401);
}

#[test]
fn per_model_limits_apply_to_that_model_only() {
    let m = mock(&[]);
    let cfg = base(
        &m,
        None,
        "",
        &format!(
            "[[keys]]\nid = \"k\"\ntenant = \"t\"\nkey_sha256 = \"{}\"\n\
             model_limits = {{ \"gpt-4o\" = {{ rpm = 2 }} }}\n",
            sha(KEY_A)
        ),
    );
    let g = gateway(&cfg, &[]);
    fresh_minute();
    let claude = r#"{"model":"claude-3","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(request(g.addr, &with_key(HI, KEY_A)).status, 200);
    assert_eq!(request(g.addr, &with_key(HI, KEY_A)).status, 200);
    let r = request(g.addr, &with_key(HI, KEY_A));
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("key:k/gpt-4o"), "{}", r.text());
    for _ in 0..3 {
        assert_eq!(request(g.addr, &with_key(claude, KEY_A)).status, 200);
    }
}
