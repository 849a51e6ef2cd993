//! The server over loopback with the tiny random llama (no download): each endpoint,
//! streaming, the policy extension, each kind of bad request, admission (429/503 with
//! Retry-After), fair interleaving, and a disconnect freeing KV. The client is a few lines of
//! raw HTTP/1.1 over `TcpStream`, so the tests can also hang up mid-stream.

use candle_core::quantized::GgmlDType;
use frugal_engine::generate::{generate, GenerateRequest, SamplingParams};
use frugal_engine::model::chat_template::ChatMessage;
use frugal_engine::model::{self, llama::WeightFormat, LoadedModel};
use frugal_engine::sequence::Sequence;
use frugal_engine::testing::{write_tiny_gguf, TinyGgufOptions};
use frugal_server::{spawn, RunningServer, ServerConfig};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const MODEL: &str = "tiny";
/// Bytes a full cache holds per token of the tiny model: 3 layers × 2 KV heads × (2 × 16 f32 + 1 position).
const FULL_BYTES_PER_TOKEN: usize = 3 * 2 * (2 * 16 * 4 + 4);

fn load_tiny(dir: &tempfile::TempDir) -> LoadedModel {
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, GgmlDType::F32, 7, TinyGgufOptions::default()).unwrap();
    model::load(&path, WeightFormat::Native).unwrap()
}

fn start(cfg: ServerConfig) -> (RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let lm = load_tiny(&dir);
    let cfg = ServerConfig {
        port: 0,
        model_id: Some(MODEL.into()),
        ..cfg
    };
    (spawn(lm, cfg).unwrap(), dir)
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The `data:` payloads of an SSE body, in order.
    fn events(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect()
    }
}

fn send_request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before reading a large body; a failed write is fine then.
    let _ = s.write_all(body);
    s
}

fn read_head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            return (status, headers);
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
}

/// Reads one chunk of a chunked body; `None` at the end.
fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size = String::new();
    r.read_line(&mut size).ok()?;
    let n = usize::from_str_radix(size.trim(), 16).ok()?;
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(n);
    (n > 0).then_some(buf)
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Resp {
    let mut r = BufReader::new(send_request(addr, method, path, body));
    let (status, headers) = read_head(&mut r);
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut bytes = Vec::new();
    if chunked {
        while let Some(c) = read_chunk(&mut r) {
            bytes.extend(c);
        }
    } else {
        r.read_to_end(&mut bytes).unwrap();
    }
    Resp {
        status,
        headers,
        body: String::from_utf8(bytes).unwrap(),
    }
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    http(addr, "POST", path, body.to_string().as_bytes())
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    http(addr, "GET", path, b"")
}

/// A value of `/metrics`, by its full series name (with labels), 0 when absent.
fn metric(addr: SocketAddr, series: &str) -> f64 {
    let text = get(addr, "/metrics").body;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.parse().unwrap())
        })
        .unwrap_or(0.0)
}

fn chat_body(content: &str, max_tokens: usize) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0})
}

/// An open streaming request whose first event has arrived (so it is admitted and decoding).
fn open_stream(addr: SocketAddr, body: &Value) -> BufReader<TcpStream> {
    let mut r = BufReader::new(send_request(
        addr,
        "POST",
        "/v1/completions",
        body.to_string().as_bytes(),
    ));
    let (status, _) = read_head(&mut r);
    assert_eq!(status, 200);
    let first = read_chunk(&mut r).expect("a first event");
    assert!(String::from_utf8(first).unwrap().starts_with("data: {"));
    r
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn long_prompt() -> String {
    "the quick brown fox jumps over the lazy dog. ".repeat(6)
}

#[test]
fn models_health_and_metrics_endpoints() {
    let (srv, _dir) = start(ServerConfig::default());
    let models = get(srv.addr, "/v1/models");
    assert_eq!(models.status, 200);
    let m = models.json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], MODEL);
    assert_eq!(m["data"][0]["object"], "model");
    assert_eq!(get(srv.addr, "/v1/models/tiny").json()["id"], MODEL);
    assert_eq!(get(srv.addr, "/v1/models/other").status, 404);
    let h = get(srv.addr, "/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");

    assert_eq!(
        post(srv.addr, "/v1/chat/completions", &chat_body("hello", 4)).status,
        200
    );
    let metrics = get(srv.addr, "/metrics");
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    for name in [
        "frugal_requests_total{endpoint=\"chat_completions\",status=\"200\"} 1",
        "frugal_prompt_tokens_total",
        "frugal_completion_tokens_total",
        "frugal_time_to_first_token_seconds_bucket{le=\"+Inf\"} 1",
        "frugal_inter_token_latency_seconds_count",
        "frugal_queue_depth 0",
        "frugal_kv_resident_bytes{policy=\"full\"} 0",
        "frugal_kv_compression_ratio",
    ] {
        assert!(
            metrics.body.contains(name),
            "missing {name} in\n{}",
            metrics.body
        );
    }
    let completion = metric(srv.addr, "frugal_completion_tokens_total");
    assert!((1.0..=4.0).contains(&completion), "{completion}");
}

