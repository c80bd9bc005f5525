//! `model.json`: everything needed to rebuild the encoder, plus how it was trained and what it scored.
use crate::data::Split;
use crate::error::ModelError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Bumped whenever the weight layout or the meaning of a field changes.
pub const FORMAT_VERSION: u32 = 1;

// Sanity bounds on a manifest's sizes, far above any model seqserve is meant for (the largest
// tested catalogue is 10M items, d 64) and far below sizes whose tensors cannot be allocated.
const MAX_ITEMS: usize = 200_000_000;
const MAX_D_MODEL: usize = 16_384;
const MAX_LAYERS: usize = 256;
const MAX_FFN_DIM: usize = 262_144;
const MAX_LEN: usize = 65_536;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    pub version: String,
    pub architecture: Architecture,
    /// Behaviour vocabulary; behaviour id = position + 1 (0 = none/padding). Empty: no behaviour input.
    #[serde(default)]
    pub behaviours: Vec<String>,
    /// Context schema, in the order the features are concatenated.
    #[serde(default)]
    pub context: Vec<ContextFeature>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsRecord>,
    /// Where a model trained elsewhere came from (`seqserve import`); absent for models trained here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<ImportRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Catalogue size (item indices 1..=n_items; 0 is padding).
    pub n_items: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub ffn_dim: usize,
    pub dropout: f64,
    /// Longest history the encoder reads; longer histories keep the most recent max_len items.
    pub max_len: usize,
    /// LayerNorm (then dropout) over the summed input embeddings before the first block, as SASRec
    /// and BSARec do. Absent in models trained before it existed (false).
    #[serde(default)]
    pub embedding_norm: bool,
    /// Where each block normalises: `pre` (LayerNorm before attention/FFN, one final LayerNorm) or
    /// `post` (LayerNorm after each residual sum, as BSARec). Absent in older models: `pre`.
    #[serde(default)]
    pub norm: Norm,
    /// LayerNorm epsilon: 1e-5 (PyTorch's default) for models trained here; an imported model keeps
    /// its own (RecBole's SASRec uses 1e-12).
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// The feed-forward block's non-linearity (`gelu`, the exact erf form, unless imported).
    #[serde(default)]
    pub activation: Activation,
    /// How position embeddings are indexed (absent in older models: `from_oldest`).
    #[serde(default)]
    pub positions: Positions,
    /// How the sequence representation becomes scores (absent in older models: `linear`).
    #[serde(default)]
    pub head: Head,
    /// Whether padding columns are masked out of attention (absent: `masked`).
    #[serde(default)]
    pub padding: Padding,
    /// Factor on the item embeddings where they enter the encoder (not where items are scored):
    /// SASRec's original code multiplies them by sqrt(d_model), which changes how the tied
    /// matrix trains. Absent in older models: 1.
    /// Written only when it is not 1, so manifests (and training fingerprints) of models without
    /// it stay byte for byte what they were.
    #[serde(
        default = "default_item_input_scale",
        skip_serializing_if = "is_default_item_input_scale"
    )]
    pub item_input_scale: f64,
}

pub fn default_item_input_scale() -> f64 {
    1.0
}

fn is_default_item_input_scale(s: &f64) -> bool {
    *s == 1.0
}

pub fn default_layer_norm_eps() -> f64 {
    1e-5
}

/// The feed-forward non-linearity.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU in its exact (erf) form, as PyTorch's default and RecBole's `gelu`.
    #[default]
    Gelu,
    Relu,
}

/// Which position embedding each history item gets.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// Position = real items before it (the oldest item is 0): a training prefix gets the
    /// positions the same history gets at inference. RecBole's SASRec reads its output the same
    /// way (left-aligned, gathered at the last real item).
    #[default]
    FromOldest,
    /// Position = real items after it (the most recent item is always 0): SASRec's and BSARec's
    /// right-aligned positions, so "the last position" is always the same embedding.
    FromNewest,
}

/// What turns the sequence representation y into the query vector z.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// z = FC(concat(y, context)), scores = z · Eᵀ + b (a per-item bias): how context gets in.
    #[default]
    Linear,
    /// z = y, scores = y · Eᵀ with no head and no item bias (SASRec, BSARec, RecBole). Models
    /// without context features only.
    None,
}

