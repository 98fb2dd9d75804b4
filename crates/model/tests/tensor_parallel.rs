//! Tensor and sequence parallelism on the CPU over loopback TCP: a tiny hybrid with every layer kind (Mamba2 with
//! projection and conv biases, attention, MLP with biases, untied LM head, a vocabulary the TP size does not
//! divide) split over 2 and 4 ranks, one thread each, computes the logits, the per-token losses and (after
//! gathering each rank's slices) the parameter gradients of the unsplit model.

use candle_core::{DType, Device, Tensor};
use coil_model::config::{
    AttentionConfig, Family, MambaConfig, MlpActivation, MlpConfig, ModelConfig, SpecialTokens,
};
use coil_model::parallel::{local_config, shard_rule, TensorParallel};
use coil_model::HybridLm;
use std::collections::BTreeMap;

fn config(pattern: &str) -> ModelConfig {
    let mut mamba = MambaConfig::megatron(8, 4, 4, 8, 8);
    mamba.proj_bias = true;
    ModelConfig {
        family: Family::NemotronH,
        vocab_size: 50,
        hidden_size: 24,
        pattern: pattern.into(),
        norm_eps: 1e-5,
        tie_word_embeddings: false,
        residual_in_fp32: false,
        init_std: 0.1,
        mamba,
        attention: AttentionConfig {
            num_heads: 8,
            num_kv_heads: 4,
            head_dim: 4,
        },
        mlp: MlpConfig {
            intermediate_size: 32,
            activation: MlpActivation::Relu2,
            bias: true,
        },
        tokens: SpecialTokens::default(),
    }
}

/// A model whose every parameter (biases and norms too) is random, so that no gradient is trivially zero.
fn model(cfg: &ModelConfig) -> HybridLm {
    let base = HybridLm::init(cfg, 7, &Device::Cpu, DType::F32).unwrap();
    let mut g = 0u64;
    let params: BTreeMap<String, Tensor> = base
        .named_tensors()
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            g += 1;
            let noise = Tensor::randn(0f32, 0.05, t.shape(), &Device::Cpu).unwrap();
            let t = if n.ends_with("A_log") || n.ends_with("dt_bias") || n.ends_with(".D") {
                t
            } else {
                (t + noise).unwrap()
            };
            (n, t)
        })
        .collect();
    assert!(g > 10);
    HybridLm::load(cfg, &params, &Device::Cpu, DType::F32).unwrap()
}

fn ids(b: usize, t: usize, vocab: usize) -> Vec<u32> {
    (0..b * t).map(|i| ((i * 37 + 11) % vocab) as u32).collect()
}

struct RankResult {
    logits: Vec<f32>,
    losses: Vec<f32>,
    /// Every parameter's gradient, gathered to its full shape (summed over ranks for replicated parameters
    /// under sequence parallelism), by name.
    grads: BTreeMap<String, Vec<f32>>,
}

