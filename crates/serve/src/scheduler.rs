//! Continuous batching: one loop on its own thread owns the engine, the batch and the prefix cache.
//!
//! Each iteration (a step boundary): waiting sequences are admitted while the batch has room; cancelled ones
//! (their client went away, or a stop string ended them) leave; then up to `prefill_chunk` prompt tokens are
//! prefilled, block by block in arrival order (a long prompt spreads over several iterations); a sequence whose
//! prompt is done samples its first token and joins the decoding batch; then every decoding sequence advances
//! by one token in one batched step. A finished sequence leaves at once and its slot goes to the next waiting
//! one.
//!
//! Handlers talk to the loop through [`Scheduler::submit`] (all of a request's sequences or none: a full queue
//! is a 503) and read the sequence's [`Event`]s from a channel. Dropping the receiver cancels.

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::prefix_cache::PrefixCache;
use coil_infer::sampling::check_finite;
use coil_infer::{Engine, Sampler, SamplingParams, SeqState};
use coil_model::ModelState;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// KV-cache positions preallocated per sequence at most (a cache grows past it as needed).
const KV_RESERVE: usize = 1024;

/// A token's log-probability under the model (log-softmax of its logits, before temperature) and the `top`
/// most likely tokens with theirs, most likely first.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Log-softmax of `logits` at `id`, and the `top` largest entries.
pub fn token_logprob(logits: &[f32], id: u32, top: usize) -> TokenLogprob {
    let mx = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = mx
        + logits
            .iter()
            .map(|&v| (v as f64 - mx).exp())
            .sum::<f64>()
            .ln();
    let lp = |v: f32| (v as f64 - lse) as f32;
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &v) in logits.iter().enumerate() {
            if best.len() < top || v > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, b)| b >= v);
                best.insert(at, (i as u32, v));
                best.truncate(top);
            }
        }
    }
    TokenLogprob {
        id,
        logprob: logits
            .get(id as usize)
            .map_or(f32::NEG_INFINITY, |&v| lp(v)),
        top: best.into_iter().map(|(i, v)| (i, lp(v))).collect(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The end-of-sequence token (it is the last token sent).
    Eos,
    /// `max_tokens` generated.
    Length,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The prompt is prefilled: `cached` of its tokens came from the prefix cache; `logprobs` holds one entry per
    /// prompt token after the first when the request asked for them.
    Prompt {
        cached: usize,
        logprobs: Vec<TokenLogprob>,
    },
    Token {
        id: u32,
        logprob: Option<TokenLogprob>,
    },
    Done(Finish),
    Error(String),
}

/// One sequence to generate (one prompt, one choice).
pub struct SeqRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// The sampler's random stream (the choice index), so choices of one seed differ.
    pub stream: u64,
    pub eos: Option<u32>,
    pub vocab_limit: Option<usize>,
    /// `Some(n)`: send the prompt tokens' log-probabilities with the n most likely (the prefix cache is then
    /// bypassed: every position's logits are needed).
    pub prompt_logprobs: Option<usize>,
    /// `Some(n)`: each generated token's log-probability with the n most likely.
    pub logprobs: Option<usize>,
    pub arrived: Instant,
    /// Events go out tagged with `choice`.
    pub choice: usize,
    pub tx: UnboundedSender<(usize, Event)>,
    /// Set by the consumer to end the sequence (a stop string matched).
    pub cancel: Arc<AtomicBool>,
}

impl SeqRequest {
    fn cancelled(&self) -> bool {
        self.tx.is_closed() || self.cancel.load(Ordering::Relaxed)
    }

    /// False when the receiver is gone.
    fn send(&self, e: Event) -> bool {
        self.tx.send((self.choice, e)).is_ok()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    pub max_batch: usize,
    pub max_queue: usize,
    /// Prompt tokens prefilled per iteration at most, and the prefix cache's block.
    pub prefill_chunk: usize,
    pub prefix_cache_bytes: usize,
}

struct Queue {
    waiting: VecDeque<SeqRequest>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    cv: Condvar,
    alive: AtomicBool,
    max_queue: usize,
    metrics: Arc<Metrics>,
}

/// The handle handlers use; the loop runs on its own thread until [`Scheduler::shutdown`].
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
}