/// Greedy output of the engine itself for a chat prompt: what the server must return.
fn engine_reference(prompt: &str, max_tokens: usize, chat: bool) -> (String, usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let lm = load_tiny(&dir);
    let text = match chat {
        true => lm
            .chat_template
            .render(&[ChatMessage::user(prompt)], true)
            .unwrap(),
        false => prompt.to_string(),
    };
    let ids = lm.tokenizer.encode(&text).unwrap();
    let mut seq = Sequence::dense(lm.model.config().kv_layout());
    let req = GenerateRequest {
        sampling: SamplingParams::default(),
        max_tokens,
        stop: vec![],
    };
    let out = generate(&lm, &mut seq, &ids, &req, &mut |_| true).unwrap();
    (out.text, ids.len(), out.tokens.len())
}

#[test]
fn chat_completion_matches_the_engine_and_counts_usage() {
    let (srv, _dir) = start(ServerConfig::default());
    let r = post(
        srv.addr,
        "/v1/chat/completions",
        &chat_body("Tell me a story", 12),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let (text, prompt_tokens, completion_tokens) = engine_reference("Tell me a story", 12, true);
    assert_eq!(v["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(v["usage"]["completion_tokens"], completion_tokens);
    assert_eq!(
        v["usage"]["total_tokens"],
        prompt_tokens + completion_tokens
    );
    let finish = if completion_tokens == 12 {
        "length"
    } else {
        "stop"
    };
    assert_eq!(v["choices"][0]["finish_reason"], finish);
    assert_eq!(v["frugal"]["policy"], "full");
    assert!(v["frugal"]["kv_peak_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn streaming_concatenates_to_the_full_answer_and_ends_with_done() {
    let (srv, _dir) = start(ServerConfig::default());
    let (text, prompt_tokens, completion_tokens) = engine_reference("Once upon a time", 16, false);
    let body = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0,
                      "stream": true, "stream_options": {"include_usage": true}});
    let r = post(srv.addr, "/v1/completions", &body);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], prompt_tokens);
    assert_eq!(usage["completion_tokens"], completion_tokens);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        if completion_tokens == 16 {
            "length"
        } else {
            "stop"
        }
    );

    let mut chat = chat_body("hi there", 8);
    chat["stream"] = json!(true);
    let r = post(srv.addr, "/v1/chat/completions", &chat);
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage chunk unless asked"
    );
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let whole = post(srv.addr, "/v1/chat/completions", &chat_body("hi there", 8)).json();
    assert_eq!(
        streamed,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

#[test]
fn ignore_eos_generates_exactly_max_tokens() {
    let (srv, _dir) = start(ServerConfig::default());
    for seed in 0..4 {
        let body = json!({"model": MODEL, "prompt": "a", "max_tokens": 300, "temperature": 1.0, "seed": seed, "ignore_eos": true});
        let v = post(srv.addr, "/v1/completions", &body).json();
        assert_eq!(v["usage"]["completion_tokens"], 300);
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }
}

#[test]
fn stop_strings_cut_the_answer() {
    let (srv, _dir) = start(ServerConfig::default());
    let (text, _, _) = engine_reference("abc", 40, false);
    // Stop at a piece of the greedy continuation: the answer is what came before it.
    let chars: Vec<char> = text.chars().collect();
    assert!(
        chars.len() >= 5,
        "the tiny model's greedy text is long enough: {text:?}"
    );
    let stop: String = chars[3..5].iter().collect();
    let stop = stop.as_str();
    let cut = &text[..text.find(stop).unwrap()];
    for stream in [false, true] {
        let body = json!({"model": MODEL, "prompt": "abc", "max_tokens": 40, "temperature": 0, "stop": [stop], "stream": stream});
        let r = post(srv.addr, "/v1/completions", &body);
        let got: String = match stream {
            false => r.json()["choices"][0]["text"].as_str().unwrap().to_string(),
            true => r
                .events()
                .iter()
                .filter(|e| *e != "[DONE]")
                .map(|e| serde_json::from_str::<Value>(e).unwrap())
                .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
                .collect(),
        };
        assert_eq!(got, cut, "stream={stream}");
    }
}

#[test]
fn policy_extension_selects_the_policy_and_bad_specs_are_400() {
    // Prefill in chunks of 16 tokens: an evicting policy then never holds the whole prompt.
    let default = ServerConfig {
        default_policy: "streaming:sink=2,window=8".parse().unwrap(),
        prefill_chunk: 16,
        ..Default::default()
    };
    let (srv, _dir) = start(default);
    let prompt = long_prompt();
    let mut body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 10, "temperature": 0});
    let by_default = post(srv.addr, "/v1/completions", &body).json();
    assert_eq!(
        by_default["frugal"]["policy"], "streaming:sink=2,window=8",
        "--policy is the default"
    );
    body["frugal"] = json!({"policy": "full"});
    let full = post(srv.addr, "/v1/completions", &body).json();
    assert_eq!(full["frugal"]["policy"], "full");
    let (reference, _, _) = engine_reference(&prompt, 10, false);
    assert_eq!(
        full["choices"][0]["text"],
        reference.as_str(),
        "chunked prefill gives the engine's answer"
    );
    body["frugal"] = json!({"policy": "streaming:sink=4,window=16"});
    let streaming = post(srv.addr, "/v1/completions", &body).json();
    assert_eq!(streaming["frugal"]["policy"], "streaming:sink=4,window=16");
    let (full_kv, stream_kv, tiny_kv) = (
        full["frugal"]["kv_peak_bytes"].as_u64().unwrap(),
        streaming["frugal"]["kv_peak_bytes"].as_u64().unwrap(),
        by_default["frugal"]["kv_peak_bytes"].as_u64().unwrap(),
    );
    assert!(
        stream_kv < full_kv / 2 && tiny_kv < stream_kv,
        "full {full_kv}, window 16 {stream_kv}, window 8 {tiny_kv}"
    );

    for (spec, says) in [
        (json!("streaming:window=0"), "streaming:window"),
        (json!("nosuch"), "unknown policy `nosuch`"),
        (json!("streaming:bogus=1"), "unknown knob `bogus`"),
        (json!("full+streaming"), "cannot be combined"),
        (json!(""), "empty"),
        (json!(3), "frugal.policy"),
    ] {
        body["frugal"] = json!({"policy": spec});
        let r = post(srv.addr, "/v1/completions", &body);
        assert_eq!(r.status, 400, "{spec}: {}", r.body);
        let e = &r.json()["error"];
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["param"], "frugal.policy");
        assert!(e["message"].as_str().unwrap().contains(says), "{spec}: {e}");
    }
    body["frugal"] = json!({"polcy": "full"});
    assert!(
        post(srv.addr, "/v1/completions", &body).json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("frugal.polcy")
    );
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let cfg = ServerConfig {
        max_body_bytes: 4096,
        ..Default::default()
    };
    let (srv, _dir) = start(cfg);
    let chat = "/v1/chat/completions";
    let long_max = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000});
    let big =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(10_000)}]});
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", chat, b"{\"model\": \"tiny\", \"messages\": [".to_vec(), 400, "malformed JSON"),
        ("not an object", chat, b"[1, 2]".to_vec(), 400, "JSON object"),
        ("unknown model", chat, json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}).to_string().into(), 404, "gpt-9"),
        ("missing model", chat, json!({"messages": [{"role": "user", "content": "hi"}]}).to_string().into(), 400, "`model` is required"),
        ("missing messages", chat, json!({"model": MODEL}).to_string().into(), 400, "`messages` is required"),
        ("empty messages", chat, json!({"model": MODEL, "messages": []}).to_string().into(), 400, "at least one"),
        ("bad role", chat, json!({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}).to_string().into(), 400, "wizard"),
        ("max_tokens over context", chat, long_max.to_string().into(), 400, "maximum context length is 512"),
        ("negative temperature", chat, json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": -0.5}).to_string().into(), 400, "temperature"),
        ("temperature a string", chat, json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).to_string().into(), 400, "temperature"),
        ("zero max_tokens", chat, json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).to_string().into(), 400, "at least 1"),
        ("n > 1", chat, json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}).to_string().into(), 400, "`n`"),
        ("oversized body", chat, big.to_string().into(), 413, "4096"),
        ("missing prompt", "/v1/completions", json!({"model": MODEL}).to_string().into(), 400, "`prompt` is required"),
        ("prompt over context", "/v1/completions", json!({"model": MODEL, "prompt": "word ".repeat(700)}).to_string().into(), 400, "maximum context length"),
        ("unknown endpoint", "/v1/embeddings", b"{}".to_vec(), 404, "/v1/embeddings"),
    ];
    for (what, path, body, status, says) in cases {
        let r = http(srv.addr, "POST", path, &body);
        assert_eq!(r.status, status, "{what}: {}", r.body);
        let e = &r.json()["error"];
        assert!(e["message"].as_str().unwrap().contains(says), "{what}: {e}");
        assert!(
            e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(),
            "{what}: {e}"
        );
    }
    let r = get(srv.addr, chat);
    assert_eq!(r.status, 405);
    assert!(r.json()["error"]["message"].is_string());
    let ok = post(srv.addr, chat, &chat_body("still there?", 3));
    assert_eq!(
        ok.status, 200,
        "the server keeps serving after bad requests"
    );
    assert_eq!(
        metric(
            srv.addr,
            "frugal_requests_total{endpoint=\"chat_completions\",status=\"400\"}"
        ),
        11.0
    );
}

