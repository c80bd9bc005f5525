//! The model: encoder, manifest, catalogue, and loading/saving a model directory
//! (`model.json`, `model.safetensors`, `items.txt`).
mod batch;
mod catalogue;
mod context;
pub mod encoder;
mod input;
pub mod manifest;
pub mod rank;
pub mod repository;
pub mod retrieval;
mod weights;

pub use batch::{prepare, to_tensors, HistoryEvent, Prepared, Query};
pub use catalogue::Catalogue;
pub use context::{encode_context, user_context, ContextValue, EncodedContext};
pub use encoder::{Encoder, TensorBatch};
pub use input::{
    history_events, integer, integers, optional_integer, underflowed_zero_id, unique_context,
    watch_float_zero_ids, HistoryEntry, ItemId, ObjectOnly, MAX_INTEGER_ITEM_ID, MAX_ITEM_ID_CHARS,
};
pub use manifest::{
    Activation, Architecture, CategoricalEncoding, ContextFeature, Head, ImportRecord, Manifest,
    Norm, Padding, Positions, FORMAT_VERSION,
};

use crate::error::{InputError, ModelError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

pub const MANIFEST_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const ITEMS_FILE: &str = "items.txt";

/// What a caller wants ranked for one query.
#[derive(Debug, Clone, Default)]
pub struct RankSpec {
    pub k: usize,
    /// Item indices never to return (the seen items when exclude_seen, plus the caller's exclusions).
    pub exclude: Vec<usize>,
    /// When set, rank only these item indices.
    pub candidates: Option<Vec<usize>>,
}

/// A loaded (or freshly initialised) model on one device. Owned by one thread: tensors are not Sync.
pub struct Model {
    pub manifest: Manifest,
    /// Shared, not copied, with the HTTP handlers that resolve ids (at 1M items the catalogue is
    /// ~150 MB of strings and index).
    pub catalogue: std::sync::Arc<Catalogue>,
    pub encoder: Encoder,
    pub vs: nn::VarStore,
    pub device: Device,
    exact: retrieval::Exact,
    /// Approximate retrieval, when attached ([`Model::attach_index`]).
    ann: Option<Box<dyn retrieval::Retriever + Send>>,
    /// The memory-mapped weights file, when loaded from one. Declared last: fields drop in order,
    /// and the variables above may borrow its pages.
    _weights: Option<weights::Mapped>,
}

impl Model {
    /// A randomly initialised model (training starts here; tests use it too).
    pub fn new(manifest: Manifest, catalogue: Catalogue, device: Device) -> Result<Model, String> {
        Model::create(manifest, Some(catalogue), device, true)
    }

    /// With `init_items` false the item matrix is left empty, to be replaced by loaded weights
    /// (a random N × d initialisation would be a wasted full copy of the largest tensor). Without
    /// a catalogue the model gets an empty one, which the caller replaces (see `load`).
    fn create(
        manifest: Manifest,
        catalogue: Option<Catalogue>,
        device: Device,
        init_items: bool,
    ) -> Result<Model, String> {
        manifest.validate()?;
        check_names(&manifest)?;
        let catalogue = match catalogue {
            Some(c) if c.len() != manifest.architecture.n_items => {
                return Err(format!(
                    "catalogue has {} items but architecture.n_items is {}",
                    c.len(),
                    manifest.architecture.n_items
                ));
            }
            Some(c) => c,
            None => Catalogue::default(),
        };
        let vs = nn::VarStore::new(device);
        let encoder = Encoder::build(&vs.root(), &manifest, init_items);
        Ok(Model {
            manifest,
            catalogue: std::sync::Arc::new(catalogue),
            encoder,
            vs,
            device,
            exact: retrieval::Exact {
                scan: retrieval::exact::Scan::plain(retrieval::exact::Strategy::for_device(device)),
            },
            ann: None,
            _weights: None,
        })
    }

    /// Loads a model directory, checking every file; errors name the file and the problem.
    pub fn load(dir: &Path, device: Device) -> Result<Model, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::BadFile {
                path: dir.to_path_buf(),
                message: "not a model directory".into(),
            });
        }
        let file = |name: &str| -> Result<PathBuf, ModelError> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(ModelError::MissingFile {
                    path: dir.to_path_buf(),
                    file: name.to_string(),
                })
            }
        };
        let manifest_path = file(MANIFEST_FILE)?;
        let items_path = file(ITEMS_FILE)?;
        let weights_path = file(WEIGHTS_FILE)?;
        let manifest = Manifest::read(&manifest_path)?;
        check_names(&manifest).map_err(|message| ModelError::BadFile {
            path: manifest_path.clone(),
            message,
        })?;
        let n_items = manifest.architecture.n_items;
        // The catalogue is read on a thread of its own while the weights load and are checked:
        // at 10M items each takes seconds. Its errors come first, as when it was read first.
        let (catalogue, model) = std::thread::scope(|s| {
            let reader = s.spawn(|| Catalogue::read(&items_path));
            let model = Model::load_weights_for(manifest, &manifest_path, &weights_path, device);
            let catalogue = reader
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            (catalogue, model)
        });
        let catalogue = catalogue?;
        if catalogue.len() != n_items {
            return Err(ModelError::BadFile {
                path: items_path,
                message: format!(
                    "{} items, but {} says n_items = {}",
                    catalogue.len(),
                    MANIFEST_FILE,
                    n_items
                ),
            });
        }
        let mut model = model?;
        model.catalogue = std::sync::Arc::new(catalogue);
        Ok(model)
    }

    /// The model of `manifest` with the weights of `weights_path` and, for now, no catalogue.
    fn load_weights_for(
        manifest: Manifest,
        manifest_path: &Path,
        weights_path: &Path,
        device: Device,
    ) -> Result<Model, ModelError> {
        // The weights file's header against the manifest, before any tensor is built: a manifest
        // whose sizes are not the file's (max_len = 10^12...) is refused here, not by an
        // allocation of terabytes.
        weights::check_header(weights_path, &encoder::expected_shapes(&manifest)).map_err(
            |message| ModelError::BadFile {
                path: weights_path.to_path_buf(),
                message,
            },
        )?;
        let mut model = Model::create(manifest, None, device, false).map_err(|message| {
            ModelError::BadFile {
                path: manifest_path.to_path_buf(),
                message,
            }
        })?;
        model.load_weights(weights_path)?;
        Ok(model)
    }

    fn load_weights(&mut self, path: &Path) -> Result<(), ModelError> {
        let bad = |message: String| ModelError::BadFile {
            path: path.to_path_buf(),
            message,
        };
        let mapped = weights::Mapped::open(path).map_err(bad)?;
        let mut stored: BTreeMap<String, Tensor> =
            mapped.tensors().map_err(bad)?.into_iter().collect();
        let vars = self.vs.variables();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let a = &self.manifest.architecture;
        let rows = a.n_items as i64 + 1;
        for name in names {
            let var = &vars[name];
            let src = stored
                .remove(name)
                .ok_or_else(|| bad(format!("missing tensor {name}")))?;
            // The item matrix was created empty (see `create`): its shape comes from the manifest.
            let expected = match name.as_str() {
                "item_emb" => vec![rows, a.d_model as i64],
                "item_bias" => vec![rows],
                _ => var.size(),
            };
            if src.size() != expected {
                return Err(ModelError::ShapeMismatch {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    expected,
                    found: src.size(),
                });
            }
            if src.kind() != Kind::Float {
                return Err(bad(format!(
                    "tensor {name}: expected float32, found {:?}",
                    src.kind()
                )));
            }
            // NaN/Inf weights load without complaint and then serve empty or garbage rankings.
            if !all_finite(&src) {
                return Err(bad(format!(
                    "tensor {name} holds non-finite values (NaN or Inf)"
                )));
            }
            // The variable takes the tensor's storage: on the CPU the mapped pages themselves,
            // elsewhere one copy on the device.
            let mut var = var.shallow_clone();
            let data = if self.device == Device::Cpu {
                src
            } else {
                src.f_to_device(self.device)?
            };
            tch::no_grad(|| var.f_set_data(&data))?;
        }
        if let Some(extra) = stored.keys().next() {
            return Err(bad(format!(
                "unexpected tensor {extra} (weights do not match the manifest's architecture)"
            )));
        }
        if self.device == Device::Cpu {
            self._weights = Some(mapped);
        }
        Ok(())
    }

    /// Writes the model directory (creating it).
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Write {
            path: dir.to_path_buf(),
            cause: source,
        })?;
        self.vs.save(dir.join(WEIGHTS_FILE))?;
        self.catalogue.write(&dir.join(ITEMS_FILE))?;
        self.manifest.write(&dir.join(MANIFEST_FILE))
    }

    /// Writes the model directory so that it is never seen half-written: into a temporary sibling
    /// directory first, then renamed into place. An existing `dir` is refused unless `replace`,
    /// and is then swapped out only after the new model is complete.
    pub fn save_atomically(&self, dir: &Path, replace: bool) -> Result<(), ModelError> {
        let write_err = |path: &Path, source| ModelError::Write {
            path: path.to_path_buf(),
            cause: source,
        };
        if dir.exists() && !replace {
            return Err(ModelError::BadFile {
                path: dir.to_path_buf(),
                message: "already exists; pass --force to replace it".into(),
            });
        }
        let name = dir
            .file_name()
            .ok_or_else(|| ModelError::BadFile {
                path: dir.to_path_buf(),
                message: "not a directory name".into(),
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| write_err(&parent, e))?;
        let pid = std::process::id();
        let tmp = parent.join(format!(".{name}.tmp-{pid}"));
        let old = parent.join(format!(".{name}.old-{pid}"));
        let _ = std::fs::remove_dir_all(&tmp);
        if let Err(e) = self.save(&tmp) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let had_old = dir.exists();
        if had_old {
            std::fs::rename(dir, &old).map_err(|e| write_err(dir, e))?;
        }
        if let Err(e) = std::fs::rename(&tmp, dir) {
            if had_old {
                let _ = std::fs::rename(&old, dir);
            }
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(write_err(dir, e));
        }
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }

    /// Resolves a caller's history and context (see [`prepare`]).
    pub fn prepare(
        &self,
        history: &[HistoryEvent],
        context: &BTreeMap<String, ContextValue>,
    ) -> Result<Prepared, InputError> {
        prepare(&self.manifest, &self.catalogue, history, context)
    }

    /// Full-catalogue scores for a batch, as one row per query (column j = item index j + 1):
    /// the reference the retrievers are tested against. Inference mode: no grad, no dropout.
    pub fn score(&self, queries: &[&Query]) -> Vec<Vec<f32>> {
        if queries.is_empty() {
            return Vec::new();
        }
        let n = self.manifest.architecture.n_items;
        let scores = tch::no_grad(|| {
            self.encoder
                .logits(&self.query_vectors(queries))
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
                .view(-1)
        });
        Vec::<f32>::try_from(&scores)
            .expect("float scores convert")
            .chunks(n)
            .map(<[f32]>::to_vec)
            .collect()
    }

    /// Scores and ranks a batch exactly: one ranked list of (item index, score) per query. Only
    /// B × k results leave the device (see `retrieval::exact`). What evaluation uses.
    pub fn recommend(&self, queries: &[&Query], specs: &[RankSpec]) -> Vec<Vec<(usize, f32)>> {
        self.recommend_with(retrieval::Retrieval::Exact, queries, specs)
    }

    /// Ranks a batch with the asked retrieval; `Ann` without an attached index is exact.
    pub fn recommend_with(
        &self,
        mode: retrieval::Retrieval,
        queries: &[&Query],
        specs: &[RankSpec],
    ) -> Vec<Vec<(usize, f32)>> {
        if queries.is_empty() {
            return Vec::new();
        }
        tch::no_grad(|| {
            let z = self.query_vectors(queries);
            let (emb, bias) = self.encoder.item_matrix();
            self.retriever(mode).retrieve(&z, &emb, &bias, specs)
        })
    }

    /// The query vectors z (B, d) of a batch, on the model's device.
    pub fn query_vectors(&self, queries: &[&Query]) -> Tensor {
        tch::no_grad(|| {
            let batch = to_tensors(queries, &self.manifest, self.device);
            self.encoder.query_vectors(&batch)
        })
    }

    /// The retriever that answers `mode`.
    /// Whether several threads may rank with this model at once: the encoder's forward pass only
    /// reads the weights (inference runs under no_grad and changes no tensor in place), so it is
    /// the retrievers that decide.
    pub fn concurrent_ranking(&self) -> bool {
        retrieval::Retriever::concurrent(&self.exact)
            && self.ann.as_ref().is_none_or(|a| a.concurrent())
    }

    pub fn retriever(&self, mode: retrieval::Retrieval) -> &dyn retrieval::Retriever {
        match (mode, &self.ann) {
            (retrieval::Retrieval::Ann, Some(a)) => a.as_ref(),
            _ => &self.exact,
        }
    }

    /// Builds an approximate index over this model's item matrix.
    pub fn build_index(
        &self,
        params: retrieval::AnnParams,
        threads: usize,
    ) -> Result<retrieval::AnnIndex, String> {
        let (emb, bias) = self.encoder.item_matrix();
        retrieval::AnnIndex::build(&emb, &bias, params, threads)
    }

    /// Sets how the exact CPU scan runs (threads, 0 = auto; bf16 first pass or not) and says what
    /// it chose. On an accelerator the scan is one device GEMM and this changes nothing.
    pub fn configure_scan(
        &mut self,
        threads: usize,
        precision: retrieval::exact::ScanPrecision,
    ) -> Result<String, String> {
        type P = retrieval::exact::ScanPrecision;
        if self.exact.scan.strategy != retrieval::exact::Strategy::Blocked {
            return Ok("device top-k".into());
        }
        let n = self.catalogue.len();
        let large = n >= retrieval::exact::LARGE_CATALOGUE;
        self.exact.scan.threads = match threads {
            0 if large => crate::device::or_cpu_quota(0),
            0 => 1,
            t => t,
        };
        let want_bf16 = match precision {
            P::F32 => false,
            P::Bf16 => true,
            P::Auto => large && crate::device::cpu_has_bf16(),
        };
        self.exact.scan.bf16 = None;
        if want_bf16 {
            let (emb, bias) = self.encoder.item_matrix();
            match retrieval::bf16::Items::new(&emb, &bias) {
                Ok(items) => self.exact.scan.bf16 = Some(items),
                Err(e) if precision == P::Bf16 => {
                    return Err(format!("retrieval.scan_precision = \"bf16\": {e}"))
                }
                Err(e) => tracing::warn!(error = %e, "bf16 scan refused; scanning in f32"),
            }
        }
        let s = &self.exact.scan;
        Ok(match &s.bf16 {
            Some(items) => format!(
                "bf16 first pass ({} MB copy) + f32 re-rank, {} thread(s)",
                items.bytes() >> 20,
                s.threads
            ),
            None => format!("f32, {} thread(s)", s.threads),
        })
    }

    /// Attaches approximate retrieval: the index saved at `saved` (memory-mapped, checked against
    /// the weights) when that file exists, else one built now.
    pub fn attach_index(
        &mut self,
        params: retrieval::AnnParams,
        saved: &Path,
        build_threads: usize,
    ) -> Result<(), String> {
        let (emb, bias) = self.encoder.item_matrix();
        let index = if saved.is_file() {
            retrieval::AnnIndex::open(saved, &emb, &bias, params)
                .map_err(|e| format!("{}: {e}", saved.display()))?
        } else {
            tracing::warn!(
                path = %saved.display(),
                items = self.catalogue.len(),
                "no saved index: building one now (save one with `seqserve index`)"
            );
            retrieval::AnnIndex::build(&emb, &bias, params, build_threads)?
        };
        self.ann = Some(Box::new(retrieval::Approximate {
            index,
            fallback: self.exact.scan.strategy,
        }));
        Ok(())
    }

    /// Builds an inverted-file index over this model's item matrix.
    pub fn build_ivf(
        &self,
        params: retrieval::IvfParams,
        threads: usize,
    ) -> Result<retrieval::IvfIndex, String> {
        let (emb, bias) = self.encoder.item_matrix();
        retrieval::IvfIndex::build(&emb, &bias, params, threads)
    }

    /// Saves an inverted-file index of this model (see [`retrieval::IvfIndex::save`]).
    pub fn save_ivf(&self, index: &retrieval::IvfIndex, path: &Path) -> Result<(), String> {
        let (emb, bias) = self.encoder.item_matrix();
        index.save(path, &emb, &bias)
    }

    /// Attaches approximate retrieval by an inverted file: the one saved at `saved` (checked
    /// against the weights) when that file exists, else one built now with `build_threads`
    /// threads. Says what it attached.
    pub fn attach_ivf(
        &mut self,
        params: retrieval::IvfParams,
        saved: &Path,
        build_threads: usize,
    ) -> Result<String, String> {
        let (emb, bias) = self.encoder.item_matrix();
        let t0 = std::time::Instant::now();
        let (index, how) = if saved.is_file() {
            let i = retrieval::IvfIndex::open(saved, &emb, &bias, params)
                .map_err(|e| format!("{}: {e}", saved.display()))?;
            (i, "opened")
        } else {
            let i = retrieval::IvfIndex::build(&emb, &bias, params, build_threads)?;
            (i, "built (save one with `seqserve index --kind ivf`)")
        };
        let said = format!(
            "IVF {how} in {:.1} s: {} lists, {} read per query, {} MB",
            t0.elapsed().as_secs_f64(),
            index.lists(),
            index.probe(),
            index.bytes() >> 20
        );
        self.ann = Some(Box::new(retrieval::InvertedFile {
            index,
            fallback: self.exact.scan.strategy,
        }));
        Ok(said)
    }
}

