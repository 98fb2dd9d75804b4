//! The server against the library, over real HTTP on 127.0.0.1 (ephemeral ports), on the tiny HF fixtures of
//! both families (pure Mamba2 and the Nemotron-H hybrid): greedy and seeded completions equal
//! `coil_infer::generate`'s tokens (and HF's greedy tokens), SSE framing, chat templates, echo + logprobs
//! against the log-softmax of the model's logits, 32 concurrent streams, the prefix cache (identical output,
//! prefill skipped, counted in /metrics), overload, cancellation and bad input.

mod common;

use candle_core::{DType, Device, Tensor};
use coil_infer::SamplingParams;
use coil_serve::client;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const FAMILIES: [&str; 2] = ["mamba2_tiny", "nemotron_h_tiny"];

#[test]
fn greedy_and_seeded_completions_equal_the_library_and_hf() {
    for name in FAMILIES {
        let dir = model_dir(name, None);
        let server = start(dir.path(), |_| {});
        // HF transformers' greedy tokens for the fixture's prompts (20 new tokens each).
        let cpu = Device::Cpu;
        let fx = candle_core::safetensors::load(fixture(name).join("fixture.safetensors"), &cpu)
            .unwrap();
        let to_rows = |t: &Tensor| -> Vec<Vec<u32>> {
            t.to_dtype(DType::I64)
                .unwrap()
                .to_vec2::<i64>()
                .unwrap()
                .into_iter()
                .map(|r| r.into_iter().map(|v| v as u32).collect())
                .collect()
        };
        let hf_prompts = to_rows(&fx["input_ids"]);
        let hf_tokens = to_rows(&fx["gen_tokens"]);
        let r = ok_json(post(
            &server,
            "/v1/completions",
            &json!({"model": "tiny", "prompt": hf_prompts, "max_tokens": 20, "temperature": 0,
                    "ignore_eos": true, "return_token_ids": true}),
        ));
        assert_eq!(r["object"], "text_completion");
        let choices = r["choices"].as_array().unwrap();
        assert_eq!(choices.len(), hf_prompts.len());
        for (c, want) in choices.iter().zip(&hf_tokens) {
            assert_eq!(&u32s(&c["token_ids"]), want, "{name}: HF greedy tokens");
            assert_eq!(c["finish_reason"], "length");
        }

        // Longer prompts (several 16-token prefill chunks), greedy and sampled with a seed: the library's tokens.
        let prompts = vec![ids(37, 1), ids(5, 2), ids(50, 3)];
        for (body, sampling, seed) in [
            (json!({"temperature": 0}), SamplingParams::greedy(), 0u64),
            (
                json!({"temperature": 0.8, "seed": 7}),
                SamplingParams {
                    temperature: 0.8,
                    top_k: 0,
                    top_p: 0.0,
                },
                7,
            ),
            (
                json!({"temperature": 1.2, "top_p": 0.9, "seed": 3}),
                SamplingParams {
                    temperature: 1.2,
                    top_k: 0,
                    top_p: 0.9,
                },
                3,
            ),
            (
                json!({"temperature": 0.7, "top_k": 5, "seed": 11}),
                SamplingParams {
                    temperature: 0.7,
                    top_k: 5,
                    top_p: 0.0,
                },
                11,
            ),
        ] {
            let mut req = json!({"prompt": prompts, "max_tokens": 24, "ignore_eos": true, "return_token_ids": true});
            for (k, v) in body.as_object().unwrap() {
                req[k] = v.clone();
            }
            let r = ok_json(post(&server, "/v1/completions", &req));
            let want = library_tokens(dir.path(), &prompts, sampling, seed, 24);
            let tok = coil_data::tokenizer::ByteTokenizer;
            for (i, c) in r["choices"].as_array().unwrap().iter().enumerate() {
                let got = u32s(&c["token_ids"]);
                assert_eq!(got, want[i], "{name} {body}: prompt {i}");
                assert_eq!(u32s(&c["prompt_token_ids"]), prompts[i]);
                assert_eq!(c["index"], i);
                // The text is the tokens' text.
                let text = coil_data::Tokenizer::decode(&tok, &got).unwrap();
                assert_eq!(c["text"], text.as_str(), "{name}");
            }
            assert_eq!(r["usage"]["completion_tokens"], 24 * 3);
            assert_eq!(r["usage"]["prompt_tokens"], 37 + 5 + 50);
        }
    }
}

