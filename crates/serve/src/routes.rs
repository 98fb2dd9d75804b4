//! The HTTP side: routes, the API key check, request to sequences, sequence events to OpenAI responses (whole,
//! or as server-sent events: `data: {json}` chunks ending with `data: [DONE]`).

use crate::api::{
    self, Chat, ChatRequest, Completion, CompletionRequest, Limits, Prompt, Settings,
};
use crate::detok::TextStream;
use crate::error::ApiError;
use crate::scheduler::{Event, Finish, SeqRequest, TokenLogprob};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// A request's sequence events, tagged with their choice index.
type Events = UnboundedReceiver<(usize, Event)>;

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            state.cfg.max_body_bytes,
        ))
        .with_state(state)
}

async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.cfg.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => {
                return st.reject(ApiError::unauthorized(
                    "missing API key: send the header `Authorization: Bearer KEY`",
                ))
            }
            Some(g) if g.trim() != key => {
                return st.reject(ApiError::unauthorized("incorrect API key"))
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(req.uri().path())
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::bad_request(format!(
            "{} is not allowed on {}",
            req.method(),
            req.uri().path()
        ))
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.scheduler.is_alive() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        ApiError::unavailable("the scheduler has stopped").into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

fn model_card(st: &AppState) -> Value {
    json!({
        "id": st.cfg.model_name,
        "object": "model",
        "created": st.created,
        "owned_by": "coil",
        "root": st.cfg.model_name,
        "max_model_len": st.cfg.max_prompt_tokens + st.cfg.max_tokens,
    })
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_card(&st)]}))
}

async fn model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == st.cfg.model_name {
        Json(model_card(&st)).into_response()
    } else {
        st.reject(ApiError::model_not_found(&id, &st.cfg.model_name))
    }
}

impl AppState {
    fn reject(&self, e: ApiError) -> Response {
        self.metrics
            .rejected
            .with_label_values(&[e.status.as_str()])
            .inc();
        e.into_response()
    }

    fn limits(&self) -> Limits {
        Limits {
            vocab: self.vocab,
            vocab_limit: self.vocab_limit,
            max_prompt_tokens: self.cfg.max_prompt_tokens,
            max_tokens: self.cfg.max_tokens,
            max_n: 64,
        }
    }

    fn check_model(&self, asked: Option<&str>) -> Result<(), ApiError> {
        match asked {
            Some(m) if m != self.cfg.model_name => {
                Err(ApiError::model_not_found(m, &self.cfg.model_name))
            }
            _ => Ok(()),
        }
    }

