//! What a model learns from a log: its catalogue, behaviour vocabulary and context schema.
use crate::data::{Dataset, UserTable};
use crate::model::{Catalogue, CategoricalEncoding, ContextFeature};
use anyhow::Result;
use std::collections::{BTreeSet, HashSet};

/// Every item of the log, in order of first appearance (deterministic for a given file).
/// The whole log is used, so test targets are rankable; only their ids, never their positions,
/// reach training.
pub fn catalogue(data: &Dataset) -> Result<Catalogue> {
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for e in data.users.iter().flat_map(|u| &u.events) {
        if seen.insert(e.item.as_str()) {
            ids.push(e.item.clone());
        }
    }
    Catalogue::new(ids).map_err(anyhow::Error::msg)
}

/// Behaviour types present in the log: the usual funnel order first, then any others sorted.
pub fn behaviours(data: &Dataset) -> Vec<String> {
    let present: BTreeSet<&str> = data
        .users
        .iter()
        .flat_map(|u| &u.events)
        .filter_map(|e| e.behaviour.as_deref())
        .collect();
    let funnel = ["pv", "click", "cart", "fav", "buy"];
    let mut out: Vec<String> = funnel
        .iter()
        .filter(|b| present.contains(*b))
        .map(|b| b.to_string())
        .collect();
    out.extend(
        present
            .iter()
            .filter(|b| !funnel.contains(b))
            .map(|b| b.to_string()),
    );
    out
}

/// Categorical embeddings for every user attribute; values sorted numerically when all are numbers.
pub fn context(users: &UserTable) -> Vec<ContextFeature> {
    users
        .features
        .iter()
        .map(|name| {
            let set: BTreeSet<&str> = users
                .rows
                .values()
                .filter_map(|r| r.get(name).map(String::as_str))
                .collect();
            let mut values: Vec<String> = set.into_iter().map(str::to_string).collect();
            if values.iter().all(|v| v.parse::<i64>().is_ok()) {
                values.sort_by_key(|v| v.parse::<i64>().unwrap_or(0));
            }
            let dim = ((values.len() as f64).sqrt().ceil() as usize * 2).clamp(2, 16);
            ContextFeature::Categorical {
                name: name.clone(),
                values,
                encoding: CategoricalEncoding::Embedding,
                dim,
            }
        })
        .collect()
}
