//! `coil bench serve`: the server under load. Starts `coil serve` in this process on 127.0.0.1 (an ephemeral
//! port unless `--port` is given), then `--clients` concurrent clients each send streaming completions one after
//! another (pseudo-random prompt ids of `--prompt-tokens`, `--max-tokens` new tokens, no EOS stop) for
//! `--seconds`; requests in flight at the deadline finish and count. Reports requests/s, output tokens/s, time to
//! first token and the latency between streamed chunks (p50, p99), and the process's RSS before and after.

use super::serve::{config, load, ServeArgs};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use coil_serve::{client, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct ServeBenchArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Concurrent streaming clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Seconds during which new requests start.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Prompt length in tokens (distinct prompts, so the prefix cache does not help).
    #[arg(long, default_value_t = 64)]
    pub prompt_tokens: usize,
    /// New tokens per request.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

#[derive(Default)]
struct ClientStats {
    requests: usize,
    tokens: usize,
    ttft: Vec<f64>,
    itl: Vec<f64>,
    errors: Vec<String>,
}

/// One streaming request: (time to first chunk, gaps between chunks, completion tokens).
fn one_request(addr: std::net::SocketAddr, body: &Value) -> Result<(f64, Vec<f64>, usize)> {
    let t0 = Instant::now();
    let mut s = client::post_stream(addr, "/v1/completions", body)?;
    if s.status != 200 {
        let status = s.status;
        bail!("status {status}: {}", String::from_utf8_lossy(&s.rest()?));
    }
    let (mut first, mut last, mut gaps, mut tokens) = (None, t0, Vec::new(), 0);
    while let Some(e) = s.next_event()? {
        let now = Instant::now();
        if e == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&e)?;
        if let Some(err) = v.get("error") {
            bail!("{err}");
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
            continue;
        }
        match first {
            None => first = Some(now.duration_since(t0).as_secs_f64()),
            Some(_) => gaps.push(now.duration_since(last).as_secs_f64()),
        }
        last = now;
    }
    Ok((first.unwrap_or(f64::NAN), gaps, tokens))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

pub fn run(a: ServeBenchArgs) -> Result<()> {
    if a.clients == 0 || a.prompt_tokens == 0 || a.seconds.is_nan() || a.seconds <= 0.0 {
        bail!("--clients, --prompt-tokens and --seconds must be positive");
    }
    let mut cfg = config(&a.serve)?;
    if cfg.port == 8000 {
        cfg.port = 0;
    }
    cfg.max_tokens = cfg.max_tokens.max(a.new_tokens);
    cfg.max_prompt_tokens = cfg.max_prompt_tokens.max(a.prompt_tokens);
    let model = load(&a.serve)?;
    let rss_before = rss_mib();
    let server = Server::start(cfg.clone(), model).map_err(|e| anyhow!(e))?;
    let addr = server.addr();
    let vocab = server.state().vocab_limit.unwrap_or(server.state().vocab) as u64;
    let key = cfg.api_key.clone();
    if key.is_some() {
        bail!("coil bench serve runs its own server: drop --api-key");
    }
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..a.clients)
        .map(|c| {
            let (plen, new) = (a.prompt_tokens, a.new_tokens);
            std::thread::spawn(move || {
                let mut st = ClientStats::default();
                let mut r = 0u64;
                // At least one request per client, then new ones until the deadline.
                loop {
                    let prompt: Vec<u64> = (0..plen as u64)
                        .map(|i| ((c as u64 * 1_000_003 + r * 7919 + i) * 2_654_435_761) % vocab)
                        .collect();
                    r += 1;
                    let body = json!({"prompt": prompt, "max_tokens": new, "ignore_eos": true,
                                      "temperature": 0, "stream": true,
                                      "stream_options": {"include_usage": true}});
                    match one_request(addr, &body) {
                        Ok((ttft, gaps, tokens)) => {
                            st.requests += 1;
                            st.tokens += tokens;
                            st.ttft.push(ttft);
                            st.itl.extend(gaps);
                        }
                        Err(e) => st.errors.push(e.to_string()),
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                st
            })
        })
        .collect();
    let mut all = ClientStats::default();
    for h in handles {
        let st = h.join().map_err(|_| anyhow!("a client thread panicked"))?;
        all.requests += st.requests;
        all.tokens += st.tokens;
        all.ttft.extend(st.ttft);
        all.itl.extend(st.itl);
        all.errors.extend(st.errors);
    }
    let secs = t0.elapsed().as_secs_f64();
    let rss_after = rss_mib();
    drop(server);
    let report = json!({
        "clients": a.clients,
        "seconds": secs,
        "prompt_tokens": a.prompt_tokens,
        "new_tokens": a.new_tokens,
        "max_batch": cfg.max_batch,
        "requests": all.requests,
        "errors": all.errors.len(),
        "requests_per_s": all.requests as f64 / secs,
        "output_tokens_per_s": all.tokens as f64 / secs,
        "ttft_p50_ms": percentile(&mut all.ttft, 0.5) * 1e3,
        "ttft_p99_ms": percentile(&mut all.ttft, 0.99) * 1e3,
        "itl_p50_ms": percentile(&mut all.itl, 0.5) * 1e3,
        "itl_p99_ms": percentile(&mut all.itl, 0.99) * 1e3,
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
    });
    if a.json {
        println!("{report}");
    } else {
        let f = |k: &str| report[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{} clients, {:.1} s, prompts of {} tokens, {} new tokens each, --max-batch {}",
            a.clients, secs, a.prompt_tokens, a.new_tokens, cfg.max_batch
        );
        println!(
            "requests: {} ({:.2}/s), output tokens/s: {:.1}, errors: {}",
            all.requests,
            f("requests_per_s"),
            f("output_tokens_per_s"),
            all.errors.len()
        );
        println!(
            "time to first token: p50 {:.1} ms, p99 {:.1} ms; between chunks: p50 {:.2} ms, p99 {:.2} ms",
            f("ttft_p50_ms"),
            f("ttft_p99_ms"),
            f("itl_p50_ms"),
            f("itl_p99_ms")
        );
        println!(
            "server RSS: {:.1} MiB before the server started, {:.1} MiB after the run",
            f("rss_before_mib"),
            f("rss_after_mib")
        );
    }
    if let Some(e) = all.errors.first() {
        bail!("{} request(s) failed; the first: {e}", all.errors.len());
    }
    Ok(())
}