impl Scheduler {
    pub fn start(
        engine: Engine,
        cfg: SchedulerConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Scheduler, std::thread::JoinHandle<()>)> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                shutdown: false,
            }),
            cv: Condvar::new(),
            alive: AtomicBool::new(true),
            max_queue: cfg.max_queue,
            metrics,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("coil-scheduler".into())
            .spawn(move || {
                let mut lp = Loop::new(engine, cfg, s.clone());
                lp.run();
                s.alive.store(false, Ordering::SeqCst);
            })?;
        Ok((Scheduler { shared }, thread))
    }

    pub fn max_queue(&self) -> usize {
        self.shared.max_queue
    }

    /// Queues all of `seqs` or none: 503 when they do not fit.
    pub fn submit(&self, seqs: Vec<SeqRequest>) -> Result<(), ApiError> {
        let mut q = self.lock();
        if q.shutdown || !self.is_alive() {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        let metrics = &self.shared.metrics;
        q.waiting.retain(|r| {
            let gone = r.cancelled();
            if gone {
                metrics.finished.with_label_values(&["cancelled"]).inc();
            }
            !gone
        });
        if q.waiting.len() + seqs.len() > self.shared.max_queue {
            return Err(ApiError::overloaded(q.waiting.len()));
        }
        q.waiting.extend(seqs);
        self.shared.metrics.waiting.set(q.waiting.len() as i64);
        drop(q);
        self.shared.cv.notify_one();
        Ok(())
    }

    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// Stops the loop; sequences in flight get an error event.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.shared.cv.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Prefilling {
    req: SeqRequest,
    /// Prompt tokens whose state `state` holds.
    pos: usize,
    state: Option<ModelState>,
    cached: usize,
    prompt_lp: Vec<TokenLogprob>,
    last_logits: Vec<f32>,
}

struct Running {
    req: SeqRequest,
    sampler: Sampler,
    next: u32,
    generated: usize,
    last_token: Instant,
}

struct Loop {
    engine: Engine,
    cfg: SchedulerConfig,
    shared: Arc<Shared>,
    cache: PrefixCache,
    prefilling: VecDeque<Prefilling>,
    running: Vec<Running>,
    states: Vec<SeqState>,
    tokens: Vec<u32>,
    scratch: coil_infer::step::Scratch,
}

impl Loop {
    fn new(engine: Engine, cfg: SchedulerConfig, shared: Arc<Shared>) -> Self {
        let scratch = engine.scratch(cfg.max_batch);
        Loop {
            cache: PrefixCache::new(cfg.prefill_chunk, cfg.prefix_cache_bytes),
            engine,
            cfg,
            shared,
            prefilling: VecDeque::new(),
            running: Vec::new(),
            states: Vec::new(),
            tokens: Vec::new(),
            scratch,
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    fn run(&mut self) {
        loop {
            if !self.admit() {
                break;
            }
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| self.iteration()));
            if r.is_err() {
                // A bug, not an input: fail what is in flight and keep serving the others.
                self.fail_all("internal error in the scheduler (a panic); the request was dropped");
            }
            self.publish();
        }
        self.fail_all("the server is shutting down");
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        for r in q.waiting.drain(..) {
            r.send(Event::Error("the server is shutting down".into()));
        }
    }

    fn publish(&self) {
        let m = self.metrics();
        m.running
            .set((self.prefilling.len() + self.running.len()) as i64);
        m.prefix_cache_bytes.set(self.cache.bytes() as i64);
        m.prefix_cache_entries.set(self.cache.len() as i64);
    }

    fn fail_all(&mut self, msg: &str) {
        for p in self.prefilling.drain(..) {
            p.req.send(Event::Error(msg.into()));
            self.shared
                .metrics
                .finished
                .with_label_values(&["error"])
                .inc();
        }
        for r in self.running.drain(..) {
            r.req.send(Event::Error(msg.into()));
            self.shared
                .metrics
                .finished
                .with_label_values(&["error"])
                .inc();
        }
        self.states.clear();
    }

