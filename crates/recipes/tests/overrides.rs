//! The override parser: types, nesting, aliases, special keys and errors.

use coil_data::DataConfig;
use coil_recipes::{apply_overrides, recipe, Mode, Recipe, RecipeError};
use std::path::PathBuf;

fn demo() -> Recipe {
    recipe("demo", Mode::Pretrain).unwrap_or_else(|e| panic!("{e}"))
}

fn apply(r: &Recipe, args: &[&str]) -> Result<Recipe, RecipeError> {
    apply_overrides(r, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

fn ok(args: &[&str]) -> Recipe {
    apply(&demo(), args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn err(args: &[&str]) -> String {
    match apply(&demo(), args) {
        Ok(_) => panic!("{args:?} should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn scalars_of_every_type() {
    let r = ok(&[
        "trainer.max_steps=200",
        "optim.max_lr=1e-3",
        "optim.min_lr=0",
        "parallel.sequence_parallelism=true",
        "run.name=mine",
        "run.dir=/tmp/x y",
        "trainer.precision=bf16-mixed",
        "checkpoint.save_top_k=-1",
    ]);
    assert_eq!(r.trainer.max_steps, 200);
    assert_eq!(r.optim.max_lr, 1e-3);
    assert_eq!(r.optim.min_lr, 0.0);
    assert!(r.parallel.sequence_parallelism);
    assert_eq!(r.run.name, "mine");
    assert_eq!(r.run.dir, PathBuf::from("/tmp/x y"));
    assert_eq!(
        r.trainer.precision,
        coil_recipes::recipe::PrecisionName::Bf16Mixed
    );
    assert_eq!(r.checkpoint.save_top_k, -1);
}

#[test]
fn type_errors_name_the_key() {
    let e = err(&["trainer.max_steps=abc"]);
    assert!(
        e.contains("trainer.max_steps") && e.contains("integer"),
        "{e}"
    );
    let e = err(&["trainer.max_steps=1.5"]);
    assert!(e.contains("integer"), "{e}");
    let e = err(&["trainer.max_steps=-3"]);
    assert!(e.contains("non-negative"), "{e}");
    let e = err(&["parallel.sequence_parallelism=yes"]);
    assert!(e.contains("true or false"), "{e}");
    let e = err(&["optim.max_lr=fast"]);
    assert!(e.contains("number"), "{e}");
    let e = err(&["trainer.precision=fp4"]);
    assert!(e.contains("fp4"), "{e}");
    let e = err(&["trainer=3"]);
    assert!(
        e.contains("table") && e.contains("trainer.max_steps"),
        "{e}"
    );
    let e = err(&["max_steps"]);
    assert!(e.contains("KEY=VALUE"), "{e}");
}

#[test]
fn unknown_keys_list_the_valid_ones() {
    let e = err(&["trainer.max_step=3"]);
    assert!(
        e.contains("trainer.max_step")
            && e.contains("trainer.max_steps")
            && e.contains("trainer.seed"),
        "{e}"
    );
    let e = err(&["bogus=1"]);
    assert!(
        e.contains("trainer") && e.contains("model") && e.contains("parallel"),
        "{e}"
    );
    let e = err(&["model.mamba.heads=4"]);
    assert!(e.contains("model.mamba.num_heads"), "{e}");
    let e = err(&["model.foo=1"]);
    assert!(e.contains("model.num_layers"), "{e}");
}

#[test]
fn nested_model_keys_and_num_layers() {
    let r = ok(&[
        "model.mamba.state_size=16",
        "model.attention.num_heads=8",
        "model.num_layers=4",
    ]);
    assert_eq!(r.model.mamba.state_size, 16);
    assert_eq!(r.model.attention.num_heads, 8);
    assert_eq!(r.model.pattern, "M-M*");
    let r = ok(&["model.num_layers=9"]);
    assert_eq!(r.model.pattern, "M-M*M-M-M");
    let r = ok(&["model.pattern=MM*-"]);
    assert_eq!(r.model.num_layers(), 4);
    assert!(err(&["model.num_layers=0"]).contains("positive"));
    let bad = apply(&demo(), &["model.pattern=MQ"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(bad.validate().is_err());
}

#[test]
fn data_lists_and_variant_switch() {
    let r = ok(&[
        "data.kind=pretrain",
        "data.paths=[/d/a_text_document, /d/b_text_document]",
        "data.split=99,1,0",
    ]);
    match &r.data {
        DataConfig::Pretrain { paths, split, .. } => {
            assert_eq!(paths, &["/d/a_text_document", "/d/b_text_document"]);
            assert_eq!(split, "99,1,0");
        }
        other => panic!("{other:?}"),
    }
    // Quoted TOML lists work too, with weights as strings.
    let r = ok(&[
        "data.kind=pretrain",
        r#"data.paths=["30", "/d/a", "70", "/d/b"]"#,
    ]);
    assert!(matches!(&r.data, DataConfig::Pretrain { paths, .. } if paths.len() == 4));
    let r = ok(&["data.kind=mock", "data.seed=7"]);
    assert_eq!(r.data, DataConfig::Mock { seed: 7 });
    let e = err(&["data.kind=mock", "data.paths=[a]"]);
    assert!(e.contains("data.seed"), "{e}");
    let e = err(&["data.kind=nonsense"]);
    assert!(e.contains("nonsense"), "{e}");
}

#[test]
fn nemo_aliases_and_optional_keys() {
    let r = ok(&[
        "data.global_batch_size=16",
        "data.micro_batch_size=2",
        "resume_path=/ckpt",
        "trainer.devices=4",
    ]);
    assert_eq!(r.trainer.global_batch_size, 16);
    assert_eq!(r.trainer.micro_batch_size, 2);
    assert_eq!(r.checkpoint.resume_path, Some(PathBuf::from("/ckpt")));
    assert_eq!(r.parallel.num_gpus_per_node, 4);
    let r = ok(&["resume_path=/ckpt", "resume_path="]);
    assert_eq!(r.checkpoint.resume_path, None);
}

#[test]
fn vocab_follows_tensor_parallelism_unless_set() {
    let base = recipe("mamba2_130m", Mode::Pretrain).unwrap_or_else(|e| panic!("{e}"));
    let r = apply(&base, &["parallel.tensor_parallelism=8"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.model.vocab_size, 50304); // ceil(50277 / 128) * 128
    let r = apply(
        &base,
        &["parallel.tensor_parallelism=8", "model.vocab_size=60000"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.model.vocab_size, 60000);
}

#[test]
fn cross_section_checks() {
    let r = ok(&["trainer.global_batch_size=12", "trainer.micro_batch_size=8"]);
    let e = r
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("global_batch_size"), "{e}");
    let r = ok(&[
        "parallel.num_gpus_per_node=3",
        "parallel.tensor_parallelism=2",
    ]);
    assert!(r.validate().is_err());
}

#[test]
fn model_settings_the_family_cannot_export_are_refused_before_training() {
    // transformers' nemotron_h has no upper dt clamp, so a checkpoint could not carry one.
    let r = ok(&["model.mamba.dt_clamp_max=0.5"]);
    let e = r.validate().map(|_| ()).unwrap_err().to_string();
    assert!(e.starts_with("model:") && e.contains("dt clamp max"), "{e}");
    let r = ok(&["model.family=mamba2"]);
    let e = r.validate().map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("family mamba2"), "{e}");
}
