//! The server over loopback with the tiny random llama (no download): each endpoint,
//! streaming, the policy extension, each kind of bad request, admission (429/503 with
//! Retry-After), fair interleaving, and a disconnect freeing KV. The client is a few lines of
//! raw HTTP/1.1 over `TcpStream`, so the tests can also hang up mid-stream.

use candle_core::quantized::GgmlDType;
use frugal_engine::generate::{
    generate, token_logprob, GenerateRequest, Generation, SamplingParams, Step,
};
use frugal_engine::model::chat_template::ChatMessage;
use frugal_engine::model::llama::LogitRows;
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
    send_request_with(addr, method, path, body, "")
}

/// [`send_request`] with extra header lines (each ending in `\r\n`).
fn send_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    extra_headers: &str,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
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
    read_response(send_request(addr, method, path, body))
}

fn read_response(stream: TcpStream) -> Resp {
    let mut r = BufReader::new(stream);
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
        "frugal_num_requests_running 0",
        "frugal_num_requests_waiting 0",
        "frugal_batch_size_bucket{le=\"1\"}",
        "frugal_batch_tokens_count",
        "frugal_time_per_output_token_seconds_count",
        "frugal_prefix_cache_hit_rate 0",
        "frugal_prefix_cache_bytes 0",
        "frugal_engine_steps_total",
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
        ("n out of range", chat, json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 99}).to_string().into(), 400, "`n` must be between 1 and 16"),
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

/// A request run alone through the engine's own single-sequence loop: `policy`, greedy,
/// prefill in chunks of `chunk` tokens, past the end-of-sequence token.
fn engine_alone(prompt: &str, policy: &str, max_tokens: usize, chunk: usize) -> (String, Vec<u32>) {
    let dir = tempfile::tempdir().unwrap();
    let lm = load_tiny(&dir);
    let ids = lm.tokenizer.encode(prompt).unwrap();
    let mut seq =
        frugal_methods::build(&policy.parse().unwrap(), lm.model.config().kv_layout()).unwrap();
    let req = GenerateRequest {
        sampling: SamplingParams::default(),
        max_tokens,
        stop: vec![],
    };
    let mut g = Generation::new(&lm, &seq, ids, &req)
        .unwrap()
        .ignore_eos(true);
    let mut text = String::new();
    loop {
        if let Step::Token {
            text: t, finish, ..
        } = g.step(&lm, &mut seq, chunk).unwrap()
        {
            text.push_str(&t);
            if finish.is_some() {
                break;
            }
        }
    }
    (text, g.tokens().to_vec())
}

const MIXED_POLICIES: [&str; 3] = [
    "full",
    "kivi:bits=4,group=8,residual=8",
    "omnisparse:tau=0.9,window=16,sink=1",
];

#[test]
fn batched_steps_mixing_policies_match_each_request_run_alone() {
    let (srv, _dir) = start(ServerConfig {
        max_concurrent: 8,
        prefill_chunk: 16,
        ..Default::default()
    });
    let prompts: Vec<String> = (0..6)
        .map(|i| format!("{} request number {i} asks", &long_prompt()[..100 + 30 * i]))
        .collect();
    let addr = srv.addr;
    let handles: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let policy = MIXED_POLICIES[i % 3];
            let body = json!({"model": MODEL, "prompt": p, "max_tokens": 40, "temperature": 0,
                              "ignore_eos": true, "frugal": {"policy": policy}});
            std::thread::spawn(move || post(addr, "/v1/completions", &body))
        })
        .collect();
    let answers: Vec<Value> = handles
        .into_iter()
        .map(|h| {
            let r = h.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()
        })
        .collect();
    for (i, (p, v)) in prompts.iter().zip(&answers).enumerate() {
        let policy = MIXED_POLICIES[i % 3];
        assert_eq!(v["frugal"]["policy"], policy);
        let (alone, tokens) = engine_alone(p, policy, 40, 16);
        assert_eq!(tokens.len(), 40);
        assert_eq!(
            v["choices"][0]["text"].as_str().unwrap(),
            alone,
            "request {i} ({policy}): batched greedy text differs from the request run alone"
        );
    }
    let most = srv.metrics.max_batch_sequences();
    assert!(
        most >= 3,
        "steps ran several sequences in one forward call (largest batch {most})"
    );
    assert!(
        metric(srv.addr, "frugal_batch_size_count") < 6.0 * 50.0,
        "fewer forward steps than sequence steps: the sequences shared them"
    );
    wait_until("KV to be freed", || {
        metric(srv.addr, "frugal_num_requests_running") == 0.0
    });
    for policy in ["full", "kivi", "omnisparse"] {
        assert_eq!(
            metric(
                srv.addr,
                &format!("frugal_kv_resident_bytes{{policy=\"{policy}\"}}")
            ),
            0.0
        );
    }
}