#[test]
fn over_capacity_gets_429_or_503_with_retry_after() {
    // Room for one request of prompt + max_tokens = 500 tokens at a time.
    let cfg = ServerConfig {
        kv_budget: 500 * FULL_BYTES_PER_TOKEN,
        max_concurrent: 8,
        max_queue: 0,
        ..Default::default()
    };
    let (srv, _dir) = start(cfg);
    let long = json!({"model": MODEL, "prompt": "a b c", "max_tokens": 490, "temperature": 0.8, "seed": 1, "stream": true, "ignore_eos": true});
    let first = open_stream(srv.addr, &long);
    let r = post(
        srv.addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "x", "max_tokens": 100}),
    );
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("capacity"));
    // More than the whole budget can never fit: that is the client's to fix, a 400.
    let r = post(
        srv.addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "x", "max_tokens": 505}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "kv_budget_exceeded");
    drop(first);
    wait_until("the first request to go", || {
        metric(srv.addr, "frugal_active_sequences") == 0.0
    });
    assert_eq!(
        post(
            srv.addr,
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x", "max_tokens": 100})
        )
        .status,
        200
    );

    // With a queue: a waiting request times out with 503 when nothing frees up.
    let cfg = ServerConfig {
        max_concurrent: 1,
        max_queue: 1,
        queue_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (srv, _dir) = start(cfg);
    let first = open_stream(srv.addr, &long);
    let r = post(
        srv.addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "x", "max_tokens": 5}),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.json()["error"]["code"], "queue_timeout");
    // A queued request is admitted once the running one goes away.
    let addr = srv.addr;
    let waiter = std::thread::spawn(move || {
        let cfg_body = json!({"model": MODEL, "prompt": "x", "max_tokens": 5});
        post(addr, "/v1/completions", &cfg_body).status
    });
    wait_until("the request to queue", || {
        metric(srv.addr, "frugal_queue_depth") == 1.0
    });
    drop(first);
    assert_eq!(waiter.join().unwrap(), 200);
    assert_eq!(metric(srv.addr, "frugal_queue_depth"), 0.0);
}