fn completion_text_and_finish(events: &[String]) -> (String, Option<String>, Option<Value>) {
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}"));
        if let Some(u) = v.get("usage") {
            usage = Some(u.clone());
            continue;
        }
        assert_eq!(v["object"], "text_completion");
        let c = &v["choices"][0];
        text += c["text"].as_str().unwrap();
        if let Some(f) = c["finish_reason"].as_str() {
            assert!(finish.is_none(), "two finish reasons");
            finish = Some(f.to_string());
        }
    }
    (text, finish, usage)
}

#[test]
fn sse_streams_completions_and_chat() {
    let dir = model_dir("nemotron_h_tiny", None);
    let server = start(dir.path(), |_| {});
    let body = json!({"prompt": "ROMEO:", "max_tokens": 20, "temperature": 0, "ignore_eos": true});
    let whole = ok_json(post(&server, "/v1/completions", &body));
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});

    // The raw framing: `data: {json}` events separated by blank lines, the last one `data: [DONE]`.
    let s = client::post_stream(server.addr(), "/v1/completions", &sbody).unwrap();
    assert_eq!(s.status, 200);
    assert!(s
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let raw = String::from_utf8(s.rest().unwrap()).unwrap();
    assert!(raw.ends_with("data: [DONE]\n\n"), "{raw}");
    for block in raw.trim_end().split("\n\n") {
        assert!(
            block.starts_with("data: ") && !block.contains('\n'),
            "{block:?}"
        );
    }

    let events = sse_events(client::post_stream(server.addr(), "/v1/completions", &sbody).unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(events.len() > 3, "one event per token or so: {events:?}");
    let (text, finish, usage) = completion_text_and_finish(&events);
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert_eq!(finish.as_deref(), Some("length"));
    assert_eq!(usage.unwrap()["completion_tokens"], 20);

    // Chat: the first delta names the role, the contents add up to the whole response's message.
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "temperature": 0,
                      "ignore_eos": true});
    let whole = ok_json(post(&server, "/v1/chat/completions", &chat));
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    let mut schat = chat.clone();
    schat["stream"] = json!(true);
    let events =
        sse_events(client::post_stream(server.addr(), "/v1/chat/completions", &schat).unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let mut content = String::new();
    let mut finish = None;
    for e in &events[1..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        let c = &v["choices"][0];
        content += c["delta"]["content"].as_str().unwrap_or("");
        if let Some(f) = c["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    assert_eq!(
        content,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(finish.as_deref(), Some("length"));
}

#[test]
fn stop_strings_end_the_text_before_them() {
    let dir = model_dir("mamba2_tiny", None);
    let server = start(dir.path(), |_| {});
    let body = json!({"prompt": [1, 2, 3], "max_tokens": 40, "temperature": 0, "ignore_eos": true});
    let full = ok_json(post(&server, "/v1/completions", &body))["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    // A stop string taken from the middle of the greedy text (at a character boundary).
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 12, "{full:?}");
    let stop: String = chars[8..10].iter().collect();
    let want = &full[..full.find(&stop).unwrap()];
    let mut sbody = body.clone();
    sbody["stop"] = json!([stop]);
    let r = ok_json(post(&server, "/v1/completions", &sbody));
    assert_eq!(r["choices"][0]["text"], want);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    sbody["stream"] = json!(true);
    let events = sse_events(client::post_stream(server.addr(), "/v1/completions", &sbody).unwrap());
    let (text, finish, _) = completion_text_and_finish(&events);
    assert_eq!(text, want);
    assert_eq!(finish.as_deref(), Some("stop"));
}

#[test]
fn chat_template_from_the_model_directory_or_the_fallback() {
    let template = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}<{{ m.role }}>{{ m.content.strip() }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
    let dir = model_dir("mamba2_tiny", Some(template));
    let server = start(dir.path(), |_| {});
    let msgs = json!([{"role": "system", "content": "Be brief. "}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]);
    let r = ok_json(post(
        &server,
        "/v1/chat/completions",
        &json!({"messages": msgs, "max_tokens": 8, "temperature": 0, "ignore_eos": true, "return_token_ids": true}),
    ));
    let rendered = "<system>Be brief.<user>Hi<assistant>";
    let c = &r["choices"][0];
    assert_eq!(
        u32s(&c["prompt_token_ids"]),
        rendered.bytes().map(u32::from).collect::<Vec<_>>()
    );
    // The same tokens as a completion of the rendered text.
    let done = ok_json(post(
        &server,
        "/v1/completions",
        &json!({"prompt": rendered, "max_tokens": 8, "temperature": 0, "ignore_eos": true, "return_token_ids": true}),
    ));
    assert_eq!(c["token_ids"], done["choices"][0]["token_ids"]);
    assert_eq!(c["message"]["content"], done["choices"][0]["text"]);
    // The template's raise_exception is a 400 about the messages.
    let r = post(
        &server,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "tool", "content": "x"}]}),
    );
    assert_eq!(r.status, 400);
    let e = r.json().unwrap();
    assert_eq!(e["error"]["param"], "messages");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no tools here"),
        "{e}"
    );
    drop(server);

    // Without a chat_template: `role: content` lines and `assistant:`.
    let dir = model_dir("mamba2_tiny", None);
    let server = start(dir.path(), |_| {});
    let r = ok_json(post(
        &server,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "return_token_ids": true}),
    ));
    let want = "user: Hi\nassistant:";
    assert_eq!(
        u32s(&r["choices"][0]["prompt_token_ids"]),
        want.bytes().map(u32::from).collect::<Vec<_>>()
    );
}

