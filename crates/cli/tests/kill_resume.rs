//! A training run killed at arbitrary moments (including during checkpoint writes) never loses its last complete
//! checkpoint, and rerunning the same command resumes and finishes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn pretrain(dir: &Path, max_steps: u64) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coil"));
    c.args(["pretrain", "--recipe", "demo"])
        .arg(format!("run.dir={}", dir.display()))
        .args([
            "run.name=kill",
            "run.progress=true",
            "run.sample_tokens=0",
            &format!("trainer.max_steps={max_steps}"),
            "trainer.val_check_interval=1",
            "trainer.limit_val_batches=1",
            "trainer.global_batch_size=2",
            "trainer.micro_batch_size=2",
            "trainer.seq_length=64",
            "checkpoint.save_top_k=-1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // the demo's corpus goes to runs/data under the working directory: keep it out of the source tree
        .current_dir(dir);
    c
}

/// Every checkpoint directory that claims completeness loads, as a model and as a training checkpoint.
fn all_complete_checkpoints_load(run: &Path) -> usize {
    let list = coil_train::checkpoint::list_checkpoints(run).unwrap();
    for (_, dir) in &list {
        coil_train::checkpoint::load(dir, &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        coil_model::HybridLm::from_dir(dir, &candle_core::Device::Cpu, candle_core::DType::F32)
            .unwrap();
    }
    list.len()
}

#[test]
fn killed_runs_keep_their_checkpoints_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("kill");
    let max_steps = 400;
    let mut kills = 0;
    for delay_ms in [700u64, 950, 1200, 1450, 1700, 1950] {
        let mut child = pretrain(tmp.path(), max_steps).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL: no chance to clean up
            kills += 1;
        }
        child.wait().unwrap();
        all_complete_checkpoints_load(&run);
    }
    assert!(kills >= 3, "the runs finished before they could be killed");
    let before = coil_train::checkpoint::list_checkpoints(&run)
        .unwrap()
        .last()
        .map(|c| c.0)
        .unwrap_or(0);
    // the same command, run to the end, resumes and finishes (a shorter run: allowed explicitly)
    let finish = 10 + before;
    let out = pretrain(tmp.path(), finish)
        .arg("checkpoint.allow_changed=[trainer.max_steps]")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    if before > 0 {
        assert!(
            err.contains(&format!("resuming from step {before}")),
            "{err}"
        );
    }
    assert!(run.join(format!("checkpoints/step-{finish}")).is_dir());
    assert!(all_complete_checkpoints_load(&run) > 0);
}