#[test]
fn a_client_hanging_up_mid_stream_frees_its_kv_at_once() {
    let (srv, _dir) = start(ServerConfig::default());
    let body = json!({"model": MODEL, "prompt": "a b c", "max_tokens": 500, "temperature": 0.8, "seed": 3, "stream": true, "ignore_eos": true});
    let stream = open_stream(srv.addr, &body);
    assert!(
        metric(srv.addr, "frugal_kv_resident_bytes{policy=\"full\"}") > 0.0,
        "the live stream holds KV"
    );
    assert!(metric(srv.addr, "frugal_kv_reserved_bytes") > 0.0);
    drop(stream);
    wait_until("KV to be freed", || {
        metric(srv.addr, "frugal_kv_resident_bytes{policy=\"full\"}") == 0.0
            && metric(srv.addr, "frugal_kv_reserved_bytes") == 0.0
    });
    assert_eq!(
        metric(srv.addr, "frugal_generations_total{reason=\"cancelled\"}"),
        1.0,
        "it was cut short, not finished"
    );
    assert!(metric(srv.addr, "frugal_completion_tokens_total") < 500.0);
    assert_eq!(metric(srv.addr, "frugal_active_sequences"), 0.0);
    assert_eq!(
        post(srv.addr, "/v1/chat/completions", &chat_body("next", 3)).status,
        200
    );
}

