//! Labelled holdouts: JSON Lines, one case per line:
//! `{"user": "u1", "history": [12, {"item": 45, "behavior": "cart"}], "context": {...}, "relevant": [77, 80]}`.
//! Built from a log by the same split definition that `train` uses, so a model trained on a split never
//! sees its holdout's relevant items.
use super::runner::EvalCase;
use crate::data::{Dataset, Split, UserTable};
use crate::error::{DataError, LineError};
use crate::model::{
    history_events, prepare, Catalogue, ContextValue, HistoryEntry, ItemId, Manifest,
};
use crate::train::examples::user_context;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldoutCase {
    #[serde(default)]
    pub user: String,
    pub history: Vec<HistoryEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, ContextValue>,
    pub relevant: Vec<ItemId>,
}

/// Parses JSON Lines; errors name the source and line.
pub fn parse_holdout(text: &str, source: &Path) -> Result<Vec<HoldoutCase>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| {
            DataError::Malformed(LineError {
                path: source.to_path_buf(),
                line: i + 1,
                message,
            })
        };
        let case: HoldoutCase = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        if case.relevant.is_empty() {
            return Err(err("relevant must list at least one item".into()));
        }
        out.push(case);
    }
    if out.is_empty() {
        return Err(DataError::Invalid {
            path: source.to_path_buf(),
            message: "holdout has no cases".into(),
        });
    }
    Ok(out)
}

pub fn read_holdout(path: &Path) -> Result<Vec<HoldoutCase>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_holdout(&text, path)
}

pub fn write_holdout(cases: &[HoldoutCase], path: &Path) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for c in cases {
        serde_json::to_writer(&mut f, c).expect("holdout case serialises");
        f.write_all(b"\n").map_err(io)?;
    }
    f.flush().map_err(io)
}

/// The test part of `split` as holdout cases: history = everything before the test targets
/// (train + validation parts), relevant = the test targets (deduplicated). Users without a test
/// target are left out.
pub fn build_holdout(
    data: &Dataset,
    split: &Split,
    users: Option<&UserTable>,
) -> Result<Vec<HoldoutCase>, DataError> {
    let mut out = Vec::new();
    for u in &data.users {
        let s = split.apply(u)?;
        if s.test.is_empty() {
            continue;
        }
        let mut seen = HashSet::new();
        let relevant = s
            .test
            .iter()
            .filter(|e| seen.insert(e.item.as_str()))
            .map(|e| ItemId::Str(e.item.clone()))
            .collect();
        out.push(HoldoutCase {
            user: u.user.clone(),
            history: s
                .history
                .iter()
                .map(|e| match &e.behaviour {
                    None => HistoryEntry::Id(ItemId::Str(e.item.clone())),
                    Some(b) => HistoryEntry::Event {
                        item: ItemId::Str(e.item.clone()),
                        behavior: Some(b.clone()),
                    },
                })
                .collect(),
            context: user_context(users, &u.user),
            relevant,
        });
    }
    Ok(out)
}

/// Cases resolved against one model. `unknown_relevant` counts relevant ids the model does not know
/// (they cannot be ranked and count as misses); cases left with no known relevant item are kept
/// (scoring 0) and counted by the evaluator.
pub struct Resolved {
    pub cases: Vec<EvalCase>,
    pub unknown_relevant: usize,
}

/// Resolves holdout cases through `Model::prepare` (the serving path). Bad cases (unknown behaviour,
/// context the model's schema rejects...) fail with the case's line-independent index.
pub fn resolve(
    manifest: &Manifest,
    catalogue: &Catalogue,
    cases: &[HoldoutCase],
) -> Result<Resolved, String> {
    let mut out = Vec::with_capacity(cases.len());
    let mut unknown_relevant = 0;
    for (i, c) in cases.iter().enumerate() {
        let history = history_events(c.history.clone(), "history")
            .map_err(|e| format!("case {}: {e}", i + 1))?;
        let prepared = prepare(manifest, catalogue, &history, &c.context)
            .map_err(|e| format!("case {} (user {:?}): {e}", i + 1, c.user))?;
        let mut relevant = Vec::new();
        for id in c.relevant.clone() {
            let id = id
                .into_checked("relevant")
                .map_err(|e| format!("case {}: {e}", i + 1))?;
            match catalogue.index_of(&id) {
                Some(idx) if !relevant.contains(&idx) => relevant.push(idx),
                Some(_) => {}
                None => unknown_relevant += 1,
            }
        }
        out.push(EvalCase {
            query: prepared.query,
            seen: prepared.seen,
            relevant,
        });
    }
    Ok(Resolved {
        cases: out,
        unknown_relevant,
    })
}
