//! seqserve: a SASRec-style user-behaviour-sequence encoder on libtorch, served over HTTP and evaluated honestly.
//!
//! Data flows one way: [`data`] (log readers, the one split definition) → [`train`] → [`model`] (encoder,
//! manifest, load/save, the one place a request becomes a tensor) ← [`serve`] and [`eval`];
//! [`importer`] writes model directories from checkpoints trained elsewhere.
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod importer;
pub mod model;
pub mod progress;
pub mod serve;
mod simd;
pub mod train;

pub use error::{DataError, InputError, ModelError};
