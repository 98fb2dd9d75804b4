//! `coil serve`: an OpenAI-compatible HTTP server over the inference engine.
//!
//! Owns: the HTTP API ([`routes`]: `/v1/completions`, `/v1/chat/completions`, `/v1/models`, `/health`,
//! `/metrics`), request checks ([`api`]) and errors in OpenAI's format ([`error`]), chat templates ([`chat`]),
//! incremental detokenization with stop strings ([`detok`]), the continuous-batching loop ([`scheduler`]), the
//! prefix cache of model-state snapshots ([`prefix_cache`]) and the Prometheus metrics ([`metrics`]); plus a
//! small blocking HTTP client ([`client`]) for the tests and `coil bench serve`.
//!
//! Key design decision: the engine belongs to one scheduler thread; HTTP handlers (tokio) only check requests,
//! queue sequences and turn their events into responses. Generation is `coil_infer`'s own prefill and batched
//! step, so the server computes what `coil generate` computes.

pub mod api;
pub mod chat;
pub mod client;
pub mod detok;
pub mod error;
pub mod metrics;
pub mod prefix_cache;
pub mod routes;
pub mod scheduler;

use coil_data::Tokenizer;
use coil_infer::Engine;
use metrics::Metrics;
use scheduler::{Scheduler, SchedulerConfig};
use std::net::SocketAddr;
use std::sync::Arc;

pub use chat::ChatTemplate;
pub use error::ApiError;

/// What `coil serve`'s flags set.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    /// 0: any free port (see [`Server::addr`]).
    pub port: u16,
    /// The name `/v1/models` lists and requests must use (or omit).
    pub model_name: String,
    /// Sequences in the batch at most (prefilling and decoding).
    pub max_batch: usize,
    /// Sequences waiting at most; beyond, requests get 503 with `Retry-After`.
    pub max_queue: usize,
    pub max_prompt_tokens: usize,
    /// The largest `max_tokens` a request may ask for (and chat's default).
    pub max_tokens: usize,
    pub api_key: Option<String>,
    /// Prompt tokens prefilled per scheduler iteration at most, and the prefix cache's block.
    pub prefill_chunk: usize,
    /// Prefix-cache budget in bytes (0: off).
    pub prefix_cache_bytes: usize,
    pub max_body_bytes: usize,
    /// Prepend the tokenizer's BOS token to text prompts of `/v1/completions`.
    pub add_bos: bool,
}

impl ServeConfig {
    pub fn new(model_name: impl Into<String>) -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            model_name: model_name.into(),
            max_batch: 16,
            max_queue: 256,
            max_prompt_tokens: 4096,
            max_tokens: 2048,
            api_key: None,
            prefill_chunk: 256,
            prefix_cache_bytes: 512 << 20,
            max_body_bytes: 4 << 20,
            add_bos: false,
        }
    }

    fn check(&self) -> Result<(), String> {
        let positive = [
            ("--max-batch", self.max_batch),
            ("--max-queue", self.max_queue),
            ("--max-prompt-tokens", self.max_prompt_tokens),
            ("--prefill-chunk", self.prefill_chunk),
            ("--max-body-bytes", self.max_body_bytes),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.model_name.is_empty() {
            return Err("--served-model-name must not be empty".into());
        }
        Ok(())
    }
}

/// The model as served: the engine, its tokenizer and chat template.
pub struct ServedModel {
    pub engine: Engine,
    pub tokenizer: Box<dyn Tokenizer>,
    pub template: ChatTemplate,
}

/// What the handlers share.
pub struct AppState {
    pub cfg: ServeConfig,
    pub tokenizer: Box<dyn Tokenizer>,
    pub template: ChatTemplate,
    /// Width of the model's logits.
    pub vocab: usize,
    pub vocab_limit: Option<usize>,
    pub eos: Option<u32>,
    pub bos: Option<u32>,
    pub scheduler: Scheduler,
    pub metrics: Arc<Metrics>,
    pub created: u64,
}