fn log_softmax_rows(dir: &std::path::Path, prompt: &[u32]) -> Vec<Vec<f64>> {
    let e = engine(dir);
    let ids = Tensor::from_slice(prompt, (1, prompt.len()), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap();
    let logits = e.model().forward(&ids, None).unwrap();
    let rows = logits.get(0).unwrap().to_vec2::<f32>().unwrap();
    rows.into_iter()
        .map(|r| {
            let mx = r.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let lse = mx + r.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln();
            r.iter().map(|&v| v as f64 - lse).collect()
        })
        .collect()
}

#[test]
fn echo_logprobs_equal_the_log_softmax_of_the_logits() {
    for name in FAMILIES {
        let dir = model_dir(name, None);
        let server = start(dir.path(), |_| {});
        let prompt = ids(41, 5); // three 16-token prefill chunks
        let want = log_softmax_rows(dir.path(), &prompt);
        // What lm-evaluation-harness's local-completions sends for loglikelihood.
        let r = ok_json(post(
            &server,
            "/v1/completions",
            &json!({"model": "tiny", "prompt": [prompt.clone()], "max_tokens": 1, "temperature": 0,
                    "logprobs": 1, "echo": true, "seed": 1234}),
        ));
        let c = &r["choices"][0];
        let lp = &c["logprobs"];
        let token_logprobs = lp["token_logprobs"].as_array().unwrap();
        assert_eq!(token_logprobs.len(), prompt.len() + 1);
        assert!(token_logprobs[0].is_null());
        assert!(lp["top_logprobs"][0].is_null());
        for i in 1..prompt.len() {
            let got = token_logprobs[i].as_f64().unwrap();
            let exp = want[i - 1][prompt[i] as usize];
            assert!(
                (got - exp).abs() < 1e-4,
                "{name}: position {i}: {got} vs {exp}"
            );
            // top_logprobs holds the most likely token with its log-probability.
            let top = lp["top_logprobs"][i].as_object().unwrap();
            let best = want[i - 1]
                .iter()
                .cloned()
                .fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(top.len(), 1);
            assert!((top.values().next().unwrap().as_f64().unwrap() - best).abs() < 1e-4);
        }
        // The generated token is the greedy one, with its log-probability.
        let last = &want[prompt.len() - 1];
        let argmax = (0..256)
            .max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a)))
            .unwrap();
        let got = token_logprobs[prompt.len()].as_f64().unwrap();
        assert!((got - last[argmax]).abs() < 1e-4, "{name}");
        let tok = coil_data::tokenizer::ByteTokenizer;
        let text =
            coil_data::Tokenizer::decode(&tok, &[prompt.clone(), vec![argmax as u32]].concat())
                .unwrap();
        assert_eq!(c["text"], text.as_str());
        assert_eq!(lp["tokens"].as_array().unwrap().len(), prompt.len() + 1);
        // max_tokens 0 with echo: the prompt alone.
        let r = ok_json(post(
            &server,
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 0, "logprobs": 0, "echo": true}),
        ));
        let c = &r["choices"][0];
        assert_eq!(
            c["logprobs"]["token_logprobs"].as_array().unwrap().len(),
            prompt.len()
        );
        assert_eq!(c["finish_reason"], "length");
        assert_eq!(r["usage"]["completion_tokens"], 0);
    }
}

