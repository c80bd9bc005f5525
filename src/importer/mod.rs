//! `seqserve import`: models trained elsewhere in PyTorch become ordinary model directories.
//!
//! One path for every source: the checkpoint is read without running code from it
//! (`read_checkpoint.py`, a restricted unpickler) into its raw tensors → a mapping renames and
//! reshapes them into ours (`mapping.rs`; RecBole's built in, a state dict's from a file) → the
//! architecture follows from the source's configuration or the mapping, the sizes from the tensors
//! → the directory is written in a scratch place, loaded back with every check serving applies,
//! and only then renamed into place: a failed import leaves no output directory.
pub mod mapping;
mod python;
mod recbole;
mod state_dict;

use crate::error::ModelError;
use crate::model::{
    encoder::expected_shapes, Architecture, Catalogue, Head, ImportRecord, Manifest, Model,
    Padding, FORMAT_VERSION, ITEMS_FILE, MANIFEST_FILE, WEIGHTS_FILE,
};
use mapping::{Mapped, Mismatch};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The checkpoint, mapping or dataset is not what the command needs: the user's to fix.
    #[error("{0}")]
    Input(String),
    /// The state dict and the mapping disagree; every disagreement is listed.
    #[error("{checkpoint}: the state dict does not match {mapping}:{mismatch}")]
    Mismatch {
        checkpoint: String,
        mapping: String,
        mismatch: Mismatch,
    },
    /// The tools the import runs are missing or failed.
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Where the checkpoint comes from, and what else its kind needs.
#[derive(Debug, Clone)]
pub enum Source {
    /// RecBole's SASRec; item ids rebuilt from its atomic files (default: the directory its
    /// configuration names).
    Recbole { dataset_dir: Option<PathBuf> },
    /// A plain state dict, read through a mapping file; item ids from a file (one per line, for
    /// indices 1..n) or, without one, the indices themselves.
    StateDict {
        mapping: PathBuf,
        items: Option<PathBuf>,
    },
}

#[derive(Debug, Clone)]
pub struct Request {
    pub checkpoint: PathBuf,
    pub out: PathBuf,
    pub version: String,
    pub force: bool,
    /// Recorded in the manifest.
    pub command: String,
    pub source: Source,
}

/// What a source converter hands back: our architecture, tensors under our names, the catalogue.
struct Converted {
    architecture: Architecture,
    mapped: Mapped,
    mapping_name: String,
    items: Vec<String>,
    record: ImportRecord,
}

/// Imports a checkpoint into `req.out`; returns the written manifest.
pub fn import(req: &Request) -> Result<Manifest, ImportError> {
    // A version the repository and the API could not address (`../x`, spaces) is refused here.
    crate::model::repository::check_name("version", &req.version).map_err(ImportError::Input)?;
    if req.out.exists() && !req.force {
        return Err(ImportError::Input(format!(
            "{} already exists; pass --force to replace it",
            req.out.display()
        )));
    }
    if !req.checkpoint.is_file() {
        return Err(ImportError::Input(format!(
            "checkpoint {} is not a file",
            req.checkpoint.display()
        )));
    }
    let scratch = tempfile::Builder::new()
        .prefix("seqserve-import-")
        .tempdir()
        .map_err(|e| ImportError::Setup(format!("cannot make a scratch directory: {e}")))?;
    let raw_dir = scratch.path().join("raw");
    // The reader runs in the scratch directory: a relative path must not be read from there.
    let checkpoint = std::path::absolute(&req.checkpoint)
        .map_err(|e| ImportError::Input(format!("checkpoint {}: {e}", req.checkpoint.display())))?;
    let info = python::run(
        &python::project_python(),
        &python::READ_CHECKPOINT,
        &[checkpoint.as_os_str(), raw_dir.as_os_str()],
        scratch.path(),
    )?;
    let raw: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(raw_dir.join("tensors.safetensors"))
            .map_err(ModelError::from)?
            .into_iter()
            .collect();
    let mut unusable: Vec<String> = info["skipped"]
        .as_object()
        .map(|m| m.iter().map(|(k, t)| format!("{k} ({t})")).collect())
        .unwrap_or_default();
    unusable.extend(
        raw.iter()
            .filter(|(_, t)| t.kind() != tch::Kind::Float)
            .map(|(k, t)| format!("{k} ({:?})", t.kind())),
    );
    let checkpoint_sha256 = crate::data::fingerprint::sha256_file(&req.checkpoint)
        .map_err(|e| ImportError::Input(e.to_string()))?;
    let base = ImportRecord {
        from: String::new(),
        checkpoint: req.checkpoint.display().to_string(),
        checkpoint_sha256,
        mapping: String::new(),
        mapping_sha256: None,
        items_from: String::new(),
        source_config: serde_json::Value::Null,
        command: req.command.clone(),
        seqserve_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let converted = match &req.source {
        Source::Recbole { dataset_dir } => recbole::convert(
            req,
            &info,
            &raw,
            dataset_dir.as_deref(),
            scratch.path(),
            base,
        )?,
        Source::StateDict { mapping, items } => {
            state_dict::convert(req, &raw, mapping, items.as_deref(), base)?
        }
    };
    if !unusable.is_empty() {
        // Integer buffers and non-tensors never reach a mapping; if it needed one it said missing.
        tracing::info!(entries = %unusable.join(", "), "state dict entries that are not float tensors were left out");
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: req
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "imported".into()),
        version: req.version.clone(),
        architecture: converted.architecture,
        behaviours: vec![],
        context: vec![],
        training: None,
        metrics: None,
        imported: Some(converted.record),
    };
    manifest.validate().map_err(ImportError::Input)?;
    check_against_architecture(req, &manifest, &converted.mapped, &converted.mapping_name)?;
    let staged = scratch.path().join("model");
    write_directory(
        &staged,
        &manifest,
        &converted.mapped.tensors,
        converted.items,
    )?;
    // Loaded back exactly as `serve` loads it (names, shapes, dtypes, finite values, catalogue):
    // what lands in --out is a model that serves.
    let model = Model::load(&staged, Device::Cpu)?;
    model.save_atomically(&req.out, req.force)?;
    Ok(manifest)
}