    /// Waits for work, then moves waiting sequences into the batch while it has room. False on shutdown.
    fn admit(&mut self) -> bool {
        let shared = self.shared.clone();
        let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if q.shutdown {
                return false;
            }
            q.waiting.retain(|r| {
                let gone = r.cancelled();
                if gone {
                    shared
                        .metrics
                        .finished
                        .with_label_values(&["cancelled"])
                        .inc();
                }
                !gone
            });
            if !q.waiting.is_empty() || !self.prefilling.is_empty() || !self.running.is_empty() {
                break;
            }
            shared.metrics.waiting.set(0);
            q = shared
                .cv
                .wait_timeout(q, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        while self.prefilling.len() + self.running.len() < self.cfg.max_batch {
            let Some(req) = q.waiting.pop_front() else {
                break;
            };
            self.metrics().prompt_tokens.inc_by(req.prompt.len() as u64);
            let hit = if req.prompt_logprobs.is_none() {
                self.cache.lookup(&req.prompt)
            } else {
                None
            };
            let (pos, state) = match hit {
                Some((n, st)) => (n, Some(st)),
                None => (0, None),
            };
            self.metrics().prefix_cache_hit_tokens.inc_by(pos as u64);
            self.prefilling.push_back(Prefilling {
                req,
                pos,
                state,
                cached: pos,
                prompt_lp: Vec::new(),
                last_logits: Vec::new(),
            });
        }
        shared.metrics.waiting.set(q.waiting.len() as i64);
        shared
            .metrics
            .running
            .set((self.prefilling.len() + self.running.len()) as i64);
        true
    }

    fn iteration(&mut self) {
        self.drop_cancelled();
        self.prefill();
        self.decode();
    }

    fn drop_cancelled(&mut self) {
        let m = self.shared.clone();
        self.prefilling.retain(|p| {
            let gone = p.req.cancelled();
            if gone {
                m.metrics.finished.with_label_values(&["cancelled"]).inc();
            }
            !gone
        });
        let mut b = 0;
        while b < self.running.len() {
            if self.running[b].req.cancelled() {
                self.running.remove(b);
                self.states.remove(b);
                m.metrics.finished.with_label_values(&["cancelled"]).inc();
            } else {
                b += 1;
            }
        }
    }

    /// Up to `prefill_chunk` prompt tokens, one block at a time, oldest sequence first.
    fn prefill(&mut self) {
        let block = self.cfg.prefill_chunk;
        let mut budget = block;
        while budget > 0 {
            let Some(p) = self.prefilling.front_mut() else {
                break;
            };
            let len = p.req.prompt.len();
            let end = len.min((p.pos / block + 1) * block);
            let n = end - p.pos;
            if n > budget && budget < block {
                break;
            }
            budget = budget.saturating_sub(n);
            match prefill_block(&self.engine, p, end) {
                Ok(state) => {
                    self.shared.metrics.prefill_tokens.inc_by(n as u64);
                    if end % block == 0 && !self.cache.contains(&p.req.prompt[..end]) {
                        self.cache.insert(&p.req.prompt[..end], &state);
                    }
                    p.state = Some(state);
                }
                Err(e) => {
                    p.req.send(Event::Error(e));
                    self.metrics().finished.with_label_values(&["error"]).inc();
                    self.prefilling.pop_front();
                    continue;
                }
            }
            if end == len {
                if let Some(p) = self.prefilling.pop_front() {
                    self.start_decoding(p);
                }
            }
        }
    }

    /// The prompt is in: send its event, sample the first token, join the batch.
    fn start_decoding(&mut self, p: Prefilling) {
        let Prefilling {
            req,
            state,
            cached,
            prompt_lp,
            last_logits,
            ..
        } = p;
        if !req.send(Event::Prompt {
            cached,
            logprobs: prompt_lp,
        }) {
            self.metrics()
                .finished
                .with_label_values(&["cancelled"])
                .inc();
            return;
        }
        if req.max_tokens == 0 {
            req.send(Event::Done(Finish::Length));
            self.metrics().finished.with_label_values(&["length"]).inc();
            return;
        }
        if let Err(e) = check_finite(&last_logits, 0, 0) {
            req.send(Event::Error(e.to_string()));
            self.metrics().finished.with_label_values(&["error"]).inc();
            return;
        }
        let seq = state
            .ok_or_else(|| "no state after the prefill".to_string())
            .and_then(|st| {
                self.engine
                    .seq_state(&st, req.prompt.len(), req.max_tokens.min(KV_RESERVE))
                    .map_err(|e| e.to_string())
            });
        let seq = match seq {
            Ok(s) => s,
            Err(e) => {
                req.send(Event::Error(e));
                self.metrics().finished.with_label_values(&["error"]).inc();
                return;
            }
        };
        let mut sampler = Sampler::new(req.sampling, req.seed, req.stream, req.vocab_limit);
        let tok = sampler.sample(&last_logits);
        let mut r = Running {
            req,
            sampler,
            next: tok,
            generated: 0,
            last_token: Instant::now(),
        };
        let now = Instant::now();
        self.metrics()
            .ttft
            .observe(now.duration_since(r.req.arrived).as_secs_f64());
        if !emit(&self.shared.metrics, &mut r, tok, &last_logits, now) {
            self.running.push(r);
            self.states.push(seq);
        }
    }

    fn decode(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let vocab = self.engine.vocab_size();
        self.tokens.clear();
        self.tokens.extend(self.running.iter().map(|r| r.next));
        let logits = match self
            .engine
            .step(&mut self.states, &self.tokens, &mut self.scratch)
        {
            Ok(l) => l,
            Err(e) => {
                let msg = e.to_string();
                self.fail_all(&msg);
                return;
            }
        };
        let now = Instant::now();
        let mut keep = Vec::with_capacity(self.running.len());
        for (b, r) in self.running.iter_mut().enumerate() {
            let row = &logits[b * vocab..(b + 1) * vocab];
            if let Err(e) = check_finite(row, 0, r.generated) {
                r.req.send(Event::Error(e.to_string()));
                self.shared
                    .metrics
                    .finished
                    .with_label_values(&["error"])
                    .inc();
                keep.push(false);
                continue;
            }
            let tok = r.sampler.sample(row);
            self.shared
                .metrics
                .itl
                .observe(now.duration_since(r.last_token).as_secs_f64());
            keep.push(!emit(&self.shared.metrics, r, tok, row, now));
        }
        let mut it = keep.iter();
        self.running.retain(|_| *it.next().unwrap_or(&false));
        let mut it = keep.iter();
        self.states.retain(|_| *it.next().unwrap_or(&false));
    }
}

/// Runs the prompt of `p` from `p.pos` to `end` (one block); returns the state after it.
fn prefill_block(engine: &Engine, p: &mut Prefilling, end: usize) -> Result<ModelState, String> {
    let chunk = &p.req.prompt[p.pos..end];
    let all = p.req.prompt_logprobs;
    let (logits, state) = engine
        .prefill_chunk(chunk, p.state.as_ref(), all.is_some())
        .map_err(|e| e.to_string())?;
    let v = engine.vocab_size();
    if let Some(top) = all {
        for (i, row) in logits.chunks_exact(v).enumerate() {
            if let Some(&next) = p.req.prompt.get(p.pos + i + 1) {
                p.prompt_lp.push(token_logprob(row, next, top));
            }
        }
    }
    p.last_logits = logits[logits.len() - v..].to_vec();
    p.pos = end;
    Ok(state)
}

/// Sends a sampled token; true when the sequence is finished (EOS, length, or its receiver is gone).
fn emit(m: &Metrics, r: &mut Running, tok: u32, logits: &[f32], now: Instant) -> bool {
    let logprob = r.req.logprobs.map(|top| token_logprob(logits, tok, top));
    r.generated += 1;
    r.next = tok;
    r.last_token = now;
    m.generation_tokens.inc();
    if !r.req.send(Event::Token { id: tok, logprob }) {
        m.finished.with_label_values(&["cancelled"]).inc();
        return true;
    }
    let finish = if r.req.eos == Some(tok) {
        Some(Finish::Eos)
    } else if r.generated >= r.req.max_tokens {
        Some(Finish::Length)
    } else {
        None
    };
    match finish {
        Some(f) => {
            r.req.send(Event::Done(f));
            m.finished
                .with_label_values(&[if f == Finish::Eos { "stop" } else { "length" }])
                .inc();
            m.e2e
                .observe(now.duration_since(r.req.arrived).as_secs_f64());
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use coil_infer::EngineOptions;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    fn seq(
        prompt: Vec<u32>,
        max_tokens: usize,
        choice: usize,
    ) -> (SeqRequest, UnboundedReceiver<(usize, Event)>) {
        let (tx, rx) = unbounded_channel();
        let req = SeqRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams::greedy(),
            seed: 0,
            stream: 0,
            eos: None,
            vocab_limit: None,
            prompt_logprobs: None,
            logprobs: None,
            arrived: Instant::now(),
            choice,
            tx,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        (req, rx)
    }

    fn tokens(rx: &mut UnboundedReceiver<(usize, Event)>) -> usize {
        let mut n = 0;
        while let Ok((_, e)) = rx.try_recv() {
            n += matches!(e, Event::Token { .. }) as usize;
        }
        n
    }

    /// A long prompt is prefilled `prefill_chunk` tokens per iteration while the running sequence advances by
    /// one token in every iteration; it joins the batch when its prompt is in.
    #[test]
    fn prefill_is_chunked_and_interleaved_with_decode_steps() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../model/tests/fixtures/nemotron_h_tiny");
        let lm = coil_model::HybridLm::from_dir(&dir, &Device::Cpu, DType::F32).unwrap();
        let engine = Engine::new(lm, EngineOptions::default()).unwrap();
        let cfg = SchedulerConfig {
            max_batch: 2,
            max_queue: 8,
            prefill_chunk: 16,
            prefix_cache_bytes: 0,
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                shutdown: false,
            }),
            cv: Condvar::new(),
            alive: AtomicBool::new(true),
            max_queue: cfg.max_queue,
            metrics: Arc::new(Metrics::new()),
        });
        let sched = Scheduler {
            shared: shared.clone(),
        };
        let mut lp = Loop::new(engine, cfg, shared);
        let (a, mut rx_a) = seq(vec![1, 2, 3], 1000, 0);
        sched.submit(vec![a]).unwrap();
        assert!(lp.admit());
        lp.iteration();
        // A's prompt fits one chunk: its first token comes from the prefill, the second from the step.
        assert_eq!((lp.running.len(), tokens(&mut rx_a)), (1, 2));