/// The engine's log-softmax for a prompt: each row's logits as a vector.
fn engine_logits(ids: &[u32]) -> Vec<Vec<f32>> {
    let dir = tempfile::tempdir().unwrap();
    let lm = load_tiny(&dir);
    let mut seq = Sequence::dense(lm.model.config().kv_layout());
    lm.model
        .forward(ids, &mut seq, LogitRows::All)
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn prompt_ids(text: &str) -> Vec<u32> {
    let dir = tempfile::tempdir().unwrap();
    load_tiny(&dir).tokenizer.encode(text).unwrap()
}

#[test]
fn logprobs_on_completions_and_chat_are_the_models_log_softmax() {
    let (srv, _dir) = start(ServerConfig::default());
    let ids = prompt_ids("Once upon a time");
    let body = json!({"model": MODEL, "prompt": ids, "max_tokens": 6, "temperature": 0,
                      "logprobs": 3, "ignore_eos": true});
    let v = post(srv.addr, "/v1/completions", &body).json();
    let lp = &v["choices"][0]["logprobs"];
    let token_lps = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(token_lps.len(), 6);
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
    assert_eq!(lp["text_offset"].as_array().unwrap().len(), 6);
    let first = token_logprob(&engine_logits(&ids).pop().unwrap(), 0, 3);
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3, "{top:?}");
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        let own = token_lps[i].as_f64().unwrap();
        assert!(own <= 0.0);
        assert!(
            (own - best).abs() < 1e-5,
            "greedy: each token is its step's most likely"
        );
        if i == 0 {
            assert!(
                (best - first.top[0].1 as f64).abs() < 1e-4,
                "{best} vs {first:?}"
            );
        }
    }

    let mut chat = chat_body("hi there", 5);
    chat["logprobs"] = json!(true);
    chat["top_logprobs"] = json!(2);
    let v = post(srv.addr, "/v1/chat/completions", &chat).json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for e in content {
        let tops = e["top_logprobs"].as_array().unwrap();
        assert_eq!(tops.len(), 2);
        assert!(tops[0]["logprob"].as_f64() >= tops[1]["logprob"].as_f64());
        assert!(
            (e["logprob"].as_f64().unwrap() - tops[0]["logprob"].as_f64().unwrap()).abs() < 1e-6
        );
        assert!(e["bytes"].is_array() && e["token"].is_string());
    }
    // Streaming carries each token's logprobs in its chunk.
    chat["stream"] = json!(true);
    let events = post(srv.addr, "/v1/chat/completions", &chat).events();
    let streamed: usize = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .map(Vec::len)
        })
        .sum();
    assert_eq!(streamed, content.len());
}

#[test]
fn echo_with_logprobs_scores_the_prompt_as_lm_eval_reads_it() {
    let (srv, _dir) = start(ServerConfig {
        prefill_chunk: 4,
        ..Default::default()
    });
    let ids = prompt_ids("the quick brown fox jumps over the lazy dog");
    assert!(ids.len() > 6, "several prefill chunks");
    let rows = engine_logits(&ids);
    // lm-evaluation-harness's `local-completions` log-likelihood request.
    let body = json!({"model": MODEL, "prompt": [ids.clone()], "max_tokens": 1, "temperature": 0,
                      "logprobs": 1, "echo": true, "seed": 1234});
    let v = post(srv.addr, "/v1/completions", &body).json();
    let lp = &v["choices"][0]["logprobs"];
    let token_lps = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(
        token_lps.len(),
        ids.len() + 1,
        "the prompt's tokens, then the generated one"
    );
    assert!(token_lps[0].is_null() && lp["top_logprobs"][0].is_null());
    for i in 1..ids.len() {
        let want = token_logprob(&rows[i - 1], ids[i], 1).logprob as f64;
        let got = token_lps[i].as_f64().unwrap();
        // The server prefills in chunks of 4 (the dense kernel reading the f16 store in
        // place), the reference in one call (the blocked kernel on the rows widened to f32):
        // the same values summed in another order, a few 1e-4 in a log-probability.
        assert!(
            (got - want).abs() < 1e-3,
            "prompt token {i}: {got} vs {want}"
        );
    }
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("the quick brown fox"), "echo: {text:?}");

    // max_tokens 0 scores only; two prompts give two choices.
    let other = prompt_ids("a b c d");
    let body = json!({"model": MODEL, "prompt": [ids.clone(), other.clone()], "max_tokens": 0,
                      "logprobs": 0, "echo": true});
    let v = post(srv.addr, "/v1/completions", &body).json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[1]["index"], 1);
    assert_eq!(
        choices[1]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        other.len()
    );
    assert_eq!(v["usage"]["completion_tokens"], 0);
    assert_eq!(v["usage"]["prompt_tokens"], ids.len() + other.len());
}