/// Runs the forward (logits), the per-token losses and the backward of their sum on `tp` ranks (1 = unsplit).
fn run(
    cfg: &ModelConfig,
    full: &HybridLm,
    tp: usize,
    sp: bool,
    shape: (usize, usize),
    seq_idx: Option<Vec<i64>>,
) -> Vec<RankResult> {
    let params: BTreeMap<String, Tensor> = full.named_tensors().unwrap().into_iter().collect();
    let (b, t) = shape;
    let x = ids(b, t, cfg.vocab_size);
    let targets: Vec<u32> = x
        .iter()
        .map(|v| (v * 7 + 3) % cfg.vocab_size as u32)
        .collect();
    let group = coil_comm::loopback_group(tp).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|comm| {
                let (params, x, targets, seq_idx) = (&params, &x, &targets, &seq_idx);
                s.spawn(move || {
                    let dev = Device::Cpu;
                    let par = TensorParallel::new(Box::new(comm), sp);
                    let m =
                        HybridLm::load_parallel(cfg, params, &dev, DType::F32, Some(par.clone()))
                            .unwrap();
                    let (m, vars) = m.trainable().unwrap();
                    let ids = Tensor::from_vec(x.clone(), (b, t), &dev).unwrap();
                    let seq = seq_idx
                        .as_ref()
                        .map(|v| Tensor::from_vec(v.clone(), (b, t), &dev).unwrap());
                    let logits = if sp {
                        vec![]
                    } else {
                        m.forward_packed(&ids, seq.as_ref(), None)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap()
                    };
                    let ce = m.token_losses(&ids, seq.as_ref(), targets).unwrap();
                    let losses = ce.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let grads = ce.sum_all().unwrap().backward().unwrap();
                    let mut out = BTreeMap::new();
                    for (name, var) in &vars {
                        let g = grads
                            .get(var.as_tensor())
                            .cloned()
                            .unwrap_or_else(|| var.as_tensor().zeros_like().unwrap());
                        let mut g = par.unshard(name, cfg, &g).unwrap();
                        if par.needs_grad_sum(name, cfg).unwrap() {
                            let mut v = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                            par.with_comm(|c| c.all_reduce_sum(&mut v)).unwrap();
                            g = Tensor::from_vec(v, g.shape(), &dev).unwrap();
                        }
                        out.insert(name.clone(), g.flatten_all().unwrap().to_vec1().unwrap());
                    }
                    RankResult {
                        logits,
                        losses,
                        grads: out,
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// max |a − b| / max(1, max |b|).
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn check(pattern: &str, tp: usize, sp: bool, seq_idx: Option<Vec<i64>>) {
    let cfg = config(pattern);
    let full = model(&cfg);
    let shape = (2, 8);
    let want = run(&cfg, &full, 1, false, shape, seq_idx.clone()).remove(0);
    let got = run(&cfg, &full, tp, sp, shape, seq_idx);
    assert_eq!(got.len(), tp);
    for (r, g) in got.iter().enumerate() {
        let what = format!("{pattern} tp {tp} sp {sp} rank {r}");
        if !sp {
            let e = rel(&g.logits, &want.logits);
            assert!(e < 1e-5, "{what}: logits differ by {e}");
        }
        let e = rel(&g.losses, &want.losses);
        assert!(e < 1e-5, "{what}: losses differ by {e}");
        assert_eq!(g.grads.len(), want.grads.len());
        for (name, w) in &want.grads {
            assert!(w.iter().any(|v| *v != 0.0), "{name}: zero gradient");
            let e = rel(&g.grads[name], w);
            assert!(e < 1e-5, "{what}: gradient of {name} differs by {e}");
        }
    }
}

#[test]
fn two_ranks_compute_the_unsplit_model() {
    check("M*-M", 2, false, None);
}

#[test]
fn four_ranks_compute_the_unsplit_model() {
    check("M*-M", 4, false, None);
}

#[test]
fn sequence_parallel_ranks_compute_the_unsplit_model() {
    check("M*-M", 2, true, None);
    check("M-*", 4, true, None);
}

#[test]
fn packed_rows_split_over_ranks() {
    let seq: Vec<i64> = [0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 2, 2, 2, 2, 2, 3].to_vec();
    check("M*-", 2, false, Some(seq.clone()));
    check("M*-", 2, true, Some(seq));
}

#[test]
fn shards_cover_every_parameter_once() {
    let cfg = config("M*-M");
    let full = model(&cfg);
    for tp in [2, 4] {
        let local = local_config(&cfg, tp).unwrap();
        assert_eq!(local.vocab_size, 50usize.div_ceil(tp));
        for (name, t) in full.named_tensors().unwrap() {
            let dims = t.dims();
            let rules: Vec<_> = (0..tp)
                .map(|r| shard_rule(&name, &cfg, tp, r).unwrap())
                .collect();
            let Some(first) = &rules[0] else {
                assert!(rules.iter().all(Option::is_none), "{name}");
                continue;
            };
            let mut covered: Vec<usize> = rules
                .iter()
                .flat_map(|s| s.as_ref().unwrap().ranges.iter().flat_map(|r| r.clone()))
                .collect();
            covered.sort_unstable();
            let n = dims[first.dim];
            assert_eq!(covered, (0..n).collect::<Vec<_>>(), "{name} at tp {tp}");
        }
    }
}

#[test]
fn sizes_the_tp_size_does_not_divide_are_refused() {
    let cfg = config("M*-M");
    let e = local_config(&cfg, 3).unwrap_err().to_string();
    assert!(e.contains("8 heads and 4 groups"), "{e}");
    let mut c = config("*");
    c.attention.num_kv_heads = 2;
    let e = local_config(&c, 4).unwrap_err().to_string();
    assert!(e.contains("2 key/value heads"), "{e}");
    let c = config("-");
    let e = local_config(&c, 3).unwrap_err().to_string();
    assert!(e.contains("intermediate size 32"), "{e}");
}

#[test]
fn sequence_parallelism_needs_a_divisible_length() {
    let cfg = config("M-");
    let full = model(&cfg);
    let params: BTreeMap<String, Tensor> = full.named_tensors().unwrap().into_iter().collect();
    let group = coil_comm::loopback_group(2).unwrap();
    let errs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = group
            .into_iter()
            .map(|comm| {
                let (params, cfg) = (&params, &cfg);
                s.spawn(move || {
                    let par = TensorParallel::new(Box::new(comm), true);
                    let m =
                        HybridLm::load_parallel(cfg, params, &Device::Cpu, DType::F32, Some(par))
                            .unwrap();
                    let ids = Tensor::from_vec(ids(1, 7, 50), (1, 7), &Device::Cpu).unwrap();
                    m.token_losses(&ids, None, &[1; 7]).unwrap_err().to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in errs {
        assert!(e.contains("multiple of the TP size"), "{e}");
    }
}

/// Greedy decoding: prefill then one token at a time through the per-layer state (each rank's Mamba heads'
/// conv and SSM state, its attention KV heads), the next token the argmax of the gathered logits.
fn greedy(full: &HybridLm, cfg: &ModelConfig, tp: usize, steps: usize) -> Vec<Vec<u32>> {
    let params: BTreeMap<String, Tensor> = full.named_tensors().unwrap().into_iter().collect();
    let group = coil_comm::loopback_group(tp).unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = group
            .into_iter()
            .map(|comm| {
                let (params, cfg) = (&params, cfg);
                s.spawn(move || {
                    let dev = Device::Cpu;
                    let par = TensorParallel::new(Box::new(comm), false);
                    let m =
                        HybridLm::load_parallel(cfg, params, &dev, DType::F32, Some(par)).unwrap();
                    let prompt = Tensor::from_vec(ids(2, 5, cfg.vocab_size), (2, 5), &dev).unwrap();
                    let (mut logits, mut state) =
                        m.forward_with_state(&prompt, None, None, true).unwrap();
                    let mut out = vec![];
                    for _ in 0..steps {
                        let next = logits.squeeze(1).unwrap().argmax(1).unwrap();
                        out.push(next.to_vec1::<u32>().unwrap());
                        let step = next.unsqueeze(1).unwrap();
                        (logits, state) = m
                            .forward_with_state(&step, Some(&state), None, true)
                            .unwrap();
                    }
                    out
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    })
    .remove(0)
}

#[test]
fn greedy_tokens_are_the_unsplit_models() {
    let cfg = config("M*-M");
    let full = model(&cfg);
    let want = greedy(&full, &cfg, 1, 6);
    assert_eq!(greedy(&full, &cfg, 2, 6), want);
    assert_eq!(greedy(&full, &cfg, 4, 6), want);
}

/// A rank reading its slices straight from a safetensors file (only their bytes) gets what slicing the loaded
/// tensors gives, padding rows included.
#[test]
fn slices_read_from_safetensors_equal_slices_of_the_loaded_model() {
    let cfg = config("M*-M");
    let full = model(&cfg);
    let params: BTreeMap<String, Tensor> = full.named_tensors().unwrap().into_iter().collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    let as_map: std::collections::HashMap<String, Tensor> = params.clone().into_iter().collect();
    candle_core::safetensors::save(&as_map, &file).unwrap();
    let st = coil_model::weights::SafetensorsFiles::open(&[file]).unwrap();
    for tp in [2, 4] {
        for comm in coil_comm::loopback_group(tp).unwrap() {
            let rank = coil_comm::Collective::rank(&comm);
            let par = TensorParallel::new(Box::new(comm), false);
            let load = |src: &dyn coil_model::weights::WeightSource| {
                HybridLm::load_parallel(&cfg, src, &Device::Cpu, DType::F32, Some(par.clone()))
                    .unwrap()
                    .named_tensors()
                    .unwrap()
            };
            let (a, b) = (load(&st), load(&params));
            assert_eq!(a.len(), b.len());
            for ((n, x), (_, y)) in a.iter().zip(&b) {
                let (x, y) = (
                    x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                assert_eq!(x, y, "{n} at tp {tp} rank {rank}");
            }
        }
    }
}
