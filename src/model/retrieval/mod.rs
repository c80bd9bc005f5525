//! Retrieval: from query vectors z (B, d) to ranked item lists, behind one interface beside the
//! encoder. The encoder says what a history means; a [`Retriever`] finds the items that score best
//! against it (scores = z·Eᵀ + b over the item matrix).
//!
//! * [`Exact`]: every item scored on the model's device, only B × k results leave it
//!   (`exact.rs`; on the CPU over several threads and with a bf16 first pass for large catalogues,
//!   `bf16.rs`, the answer still the f32 scan's); what evaluation always uses.
//! * [`InvertedFile`]: k-means lists of the items, a query reads its best few lists in full
//!   (`ivf.rs`); the approximate retrieval for very large catalogues, by default.
//! * [`Approximate`]: an HNSW index proposes candidates, which are re-scored exactly (`ann.rs`);
//!   the other approximate index (`retrieval.index_kind = "hnsw"`).
//!
//! Both rank with `rank::TopK`, the one tie policy.
pub mod ann;
pub mod bf16;
pub mod exact;
pub mod ivf;
mod parallel;

use super::RankSpec;
use serde::{Deserialize, Serialize};
use tch::Tensor;

pub use ann::{AnnIndex, AnnParams, INDEX_FILE};
pub use ivf::{IvfIndex, IvfParams, IVF_FILE};

/// Which retrieval a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Retrieval {
    #[default]
    Exact,
    Ann,
}

impl Retrieval {
    pub fn name(self) -> &'static str {
        match self {
            Retrieval::Exact => "exact",
            Retrieval::Ann => "ann",
        }
    }
}

/// Ranks query vectors against an item matrix (embeddings (N, d), biases (N); row j = item j + 1).
pub trait Retriever {
    /// What answered: "exact" or "ann" (reported to callers and in evaluation reports).
    fn kind(&self) -> Retrieval;
    fn retrieve(
        &self,
        z: &Tensor,
        emb: &Tensor,
        bias: &Tensor,
        specs: &[RankSpec],
    ) -> Vec<Vec<(usize, f32)>>;
    /// Whether several threads may call `retrieve` at once (a version's worker threads share one
    /// model). Only a retriever whose `retrieve` reads nothing but data fixed at load says yes.
    fn concurrent(&self) -> bool {
        false
    }
}

/// Exact top-k on the model's device.
pub struct Exact {
    pub scan: exact::Scan,
}

impl Retriever for Exact {
    fn kind(&self) -> Retrieval {
        Retrieval::Exact
    }
    fn retrieve(
        &self,
        z: &Tensor,
        emb: &Tensor,
        bias: &Tensor,
        specs: &[RankSpec],
    ) -> Vec<Vec<(usize, f32)>> {
        exact::retrieve_scan(&self.scan, z, emb, bias, specs)
    }
    /// The scan reads the item tensors and its bf16 copy; its own threads set their own libtorch
    /// thread count (per thread) and write only their own top lists.
    fn concurrent(&self) -> bool {
        true
    }
}

/// Approximate retrieval with the exact scan as fallback.
pub struct Approximate {
    pub index: AnnIndex,
    pub fallback: exact::Strategy,
}

impl Retriever for Approximate {
    fn kind(&self) -> Retrieval {
        Retrieval::Ann
    }
    fn retrieve(
        &self,
        z: &Tensor,
        emb: &Tensor,
        bias: &Tensor,
        specs: &[RankSpec],
    ) -> Vec<Vec<(usize, f32)>> {
        self.index.retrieve(z, emb, bias, specs, self.fallback)
    }
    // Not concurrent: usearch takes a per-thread search context from the slots reserved when the
    // index was built or opened, and a restored view reserves none for extra threads.
}

/// Approximate retrieval by an inverted file, with the exact scan as fallback.
pub struct InvertedFile {
    pub index: IvfIndex,
    pub fallback: exact::Strategy,
}

impl Retriever for InvertedFile {
    fn kind(&self) -> Retrieval {
        Retrieval::Ann
    }
    fn retrieve(
        &self,
        z: &Tensor,
        emb: &Tensor,
        bias: &Tensor,
        specs: &[RankSpec],
    ) -> Vec<Vec<(usize, f32)>> {
        self.index.retrieve(z, emb, bias, specs, self.fallback)
    }
    /// The lists, centroids and probe count are fixed at load; each call's top lists are its own.
    fn concurrent(&self) -> bool {
        true
    }
}