    /// One sequence per (prompt, choice), all queued or none; their events arrive on the returned receiver.
    fn submit(
        &self,
        prompts: &[Prompt],
        s: &Settings,
        prompt_logprobs: Option<usize>,
        logprobs: Option<usize>,
    ) -> Result<(Events, Vec<Arc<AtomicBool>>), ApiError> {
        let total = prompts.len() * s.n;
        if total > self.scheduler.max_queue() {
            return Err(ApiError::invalid(
                "prompt",
                format!(
                    "the request makes {total} sequences (prompts x n), more than the queue holds ({}, --max-queue)",
                    self.scheduler.max_queue()
                ),
            ));
        }
        let (tx, rx) = unbounded_channel();
        let arrived = Instant::now();
        let mut cancels = Vec::with_capacity(total);
        let mut seqs = Vec::with_capacity(total);
        for (p, prompt) in prompts.iter().enumerate() {
            for j in 0..s.n {
                let cancel = Arc::new(AtomicBool::new(false));
                cancels.push(cancel.clone());
                seqs.push(SeqRequest {
                    prompt: prompt.ids.clone(),
                    max_tokens: s.max_tokens,
                    sampling: s.sampling,
                    seed: s.seed,
                    stream: (p * s.n + j) as u64,
                    eos: if s.ignore_eos { None } else { self.eos },
                    vocab_limit: self.vocab_limit,
                    prompt_logprobs,
                    logprobs,
                    arrived,
                    choice: p * s.n + j,
                    tx: tx.clone(),
                    cancel,
                });
            }
        }
        self.scheduler.submit(seqs)?;
        Ok((rx, cancels))
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn request_id(prefix: &str) -> String {
    format!(
        "{prefix}-{:x}{:06x}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One choice being assembled from its sequence's events.
struct Choice {
    prompt: usize,
    text: TextStream,
    prompt_text: String,
    prompt_ids: Vec<u32>,
    token_ids: Vec<u32>,
    /// Generated tokens' log-probabilities (when asked), all and not yet streamed.
    logprobs: Vec<TokenLogprob>,
    unsent_logprobs: usize,
    prompt_logprobs: Option<Vec<TokenLogprob>>,
    prompt_sent: bool,
    cached: usize,
    finish: Option<&'static str>,
    error: Option<String>,
    cancel: Arc<AtomicBool>,
}

impl Choice {
    fn new(prompt: usize, p: &Prompt, stops: Vec<String>, cancel: Arc<AtomicBool>) -> Self {
        Choice {
            prompt,
            text: TextStream::new(stops),
            prompt_text: p.text.clone().unwrap_or_default(),
            prompt_ids: p.ids.clone(),
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            unsent_logprobs: 0,
            prompt_logprobs: None,
            prompt_sent: false,
            cached: 0,
            finish: None,
            error: None,
            cancel,
        }
    }

    fn done(&self) -> bool {
        self.finish.is_some()
    }

    fn on_event(&mut self, st: &AppState, ev: Event) {
        if self.done() {
            return;
        }
        let tok = st.tokenizer.as_ref();
        match ev {
            Event::Prompt { cached, logprobs } => {
                self.cached = cached;
                self.prompt_logprobs = Some(logprobs);
            }
            Event::Token { id, logprob } => {
                self.token_ids.push(id);
                if let Some(lp) = logprob {
                    self.logprobs.push(lp);
                }
                // The end-of-sequence token ends the text; it is not part of it.
                if st.eos != Some(id) && self.text.push(tok, id) {
                    // A stop string: this choice is complete, its sequence can stop now.
                    self.finish = Some("stop");
                    self.cancel.store(true, Ordering::Relaxed);
                }
            }
            Event::Done(f) => {
                self.text.finish(tok);
                self.finish = Some(match f {
                    Finish::Eos => "stop",
                    Finish::Length => "length",
                });
            }
            Event::Error(e) => {
                self.error = Some(e);
                self.finish = Some("error");
            }
        }
    }
}

/// Token text as OpenAI shows it in logprobs.
fn token_text(st: &AppState, id: u32) -> String {
    st.tokenizer.decode(&[id]).unwrap_or_default()
}

/// Completions' `logprobs` object for `entries` (id, its logprob when known); offsets start at `offset`.
fn completion_logprobs(
    st: &AppState,
    entries: &[(u32, Option<&TokenLogprob>)],
    mut offset: usize,
) -> Value {
    let mut tokens = Vec::with_capacity(entries.len());
    let mut token_logprobs = Vec::with_capacity(entries.len());
    let mut top = Vec::with_capacity(entries.len());
    let mut offsets = Vec::with_capacity(entries.len());
    for &(id, lp) in entries {
        let t = token_text(st, id);
        offsets.push(offset);
        offset += t.len();
        tokens.push(t);
        match lp {
            Some(lp) => {
                token_logprobs.push(json!(lp.logprob));
                let m: serde_json::Map<String, Value> = lp
                    .top
                    .iter()
                    .map(|&(i, l)| (token_text(st, i), json!(l)))
                    .collect();
                top.push(Value::Object(m));
            }
            None => {
                token_logprobs.push(Value::Null);
                top.push(Value::Null);
            }
        }
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

/// Chat's `logprobs.content` entries.
fn chat_logprobs(st: &AppState, entries: &[TokenLogprob]) -> Value {
    let item = |id: u32, lp: f32| {
        let t = token_text(st, id);
        json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
    };
    Value::Array(
        entries
            .iter()
            .map(|lp| {
                let mut v = item(lp.id, lp.logprob);
                v["top_logprobs"] = Value::Array(lp.top.iter().map(|&(i, l)| item(i, l)).collect());
                v
            })
            .collect(),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

/// What a request's response is built from.
struct Job {
    st: Arc<AppState>,
    kind: Kind,
    id: String,
    created: u64,
    choices: Vec<Choice>,
    rx: Events,
    logprobs: Option<usize>,
    echo: bool,
    include_usage: bool,
    return_token_ids: bool,
    role_sent: bool,
}

impl Job {
    fn all_done(&self) -> bool {
        self.choices.iter().all(Choice::done)
    }

    /// Waits for the next event; false when the scheduler is gone.
    async fn next(&mut self) -> Option<usize> {
        match self.rx.recv().await {
            Some((i, ev)) => {
                let st = self.st.clone();
                if let Some(c) = self.choices.get_mut(i) {
                    c.on_event(&st, ev);
                }
                Some(i)
            }
            None => {
                for c in self.choices.iter_mut().filter(|c| !c.done()) {
                    c.error = Some("the scheduler stopped".into());
                    c.finish = Some("error");
                }
                None
            }
        }
    }

    fn first_error(&self) -> Option<&str> {
        self.choices.iter().find_map(|c| c.error.as_deref())
    }

    fn usage(&self) -> Value {
        let mut seen = std::collections::HashSet::new();
        let prompt: usize = self
            .choices
            .iter()
            .filter(|c| seen.insert(c.prompt))
            .map(|c| c.prompt_ids.len())
            .sum();
        let cached: usize = self.choices.iter().map(|c| c.cached).max().unwrap_or(0);
        let completion: usize = self.choices.iter().map(|c| c.token_ids.len()).sum();
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.st.cfg.model_name,
            "choices": choices,
        })
    }

    /// The whole response.
    fn response(&mut self) -> Value {
        let st = self.st.clone();
        let choices: Vec<Value> = (0..self.choices.len())
            .map(|i| {
                let c = &mut self.choices[i];
                let generated = c.text.take(true);
                let mut v = match self.kind {
                    Kind::Completion => {
                        let mut text = String::new();
                        let mut entries: Vec<(u32, Option<&TokenLogprob>)> = Vec::new();
                        if self.echo {
                            text.push_str(&echo_text(&st, c));
                            if let Some(plp) = &c.prompt_logprobs {
                                entries.push((c.prompt_ids[0], None));
                                entries.extend(c.prompt_ids[1..].iter().zip(plp).map(|(&id, lp)| (id, Some(lp))));
                            }
                        }
                        text.push_str(&generated);
                        if self.logprobs.is_some() {
                            entries.extend(c.logprobs.iter().map(|lp| (lp.id, Some(lp))));
                        }
                        json!({
                            "index": i,
                            "text": text,
                            "logprobs": if self.logprobs.is_some() { completion_logprobs(&st, &entries, 0) } else { Value::Null },
                            "finish_reason": c.finish,
                        })
                    }
                    Kind::Chat => json!({
                        "index": i,
                        "message": {"role": "assistant", "content": generated},
                        "logprobs": if self.logprobs.is_some() { json!({"content": chat_logprobs(&st, &c.logprobs)}) } else { Value::Null },
                        "finish_reason": c.finish,
                    }),
                };
                if self.return_token_ids {
                    v["prompt_token_ids"] = json!(c.prompt_ids);
                    v["token_ids"] = json!(c.token_ids);
                }
                v
            })
            .collect();
        let mut r = self.envelope(false, choices);
        r["usage"] = self.usage();
        r
    }

    /// The chunks that choice `i`'s latest event makes sendable.
    fn chunks_for(&mut self, i: usize) -> Vec<Value> {
        let st = self.st.clone();
        let kind = self.kind;
        let want_lp = self.logprobs.is_some();
        let echo = self.echo;
        let mut out = Vec::new();
        if kind == Kind::Chat && !self.role_sent {
            self.role_sent = true;
            let first: Vec<Value> = (0..self.choices.len())
                .map(|j| json!({"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}))
                .collect();
            out.push(self.envelope(true, first));
        }
        let Some(c) = self.choices.get_mut(i) else {
            return out;
        };
        let mut text = String::new();
        let mut lp_entries: Vec<(u32, Option<&TokenLogprob>)> = Vec::new();
        if kind == Kind::Completion && echo && !c.prompt_sent && c.prompt_logprobs.is_some() {
            c.prompt_sent = true;
            text.push_str(&echo_text(&st, c));
            if let Some(plp) = &c.prompt_logprobs {
                lp_entries.push((c.prompt_ids[0], None));
                lp_entries.extend(
                    c.prompt_ids[1..]
                        .iter()
                        .zip(plp)
                        .map(|(&id, lp)| (id, Some(lp))),
                );
            }
        }
        text.push_str(&c.text.take(c.done()));
        let new_lps = &c.logprobs[c.unsent_logprobs..];
        let send_lps = want_lp && !new_lps.is_empty() && (!text.is_empty() || c.done());
        if send_lps {
            lp_entries.extend(new_lps.iter().map(|lp| (lp.id, Some(lp))));
        }
        if text.is_empty() && c.finish.is_none() && lp_entries.is_empty() {
            return out;
        }
        if let Some(e) = &c.error {
            out.push(ApiError::server(e.clone()).body());
            return out;
        }
        let finish = c.finish;
        let mut v = match kind {
            Kind::Completion => json!({
                "index": i,
                "text": text,
                "logprobs": if want_lp && !lp_entries.is_empty() { completion_logprobs(&st, &lp_entries, 0) } else { Value::Null },
                "finish_reason": finish,
            }),
            Kind::Chat => {
                let lps = if send_lps {
                    &c.logprobs[c.unsent_logprobs..]
                } else {
                    &[][..]
                };
                json!({
                    "index": i,
                    "delta": if text.is_empty() { json!({}) } else { json!({"content": text}) },
                    "logprobs": if want_lp && !lps.is_empty() { json!({"content": chat_logprobs(&st, lps)}) } else { Value::Null },
                    "finish_reason": finish,
                })
            }
        };
        if send_lps {
            c.unsent_logprobs = c.logprobs.len();
        }
        if self.return_token_ids && finish.is_some() {
            v["prompt_token_ids"] = json!(c.prompt_ids);
            v["token_ids"] = json!(c.token_ids);
        }
        out.push(self.envelope(true, vec![v]));
        out
    }

    fn into_sse(self) -> Response {
        struct S {
            job: Job,
            pending: VecDeque<SseEvent>,
            finished: bool,
        }
        let s = S {
            job: self,
            pending: VecDeque::new(),
            finished: false,
        };
        let stream = futures_util::stream::unfold(s, |mut s| async move {
            loop {
                if let Some(e) = s.pending.pop_front() {
                    return Some((Ok::<_, Infallible>(e), s));
                }
                if s.finished {
                    return None;
                }
                if s.job.all_done() {
                    if s.job.include_usage {
                        let mut u = s.job.envelope(true, vec![]);
                        u["usage"] = s.job.usage();
                        s.pending.push_back(SseEvent::default().data(u.to_string()));
                    }
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                    s.finished = true;
                    continue;
                }
                match s.job.next().await {
                    Some(i) => {
                        for c in s.job.chunks_for(i) {
                            s.pending.push_back(SseEvent::default().data(c.to_string()));
                        }
                    }
                    None => {
                        let e = ApiError::server("the scheduler stopped");
                        s.pending
                            .push_back(SseEvent::default().data(e.body().to_string()));
                    }
                }
            }
        });
        Sse::new(stream).into_response()
    }

    async fn respond(mut self, stream: bool) -> Response {
        if stream {
            return self.into_sse();
        }
        while !self.all_done() {
            if self.next().await.is_none() {
                break;
            }
        }
        if let Some(e) = self.first_error() {
            return ApiError::server(e.to_string()).into_response();
        }
        Json(self.response()).into_response()
    }
}

fn echo_text(st: &AppState, c: &Choice) -> String {
    if c.prompt_text.is_empty() {
        st.tokenizer.decode(&c.prompt_ids).unwrap_or_default()
    } else {
        c.prompt_text.clone()
    }
}

fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError {
                status,
                ..ApiError::bad_request(format!("the request body is too large: {}", r.body_text()))
            }
        } else {
            ApiError {
                status,
                ..ApiError::bad_request(r.body_text())
            }
        }
    })
}

async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match completion_job(&st, body) {
        Ok((job, stream)) => job.respond(stream).await,
        Err(e) => st.reject(e),
    }
}

fn completion_job(
    st: &Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Job, bool), ApiError> {
    let body = read_body(body)?;
    let req: CompletionRequest = api::parse(&body)?;
    st.check_model(req.model.as_deref())?;
    let c: Completion = req.check(st.tokenizer.as_ref(), st.bos, &st.limits())?;
    let prompt_lp = (c.echo && c.logprobs.is_some()).then(|| c.logprobs.unwrap_or(0));
    let (rx, cancels) = st.submit(&c.prompts, &c.settings, prompt_lp, c.logprobs)?;
    let n = c.settings.n;
    let choices = cancels
        .into_iter()
        .enumerate()
        .map(|(i, cancel)| Choice::new(i / n, &c.prompts[i / n], c.settings.stops.clone(), cancel))
        .map(|mut ch| {
            // Without prompt logprobs the echo is sent with the first chunk all the same.
            if c.echo && prompt_lp.is_none() {
                ch.prompt_logprobs = Some(Vec::new());
            }
            ch
        })
        .collect();
    Ok((
        Job {
            st: st.clone(),
            kind: Kind::Completion,
            id: request_id("cmpl"),
            created: now_secs(),
            choices,
            rx,
            logprobs: c.logprobs,
            echo: c.echo,
            include_usage: c.include_usage,
            return_token_ids: c.return_token_ids,
            role_sent: false,
        },
        c.stream,
    ))
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match chat_job(&st, body) {
        Ok((job, stream)) => job.respond(stream).await,
        Err(e) => st.reject(e),
    }
}

fn chat_job(
    st: &Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Job, bool), ApiError> {
    let body = read_body(body)?;
    let req: ChatRequest = api::parse(&body)?;
    st.check_model(req.model.as_deref())?;
    let limits = st.limits();
    let c: Chat = req.check(&limits)?;
    let text = st
        .template
        .render(&c.messages, c.add_generation_prompt)
        .map_err(|e| ApiError::invalid("messages", format!("messages: {e}")))?;
    let prompt = ChatRequest::encode(&text, st.tokenizer.as_ref(), &limits)?;
    let prompts = [prompt];
    let (rx, cancels) = st.submit(&prompts, &c.settings, None, c.logprobs)?;
    let choices = cancels
        .into_iter()
        .map(|cancel| Choice::new(0, &prompts[0], c.settings.stops.clone(), cancel))
        .collect();
    Ok((
        Job {
            st: st.clone(),
            kind: Kind::Chat,
            id: request_id("chatcmpl"),
            created: now_secs(),
            choices,
            rx,
            logprobs: c.logprobs,
            echo: false,
            include_usage: c.include_usage,
            return_token_ids: c.return_token_ids,
            role_sent: false,
        },
        c.stream,
    ))
}
