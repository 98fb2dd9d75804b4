//! `GET /metrics`: Prometheus text format. Counts sequences (one per prompt and choice), tokens in and out,
//! prompt tokens actually computed against those the prefix cache supplied, and the latency histograms.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Sequences admitted to the batch (prefilling or decoding).
    pub running: IntGauge,
    /// Sequences waiting in the queue.
    pub waiting: IntGauge,
    /// Prompt tokens of admitted sequences (tokens in).
    pub prompt_tokens: IntCounter,
    /// Prompt tokens run through the model (the rest came from the prefix cache).
    pub prefill_tokens: IntCounter,
    /// Prompt tokens whose state the prefix cache supplied.
    pub prefix_cache_hit_tokens: IntCounter,
    pub prefix_cache_bytes: IntGauge,
    pub prefix_cache_entries: IntGauge,
    /// Generated tokens (tokens out).
    pub generation_tokens: IntCounter,
    /// Finished sequences by reason: stop, length, cancelled, error.
    pub finished: IntCounterVec,
    /// Requests refused before they reached the queue, by HTTP status.
    pub rejected: IntCounterVec,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, start: f64| {
            let buckets = exponential_buckets(start, 2.0, 18).expect("valid buckets");
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        Metrics {
            running: gauge(
                "coil_num_requests_running",
                "Sequences in the batch (prefilling or decoding)",
            ),
            waiting: gauge(
                "coil_num_requests_waiting",
                "Sequences waiting in the queue",
            ),
            prompt_tokens: counter(
                "coil_prompt_tokens_total",
                "Prompt tokens of admitted sequences",
            ),
            prefill_tokens: counter(
                "coil_prefill_tokens_computed_total",
                "Prompt tokens run through the model (not supplied by the prefix cache)",
            ),
            prefix_cache_hit_tokens: counter(
                "coil_prefix_cache_hit_tokens_total",
                "Prompt tokens whose state came from the prefix cache",
            ),
            prefix_cache_bytes: gauge(
                "coil_prefix_cache_bytes",
                "Bytes held by prefix-cache snapshots",
            ),
            prefix_cache_entries: gauge(
                "coil_prefix_cache_entries",
                "Snapshots in the prefix cache",
            ),
            generation_tokens: counter("coil_generation_tokens_total", "Generated tokens"),
            finished: counter_vec(
                "coil_sequences_finished_total",
                "Sequences that left the batch, by reason (stop, length, cancelled, error)",
                "reason",
            ),
            rejected: counter_vec(
                "coil_requests_rejected_total",
                "Requests refused before they were queued, by HTTP status",
                "status",
            ),
            ttft: histogram(
                "coil_time_to_first_token_seconds",
                "From the request's arrival to its first generated token",
                0.001,
            ),
            itl: histogram(
                "coil_inter_token_latency_seconds",
                "Between consecutive generated tokens of a sequence",
                0.0001,
            ),
            e2e: histogram(
                "coil_request_latency_seconds",
                "From a sequence's arrival to its last token",
                0.001,
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for these metric kinds.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