#[test]
fn chat_logprobs_and_top_logprobs() {
    let dir = model_dir("mamba2_tiny", None);
    let server = start(dir.path(), |_| {});
    let r = ok_json(post(
        &server,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0,
                "ignore_eos": true, "logprobs": true, "top_logprobs": 3, "return_token_ids": true}),
    ));
    let c = &r["choices"][0];
    let content = c["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 5);
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(e["logprob"], top[0]["logprob"]);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
    }
}

#[test]
fn thirty_two_concurrent_streams_all_complete_correctly() {
    let dir = model_dir("nemotron_h_tiny", None);
    let server = start(dir.path(), |c| c.max_batch = 8);
    let prompts: Vec<Vec<u32>> = (0..32).map(|i| ids(3 + (i * 7) % 40, i as u32)).collect();
    let want = library_tokens(dir.path(), &prompts, SamplingParams::greedy(), 0, 16);
    let addr = server.addr();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = json!({"prompt": p, "max_tokens": 16, "temperature": 0, "ignore_eos": true,
                              "stream": true, "return_token_ids": true});
            std::thread::spawn(move || {
                let events =
                    sse_events(client::post_stream(addr, "/v1/completions", &body).unwrap());
                assert_eq!(events.last().unwrap(), "[DONE]");
                let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
                u32s(&last["choices"][0]["token_ids"])
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), want[i], "stream {i}");
    }
    eventually("the batch to empty", || {
        metric(&server, "coil_num_requests_running") == 0.0
    });
    assert_eq!(metric(&server, "coil_generation_tokens_total"), 32.0 * 16.0);
}

