//! Megatron-style initialisation (docs/nemo.md §3): seeded, per-tensor distributions as specified.

use candle_core::{DType, Device, Tensor};
use coil_model::params::init_params;
use coil_model::presets::preset;

fn stats(t: &Tensor) -> (f64, f64, f64, f64) {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x as f64), b.max(x as f64))
        });
    (mean, std, lo, hi)
}

#[test]
fn distributions_follow_megatron_and_the_seed_decides() {
    let mut cfg = preset("nemotronh_8b").unwrap().config;
    // a small member of the family: same rules, fewer numbers
    cfg.hidden_size = 256;
    cfg.vocab_size = 1024;
    cfg.pattern = "M*-M".into();
    cfg.mamba.num_heads = 8;
    cfg.mamba.state_size = 16;
    cfg.mlp.intermediate_size = 512;
    cfg.attention.head_dim = 32;
    cfg.attention.num_heads = 8;
    cfg.attention.num_kv_heads = 2;
    let p = init_params(&cfg, 7, &Device::Cpu, DType::F32).unwrap();
    let layers = 4f64;
    let close = |got: f64, want: f64, what: &str| {
        assert!(
            (got - want).abs() < 0.06 * want,
            "{what}: std {got} vs {want}"
        )
    };
    close(stats(&p["backbone.embeddings.weight"]).1, 0.02, "embedding");
    close(
        stats(&p["backbone.layers.0.mixer.in_proj.weight"]).1,
        0.02,
        "in_proj",
    );
    close(
        stats(&p["backbone.layers.0.mixer.out_proj.weight"]).1,
        0.02 / layers.sqrt(),
        "mamba out_proj",
    );
    close(
        stats(&p["backbone.layers.1.mixer.o_proj.weight"]).1,
        0.02 / layers.sqrt(),
        "attention o_proj",
    );
    close(
        stats(&p["backbone.layers.2.mixer.down_proj.weight"]).1,
        0.02 / layers.sqrt(),
        "mlp down_proj",
    );
    close(stats(&p["lm_head.weight"]).1, 0.02, "lm_head");
    let (_, _, lo, hi) = stats(&p["backbone.layers.0.mixer.conv1d.weight"]);
    assert!(
        lo >= -0.5 && hi <= 0.5 && hi > 0.4,
        "conv kaiming bound 1/sqrt(4): [{lo}, {hi}]"
    );
    let (_, _, lo, hi) = stats(&p["backbone.layers.0.mixer.A_log"]);
    assert!(
        lo >= 0.0 && hi <= 16f64.ln(),
        "A_log = log U(1,16): [{lo}, {hi}]"
    );
    let dt: Vec<f32> = p["backbone.layers.0.mixer.dt_bias"].to_vec1().unwrap();
    for b in dt {
        let dt = (b as f64).exp().ln_1p(); // softplus(dt_bias) is the initial dt
        assert!((1e-3 - 1e-9..=0.1 + 1e-9).contains(&dt), "initial dt {dt}");
    }
    for one in [
        "backbone.layers.0.mixer.D",
        "backbone.layers.0.mixer.norm.weight",
        "backbone.layers.0.norm.weight",
        "backbone.norm_f.weight",
    ] {
        let (m, s, _, _) = stats(&p[one]);
        assert!(m == 1.0 && s == 0.0, "{one} is ones");
    }
    // the seed decides: same seed equal, other seed different
    let again = init_params(&cfg, 7, &Device::Cpu, DType::F32).unwrap();
    let other = init_params(&cfg, 8, &Device::Cpu, DType::F32).unwrap();
    let w = "backbone.layers.0.mixer.in_proj.weight";
    assert_eq!(
        p[w].to_vec2::<f32>().unwrap(),
        again[w].to_vec2::<f32>().unwrap()
    );
    assert_ne!(
        p[w].to_vec2::<f32>().unwrap(),
        other[w].to_vec2::<f32>().unwrap()
    );
}