/// A running server: HTTP on a tokio runtime thread, generation on the scheduler thread. Dropping it shuts
/// both down.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    scheduler: Scheduler,
    scheduler_thread: Option<std::thread::JoinHandle<()>>,
    state: Arc<AppState>,
}

impl Server {
    /// Binds `host:port` and starts serving.
    pub fn start(cfg: ServeConfig, model: ServedModel) -> Result<Server, String> {
        cfg.check()?;
        let ServedModel {
            engine,
            tokenizer,
            template,
        } = model;
        let vocab = engine.vocab_size();
        let lm_tokens = engine.model().config.tokens.clone();
        let eos = tokenizer.eos_id().or(lm_tokens.eos);
        let bos = if cfg.add_bos {
            Some(tokenizer.bos_id().or(lm_tokens.bos).ok_or_else(|| {
                format!(
                    "--add-bos: the tokenizer ({}) has no BOS token",
                    tokenizer.describe()
                )
            })?)
        } else {
            None
        };
        let vocab_limit = Some(tokenizer.vocab_size().min(vocab));
        let metrics = Arc::new(Metrics::new());
        let listener = std::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
            .map_err(|e| format!("binding {}:{}: {e}", cfg.host, cfg.port))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("listener: {e}"))?;
        let (scheduler, scheduler_thread) = Scheduler::start(
            engine,
            SchedulerConfig {
                max_batch: cfg.max_batch,
                max_queue: cfg.max_queue,
                prefill_chunk: cfg.prefill_chunk,
                prefix_cache_bytes: cfg.prefix_cache_bytes,
            },
            metrics.clone(),
        )
        .map_err(|e| format!("starting the scheduler: {e}"))?;
        let state = Arc::new(AppState {
            cfg,
            tokenizer,
            template,
            vocab,
            vocab_limit,
            eos,
            bos,
            scheduler: scheduler.clone(),
            metrics,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = routes::router(state.clone());
        let http = std::thread::Builder::new()
            .name("coil-http".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("coil-http-worker")
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = rx.await;
                        })
                        .await
                })
            })
            .map_err(|e| format!("starting the HTTP thread: {e}"))?;
        Ok(Server {
            addr,
            shutdown: Some(tx),
            http: Some(http),
            scheduler,
            scheduler_thread: Some(scheduler_thread),
            state,
        })
    }

    /// The bound address (with the port the system chose for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stops the scheduler (requests in flight end with an error) and the HTTP server.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Blocks until the HTTP server ends (it ends on [`Server::shutdown`] from another handle, or an error).
    pub fn wait(mut self) -> std::io::Result<()> {
        let r = match self.http.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the HTTP thread panicked"))),
            None => Ok(()),
        };
        self.stop();
        r
    }

    /// Serves until Ctrl-C (SIGINT) or until the HTTP server ends on its own, then shuts down.
    pub fn run_until_ctrl_c(mut self) -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http_ended = |s: &Server| s.http.as_ref().is_none_or(|h| h.is_finished());
        rt.block_on(async {
            tokio::select! {
                r = tokio::signal::ctrl_c() => r,
                _ = async {
                    while !http_ended(&self) {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                } => Ok(()),
            }
        })?;
        eprintln!("shutting down");
        let r = match self.http.take() {
            Some(h) if h.is_finished() => h
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the HTTP thread panicked"))),
            other => {
                self.http = other;
                Ok(())
            }
        };
        self.stop();
        r
    }

    /// A handle that shuts the server down from another thread (e.g. a Ctrl-C handler).
    pub fn shutdown_handle(&mut self) -> ShutdownHandle {
        ShutdownHandle {
            http: self.shutdown.take(),
            scheduler: self.scheduler.clone(),
        }
    }

    fn stop(&mut self) {
        self.scheduler.shutdown();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.scheduler_thread.take() {
            let _ = h.join();
        }
        if let Some(h) = self.http.take() {
            let _ = h.join();
        }
    }
}

pub struct ShutdownHandle {
    http: Option<tokio::sync::oneshot::Sender<()>>,
    scheduler: Scheduler,
}

impl ShutdownHandle {
    pub fn shutdown(mut self) {
        self.scheduler.shutdown();
        if let Some(tx) = self.http.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