#[test]
fn n_choices_are_separate_sequences_in_one_answer() {
    let (srv, _dir) = start(ServerConfig {
        max_concurrent: 8,
        ..Default::default()
    });
    let body = json!({"model": MODEL, "prompt": "abc", "max_tokens": 12, "temperature": 1.0,
                      "seed": 5, "n": 3, "ignore_eos": true});
    let v = post(srv.addr, "/v1/completions", &body).json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let texts: Vec<&str> = choices
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["finish_reason"], "length");
    }
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "sampled choices differ: {texts:?}"
    );
    assert_eq!(v["usage"]["completion_tokens"], 36);
    assert_eq!(
        v["usage"]["prompt_tokens"].as_u64().unwrap(),
        prompt_ids("abc").len() as u64,
        "the prompt counts once"
    );
    // The same request streamed: chunks tagged by index rebuild the same three texts.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let events = post(srv.addr, "/v1/completions", &stream).events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut rebuilt = vec![String::new(); 3];
    let mut finished = 0;
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        let ch = &c["choices"][0];
        let i = ch["index"].as_u64().unwrap() as usize;
        rebuilt[i].push_str(ch["text"].as_str().unwrap_or(""));
        finished += usize::from(ch["finish_reason"].is_string());
    }
    assert_eq!(finished, 3);
    assert_eq!(rebuilt, texts);
    // n beyond the slots the server runs at once is refused up front.
    let mut many = body.clone();
    many["n"] = json!(9);
    let r = post(srv.addr, "/v1/completions", &many);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "too_many_sequences");
}

