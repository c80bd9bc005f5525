//! How the registry turns a version directory into a running model: the [`Opener`] (the model
//! on its device with its retrieval; a fake in unit tests) and the worker settings.
use crate::model::retrieval::Retrieval;
use crate::model::Model;
use crate::serve::config::{IndexKind, RetrievalSection};
use crate::serve::infer::queue::BatchingConfig;
use crate::serve::infer::ranker::Ranker;
use std::path::Path;
use tch::Device;

/// How the registry runs the versions it loads (fixed at start).
pub struct LoadSettings {
    /// Intra-op threads of each version's worker.
    pub threads: usize,
    pub batching: BatchingConfig,
}

/// Turns a version directory into a ranker.
pub trait Opener: Send + Sync {
    fn open(&self, dir: &Path) -> Result<Box<dyn Ranker>, String>;
}

/// Loads a model directory onto a device, with approximate retrieval attached when configured.
pub struct ModelOpener {
    pub device: Device,
    pub retrieval: RetrievalSection,
    /// model.max_weights_bytes: the manifest's sizes are checked against it before loading.
    pub max_weights_bytes: u64,
}

impl Opener for ModelOpener {
    fn open(&self, dir: &Path) -> Result<Box<dyn Ranker>, String> {
        let manifest = crate::model::Manifest::read(&dir.join(crate::model::MANIFEST_FILE))
            .map_err(|e| e.to_string())?;
        let floats: u64 = crate::model::encoder::expected_shapes(&manifest)
            .values()
            .map(|s| s.iter().map(|&d| d as u64).product::<u64>())
            .sum();
        if floats.saturating_mul(4) > self.max_weights_bytes {
            return Err(format!(
                "its manifest sizes {} bytes of weights; model.max_weights_bytes is {}",
                floats.saturating_mul(4),
                self.max_weights_bytes
            ));
        }
        let mut model = Model::load(dir, self.device).map_err(|e| e.to_string())?;
        let scan =
            model.configure_scan(self.retrieval.scan_threads, self.retrieval.scan_precision)?;
        tracing::info!(dir = %dir.display(), items = model.catalogue.len(), scan = %scan, "exact scan");
        if self.retrieval.mode == Retrieval::Ann {
            let path = self.retrieval.index_file(dir);
            // The IVF scan's threads are the exact scan's (0 = the CPU quota); building uses all.
            let threads = crate::device::or_cpu_quota(self.retrieval.scan_threads);
            match self.retrieval.index_kind {
                IndexKind::Ivf => {
                    let said = model
                        .attach_ivf(
                            self.retrieval.ivf_params(threads),
                            &path,
                            crate::device::or_cpu_quota(0),
                        )
                        .map_err(|e| format!("approximate index: {e}"))?;
                    tracing::info!(dir = %dir.display(), index = %said, "approximate retrieval");
                }
                IndexKind::Hnsw => model
                    .attach_index(
                        self.retrieval.params(),
                        &path,
                        crate::device::or_cpu_quota(0),
                    )
                    .map_err(|e| format!("approximate index: {e}"))?,
            }
        }
        Ok(Box::new(model))
    }
}