        let (b, mut rx_b) = seq((0..100).map(|i| i % 256).collect(), 5, 1);
        let (c, _rx_c) = seq(vec![4, 5], 5, 2);
        sched.submit(vec![b, c]).unwrap();
        let mut iterations = 0;
        while lp.running.len() < 2 {
            assert!(lp.admit());
            // The batch holds 2: C waits while A runs and B prefills.
            assert_eq!(lp.prefilling.len() + lp.running.len(), 2);
            lp.iteration();
            iterations += 1;
            assert_eq!(tokens(&mut rx_a), 1, "A advances in every iteration");
            if lp.running.len() < 2 {
                assert_eq!(
                    lp.prefilling[0].pos,
                    16 * iterations,
                    "16 prompt tokens per iteration"
                );
            }
        }
        assert_eq!(iterations, 7, "100 prompt tokens in chunks of 16");
        assert_eq!(tokens(&mut rx_b), 2);
        assert_eq!(lp.shared.metrics.prefill_tokens.get(), 3 + 100);
        // B finishes after 5 tokens; its slot goes to C at the next step boundary.
        while lp.running.len() == 2 && lp.prefilling.is_empty() {
            assert!(lp.admit());
            lp.iteration();
        }
        assert_eq!(tokens(&mut rx_b), 3);
        assert!(lp.admit());
        assert_eq!(lp.prefilling.len() + lp.running.len(), 2);
        assert!(lp.shared.queue.lock().unwrap().waiting.is_empty());
    }

    #[test]
    fn logprobs_are_log_softmax_with_the_top_entries() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let lp = token_logprob(&logits, 2, 3);
        let z: f64 = logits.iter().map(|&v| (v as f64).exp()).sum();
        assert!((lp.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        // Ties keep the lower id first.
        assert_eq!(
            lp.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 3, 2]
        );
        assert!((lp.top[0].1 as f64 - (3.0 - z.ln())).abs() < 1e-6);
        assert!(token_logprob(&logits, 0, 0).top.is_empty());
    }
}
