//! Sequence packing: pieces of the fixture prompts packed into rows with `seq_idx` give the same logits and the
//! same parameter gradients (of the summed next-token loss) as running each piece alone, on Mamba2 fixtures and
//! on the Nemotron-H fixture with attention and MLP layers.

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::*;

/// Per packed row: pieces of the matching fixture row (lengths summing to its 37 tokens). Boundaries fall
/// inside chunks and on chunk edges (16, 32 for chunk 16), with pieces shorter than the conv width (1, 3).
const LAYOUT: [&[usize]; 2] = [&[5, 1, 10, 16, 5], &[3, 3, 31]];

/// (row, first position, end) of every piece.
fn pieces() -> Vec<(usize, usize, usize)> {
    let mut out = vec![];
    for (b, row) in LAYOUT.iter().enumerate() {
        let mut t0 = 0;
        for &n in row.iter() {
            out.push((b, t0, t0 + n));
            t0 += n;
        }
    }
    out
}

/// `seq_idx` [2, T] for [`LAYOUT`] (arbitrary increasing labels).
fn seq_idx(t: usize) -> Tensor {
    let mut v: Vec<i64> = vec![];
    for row in LAYOUT {
        assert_eq!(
            row.iter().sum::<usize>(),
            t,
            "layout must cover the fixture rows"
        );
        for (k, &n) in row.iter().enumerate() {
            v.extend(std::iter::repeat_n(10 + 2 * k as i64, n));
        }
    }
    Tensor::from_vec(v, (2, t), &Device::Cpu).unwrap()
}

/// Σ next-token cross-entropy of one piece's logits [1, n, V] against its ids [1, n] (0 for n = 1).
fn piece_loss(logits: &Tensor, ids: &Tensor) -> Tensor {
    let n = ids.dim(1).unwrap();
    if n < 2 {
        return Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    }
    let logp =
        candle_nn::ops::log_softmax(&logits.narrow(1, 0, n - 1).unwrap(), D::Minus1).unwrap();
    let target = ids
        .narrow(1, 1, n - 1)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap()
        .unsqueeze(2)
        .unwrap();
    logp.gather(&target, 2)
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap()
}

/// (max |logits packed − alone|, worst relative gradient error, its parameter, loss packed, loss alone).
fn compare(name: &str) -> (f32, f64, String, f32, f32) {
    let ids = &load_fixture(name)["input_ids"];
    let t = ids.dim(1).unwrap();
    let seq = seq_idx(t);
    let (model, vars) = load_model(name).trainable().unwrap();

    let packed = model.forward_packed(ids, Some(&seq), None).unwrap();
    let mut loss_packed = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    let mut loss_alone = loss_packed.clone();
    let mut logit_err = 0f32;
    for (b, t0, t1) in pieces() {
        let piece = ids.narrow(0, b, 1).unwrap().narrow(1, t0, t1 - t0).unwrap();
        let alone = model.forward(&piece, None).unwrap();
        let from_packed = packed
            .narrow(0, b, 1)
            .unwrap()
            .narrow(1, t0, t1 - t0)
            .unwrap();
        logit_err = logit_err.max(max_abs(&from_packed, &alone));
        loss_packed = (loss_packed + piece_loss(&from_packed, &piece)).unwrap();
        loss_alone = (loss_alone + piece_loss(&alone, &piece)).unwrap();
    }
    let g_packed = loss_packed.backward().unwrap();
    let g_alone = loss_alone.backward().unwrap();
    let (mut worst, mut worst_name) = (0f64, String::new());
    for (n, v) in &vars {
        let (gp, ga) = (
            g_packed
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no packed grad for {n}")),
            g_alone
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no grad for {n}")),
        );
        let e = coil_testutil::rel_l2(gp, ga);
        if e > worst {
            (worst, worst_name) = (e, n.clone());
        }
    }
    let scalar = |l: &Tensor| l.to_scalar::<f32>().unwrap();
    (
        logit_err,
        worst,
        worst_name,
        scalar(&loss_packed),
        scalar(&loss_alone),
    )
}

#[test]
fn packed_rows_equal_each_piece_alone_logits_and_gradients() {
    for name in ["mamba2_tiny", "mamba2_g1_chunk64", "nemotron_h_tiny"] {
        let (logit_err, grad_err, worst, lp, la) = compare(name);
        eprintln!(
            "{name}: packed vs alone: logits max abs {logit_err:.2e}, worst gradient rel {grad_err:.2e} \
             ({worst}), loss {lp} vs {la}"
        );
        assert!(logit_err <= 1e-5, "{name}: logits differ by {logit_err}");
        assert!(
            grad_err <= 1e-5,
            "{name}: gradient of {worst} differs by {grad_err:.3e} (relative)"
        );
        assert!(
            (lp - la).abs() <= 1e-4 * la.abs(),
            "{name}: loss {lp} vs {la}"
        );
    }
}

#[test]
fn packing_is_not_a_no_op_and_without_seq_idx_is_the_plain_forward() {
    let name = "nemotron_h_tiny";
    let ids = &load_fixture(name)["input_ids"];
    let model = load_model(name);
    let plain = model.forward(ids, None).unwrap();
    assert_eq!(
        max_abs(&model.forward_packed(ids, None, None).unwrap(), &plain),
        0.0
    );
    // One label for the whole row: no boundary, the plain forward.
    let one = Tensor::zeros((2, ids.dim(1).unwrap()), DType::U32, &Device::Cpu).unwrap();
    assert!(
        max_abs(
            &model.forward_packed(ids, Some(&one), None).unwrap(),
            &plain
        ) <= 1e-5
    );
    // With boundaries, the first piece of each row (3 tokens or more) is unchanged and later positions change.
    let packed = model.forward_packed(ids, Some(&seq_idx(37)), None).unwrap();
    let first = |t: &Tensor| t.narrow(1, 0, 3).unwrap();
    assert!(max_abs(&first(&packed), &first(&plain)) <= 1e-5);
    assert!(max_abs(&packed, &plain) > 1e-2);
}

#[test]
fn bad_seq_idx_is_an_error() {
    let name = "nemotron_h_tiny";
    let ids = &load_fixture(name)["input_ids"];
    let model = load_model(name);
    let short = seq_idx(37).narrow(1, 0, 36).unwrap();
    let err = model
        .forward_packed(ids, Some(&short), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("seq_idx"), "{err}");
    let float = seq_idx(37).to_dtype(DType::F32).unwrap();
    assert!(model.forward_packed(ids, Some(&float), None).is_err());
}
