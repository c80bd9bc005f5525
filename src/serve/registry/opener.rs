//! How the registry turns a version directory into a running model: the [`Opener`] (the model
//! on its device with its retrieval; a fake in unit tests) and the worker settings.
use crate::model::retrieval::Retrieval;
use crate::model::Model;
use crate::serve::config::RetrievalSection;
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
}

impl Opener for ModelOpener {
    fn open(&self, dir: &Path) -> Result<Box<dyn Ranker>, String> {
        let mut model = Model::load(dir, self.device).map_err(|e| e.to_string())?;
        if self.retrieval.mode == Retrieval::Ann {
            let path = self.retrieval.index_file(dir);
            model
                .attach_index(
                    self.retrieval.params(),
                    &path,
                    crate::device::or_cpu_quota(0),
                )
                .map_err(|e| format!("approximate index: {e}"))?;
        }
        Ok(Box::new(model))
    }
}