#[test]
fn a_prefix_cache_hit_gives_identical_output_and_skips_the_prefix() {
    for name in FAMILIES {
        let dir = model_dir(name, None);
        let cached = start(dir.path(), |_| {});
        let uncached = start(dir.path(), |c| c.prefix_cache_bytes = 0);
        let a = ids(50, 9);
        // b shares a's first 40 tokens: the deepest shared block boundary is 32.
        let b: Vec<u32> = [&a[..40], &ids(10, 4)[..]].concat();
        let body = |p: &Vec<u32>| {
            json!({"prompt": p, "max_tokens": 12, "temperature": 0, "ignore_eos": true, "logprobs": 2,
                   "return_token_ids": true})
        };
        let ra = ok_json(post(&cached, "/v1/completions", &body(&a)));
        assert_eq!(ra["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(metric(&cached, "coil_prefill_tokens_computed_total"), 50.0);
        assert_eq!(metric(&cached, "coil_prefix_cache_hit_tokens_total"), 0.0);
        assert_eq!(metric(&cached, "coil_prefix_cache_entries"), 3.0); // after 16, 32 and 48 tokens

        let hit = ok_json(post(&cached, "/v1/completions", &body(&b)));
        assert_eq!(
            hit["usage"]["prompt_tokens_details"]["cached_tokens"], 32,
            "{name}"
        );
        assert_eq!(metric(&cached, "coil_prefix_cache_hit_tokens_total"), 32.0);
        // Only the 18 tokens after the snapshot were prefilled.
        assert_eq!(
            metric(&cached, "coil_prefill_tokens_computed_total"),
            50.0 + 18.0
        );
        let miss = ok_json(post(&uncached, "/v1/completions", &body(&b)));
        assert_eq!(miss["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(metric(&uncached, "coil_prefix_cache_hit_tokens_total"), 0.0);
        // Identical: the tokens, and their log-probabilities to the last bit.
        assert_eq!(
            hit["choices"][0]["token_ids"], miss["choices"][0]["token_ids"],
            "{name}"
        );
        assert_eq!(
            hit["choices"][0]["logprobs"], miss["choices"][0]["logprobs"],
            "{name}"
        );
        assert_eq!(
            u32s(&hit["choices"][0]["token_ids"]),
            library_tokens(
                dir.path(),
                std::slice::from_ref(&b),
                SamplingParams::greedy(),
                0,
                12
            )[0],
            "{name}"
        );
        // The identical prompt again starts from its deepest snapshot that leaves a token to prefill (48).
        let again = ok_json(post(&cached, "/v1/completions", &body(&a)));
        assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], 48);
        assert_eq!(
            again["choices"][0]["token_ids"],
            ra["choices"][0]["token_ids"]
        );
        assert_eq!(
            again["choices"][0]["logprobs"],
            ra["choices"][0]["logprobs"]
        );
    }
}

/// Waits until `f` holds (or fails after 20 s).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn overload_is_a_503_and_cancellation_frees_the_slot() {
    let dir = model_dir("mamba2_tiny", None);
    let server = start(dir.path(), |c| {
        c.max_batch = 1;
        c.max_queue = 1;
        c.max_tokens = 1_000_000;
    });
    let addr = server.addr();
    let endless =
        json!({"prompt": [1, 2, 3], "max_tokens": 1_000_000, "ignore_eos": true, "stream": true});
    // One running (its first token arrived), one waiting: the queue is full.
    let mut running = client::post_stream(addr, "/v1/completions", &endless).unwrap();
    assert!(running.next_event().unwrap().is_some());
    let waiting = client::post_stream(addr, "/v1/completions", &endless).unwrap();
    eventually("the second request to queue", || {
        metric(&server, "coil_num_requests_waiting") == 1.0
    });
    let t0 = Instant::now();
    let r = post(
        &server,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1}),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "503 at once, not a hang"
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json().unwrap()["error"]["type"], "overloaded_error");

    // The client of the running request goes away: its slot goes to the waiting one.
    running.close();
    let mut waiting = waiting;
    assert!(
        waiting.next_event().unwrap().is_some(),
        "the queued request starts"
    );
    assert_eq!(metric(&server, "coil_num_requests_waiting"), 0.0);
    waiting.close();
    eventually("both requests to count as cancelled", || {
        let text = client::get(addr, "/metrics").unwrap().text();
        text.contains("coil_sequences_finished_total{reason=\"cancelled\"} 2")
    });
    eventually("both slots to be freed", || {
        metric(&server, "coil_num_requests_running") == 0.0
    });

    // A non-streaming client that goes away cancels too.
    let body = json!({"prompt": [1, 2, 3], "max_tokens": 1_000_000, "ignore_eos": true});
    let b = body.to_string();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        b.len()
    );
    std::io::Write::write_all(&mut conn, (head + &b).as_bytes()).unwrap();
    eventually("the non-streaming request to run", || {
        metric(&server, "coil_num_requests_running") == 1.0
    });
    drop(conn);
    eventually("the non-streaming request to count as cancelled", || {
        let text = client::get(addr, "/metrics").unwrap().text();
        text.contains("coil_sequences_finished_total{reason=\"cancelled\"} 3")
    });
    let t0 = Instant::now();
    let r = ok_json(post(
        &server,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 2}),
    ));
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert!(t0.elapsed() < Duration::from_secs(10), "the slot was free");
}

