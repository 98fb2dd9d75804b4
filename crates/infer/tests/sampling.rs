//! Megatron's sampling rules (docs/nemo.md §5), one test per rule.

use coil_infer::sampling::{argmax, nucleus_len, Sampler, SamplingParams};

fn params(temperature: f32, top_k: usize, top_p: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
    }
}

/// Frequencies of each id over `n` draws.
fn histogram(p: SamplingParams, logits: &[f32], n: usize, seed: u64) -> Vec<usize> {
    p.validate(logits.len(), None).unwrap();
    let mut s = Sampler::new(p, seed, 0, None);
    let mut h = vec![0; logits.len()];
    for _ in 0..n {
        h[s.sample(logits) as usize] += 1;
    }
    h
}

fn ln(ps: &[f64]) -> Vec<f32> {
    ps.iter().map(|p| p.ln() as f32).collect()
}

#[test]
fn top_k_one_is_greedy_and_ignores_temperature() {
    let logits = [0.1, 2.0, 2.0, -1.0, 1.9];
    for t in [0.001, 1.0, 100.0, 0.0] {
        let p = params(t, 1, 0.0);
        p.validate(5, None).unwrap(); // even temperature 0 is fine for greedy
        let h = histogram(p, &logits, 50, 1);
        assert_eq!(
            h[1], 50,
            "temperature {t}: the first maximum wins every time"
        );
    }
    assert_eq!(argmax(&[f32::NAN, 1.0, 3.0, 3.0]), 2);
}

#[test]
fn top_k_and_top_p_together_is_an_error() {
    for k in [1, 2, 50] {
        let err = params(1.0, k, 0.5)
            .validate(100, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot both be set"), "{err}");
    }
    assert!(params(1.0, 0, 1.5).validate(100, None).is_err());
    assert!(params(1.0, 0, -0.1).validate(100, None).is_err());
    assert!(
        params(0.0, 0, 0.9).validate(100, None).is_err(),
        "temperature 0 while sampling"
    );
    assert!(
        params(1.0, 101, 0.0).validate(100, None).is_err(),
        "top-k wider than the logits"
    );
    assert!(
        params(1.0, 8, 0.0).validate(100, Some(8)).is_err(),
        "top-k not below the vocabulary"
    );
    params(1.0, 0, 1.0).validate(100, None).unwrap();
}

#[test]
fn top_k_keeps_the_k_largest_and_ties_at_the_boundary() {
    let h = histogram(params(1.0, 2, 0.0), &[5.0, 4.5, 3.0, 2.0, 4.0], 4000, 3);
    assert!(h[0] > 0 && h[1] > 0);
    assert_eq!(h[2] + h[3] + h[4], 0, "{h:?}");
    // Ties at the k-th value all stay (torch: mask logits < k-th largest).
    let h = histogram(params(1.0, 2, 0.0), &[5.0, 4.0, 4.0, 1.0], 4000, 4);
    assert!(h[0] > 0 && h[1] > 0 && h[2] > 0 && h[3] == 0, "{h:?}");
}

#[test]
fn top_p_boundary_follows_megatron_shifted_mask() {
    // Dyadic probabilities, exact in binary: cumulative 0.5, 0.75, 0.875, 1.
    let probs = [0.5, 0.25, 0.125, 0.125];
    assert_eq!(nucleus_len(&probs, 0.49), 1);
    // Mass exactly p before a token keeps it (Megatron masks where cumsum > p, shifted by one).
    assert_eq!(nucleus_len(&probs, 0.5), 2);
    assert_eq!(nucleus_len(&probs, 0.51), 2);
    assert_eq!(nucleus_len(&probs, 0.74), 2);
    assert_eq!(nucleus_len(&probs, 0.75), 3);
    assert_eq!(nucleus_len(&probs, 0.9), 4);
    assert_eq!(nucleus_len(&probs, 1.0), 4);
    // The top token always stays, however small p.
    assert_eq!(nucleus_len(&probs, 1e-12), 1);
    assert_eq!(nucleus_len(&[1.0], 0.3), 1);
    // Through the sampler: p = 0.6 keeps the first two tokens only, both drawn.
    let h = histogram(params(1.0, 0, 0.6), &ln(&probs), 4000, 5);
    assert!(h[0] > 0 && h[1] > 0 && h[2] + h[3] == 0, "{h:?}");
    let h = histogram(params(1.0, 0, 1e-6), &ln(&probs), 500, 6);
    assert_eq!(h[0], 500);
}

#[test]
fn temperature_is_applied_first() {
    // Plain sampling: p(1) = 0.75 at T = 1, 1/(1 + 3^-1/2) ≈ 0.634 at T = 2.
    let logits = ln(&[0.25, 0.75]);
    let n = 40_000;
    let f = |t| histogram(params(t, 0, 0.0), &logits, n, 7)[1] as f64 / n as f64;
    assert!((f(1.0) - 0.75).abs() < 0.01);
    assert!((f(2.0) - 1.0 / (1.0 + 3f64.powf(-0.5))).abs() < 0.01);
    // Before top-p: at T = 1 the top token holds 0.8 > 0.7 and stands alone; at T = 10 the flattened
    // distribution (≈ 0.53 / 0.47) keeps both.
    let logits = ln(&[0.8, 0.2]);
    assert_eq!(histogram(params(1.0, 0, 0.7), &logits, 2000, 8)[1], 0);
    assert!(histogram(params(10.0, 0, 0.7), &logits, 2000, 8)[1] > 0);
    // A tiny temperature makes sampling greedy in effect.
    assert_eq!(
        histogram(params(0.01, 0, 0.0), &[1.0, 1.5, 0.2], 1000, 9)[1],
        1000
    );
}

#[test]
fn seeded_streams_reproduce_and_differ() {
    let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
    let p = params(1.0, 0, 0.95);
    let draw = |seed, stream| {
        let mut s = Sampler::new(p, seed, stream, None);
        (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
    };
    assert_eq!(draw(1234, 0), draw(1234, 0));
    assert_ne!(draw(1234, 0), draw(1235, 0));
    assert_ne!(draw(1234, 0), draw(1234, 1));
}

#[test]
fn sampled_ids_are_clamped_into_the_tokenizer_vocabulary() {
    // Padded logits: the only likely ids are 8 and 9, beyond a tokenizer of 8 ids.
    let mut logits = vec![-100.0f32; 10];
    logits[8] = 5.0;
    logits[9] = 5.0;
    let mut s = Sampler::new(params(1.0, 0, 0.0), 1, 0, Some(8));
    for _ in 0..20 {
        assert_eq!(s.sample(&logits), 7);
    }
}