/// What the encoder does with the padding of a history shorter than the window.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Padding columns are never attended to: a history scores the same however it is padded.
    #[default]
    Masked,
    /// SASRec's original code (Kang & McAuley's, and pmixer/SASRec.pytorch): every history fills a
    /// window of exactly max_len columns, left-padded, and the padding columns (a zero input) are
    /// attended to like items under the causal mask only. How many there are then changes the
    /// scores, so an imported model of that kind needs this to score as it did where it was trained.
    Attended,
}

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// LayerNorm before attention and FFN (residuals from the raw stream), one final LayerNorm.
    #[default]
    Pre,
    /// LayerNorm after each residual sum (BERT, BSARec, RecBole).
    Post,
    /// SASRec's original code (Kang & McAuley; pmixer/SASRec.pytorch before its norm_first
    /// option; the SASRec+ reference): queries and the attention residual come from LN1(x) while
    /// keys and values read x itself; the FFN and its residual both read LN2 of the sum; one final
    /// LayerNorm.
    Sasrec,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CategoricalEncoding {
    OneHot,
    Embedding,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContextFeature {
    /// Value index = position in `values` + 1 (0 = missing).
    Categorical {
        name: String,
        values: Vec<String>,
        encoding: CategoricalEncoding,
        /// Embedding width (ignored for one-hot, whose width is values.len() + 1).
        #[serde(default)]
        dim: usize,
    },
    /// Standardised with the stored mean/std; missing = mean.
    Numeric { name: String, mean: f64, std: f64 },
}

impl ContextFeature {
    pub fn name(&self) -> &str {
        match self {
            ContextFeature::Categorical { name, .. } | ContextFeature::Numeric { name, .. } => name,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainingRecord {
    pub data: Vec<String>,
    /// SHA-256 of the log (`data[0]`) as it was read: with `split`, what the leakage guard compares
    /// a holdout's provenance with. Absent in models trained before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_sha256: Option<String>,
    pub split: Split,
    pub seed: u64,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub max_epochs: usize,
    pub patience: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// The full recipe (`train::Recipe`) of models trained since it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<serde_json::Value>,
    /// Why training ended: early stopping, max epochs, or `--finish` (a time budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    pub selection_metric: String,
    pub threads: usize,
    pub device: String,
    pub train_users: usize,
    pub train_positions: usize,
    pub seconds_per_epoch: f64,
    pub wall_time_seconds: f64,
    pub epochs: Vec<EpochRecord>,
    pub command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    pub seconds: f64,
    pub validation: BTreeMap<String, f64>,
}

/// The record of an imported model: what file, read how, by which command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImportRecord {
    /// What the checkpoint was: `recbole` (RecBole's SASRec) or `state_dict` (a plain state dict
    /// read through a mapping file).
    pub from: String,
    /// The checkpoint as given on the command line, and its SHA-256.
    pub checkpoint: String,
    pub checkpoint_sha256: String,
    /// The mapping file (state dicts) and its SHA-256, or the built-in mapping's name.
    pub mapping: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_sha256: Option<String>,
    /// Where the item ids came from (RecBole's dataset directory, an items file, or the indices).
    pub items_from: String,
    /// The source's own description of the model (RecBole's configuration; a mapping's
    /// architecture section), as read.
    pub source_config: serde_json::Value,
    pub command: String,
    pub seqserve_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct MetricsRecord {
    /// How the numbers were computed (ranking scope, masking, ties, targets).
    pub protocol: String,
    pub validation: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
    pub test_cases: usize,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::BadFile {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        // Check the version before the full schema, so an old or new file says so plainly.
        let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(path, e))?;
        let found = raw
            .get("format_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| ModelError::BadFile {
                path: path.to_path_buf(),
                message: "missing format_version".into(),
            })?;
        if found != FORMAT_VERSION as u64 {
            return Err(ModelError::FormatVersion {
                path: path.to_path_buf(),
                found: found as u32,
                supported: FORMAT_VERSION,
            });
        }
        let m: Manifest = serde_json::from_value(raw).map_err(|e| bad(path, e))?;
        m.validate().map_err(|message| ModelError::BadFile {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(m)
    }

    pub fn write(&self, path: &Path) -> Result<(), ModelError> {
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        std::fs::write(path, text + "\n").map_err(|source| ModelError::Write {
            path: path.to_path_buf(),
            cause: source,
        })
    }

    /// Internal consistency of the hyper-parameters and schema, within sanity bounds (a
    /// manifest is read before its weights: an absurd size must be refused here, not turned
    /// into a multi-terabyte allocation).
    pub fn validate(&self) -> Result<(), String> {
        let a = &self.architecture;
        for (name, value, max) in [
            ("n_items", a.n_items, MAX_ITEMS),
            ("d_model", a.d_model, MAX_D_MODEL),
            ("n_layers", a.n_layers, MAX_LAYERS),
            ("n_heads", a.n_heads, MAX_D_MODEL),
            ("ffn_dim", a.ffn_dim, MAX_FFN_DIM),
            ("max_len", a.max_len, MAX_LEN),
        ] {
            if value > max {
                return Err(format!(
                    "architecture.{name} = {value} is beyond what seqserve loads (at most {max})"
                ));
            }
        }
        for f in &self.context {
            if let ContextFeature::Categorical { values, dim, .. } = f {
                if *dim > MAX_D_MODEL || values.len() > MAX_ITEMS {
                    return Err(format!(
                        "context feature {:?}: dim {dim} or {} values is beyond what seqserve loads",
                        f.name(),
                        values.len()
                    ));
                }
            }
        }
        if a.n_items == 0 {
            return Err("architecture.n_items must be positive".into());
        }
        if a.d_model == 0 || a.n_heads == 0 || !a.d_model.is_multiple_of(a.n_heads) {
            return Err(format!(
                "architecture.d_model ({}) must be a positive multiple of n_heads ({})",
                a.d_model, a.n_heads
            ));
        }
        if a.n_layers == 0 || a.max_len == 0 || a.ffn_dim == 0 {
            return Err("architecture.n_layers, max_len and ffn_dim must be positive".into());
        }
        if !(0.0..1.0).contains(&a.dropout) {
            return Err("architecture.dropout must be in [0, 1)".into());
        }
        if !(a.layer_norm_eps.is_finite() && a.layer_norm_eps > 0.0 && a.layer_norm_eps < 1.0) {
            return Err(format!(
                "architecture.layer_norm_eps must be in (0, 1), got {}",
                a.layer_norm_eps
            ));
        }
        if !(a.item_input_scale.is_finite() && a.item_input_scale > 0.0) {
            return Err(format!(
                "architecture.item_input_scale must be a positive finite number, got {}",
                a.item_input_scale
            ));
        }
        if a.head == Head::None && !self.context.is_empty() {
            return Err(
                "architecture.head \"none\" scores y · Eᵀ directly: a model with context features needs the linear head"
                    .into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for b in &self.behaviours {
            if !names.insert(b.as_str()) {
                return Err(format!("behaviour {b:?} listed twice"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for f in &self.context {
            if !names.insert(f.name()) {
                return Err(format!("context feature {:?} listed twice", f.name()));
            }
            match f {
                ContextFeature::Categorical {
                    name,
                    values,
                    encoding,
                    dim,
                } => {
                    if values.is_empty() {
                        return Err(format!("context feature {name:?} has no values"));
                    }
                    if *encoding == CategoricalEncoding::Embedding && *dim == 0 {
                        return Err(format!(
                            "context feature {name:?}: embedding dim must be positive"
                        ));
                    }
                }
                ContextFeature::Numeric { name, mean, std } => {
                    if !mean.is_finite() || !std.is_finite() || *std <= 0.0 {
                        return Err(format!(
                            "context feature {name:?}: mean must be finite and std positive"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Width of the context vector concatenated to the sequence representation.
    pub fn context_width(&self) -> usize {
        self.context
            .iter()
            .map(|f| match f {
                ContextFeature::Categorical {
                    values,
                    encoding: CategoricalEncoding::OneHot,
                    ..
                } => values.len() + 1,
                ContextFeature::Categorical { dim, .. } => *dim,
                ContextFeature::Numeric { .. } => 1,
            })
            .sum()
    }
}

fn bad(path: &Path, e: serde_json::Error) -> ModelError {
    ModelError::BadFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
