//! Config reading (every HF spelling) and the 11 NeMo presets (docs/nemo.md §2), exact.

use coil_model::config::{pad_vocab, parse_pattern, Family, LayerKind, MlpActivation, ModelConfig};
use coil_model::hf_config::parse_config;
use coil_model::params::num_parameters;
use coil_model::presets::{preset, PRESET_NAMES};

const NH_BASE: &str = r#""model_type": "nemotron_h", "vocab_size": 256, "hidden_size": 64, "mamba_num_heads": 8,
    "mamba_head_dim": 16, "ssm_state_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
    "intermediate_size": 128"#;

fn nh(extra: &str) -> ModelConfig {
    parse_config(&format!("{{{NH_BASE}, {extra}}}")).unwrap_or_else(|e| panic!("{extra}: {e}"))
}

#[test]
fn nemotron_h_layer_spellings_agree() {
    let new = nh(
        r#""layers_block_type": ["linear_attention", "full_attention", "linear_attention", "mlp"], "n_groups": 2, "head_dim": 16"#,
    );
    let legacy = nh(
        r#""layers_block_type": ["mamba", "attention", "mamba", "mlp"], "mamba_n_groups": 2, "attention_head_dim": 16"#,
    );
    let pattern = nh(
        r#""hybrid_override_pattern": "M*M-", "n_groups": 2, "head_dim": 16, "num_hidden_layers": 4"#,
    );
    assert_eq!(new.pattern, "M*M-");
    assert_eq!(new, legacy);
    assert_eq!(new, pattern);
    assert_eq!(new.mamba.n_groups, 2);
    assert_eq!(new.attention.head_dim, 16);
    assert_eq!(new.family, Family::NemotronH);
    // native HF: chunked-path dt clamp is (time_step_min, inf), whatever time_step_limit says
    let limited = nh(
        r#""hybrid_override_pattern": "M", "time_step_limit": [0.5, 0.9], "time_step_min": 0.002"#,
    );
    assert_eq!(
        (limited.mamba.dt_clamp_min, limited.mamba.dt_clamp_max),
        (0.002, None)
    );
    // legacy mamba_* names
    let old = nh(
        r#""hybrid_override_pattern": "M", "mamba_d_conv": 3, "mamba_chunk_size": 32, "mamba_conv_bias": false, "mamba_dt_max": 0.2"#,
    );
    assert_eq!(
        (
            old.mamba.conv_kernel,
            old.mamba.chunk_size,
            old.mamba.conv_bias,
            old.mamba.dt_init_max
        ),
        (3, 32, false, 0.2)
    );
    let gelu = nh(r#""hybrid_override_pattern": "M-", "mlp_hidden_act": "gelu""#);
    assert_eq!(gelu.mlp.activation, MlpActivation::Gelu);
}

#[test]
fn num_hidden_layers_must_agree_with_the_pattern() {
    let e = parse_config(&format!(
        r#"{{{NH_BASE}, "hybrid_override_pattern": "M*", "num_hidden_layers": 3}}"#
    ))
    .unwrap_err();
    assert!(
        e.contains("num_hidden_layers") && e.contains("2 layers"),
        "{e}"
    );
}

#[test]
fn infinity_in_every_spelling() {
    let base = r#""model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 256, "head_dim": 16, "n_groups": 2"#;
    for (limit, hi) in [
        (r#"[0.0, {"__float__": "Infinity"}]"#, None),
        ("[0.0, Infinity]", None),
        ("[0.0, 1e30]", Some(1e30)),
        ("[0.01, 0.5]", Some(0.5)),
    ] {
        let cfg = parse_config(&format!(
            r#"{{{base}, "time_step_limit": {limit}, "note": "Infinity in a string stays"}}"#
        ))
        .unwrap();
        assert_eq!(cfg.mamba.dt_clamp_max, hi, "{limit}");
        assert_eq!(cfg.mamba.num_heads, 8);
    }
}

#[test]
fn mamba2_validation_and_unsupported_fields() {
    let e = parse_config(r#"{"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 256, "num_heads": 3, "head_dim": 16}"#).unwrap_err();
    assert!(e.contains("num_heads"), "{e}");
    let e = parse_config(r#"{"d_model": 64, "n_layer": 2, "vocab_size": 256, "ssm_cfg": {}}"#)
        .unwrap_err();
    assert!(e.contains("Mamba1"), "{e}");
    let e = parse_config(r#"{"d_model": 64, "n_layer": 2, "vocab_size": 256, "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [1]}"#).unwrap_err();
    assert!(e.contains("attn_layer_idx"), "{e}");
    // state-spaces: vocab padded to pad_vocab_size_multiple, tied by default
    let ss = parse_config(r#"{"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {"layer": "Mamba2"}, "pad_vocab_size_multiple": 16}"#).unwrap();
    assert_eq!(
        (
            ss.vocab_size,
            ss.tie_word_embeddings,
            ss.mamba.num_heads,
            ss.mamba.n_groups,
            ss.mamba.state_size
        ),
        (50288, true, 24, 1, 128)
    );
}

#[test]
fn pattern_parsing() {
    assert_eq!(
        parse_pattern("M*-").unwrap(),
        vec![LayerKind::Mamba, LayerKind::Attention, LayerKind::Mlp]
    );
    assert!(parse_pattern("MEM")
        .unwrap_err()
        .to_string()
        .contains("not supported"));
    assert!(parse_pattern("MxM")
        .unwrap_err()
        .to_string()
        .contains("'x'"));
    assert!(parse_pattern("").is_err());
}

/// Independent closed form of the parameter count (untied embeddings).
fn closed_form(c: &ModelConfig) -> u64 {
    let (v, d) = (c.vocab_size as u64, c.hidden_size as u64);
    let (h, p, g, n) = (
        c.mamba.num_heads as u64,
        c.mamba.head_dim as u64,
        c.mamba.n_groups as u64,
        c.mamba.state_size as u64,
    );
    let (i, ch, k) = (h * p, h * p + 2 * g * n, c.mamba.conv_kernel as u64);
    let a = &c.attention;
    let (q, kv) = (
        (a.num_heads * a.head_dim) as u64,
        (a.num_kv_heads * a.head_dim) as u64,
    );
    let f = c.mlp.intermediate_size as u64;
    let layers: u64 = c
        .pattern
        .chars()
        .map(|s| {
            d + match s {
                'M' => d * (2 * i + 2 * g * n + h) + ch * k + ch + 3 * h + i + i * d,
                '*' => 2 * d * q + 2 * d * kv,
                _ => 2 * d * f,
            }
        })
        .sum();
    2 * v * d + d + layers
}

#[test]
#[allow(clippy::type_complexity)]
fn presets_are_exact() {
    // (name, layers, hidden, #M, #*, #-, groups, state, mamba heads, ffn, heads/kv/hd, vocab, seq, params)
    #[rustfmt::skip]
    let table: [(&str, usize, usize, usize, usize, usize, usize, usize, usize, usize, (usize, usize, usize), usize, usize, u64); 11] = [
        ("mamba2_130m", 24, 768, 24, 0, 0, 1, 128, 24, 768, (1, 1, 768), 50288, 2048, 167_610_816),
        ("mamba2_370m", 48, 1024, 48, 0, 0, 1, 128, 32, 1024, (1, 1, 1024), 50288, 2048, 419_841_536),
        ("mamba2_780m", 48, 1536, 48, 0, 0, 1, 128, 48, 1536, (1, 1, 1536), 50288, 2048, 857_403_648),
        ("mamba2_1_3b", 48, 2048, 48, 0, 0, 1, 128, 64, 2048, (1, 1, 2048), 50288, 2048, 1_446_747_136),
        ("mamba2_2_7b", 64, 2560, 64, 0, 0, 1, 128, 80, 2560, (1, 1, 2560), 50288, 2048, 2_831_336_960),
        ("mamba2_8b", 56, 4096, 56, 0, 0, 8, 128, 128, 4096, (32, 32, 128), 256000, 4096, 8_236_999_680),
        ("mamba2_hybrid_8b", 56, 4096, 24, 4, 28, 8, 128, 128, 16384, (32, 8, 128), 256000, 4096, 8_654_517_248),
        ("nemotronh_4b", 52, 3072, 24, 4, 24, 8, 128, 112, 12288, (32, 8, 128), 131072, 8192, 4_489_223_040),
        ("nemotronh_8b", 52, 4096, 24, 4, 24, 8, 128, 128, 21504, (32, 8, 128), 131072, 8192, 8_100_852_736),
        ("nemotronh_47b", 98, 8192, 45, 5, 48, 8, 256, 256, 30720, (64, 8, 128), 131072, 8192, 46_791_554_816),
        ("nemotronh_56b", 118, 8192, 54, 10, 54, 8, 256, 256, 32768, (64, 8, 128), 131072, 8192, 56_324_350_464),
    ];
    assert_eq!(PRESET_NAMES.len(), 11);
    for (name, layers, hidden, nm, na, nf, groups, state, heads, ffn, attn, vocab, seq, params) in
        table
    {
        let p = preset(name).unwrap();
        let c = &p.config;
        c.validate().unwrap();
        let count = |s: char| c.pattern.chars().filter(|&x| x == s).count();
        assert_eq!(
            (
                c.num_layers(),
                c.hidden_size,
                count('M'),
                count('*'),
                count('-')
            ),
            (layers, hidden, nm, na, nf),
            "{name}"
        );
        assert_eq!(
            (
                c.mamba.n_groups,
                c.mamba.state_size,
                c.mamba.num_heads,
                c.mamba.head_dim
            ),
            (groups, state, heads, 64),
            "{name}"
        );
        assert_eq!(
            (
                c.mlp.intermediate_size,
                (
                    c.attention.num_heads,
                    c.attention.num_kv_heads,
                    c.attention.head_dim
                )
            ),
            (ffn, attn),
            "{name}"
        );
        assert_eq!((c.vocab_size, p.seq_length), (vocab, seq), "{name}");
        assert_eq!(
            c.vocab_size,
            pad_vocab(p.raw_vocab_size, p.make_vocab_size_divisible_by, 1),
            "{name}"
        );
        assert!(
            !c.tie_word_embeddings
                && c.norm_eps == 1e-5
                && c.mamba.conv_kernel == 4
                && c.mamba.dt_clamp_max.is_none(),
            "{name}"
        );
        assert_eq!(num_parameters(c).unwrap(), params, "{name}");
        assert_eq!(closed_form(c), params, "{name}");
    }
    // worked in_proj / conv sizes of docs/nemo.md §2
    for (name, in_proj, conv) in [
        ("mamba2_130m", 3352, 1792),
        ("nemotronh_4b", 16496, 9216),
        ("nemotronh_8b", 18560, 10240),
        ("nemotronh_47b", 37120, 20480),
        ("nemotronh_56b", 37120, 20480),
    ] {
        let d = preset(name).unwrap().config.mixer_dims();
        assert_eq!((d.in_proj_dim(), d.conv_dim()), (in_proj, conv), "{name}");
    }
    // attention positions of docs/nemo.md §2
    let at = |name: &str| -> Vec<usize> {
        preset(name)
            .unwrap()
            .config
            .pattern
            .match_indices('*')
            .map(|(i, _)| i)
            .collect()
    };
    assert_eq!(at("mamba2_hybrid_8b"), vec![10, 22, 33, 45]);
    assert_eq!(at("nemotronh_8b"), vec![7, 18, 29, 40]);
    assert_eq!(
        preset("mamba2_hybrid_8b").unwrap().config.mlp.activation,
        MlpActivation::Gelu
    );
    assert_eq!(
        preset("nemotronh_56b").unwrap().config.mlp.activation,
        MlpActivation::Relu2
    );
    // the GPT-NeoX vocabulary pads to 50288 (matches the state-spaces checkpoints); 130M untied ~ 168M
    assert_eq!(pad_vocab(50277, 16, 1), 50288);
    assert_eq!(pad_vocab(50277, 128, 2), 50432);
    assert!(preset("nope").is_none());
}

#[test]
fn tensor_parallel_shards_cover_each_segment() {
    let d = preset("nemotronh_8b").unwrap().config.mixer_dims();
    let segs = d.in_proj_segments();
    assert_eq!(segs[4].end, d.in_proj_dim());
    let tp = 8;
    let mut rows: Vec<usize> = (0..tp)
        .flat_map(|r| d.in_proj_shard(r, tp).unwrap().into_iter().flatten())
        .collect();
    rows.sort();
    assert_eq!(rows, (0..d.in_proj_dim()).collect::<Vec<_>>());
    let r1 = d.in_proj_shard(1, tp).unwrap();
    assert_eq!(r1[0], 1024..2048); // z rows of heads 16..32 (64 channels each)
    assert_eq!(r1[2], 2 * 8192 + 128..2 * 8192 + 256); // B rows of group 1
    assert!(d.in_proj_shard(0, 3).is_err());
}

#[test]
fn hf_config_export_round_trips_every_preset_and_fixture() {
    use coil_model::hf_config::{read_config, to_hf_config};
    let mut configs: Vec<ModelConfig> = PRESET_NAMES
        .iter()
        .map(|n| preset(n).unwrap().config)
        .collect();
    for f in [
        "mamba2_tiny",
        "mamba2_tied_limit",
        "nemotron_h_tiny",
        "nemotron_h_gelu",
    ] {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(f);
        configs.push(read_config(&dir).unwrap());
    }
    for cfg in configs {
        let text = serde_json::to_string_pretty(&to_hf_config(&cfg).unwrap()).unwrap();
        let back = parse_config(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", cfg.pattern));
        // Sections of layer kinds the pattern does not use are not exported (pure Mamba2 presets carry
        // NeMo's unused attention/FFN values).
        let used = |mut c: ModelConfig| {
            if !c.pattern.contains('*') {
                c.attention = back.attention.clone();
            }
            if !c.pattern.contains('-') {
                c.mlp = back.mlp.clone();
            }
            c
        };
        assert_eq!(back, used(cfg), "{text}");
    }
}

#[test]
fn nemotron_h_export_puts_the_clamp_where_transformers_reads_it() {
    use coil_model::hf_config::to_hf_config;
    // NeMo's Nemotron-H trains unclamped: transformers must see time_step_min = 0 (it clamps the chunked path
    // at time_step_min), while the dt initialisation range keeps its lower end 1e-3.
    let cfg = preset("nemotronh_8b").unwrap().config;
    assert_eq!((cfg.mamba.dt_clamp_min, cfg.mamba.dt_init_min), (0.0, 1e-3));
    let v = to_hf_config(&cfg).unwrap();
    assert_eq!(v["time_step_min"], 0.0);
    assert_eq!(
        v["time_step_limit"],
        serde_json::json!([0.0, {"__float__": "Infinity"}])
    );
    assert_eq!(v["coil_dt_init_min"], 1e-3);
    assert!(v.get("coil_dt_clamp").is_none());
    assert_eq!(v["layers_block_type"][7], "full_attention");
    assert_eq!(parse_config(&v.to_string()).unwrap(), cfg);
    // A lower clamp that equals the initialisation minimum needs no Coil key.
    let mut clamped = cfg.clone();
    clamped.mamba.dt_clamp_min = 1e-3;
    let v = to_hf_config(&clamped).unwrap();
    assert_eq!(v["time_step_min"], 1e-3);
    assert!(v.get("coil_dt_init_min").is_none());
    assert_eq!(parse_config(&v.to_string()).unwrap(), clamped);
    // What transformers' nemotron_h cannot compute is refused, naming the setting.
    let mut upper = cfg.clone();
    upper.mamba.dt_clamp_max = Some(0.5);
    let e = to_hf_config(&upper).unwrap_err().to_string();
    assert!(
        e.contains("dt clamp max") && e.contains("nemotron_h"),
        "{e}"
    );
    let mut fp32 = cfg.clone();
    fp32.residual_in_fp32 = true;
    let e = fp32.validate().unwrap_err().to_string();
    assert!(e.contains("residual_in_fp32"), "{e}");
}

#[test]
fn configs_written_before_the_exact_export_reload_as_trained() {
    // Older Coil files recorded the clamp in coil_dt_clamp and wrote time_step_min = the init minimum.
    let old = nh(
        r#""hybrid_override_pattern": "M*M-", "time_step_min": 0.001, "coil_dt_clamp": [0.0, {"__float__": "Infinity"}]"#,
    );
    assert_eq!((old.mamba.dt_clamp_min, old.mamba.dt_init_min), (0.0, 1e-3));
    let v = coil_model::hf_config::to_hf_config(&old).unwrap();
    assert_eq!(
        (v["time_step_min"].as_f64(), v["coil_dt_init_min"].as_f64()),
        (Some(0.0), Some(1e-3))
    );
}

#[test]
fn mamba2_family_holds_what_transformers_mamba2_can_say() {
    let mut cfg = preset("mamba2_130m").unwrap().config;
    cfg.mamba.dt_clamp_min = 0.01;
    cfg.mamba.dt_clamp_max = Some(0.5);
    let v = coil_model::hf_config::to_hf_config(&cfg).unwrap();
    assert_eq!(v["time_step_limit"], serde_json::json!([0.01, 0.5]));
    assert_eq!(v["time_step_min"], 1e-3);
    let mut hybrid = cfg.clone();
    hybrid.pattern = "M*M-".into();
    let e = hybrid.validate().unwrap_err().to_string();
    assert!(
        e.contains("family mamba2") && e.contains("nemotron_h"),
        "{e}"
    );
}

#[test]
fn state_spaces_config_round_trips() {
    use coil_model::hf_config::StateSpacesConfig;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/state_spaces_mamba2_tiny");
    let cfg = coil_model::hf_config::read_config(&dir).unwrap();
    let ss = StateSpacesConfig::try_from(&cfg).unwrap();
    let back = parse_config(&serde_json::to_string(&ss).unwrap()).unwrap();
    assert_eq!(back, cfg);
    // the format has no field for the norm epsilon
    let mut eps = cfg.clone();
    eps.norm_eps = 1e-6;
    assert!(StateSpacesConfig::try_from(&eps)
        .unwrap_err()
        .contains("norm_eps"));
}

#[test]
fn type_errors_name_the_field() {
    let e = parse_config(r#"{"d_model": 64, "n_layer": 2, "vocab_size": 256, "ssm_cfg": {"layer": "Mamba2", "d_state": "x"}}"#).unwrap_err();
    assert!(e.contains("ssm_cfg.d_state"), "{e}");
    let e = parse_config(&format!(
        r#"{{{NH_BASE}, "hybrid_override_pattern": "M", "time_step_limit": [0.0, 1.0, 2.0]}}"#
    ))
    .unwrap_err();
    assert!(e.contains("time_step_limit"), "{e}");
    let e = parse_config(&format!(
        r#"{{{NH_BASE}, "layers_block_type": ["mamba", "conv"]}}"#
    ))
    .unwrap_err();
    assert!(e.contains("layers_block_type") && e.contains("conv"), "{e}");
}
