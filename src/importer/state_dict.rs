//! A plain PyTorch state dict: the mapping file names every tensor and gives the architecture; the
//! sizes come from the tensors. Item ids: a file, or the indices themselves (code that numbers its
//! items 1..n, as pmixer/SASRec.pytorch's data files do).
use super::mapping::{self, Mapping};
use super::{sizes, ImportError, Request};
use crate::model::{Architecture, ImportRecord, Norm, Padding};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

pub(super) fn convert(
    req: &Request,
    raw: &BTreeMap<String, Tensor>,
    mapping_path: &Path,
    items_path: Option<&Path>,
    mut record: ImportRecord,
) -> Result<super::Converted, ImportError> {
    let text = std::fs::read_to_string(mapping_path).map_err(|e| {
        ImportError::Input(format!(
            "cannot read mapping {}: {e}",
            mapping_path.display()
        ))
    })?;
    let bad_mapping =
        |e: String| ImportError::Input(format!("mapping {}: {e}", mapping_path.display()));
    let mapping = Mapping::parse(&text).map_err(bad_mapping)?;
    let arch = mapping.architecture.clone().ok_or_else(|| {
        bad_mapping(
            "no [architecture] section: a state dict does not say its heads, norms or activation"
                .into(),
        )
    })?;
    let activation = mapping::parse_activation(&arch.activation).map_err(bad_mapping)?;
    let mut mapped = mapping::apply(&mapping, raw).map_err(|mismatch| ImportError::Mismatch {
        checkpoint: req.checkpoint.display().to_string(),
        mapping: mapping_path.display().to_string(),
        mismatch,
    })?;
    let s = sizes(&mapped)?;
    if arch.padding == Padding::Attended {
        padding_input_is_zero(&mapping, raw)?;
    }
    if let Some(scale) = mapping.item_scale(s.d_model).map_err(bad_mapping)? {
        fold_item_scale(&mut mapped.tensors, scale, arch.norm).map_err(bad_mapping)?;
    }
    let architecture = Architecture {
        n_heads: arch.n_heads,
        dropout: arch.dropout,
        embedding_norm: arch.embedding_norm,
        norm: arch.norm,
        layer_norm_eps: arch.layer_norm_eps,
        activation,
        positions: arch.positions,
        padding: arch.padding,
        item_input_scale: 1.0,
        ..super::imported_architecture(&s, mapped.n_layers)
    };
    let (items, items_from) = match items_path {
        Some(p) => (read_items(p, s.n_items)?, p.display().to_string()),
        None => (
            (1..=s.n_items).map(|i| i.to_string()).collect(),
            "the indices 1..n (no --items file)".to_string(),
        ),
    };
    record.from = "state_dict".into();
    record.mapping = mapping_path.display().to_string();
    record.mapping_sha256 = Some(
        crate::data::fingerprint::sha256_file(mapping_path)
            .map_err(|e| ImportError::Input(e.to_string()))?,
    );
    record.items_from = items_from;
    record.source_config = serde_json::json!({
        "architecture": arch,
        "item_scale": mapping.input.item_scale.as_ref().map(|v| v.to_string()),
    });
    Ok(super::Converted {
        architecture,
        mapped,
        mapping_name: mapping_path.display().to_string(),
        items,
        record,
    })
}

/// Code whose items are multiplied by a constant on input only (SASRec's `seqs *= sqrt(d)`) has
/// different input and output item matrices; ours are tied. Exact all the same in a model that
/// ends in a LayerNorm (pre-LN, SASRec's original blocks):
/// E' = s·E gives the blocks the input they had, and dividing the final LayerNorm's gain and bias
/// by s makes y' = y/s, so y'·E'ᵀ = y·Eᵀ.
fn fold_item_scale(
    tensors: &mut BTreeMap<String, Tensor>,
    scale: f64,
    norm: Norm,
) -> Result<(), String> {
    if norm == Norm::Post {
        return Err(
            "[input] item_scale needs norm = \"pre\" or \"sasrec\": it is folded into \
                    the final LayerNorm, which post-LN blocks do not have"
                .into(),
        );
    }
    for (name, factor) in [
        ("item_emb", scale),
        ("final_ln.weight", 1.0 / scale),
        ("final_ln.bias", 1.0 / scale),
    ] {
        let t = tensors
            .get(name)
            .ok_or_else(|| format!("[input] item_scale needs a source for {name}"))?;
        let scaled = t * factor;
        tensors.insert(name.to_string(), scaled);
    }
    Ok(())
}

/// With attended padding the padding columns' input must be what the source gave them: zero when its
/// padding item row (and the position row a `skip_rows` drops) are zero, as `padding_idx=0`
/// keeps them. Anything else would score differently here, so it is refused.
fn padding_input_is_zero(
    mapping: &Mapping,
    raw: &BTreeMap<String, Tensor>,
) -> Result<(), ImportError> {
    let mut rows = vec![];
    if let Some(spec) = mapping.tensors.get("item_emb") {
        rows.push(&spec.from);
    }
    if let Some(spec) = mapping.tensors.get("pos_emb").filter(|s| s.skip_rows > 0) {
        rows.push(&spec.from);
    }
    for key in rows {
        if let Some(t) = raw.get(key) {
            let row0 = t.get(0).abs().max().double_value(&[]);
            if row0 != 0.0 {
                return Err(ImportError::Input(format!(
                    "{key}: row 0 (padding) is not zero (max |x| = {row0:e}); with padding = \
                     \"attended\" padding columns must enter as zero vectors"
                )));
            }
        }
    }
    Ok(())
}

fn read_items(path: &Path, n_items: usize) -> Result<Vec<String>, ImportError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ImportError::Input(format!("cannot read items {}: {e}", path.display())))?;
    let items: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    if items.len() != n_items || items.iter().any(String::is_empty) {
        return Err(ImportError::Input(format!(
            "{}: expected {n_items} item ids, one per line for indices 1..{n_items} (the checkpoint's \
             items), found {} lines{}",
            path.display(),
            items.len(),
            if items.iter().any(String::is_empty) {
                " with empty ones"
            } else {
                ""
            }
        )));
    }
    Ok(items)
}
