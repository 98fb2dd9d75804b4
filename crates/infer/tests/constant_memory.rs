//! A pure Mamba2 model decodes 10,000 tokens in constant memory: the state does not grow and neither does
//! the process (printed with `--nocapture`).

mod common;

use coil_infer::{DecodeDtClamp, Sampler, SamplingParams, WeightDtype};
use common::*;

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn memory_stays_flat_over_10000_generated_tokens() {
    let e = engine(
        "mamba2_tiny",
        WeightDtype::F32,
        DecodeDtClamp::SameAsPrefill,
    );
    let (logits, st) = e.prefill(&[1, 2, 3, 4], 0).unwrap();
    let mut states = vec![st];
    let mut scratch = e.scratch(1);
    let mut sampler = Sampler::new(
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
        },
        7,
        0,
        None,
    );
    let mut tok = sampler.sample(&logits);
    let state_bytes = states[0].bytes();
    let (mut rss_100, mut last) = (None, None);
    for i in 1..=10_000 {
        let l = e.step(&mut states, &[tok], &mut scratch).unwrap();
        assert!(
            l.iter().all(|v| v.is_finite()),
            "step {i}: non-finite logits"
        );
        tok = sampler.sample(l);
        assert_eq!(states[0].bytes(), state_bytes, "step {i}: the state grew");
        if i == 100 {
            rss_100 = rss_kib();
        }
        last = rss_kib();
    }
    assert_eq!(states[0].position, 4 + 10_000);
    println!(
        "10,000 tokens: state {} bytes throughout; RSS after 100 steps {:?} KiB, after 10,000 {:?} KiB",
        state_bytes, rss_100, last
    );
    if let (Some(a), Some(b)) = (rss_100, last) {
        assert!(b <= a + 1024, "RSS grew from {a} KiB to {b} KiB");
    }
}