/// Every tensor our encoder needs, present and of its shape; none it does not have.
fn check_against_architecture(
    req: &Request,
    manifest: &Manifest,
    mapped: &Mapped,
    mapping_name: &str,
) -> Result<(), ImportError> {
    let expected = expected_shapes(manifest);
    let mut bad = Mismatch::default();
    for (name, shape) in &expected {
        match mapped.tensors.get(name) {
            None => bad.missing.push(format!(
                "{name}: the mapping gives no source for it, and this architecture needs it"
            )),
            Some(t) if &t.size() != shape => bad.shapes.push(format!(
                "{name} (from {}): expected {shape:?}, found {:?}",
                mapped.origin[name],
                t.size()
            )),
            Some(_) => {}
        }
    }
    for name in mapped.tensors.keys() {
        if !expected.contains_key(name) {
            bad.unexpected.push(format!(
                "{} (mapped to {name}, which this architecture does not have)",
                mapped.origin[name]
            ));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(ImportError::Mismatch {
            checkpoint: req.checkpoint.display().to_string(),
            mapping: mapping_name.to_string(),
            mismatch: bad,
        })
    }
}

/// The sizes the weights fix: n_items and d_model from the item table, max_len from the position
/// table, ffn_dim from the first feed-forward layer.
struct Sizes {
    n_items: usize,
    d_model: usize,
    max_len: usize,
    ffn_dim: usize,
}

fn sizes(mapped: &Mapped) -> Result<Sizes, ImportError> {
    let dims = |name: &str| -> Result<(usize, usize), ImportError> {
        match mapped.tensors.get(name).map(Tensor::size).as_deref() {
            Some(&[r, c]) => Ok((r as usize, c as usize)),
            Some(other) => Err(ImportError::Input(format!(
                "{name} (from {}) must be a matrix, found shape {other:?}",
                mapped.origin[name]
            ))),
            None => Err(ImportError::Input(format!(
                "the mapping gives no source for {name}, which every model needs"
            ))),
        }
    };
    if mapped.n_layers == 0 {
        return Err(ImportError::Input(
            "the state dict holds no layer the mapping describes (no key of a {i} entry)".into(),
        ));
    }
    let (rows, d_model) = dims("item_emb")?;
    if rows < 2 {
        return Err(ImportError::Input(
            "item_emb has no item rows beside the padding row".into(),
        ));
    }
    let (max_len, _) = dims("pos_emb")?;
    let (ffn_dim, _) = dims("blocks.0.ffn.fc1.weight")?;
    Ok(Sizes {
        n_items: rows - 1,
        d_model,
        max_len,
        ffn_dim,
    })
}

/// Imported models score y · Eᵀ: none of the sources has our linear head or item bias.
fn imported_architecture(s: &Sizes, n_layers: usize) -> Architecture {
    Architecture {
        n_items: s.n_items,
        d_model: s.d_model,
        n_layers,
        n_heads: 1,
        ffn_dim: s.ffn_dim,
        dropout: 0.0,
        max_len: s.max_len,
        embedding_norm: false,
        norm: Default::default(),
        layer_norm_eps: crate::model::manifest::default_layer_norm_eps(),
        activation: Default::default(),
        positions: Default::default(),
        head: Head::None,
        padding: Padding::Masked,
        item_input_scale: 1.0,
    }
}

fn write_directory(
    dir: &Path,
    manifest: &Manifest,
    tensors: &BTreeMap<String, Tensor>,
    items: Vec<String>,
) -> Result<(), ImportError> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Write {
        path: dir.to_path_buf(),
        cause: source,
    })?;
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    Tensor::write_safetensors(&named, dir.join(WEIGHTS_FILE)).map_err(ModelError::from)?;
    let catalogue = Catalogue::new(items)
        .map_err(|e| ImportError::Input(format!("the item ids cannot be a catalogue: {e}")))?;
    catalogue.write(&dir.join(ITEMS_FILE))?;
    manifest.write(&dir.join(MANIFEST_FILE))?;
    Ok(())
}
