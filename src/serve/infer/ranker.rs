//! What a model worker needs of a model: rank batches of prepared queries. The worker is written
//! against this trait, not against [`Model`], so batching, deadlines and cancellation can be
//! tested with a fake ranker in milliseconds (TEI keeps its backends behind `trait Backend` the
//! same way).
use crate::model::retrieval::Retrieval;
use crate::model::{Catalogue, Manifest, Model, Query, RankSpec};
use std::sync::Arc;

/// A model that ranks a batch of queries, owned by one version's worker threads (several rank at
/// once only where [`Ranker::concurrent_ranking`] says it is safe).
pub trait Ranker: Send + 'static {
    /// What requests are validated against (behaviours, context schema, max_len).
    fn manifest(&self) -> &Manifest;
    /// The external ids, shared with the handlers that resolve them.
    fn catalogue(&self) -> Arc<Catalogue>;
    /// Where it runs, for `/models` and the metrics (e.g. "cpu", "cuda:0").
    fn device_name(&self) -> String;
    /// The retriever that answers `mode` ("exact" or "ann").
    fn retrieval_name(&self, mode: Retrieval) -> &'static str;
    /// One ranked list of (item index, score) per query, best first.
    fn rank(
        &self,
        mode: Retrieval,
        queries: &[&Query],
        specs: &[RankSpec],
    ) -> Vec<Vec<(usize, f32)>>;
    /// Called once on each worker thread before anything else (per-thread settings).
    fn init_thread(&self, _threads: usize) {}
    /// Whether `rank` may run on several threads at once (it then must only read the ranker).
    /// No by default: a version then has one worker whatever `batching.workers_per_model` says.
    fn concurrent_ranking(&self) -> bool {
        false
    }
}

impl Ranker for Model {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn catalogue(&self) -> Arc<Catalogue> {
        self.catalogue.clone()
    }

    fn device_name(&self) -> String {
        crate::device::device_name(self.device)
    }

    fn retrieval_name(&self, mode: Retrieval) -> &'static str {
        self.retriever(mode).kind().name()
    }

    fn rank(
        &self,
        mode: Retrieval,
        queries: &[&Query],
        specs: &[RankSpec],
    ) -> Vec<Vec<(usize, f32)>> {
        self.recommend_with(mode, queries, specs)
    }

    /// libtorch's intra-op thread count is per thread: each worker sets its own.
    fn init_thread(&self, threads: usize) {
        tch::set_num_threads(threads as i32);
    }

    fn concurrent_ranking(&self) -> bool {
        Model::concurrent_ranking(self)
    }
}