/// Whether every value of a float32 tensor is finite. A contiguous CPU tensor (the mapped file) is
/// read once in place, a block at a time with no early exit inside a block so that the compiler
/// vectorises it: `isfinite().all()` made an absolute-value copy and three masks of each slice,
/// 2 of the 13 s a 10M-item model took to load.
fn all_finite(t: &Tensor) -> bool {
    if t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() {
        let n = t.numel();
        if n == 0 {
            return true;
        }
        // SAFETY: a contiguous CPU float32 tensor holds `n` f32 at its data pointer; `t` outlives
        // the slice and nothing writes to it meanwhile.
        let v = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) };
        const EXP: u32 = 0x7f80_0000;
        return v
            .chunks(4096)
            .all(|c| c.iter().fold(true, |ok, x| ok & (x.to_bits() & EXP != EXP)));
    }
    let flat = t.view(-1);
    let n = flat.size()[0];
    let step = 1 << 20;
    (0..n).step_by(step as usize).all(|lo| {
        bool::try_from(flat.narrow(0, lo, step.min(n - lo)).isfinite().all()).unwrap_or(false)
    })
}

/// Names become tensor names (`context.<name>`): keep them to identifier characters.
fn check_names(m: &Manifest) -> Result<(), String> {
    for f in &m.context {
        let n = f.name();
        if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "context feature name {n:?} must be letters, digits or '_'"
            ));
        }
    }
    Ok(())
}
