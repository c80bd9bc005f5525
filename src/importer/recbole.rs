//! RecBole's SASRec: the architecture from the checkpoint's own configuration, the tensors through
//! the built-in mapping (mappings/recbole-sasrec.toml), the item ids from RecBole itself.
//!
//! Why this lines up exactly with our encoder: RecBole left-aligns a history (padding at the end),
//! adds position i to its i-th item and reads the output at the last real item; under its causal
//! mask that output never sees the padding. Our left-padded history with positions counted from
//! the oldest item gives each real item the same position and the same keys. Its padding item 0 is
//! our padding row 0, and its ids 1..n are our indices 1..n in order.
use super::mapping::{self, Mapping};
use super::{python, sizes, ImportError, Request};
use crate::model::manifest::{Norm, Positions};
use crate::model::{Architecture, ImportRecord};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

const MAPPING: &str = include_str!("../../mappings/recbole-sasrec.toml");
const MAPPING_NAME: &str = "the built-in RecBole SASRec mapping (mappings/recbole-sasrec.toml)";
/// RecBole's name for the padding token (id 0).
const PAD_TOKEN: &str = "[PAD]";

pub(super) fn convert(
    req: &Request,
    info: &Value,
    raw: &BTreeMap<String, Tensor>,
    dataset_dir: Option<&Path>,
    scratch: &Path,
    mut record: ImportRecord,
) -> Result<super::Converted, ImportError> {
    let cfg = info["config"].as_object().ok_or_else(|| {
        ImportError::Input(format!(
            "{} is not a RecBole checkpoint: it holds a state dict but no RecBole configuration \
             (for a plain state dict use `seqserve import state-dict --mapping ...`)",
            req.checkpoint.display()
        ))
    })?;
    let model = cfg.get("model").and_then(Value::as_str).unwrap_or("?");
    if model != "SASRec" {
        return Err(ImportError::Input(format!(
            "{} holds RecBole's {model} model; seqserve imports RecBole's SASRec only",
            req.checkpoint.display()
        )));
    }
    let need = |key: &str| -> Result<&Value, ImportError> {
        cfg.get(key)
            .ok_or_else(|| ImportError::Input(format!("the RecBole configuration has no {key}")))
    };
    let int = |key: &str| -> Result<usize, ImportError> {
        need(key)?.as_u64().map(|v| v as usize).ok_or_else(|| {
            ImportError::Input(format!("the RecBole configuration's {key} is not a count"))
        })
    };
    let float = |key: &str| -> Result<f64, ImportError> {
        need(key)?.as_f64().ok_or_else(|| {
            ImportError::Input(format!("the RecBole configuration's {key} is not a number"))
        })
    };
    let act = need("hidden_act")?.as_str().unwrap_or_default();
    let activation = mapping::parse_activation(act)
        .map_err(|e| ImportError::Input(format!("RecBole's hidden_act: {e}")))?;
    let (hidden, inner, layers, heads, max_len) = (
        int("hidden_size")?,
        int("inner_size")?,
        int("n_layers")?,
        int("n_heads")?,
        int("MAX_ITEM_LIST_LENGTH")?,
    );

    let mapping = Mapping::parse(MAPPING).expect("the built-in RecBole mapping parses");
    let mapped = mapping::apply(&mapping, raw).map_err(|mismatch| ImportError::Mismatch {
        checkpoint: req.checkpoint.display().to_string(),
        mapping: MAPPING_NAME.into(),
        mismatch,
    })?;
    let s = sizes(&mapped)?;
    // The configuration and the weights must tell the same story.
    let disagree: Vec<String> = [
        (
            "hidden_size",
            hidden,
            s.d_model,
            "item_embedding.weight's width",
        ),
        ("inner_size", inner, s.ffn_dim, "dense_1's rows"),
        (
            "n_layers",
            layers,
            mapped.n_layers,
            "the layers in the state dict",
        ),
        (
            "MAX_ITEM_LIST_LENGTH",
            max_len,
            s.max_len,
            "position_embedding.weight's rows",
        ),
    ]
    .into_iter()
    .filter(|(_, c, w, _)| c != w)
    .map(|(k, c, w, what)| format!("{k} = {c} but {what} = {w}"))
    .collect();
    if !disagree.is_empty() {
        return Err(ImportError::Input(format!(
            "{}: configuration and weights disagree: {}",
            req.checkpoint.display(),
            disagree.join("; ")
        )));
    }
    let architecture = Architecture {
        n_heads: heads,
        dropout: cfg
            .get("hidden_dropout_prob")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        embedding_norm: true,
        norm: Norm::Post,
        layer_norm_eps: float("layer_norm_eps")?,
        activation,
        positions: Positions::FromOldest,
        ..super::imported_architecture(&s, mapped.n_layers)
    };

    let items = item_tokens(cfg, dataset_dir, scratch, s.n_items)?;
    record.from = "recbole".into();
    record.mapping = "built-in: mappings/recbole-sasrec.toml".into();
    record.items_from = format!("RecBole create_dataset on {}", items.1.display());
    record.source_config = Value::Object(cfg.clone());
    Ok(super::Converted {
        architecture,
        mapped,
        mapping_name: MAPPING_NAME.into(),
        items: items.0,
        record,
    })
}

/// RecBole's token of each internal id 1..=n, from RecBole's own dataset construction on the atomic
/// files (with the options of the checkpoint's configuration that decide which rows are kept and
/// how ids are assigned). The dataset directory and its path.
fn item_tokens(
    cfg: &serde_json::Map<String, Value>,
    dataset_dir: Option<&Path>,
    scratch: &Path,
    n_items: usize,
) -> Result<(Vec<String>, std::path::PathBuf), ImportError> {
    let dir = match dataset_dir {
        Some(d) => d.to_path_buf(),
        None => {
            std::path::PathBuf::from(cfg.get("data_path").and_then(Value::as_str).unwrap_or(""))
        }
    };
    if !dir.is_dir() {
        return Err(ImportError::Input(format!(
            "the dataset directory {:?} {}: pass --dataset-dir with the atomic files the model was \
             trained on (item ids are not in the checkpoint)",
            dir.display().to_string(),
            if dataset_dir.is_some() {
                "does not exist"
            } else {
                "recorded in the checkpoint does not exist here"
            }
        )));
    }
    let config_file = scratch.join("recbole-config.json");
    let items_file = scratch.join("recbole-items.json");
    std::fs::write(&config_file, Value::Object(cfg.clone()).to_string())
        .map_err(|e| ImportError::Setup(format!("cannot write {}: {e}", config_file.display())))?;
    let abs_dir = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
    python::run(
        &python::recbole_python()?,
        &python::RECBOLE_ITEMS,
        &[
            config_file.as_os_str(),
            abs_dir.as_os_str(),
            items_file.as_os_str(),
        ],
        scratch,
    )?;
    let tokens: Vec<String> = std::fs::read_to_string(&items_file)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| serde_json::from_value(v["items"].clone()).ok())
        .ok_or_else(|| ImportError::Setup("RecBole's dataset loader wrote no item list".into()))?;
    if tokens.len() != n_items + 1 || tokens.first().map(String::as_str) != Some(PAD_TOKEN) {
        return Err(ImportError::Input(format!(
            "the dataset in {} has {} items but the checkpoint has {n_items}: not the data it \
             was trained on (or other filtering options)",
            dir.display(),
            tokens.len().saturating_sub(1)
        )));
    }
    Ok((tokens[1..].to_vec(), abs_dir))
}