#[test]
fn bad_input_gets_the_right_4xx_and_the_server_keeps_serving() {
    let dir = model_dir("nemotron_h_tiny", None);
    let server = start(dir.path(), |c| {
        c.max_prompt_tokens = 20;
        c.max_tokens = 30;
        c.max_body_bytes = 2000;
    });
    let addr = server.addr();
    let raw = |path: &str, body: &[u8]| {
        client::request(
            addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(body),
        )
        .unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("/v1/completions", b"{\"prompt\": ".to_vec(), 400, None),
        ("/v1/completions", b"[]".to_vec(), 400, None),
        (
            "/v1/completions",
            br#"{"prompt": "a", "max_tokens": "5"}"#.to_vec(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "temperature": "hot"}"#.to_vec(),
            400,
            Some("temperature"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "max_tokens": 31}"#.to_vec(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "max_tokens": -1}"#.to_vec(),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": [1, 256]}"#.to_vec(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": [[1], [-3]]}"#.to_vec(),
            400,
            Some("prompt[1]"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "aaaaaaaaaaaaaaaaaaaaa"}"#.to_vec(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": ""}"#.to_vec(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            br#"{"max_tokens": 3}"#.to_vec(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "stop": [1]}"#.to_vec(),
            400,
            Some("stop[0]"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "top_p": 0}"#.to_vec(),
            400,
            Some("top_p"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "n": 100}"#.to_vec(),
            400,
            Some("n"),
        ),
        (
            "/v1/completions",
            br#"{"prompt": "a", "model": "gpt-4"}"#.to_vec(),
            404,
            Some("model"),
        ),
        (
            "/v1/chat/completions",
            br#"{"messages": "hi"}"#.to_vec(),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            br#"{"messages": [{"role": "user"}], "stream": 1}"#.to_vec(),
            400,
            Some("stream"),
        ),
        (
            "/v1/chat/completions",
            br#"{"messages": [{"role": "user", "content": "aaaaaaaaaaaaaaaaaaaaaaaaa"}]}"#.to_vec(),
            400,
            Some("messages"),
        ),
        (
            "/v1/completions",
            format!(r#"{{"prompt": "{}"}}"#, "a".repeat(3000)).into_bytes(),
            413,
            None,
        ),
        ("/v1/nothing", b"{}".to_vec(), 404, None),
    ];
    for (path, body, status, param) in cases {
        let r = raw(path, &body);
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        assert_eq!(r.status, status, "{shown}: {}", r.text());
        let e = r.json().unwrap_or_else(|e| panic!("{shown}: {e}"));
        let err = &e["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{e}"
        );
        assert!(err["type"].is_string() && err.get("code").is_some(), "{e}");
        assert_eq!(err["param"].as_str(), param, "{shown}: {e}");
    }
    let r = client::get(addr, "/v1/models/gpt-4").unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json().unwrap()["error"]["param"], "model");
    let r = client::get(addr, "/v1/completions").unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.json().unwrap()["error"]["type"], "invalid_request_error");
    // Still serving.
    let r = ok_json(post(
        &server,
        "/v1/completions",
        &json!({"prompt": "ok", "max_tokens": 3}),
    ));
    assert_eq!(r["usage"]["completion_tokens"], 3);
    let rejected = client::get(addr, "/metrics").unwrap().text();
    assert!(
        rejected.contains("coil_requests_rejected_total{status=\"400\"}"),
        "{rejected}"
    );
}

#[test]
fn models_health_metrics_and_the_api_key() {
    let dir = model_dir("mamba2_tiny", None);
    let server = start(dir.path(), |c| c.api_key = Some("sekrit".into()));
    let addr = server.addr();
    let h = client::get(addr, "/health").unwrap();
    assert_eq!(h.status, 200);
    let m = client::get(addr, "/metrics").unwrap();
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    for name in [
        "coil_num_requests_running",
        "coil_num_requests_waiting",
        "coil_prompt_tokens_total",
        "coil_generation_tokens_total",
        "coil_prefix_cache_hit_tokens_total",
        "coil_time_to_first_token_seconds_bucket",
        "coil_inter_token_latency_seconds_bucket",
    ] {
        assert!(m.text().contains(name), "{name}");
    }
    // /v1 needs the key.
    let r = client::get(addr, "/v1/models").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json().unwrap()["error"]["type"], "authentication_error");
    let r = client::request(
        addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer nope")],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 401);
    let r = client::request(
        addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer sekrit")],
        None,
    )
    .unwrap();
    let v = ok_json(r);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "tiny");
    let body = json!({"prompt": "a", "max_tokens": 2}).to_string();
    let r = client::request(addr, "POST", "/v1/completions", &[], Some(body.as_bytes())).unwrap();
    assert_eq!(r.status, 401);
    let r = client::request(
        addr,
        "POST",
        "/v1/completions",
        &[("Authorization", "Bearer sekrit")],
        Some(body.as_bytes()),
    )
    .unwrap();
    assert_eq!(ok_json(r)["model"], "tiny");
    // Time to first token and inter-token latency were observed.
    assert_eq!(
        metric(&server, "coil_time_to_first_token_seconds_count"),
        1.0
    );
    assert_eq!(
        metric(&server, "coil_inter_token_latency_seconds_count"),
        1.0
    );
    assert_eq!(metric(&server, "coil_prompt_tokens_total"), 1.0);
}