#[test]
fn a_client_hanging_up_before_a_whole_answer_frees_its_kv() {
    let (srv, _dir) = start(ServerConfig::default());
    let body = json!({"model": MODEL, "prompt": "a b c", "max_tokens": 500, "temperature": 0.8, "seed": 4, "ignore_eos": true});
    let conn = send_request(
        srv.addr,
        "POST",
        "/v1/completions",
        body.to_string().as_bytes(),
    );
    wait_until("the request to run", || {
        metric(srv.addr, "frugal_kv_resident_bytes{policy=\"full\"}") > 0.0
    });
    drop(conn);
    wait_until("KV to be freed", || {
        metric(srv.addr, "frugal_kv_reserved_bytes") == 0.0
    });
    assert_eq!(
        metric(srv.addr, "frugal_kv_resident_bytes{policy=\"full\"}"),
        0.0
    );
    assert_eq!(
        metric(srv.addr, "frugal_generations_total{reason=\"cancelled\"}"),
        1.0
    );
}

#[test]
fn concurrent_requests_interleave_and_match_their_solo_answers() {
    let (srv, _dir) = start(ServerConfig {
        max_concurrent: 4,
        ..Default::default()
    });
    let prompts = ["alpha beta", "gamma delta epsilon", "zeta"];
    let solo: Vec<String> = prompts
        .iter()
        .map(|p| {
            post(
                srv.addr,
                "/v1/completions",
                &json!({"model": MODEL, "prompt": p, "max_tokens": 150, "temperature": 0}),
            )
            .json()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let addr = srv.addr;
    let start = Instant::now();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = json!({"model": MODEL, "prompt": p, "max_tokens": 150, "temperature": 0, "stream": true});
            std::thread::spawn(move || {
                let mut r = BufReader::new(send_request(addr, "POST", "/v1/completions", body.to_string().as_bytes()));
                assert_eq!(read_head(&mut r).0, 200);
                let (mut first, mut last, mut text) = (None, Duration::ZERO, String::new());
                while let Some(c) = read_chunk(&mut r) {
                    let c = String::from_utf8(c).unwrap();
                    for data in c.lines().filter_map(|l| l.strip_prefix("data: ")) {
                        if data == "[DONE]" {
                            continue;
                        }
                        let v: Value = serde_json::from_str(data).unwrap();
                        text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
                        first.get_or_insert(start.elapsed());
                        last = start.elapsed();
                    }
                }
                (first.unwrap(), last, text)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, (_, _, text)) in results.iter().enumerate() {
        assert_eq!(
            text, &solo[i],
            "interleaving must not change a greedy answer"
        );
    }
    let latest_first = results.iter().map(|r| r.0).max().unwrap();
    let earliest_last = results.iter().map(|r| r.1).min().unwrap();
    assert!(
        latest_first < earliest_last,
        "every stream started before any ended: {results:?}"
    );
}
