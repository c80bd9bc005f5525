//! Per-epoch training checkpoint, so a long run survives an interruption (`train --resume`).
//!
//! A checkpoint directory holds the current weights, the best epoch's weights, the optimizer moments
//! and a JSON state (epochs done, curve, early-stopping counters, and the recipe fingerprint that a
//! resume must match). Each write goes to a fresh directory renamed over the old one, so a kill
//! mid-write leaves the previous checkpoint intact.
use crate::model::manifest::EpochRecord;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

const STATE: &str = "state.json";
const WEIGHTS: &str = "weights.safetensors";
const BEST: &str = "best.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Everything that determines the run (data, split, architecture, recipe, seed): a resume under
    /// a different fingerprint would silently train a different model.
    pub fingerprint: String,
    pub epochs_done: usize,
    pub optimizer_step: i64,
    pub best_epoch: usize,
    pub best_score: f64,
    pub smoothed_best: f64,
    pub smoothed: Option<f64>,
    pub since_best: usize,
    pub epochs: Vec<EpochRecord>,
    pub epoch_seconds: Vec<f64>,
}

pub struct Checkpoint {
    pub state: State,
    pub weights: BTreeMap<String, Tensor>,
    pub best: BTreeMap<String, Tensor>,
    pub optimizer: BTreeMap<String, Tensor>,
}

/// Where the checkpoint of a model trained to `out` lives: beside it, `<out>.checkpoint`.
pub fn dir_for(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".checkpoint");
    out.with_file_name(name)
}

pub fn save(
    dir: &Path,
    state: &State,
    weights: &[(String, Tensor)],
    best: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
) -> Result<()> {
    let mut tmp_name = dir.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".partial");
    let tmp = dir.with_file_name(tmp_name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Tensor::write_safetensors(weights, tmp.join(WEIGHTS))?;
    Tensor::write_safetensors(best, tmp.join(BEST))?;
    Tensor::write_safetensors(optimizer, tmp.join(OPTIMIZER))?;
    std::fs::write(tmp.join(STATE), serde_json::to_string_pretty(state)? + "\n")?;
    // rename() cannot replace a non-empty directory: move the old one aside first.
    let mut old_name = dir.file_name().unwrap_or_default().to_os_string();
    old_name.push(".old");
    let old = dir.with_file_name(old_name);
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("writing {}", dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

pub fn load(dir: &Path, fingerprint: &str) -> Result<Checkpoint> {
    let path = dir.join(STATE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no checkpoint to resume from: cannot read {}",
            path.display()
        )
    })?;
    let state: State =
        serde_json::from_str(&text).with_context(|| format!("{}: bad state", path.display()))?;
    if state.fingerprint != fingerprint {
        bail!(
            "{} was written by a different training configuration; resume with the same data, \
             split, architecture and recipe (checkpoint: {}; now: {})",
            dir.display(),
            state.fingerprint,
            fingerprint
        );
    }
    let read = |name: &str| -> Result<BTreeMap<String, Tensor>> {
        let p = dir.join(name);
        Ok(Tensor::read_safetensors(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .into_iter()
            .collect())
    };
    Ok(Checkpoint {
        weights: read(WEIGHTS)?,
        best: read(BEST)?,
        optimizer: read(OPTIMIZER)?,
        state,
    })
}

/// The loss precision recorded by the checkpoint of a run trained to `out` (f32 where its recipe
/// has none: a run from before the option), or None without a readable checkpoint. Lets a resumed
/// run keep the precision it started with when the command leaves it to the default.
pub fn logits_precision_of(out: &Path) -> Option<crate::train::loss::LogitsPrecision> {
    let text = std::fs::read_to_string(dir_for(out).join(STATE)).ok()?;
    let state: State = serde_json::from_str(&text).ok()?;
    let fp: serde_json::Value = serde_json::from_str(&state.fingerprint).ok()?;
    let recorded = &fp["recipe"]["loss"]["logits_precision"];
    if recorded.is_null() {
        return Some(Default::default());
    }
    serde_json::from_value(recorded.clone()).ok()
}

/// Removes the checkpoint once the model it was for has been written.
pub fn remove(dir: &Path) {
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the finished run's checkpoint");
        }
    }
}
