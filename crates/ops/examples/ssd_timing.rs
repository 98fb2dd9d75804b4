//! Wall-clock timing of the chunked SSD forward and backward on one shape (default: a Mamba2-2.7B-like layer,
//! B=1 T=512 H=24 P=64 G=1 N=128 Q=256). Run:
//! `cargo run --release -p coil-ops --example ssd_timing [B T H P G N Q]`
//! Prints the median of several runs of each and their ratio.

use coil_ops::ssd::{ssd_chunked, ssd_chunked_backward, SsdDims, SsdInputs};
use coil_testutil::Lcg;
use std::time::Instant;

fn median_ms(mut f: impl FnMut(), reps: usize) -> f64 {
    f(); // warm-up
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[reps / 2]
}

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("sizes are integers: B T H P G N Q"))
        .collect();
    let v = if a.len() == 7 {
        a
    } else {
        vec![1, 512, 24, 64, 1, 128, 256]
    };
    let dims = SsdDims {
        batch: v[0],
        seqlen: v[1],
        heads: v[2],
        head_dim: v[3],
        groups: v[4],
        state: v[5],
    };
    let q = v[6];
    // Deterministic, well-conditioned inputs (dt in (0.001, 0.1), A in (-4, -0.5)).
    let mut rng = Lcg(1);
    let mut gen = |n: usize, lo: f32, hi: f32| rng.vec(n, lo, hi);
    let (x, dt, av) = (
        gen(dims.x_len(), -1.0, 1.0),
        gen(dims.dt_len(), 0.001, 0.1),
        gen(dims.heads, -4.0, -0.5),
    );
    let (b, c, d) = (
        gen(dims.bc_len(), -1.0, 1.0),
        gen(dims.bc_len(), -1.0, 1.0),
        gen(dims.heads, -1.0, 1.0),
    );
    let dy = gen(dims.x_len(), -1.0, 1.0);
    let inp = SsdInputs {
        x: &x,
        dt: &dt,
        a: &av,
        b: &b,
        c: &c,
        d: &d,
        initial_state: None,
        seq_idx: None,
    };
    let reps = 11;
    let fwd = median_ms(|| drop(ssd_chunked(dims, inp, q)), reps);
    let bwd = median_ms(|| drop(ssd_chunked_backward(dims, inp, q, &dy, None)), reps);
    println!(
        "{dims:?} Q={q} threads={}: ssd_chunked {fwd:.2} ms, ssd_chunked_backward {bwd:.2} ms, ratio {:.2}",
        rayon::current_num_threads(),
        bwd / fwd
    );
}
