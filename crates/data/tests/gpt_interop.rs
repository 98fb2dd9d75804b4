//! GPT pretraining indices and samples against megatron-core's own `GPTDataset` and `BlendedDataset`
//! (tests/fixtures/mcore_gpt.json, written by tools/make_fixtures.py from gpt_a/gpt_b).

use std::path::PathBuf;

use coil_data::{
    build_pretraining_datasets, build_pretraining_datasets_per_split, GptConfig, PretrainDataset,
    SampleSource,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ints(v: &Value) -> Vec<i64> {
    let mut out = Vec::new();
    for x in v.as_array().unwrap() {
        match x {
            Value::Array(_) => out.extend(ints(x)),
            _ => out.push(x.as_f64().unwrap() as i64),
        }
    }
    out
}

fn run_case(case: &Value, cache: &std::path::Path) {
    let label = case["label"].as_str().unwrap();
    let prefixes: Vec<String> = case["prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            fixtures()
                .join(p.as_str().unwrap())
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let paths: Vec<String> = match case["weights"].as_array() {
        Some(w) => w
            .iter()
            .zip(&prefixes)
            .flat_map(|(w, p)| [w.as_f64().unwrap().to_string(), p.clone()])
            .collect(),
        None => prefixes,
    };
    let sizes: Vec<Option<usize>> = case["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().map(|v| v as usize))
        .collect();
    let mut cfg = GptConfig::new(case["seq_length"].as_u64().unwrap() as usize);
    cfg.seed = case["seed"].as_u64().unwrap() as u32;
    cfg.pad = Some(0);
    cfg.eod = Some(2);
    cfg.cache_dir = Some(cache.to_path_buf());
    if let Some(v) = case.get("eod_mask_loss") {
        cfg.eod_mask_loss = v.as_bool().unwrap();
    }
    if let Some(v) = case.get("drop_last_partial_validation_sequence") {
        cfg.drop_last_partial_validation_sequence = v.as_bool().unwrap();
    }
    let sizes = [sizes[0], sizes[1], sizes[2]];
    let built = match case.get("blend_per_split") {
        None => build_pretraining_datasets(&paths, case["split"].as_str().unwrap(), sizes, &cfg)
            .unwrap(),
        Some(per_split) => {
            // [[prefixes], weights or null] per split -> NeMo's zipped list form.
            let lists: Vec<Vec<String>> = per_split
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    let ps = b[0].as_array().unwrap().iter().map(|p| {
                        fixtures()
                            .join(p.as_str().unwrap())
                            .to_string_lossy()
                            .into_owned()
                    });
                    match b[1].as_array() {
                        Some(w) => w
                            .iter()
                            .zip(ps)
                            .flat_map(|(w, p)| [w.as_f64().unwrap().to_string(), p])
                            .collect(),
                        None => ps.collect(),
                    }
                })
                .collect();
            build_pretraining_datasets_per_split(
                [Some(&lists[0]), Some(&lists[1]), Some(&lists[2])],
                sizes,
                &cfg,
            )
            .unwrap()
        }
    };
    for (i, name) in ["train", "valid", "test"].iter().enumerate() {
        let want = &case["splits"][*name];
        let got = &built[i];
        if want.is_null() {
            assert!(got.is_none(), "{label}/{name} should not exist");
            continue;
        }
        let got = got
            .as_ref()
            .unwrap_or_else(|| panic!("{label}/{name} missing"));
        assert_eq!(
            got.len() as u64,
            want["len"].as_u64().unwrap(),
            "{label}/{name} len"
        );
        match got {
            PretrainDataset::Single(d) => {
                let r = ints(&want["indices_range"]);
                assert_eq!(
                    (d.indices().start as i64, d.indices().end as i64),
                    (r[0], r[1]),
                    "{label}/{name} split range"
                );
                assert_eq!(
                    d.document_index(),
                    ints(&want["document_index"]).as_slice(),
                    "{label}/{name} document_index"
                );
                assert_eq!(
                    d.sample_index(),
                    ints(&want["sample_index"]).as_slice(),
                    "{label}/{name} sample_index"
                );
                assert_eq!(
                    d.shuffle_index(),
                    ints(&want["shuffle_index"]).as_slice(),
                    "{label}/{name} shuffle_index"
                );
            }
            PretrainDataset::Blended(b) => {
                let di: Vec<i64> = b.dataset_index().iter().map(|&x| x as i64).collect();
                assert_eq!(
                    di,
                    ints(&want["dataset_index"]),
                    "{label}/{name} dataset_index"
                );
                assert_eq!(
                    b.dataset_sample_index(),
                    ints(&want["dataset_sample_index"]).as_slice()
                );
                let lens: Vec<i64> = b.datasets().iter().map(|d| d.len() as i64).collect();
                assert_eq!(
                    lens,
                    ints(&want["member_lens"]),
                    "{label}/{name} member lengths"
                );
            }
        }
        for (k, s) in want["samples"].as_array().unwrap().iter().enumerate() {
            let ours = got.sample(k).unwrap();
            assert_eq!(
                ours.tokens,
                ints(&s["tokens"]),
                "{label}/{name} sample {k} tokens"
            );
            assert_eq!(
                ours.labels,
                ints(&s["labels"]),
                "{label}/{name} sample {k} labels"
            );
            let mask: Vec<i64> = ours.loss_mask.iter().map(|&m| m as i64).collect();
            assert_eq!(
                mask,
                ints(&s["loss_mask"]),
                "{label}/{name} sample {k} loss_mask"
            );
        }
    }
}

#[test]
fn indices_and_samples_match_megatron_core() {
    let text = std::fs::read_to_string(fixtures().join("mcore_gpt.json")).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    let cache = tempfile::tempdir().unwrap();
    for case in cases.as_array().unwrap() {
        run_case(case, cache.path());
        // Second pass loads the cached .npy indices and must give the same answers.
        run_case(case, cache.path());
    }
    assert!(std::fs::read_dir(cache.path()).unwrap().count() >= 4);
}