#[test]
fn bad_values_of_the_client_fields_are_named_400s() {
    let (srv, _dir) = start(ServerConfig::default());
    let chat = "/v1/chat/completions";
    let comp = "/v1/completions";
    let msg = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(&str, &str, Value, &str, &str)> = vec![
        (
            "unknown field",
            comp,
            json!({"model": MODEL, "prompt": "a", "max_token": 3}),
            "max_token",
            "unknown field",
        ),
        (
            "unknown chat field",
            chat,
            json!({"model": MODEL, "messages": msg, "echo": true}),
            "echo",
            "unknown field",
        ),
        (
            "top_logprobs without logprobs",
            chat,
            json!({"model": MODEL, "messages": msg, "top_logprobs": 2}),
            "top_logprobs",
            "needs `logprobs`",
        ),
        (
            "top_logprobs too many",
            chat,
            json!({"model": MODEL, "messages": msg, "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
            "between 0 and 20",
        ),
        (
            "logprobs negative",
            comp,
            json!({"model": MODEL, "prompt": "a", "logprobs": -1}),
            "logprobs",
            "between 0 and 20",
        ),
        (
            "logprobs a string",
            comp,
            json!({"model": MODEL, "prompt": "a", "logprobs": "yes"}),
            "logprobs",
            "an integer",
        ),
        (
            "n zero",
            comp,
            json!({"model": MODEL, "prompt": "a", "n": 0}),
            "n",
            "between 1 and 16",
        ),
        (
            "best_of",
            comp,
            json!({"model": MODEL, "prompt": "a", "best_of": 3}),
            "best_of",
            "not supported",
        ),
        (
            "streamed echo logprobs",
            comp,
            json!({"model": MODEL, "prompt": "a", "echo": true, "logprobs": 1, "stream": true}),
            "echo",
            "not streamed",
        ),
        (
            "max_tokens 0 without echo",
            comp,
            json!({"model": MODEL, "prompt": "a", "max_tokens": 0}),
            "max_tokens",
            "at least 1",
        ),
        (
            "empty token list",
            comp,
            json!({"model": MODEL, "prompt": [[]]}),
            "prompt[0]",
            "empty",
        ),
        (
            "token outside vocab",
            comp,
            json!({"model": MODEL, "prompt": [[1, 999999]]}),
            "prompt[0]",
            "vocabulary",
        ),
        (
            "prompt batch of numbers and text",
            comp,
            json!({"model": MODEL, "prompt": ["a", 3]}),
            "prompt[1]",
            "must be",
        ),
        (
            "logit_bias",
            comp,
            json!({"model": MODEL, "prompt": "a", "logit_bias": {"3": 1}}),
            "logit_bias",
            "not supported",
        ),
    ];
    for (what, path, body, param, says) in cases {
        let r = post(srv.addr, path, &body);
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        let e = &r.json()["error"];
        assert_eq!(e["param"], param, "{what}: {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{what}: {e}");
    }
    assert_eq!(
        post(
            srv.addr,
            comp,
            &json!({"model": MODEL, "prompt": "a", "max_tokens": 2})
        )
        .status,
        200
    );
}

#[test]
fn a_cached_prefix_gives_the_same_answer_as_a_cold_prefill_for_full() {
    // A question shorter than one block (16 tokens here): the second-to-last block boundary
    // of the first prompt then lies inside the shared document.
    let document = long_prompt();
    let ask = |q: &str| format!("{document}Q: {q}");
    let cold_cfg = ServerConfig {
        prefill_chunk: 32,
        ..Default::default()
    };
    let (cold, _d1) = start(cold_cfg.clone());
    let (warm, _d2) = start(ServerConfig {
        prefix_cache_bytes: 64 << 20,
        prefix_block: 16,
        ..cold_cfg
    });
    let body = |q: &str, policy: &str| {
        json!({"model": MODEL, "prompt": ask(q), "max_tokens": 24, "temperature": 0,
               "ignore_eos": true, "frugal": {"policy": policy}})
    };
    let first = post(warm.addr, "/v1/completions", &body("who?", "full")).json();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert!(metric(warm.addr, "frugal_prefix_cache_entries") >= 1.0);
    assert!(metric(warm.addr, "frugal_prefix_cache_bytes") > 0.0);
    for q in ["why?", "how so?"] {
        let reused = post(warm.addr, "/v1/completions", &body(q, "full")).json();
        let cached = reused["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        let prompt = reused["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(
            cached >= 16 && cached < prompt,
            "resumed from a cached prefix: {cached} of {prompt}"
        );
        let fresh = post(cold.addr, "/v1/completions", &body(q, "full")).json();
        assert_eq!(fresh["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(
            reused["choices"][0]["text"], fresh["choices"][0]["text"],
            "{q}: the cached prefix and a cold prefill give the same answer"
        );
    }
    assert!(metric(warm.addr, "frugal_prefix_cache_hits_total") >= 32.0);
    assert!(metric(warm.addr, "frugal_prefix_cache_hit_rate") > 0.0);
    // Another policy never reads full's prefixes; KV of live sequences is back to zero while
    // the prefix cache still holds its bytes.
    let other = post(
        warm.addr,
        "/v1/completions",
        &body("who?", "streaming:sink=2,window=64"),
    )
    .json();
    assert_eq!(other["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    wait_until("live KV to be freed", || {
        metric(warm.addr, "frugal_num_requests_running") == 0.0
    });
    assert_eq!(
        metric(warm.addr, "frugal_kv_resident_bytes{policy=\"full\"}"),
        0.0
    );
    assert!(metric(warm.addr, "frugal_prefix_cache_bytes") > 0.0);
}

#[test]
fn a_client_that_stops_reading_does_not_hold_the_engine_or_its_kv() {
    let (srv, _dir) = start(ServerConfig::default());
    let body = json!({"model": MODEL, "prompt": "a b c", "max_tokens": 200, "temperature": 0.8,
                      "seed": 9, "stream": true, "ignore_eos": true});
    // Reads the first event, then neither reads nor hangs up.
    let stalled = open_stream(srv.addr, &body);
    // Others are served meanwhile; the stalled request runs to its end and frees its KV,
    // its remaining events waiting for the client in the answer's buffer.
    assert_eq!(
        post(srv.addr, "/v1/chat/completions", &chat_body("meanwhile", 4)).status,
        200
    );
    wait_until("the unread request to finish", || {
        metric(srv.addr, "frugal_completion_tokens_total") >= 200.0
    });
    wait_until("its KV to be freed", || {
        metric(srv.addr, "frugal_kv_reserved_bytes") == 0.0
            && metric(srv.addr, "frugal_kv_resident_bytes{policy=\"full\"}") == 0.0
    });
    assert_eq!(metric(srv.addr, "frugal_num_requests_running"), 0.0);
    // The client can still read its whole answer afterwards.
    let mut r = stalled;
    let mut rest = String::new();
    while let Some(c) = read_chunk(&mut r) {
        rest.push_str(&String::from_utf8(c).unwrap());
    }
    assert!(rest.contains("[DONE]"), "the answer ends properly");
}

#[test]
fn tokenizer_endpoints_answer_as_vllm_does() {
    let (srv, dir) = start(ServerConfig::default());
    let lm = load_tiny(&dir);
    let info = get(srv.addr, "/tokenizer_info");
    assert_eq!(info.status, 200, "{}", info.body);
    let info = info.json();
    let eos = lm.tokenizer.eos_token_id().unwrap();
    assert_eq!(
        info["eos_token"],
        lm.tokenizer.id_to_token(eos).unwrap().as_str()
    );
    assert_eq!(info["chat_template"], lm.chat_template.source());
    assert_eq!(info["add_bos_token"], lm.tokenizer.adds_bos());

    let text = "The quick brown fox jumps over the lazy dog.";
    let mut ours = lm.tokenizer.encode(text).unwrap();
    let with = post(srv.addr, "/tokenize", &json!({"prompt": text})).json();
    assert_eq!(with["tokens"], json!(ours));
    assert_eq!(with["count"], ours.len());
    if lm.tokenizer.adds_bos() {
        ours.remove(0);
    }
    let without = post(
        srv.addr,
        "/tokenize",
        &json!({"prompt": text, "add_special_tokens": false}),
    )
    .json();
    assert_eq!(
        without["tokens"],
        json!(ours),
        "no BOS without special tokens"
    );
    let back = post(srv.addr, "/detokenize", &json!({"tokens": ours})).json();
    assert_eq!(
        back["prompt"],
        lm.tokenizer.decode(&ours, false).unwrap().as_str()
    );

    let vocab = lm.model.config().vocab_size;
    for (path, body, says) in [
        ("/tokenize", json!({}), "`prompt` is required"),
        (
            "/tokenize",
            json!({"prompt": 3}),
            "`prompt` must be a string",
        ),
        (
            "/tokenize",
            json!({"prompt": "a", "bogus": 1}),
            "unknown field `bogus`",
        ),
        (
            "/detokenize",
            json!({"tokens": "a"}),
            "an array of token ids",
        ),
        (
            "/detokenize",
            json!({"tokens": [vocab]}),
            "outside the vocabulary",
        ),
    ] {
        let r = post(srv.addr, path, &body);
        assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(says), "{path} {body}: {msg}");
    }
    assert_eq!(
        http(srv.addr, "POST", "/tokenize", b"{not json").status,
        400
    );
}

#[test]
fn the_policy_header_selects_the_policy_as_the_body_field_does() {
    let (srv, _dir) = start(ServerConfig {
        prefill_chunk: 16,
        ..Default::default()
    });
    let body = json!({"model": MODEL, "prompt": long_prompt(), "max_tokens": 4, "temperature": 0});
    let send = |body: &Value, header: &str| {
        read_response(send_request_with(
            srv.addr,
            "POST",
            "/v1/completions",
            body.to_string().as_bytes(),
            &format!("X-Frugal-Policy: {header}\r\n"),
        ))
    };
    let by_header = send(&body, "streaming:sink=4,window=16");
    assert_eq!(by_header.status, 200, "{}", by_header.body);
    let by_header = by_header.json();
    assert_eq!(by_header["frugal"]["policy"], "streaming:sink=4,window=16");
    let mut with_field = body.clone();
    with_field["frugal"] = json!({"policy": "streaming:sink=4,window=16"});
    let by_field = post(srv.addr, "/v1/completions", &with_field).json();
    assert_eq!(by_header["choices"], by_field["choices"]);
    assert_eq!(
        by_header["frugal"]["kv_peak_bytes"],
        by_field["frugal"]["kv_peak_bytes"]
    );
    // Both given and equal: fine; different: a 400 naming both.
    assert_eq!(send(&with_field, "streaming:sink=4,window=16").status, 200);
    let clash = send(&with_field, "full");
    assert_eq!(clash.status, 400, "{}", clash.body);
    assert!(clash.body.contains("differ"), "{}", clash.body);
    let bad = send(&body, "nosuch");
    assert_eq!(bad.status, 400, "{}", bad.body);
    let e = &bad.json()["error"];
    assert_eq!(e["param"], "x-frugal-policy");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("unknown policy `nosuch`"),
        "{e}"
    );
}
