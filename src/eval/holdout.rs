//! Labelled holdouts: JSON Lines, one case per line:
//! `{"user": "u1", "history": [12, {"item": 45, "behavior": "cart"}], "context": {...}, "relevant": [77, 80]}`.
//! Built from a log by the same split definition that `train` uses, so a model trained on a split never
//! sees its holdout's relevant items. A file written by `seqserve holdout` starts with a provenance
//! line, `{"provenance": {"log": ..., "log_sha256": ..., "split": ...}}`, which the leakage guard
//! (`eval::leakage`) compares with the model's training record; files without one still read.
use super::runner::EvalCase;
use crate::data::{Dataset, Split, UserTable};
use crate::error::{DataError, LineError};
use crate::model::user_context;
use crate::model::{
    history_events, prepare, Catalogue, ContextValue, HistoryEntry, ItemId, Manifest,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldoutCase {
    #[serde(default)]
    pub user: String,
    pub history: Vec<HistoryEntry>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::model::unique_context"
    )]
    pub context: BTreeMap<String, ContextValue>,
    #[schema(min_items = 1)]
    pub relevant: Vec<ItemId>,
}

/// Where a holdout came from: the log (by content hash) and the split that cut it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The log's path when the holdout was built (information only; the hash is what is compared).
    pub log: String,
    pub log_sha256: String,
    pub split: Split,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvenanceLine {
    provenance: Provenance,
}

/// What [`read_cases`] found besides the cases.
#[derive(Debug, Clone, Default)]
pub struct ReadSummary {
    pub cases: usize,
    pub provenance: Option<Provenance>,
}

/// Reads JSON Lines cases one line at a time (a holdout is never held whole as text), calling `f`
/// with each case and its line number. Errors name the source and line; more than `max_cases`
/// cases is an error. A provenance line is accepted only as the first line.
pub fn read_cases(
    mut reader: impl BufRead,
    source: &Path,
    max_cases: usize,
    mut f: impl FnMut(usize, HoldoutCase) -> Result<(), DataError>,
) -> Result<ReadSummary, DataError> {
    let mut buf = String::new();
    let (mut line_no, mut count) = (0usize, 0usize);
    let mut provenance = None;
    loop {
        buf.clear();
        let n = reader
            .read_line(&mut buf)
            .map_err(|source_err| DataError::Io {
                path: source.to_path_buf(),
                cause: source_err,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let line = buf.trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| {
            DataError::Malformed(LineError {
                path: source.to_path_buf(),
                line: line_no,
                message,
            })
        };
        if line.starts_with("{\"provenance\"") {
            if line_no != 1 {
                return Err(err("a provenance line may only be the first line".into()));
            }
            let p: ProvenanceLine = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
            provenance = Some(p.provenance);
            continue;
        }
        crate::model::watch_float_zero_ids();
        let case: HoldoutCase = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        if let Some(refusal) = crate::model::underflowed_zero_id(line.as_bytes()) {
            return Err(err(refusal));
        }
        if case.relevant.is_empty() {
            return Err(err("relevant must list at least one item".into()));
        }
        count += 1;
        if count > max_cases {
            return Err(err(format!("more than {max_cases} cases (the limit)")));
        }
        f(line_no, case)?;
    }
    if count == 0 {
        return Err(DataError::Invalid {
            path: source.to_path_buf(),
            message: "holdout has no cases".into(),
        });
    }
    Ok(ReadSummary {
        cases: count,
        provenance,
    })
}

/// A holdout read whole: its cases and, when recorded, where it came from.
#[derive(Debug, Clone)]
pub struct Holdout {
    pub provenance: Option<Provenance>,
    pub cases: Vec<HoldoutCase>,
}

fn collect_cases(reader: impl BufRead, source: &Path) -> Result<Holdout, DataError> {
    let mut cases = Vec::new();
    let summary = read_cases(reader, source, usize::MAX, |_, c| {
        cases.push(c);
        Ok(())
    })?;
    Ok(Holdout {
        provenance: summary.provenance,
        cases,
    })
}

/// Parses JSON Lines text; errors name the source and line.
pub fn parse_holdout(text: &str, source: &Path) -> Result<Vec<HoldoutCase>, DataError> {
    Ok(collect_cases(text.as_bytes(), source)?.cases)
}

pub fn read_holdout(path: &Path) -> Result<Holdout, DataError> {
    let f = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        cause: source,
    })?;
    collect_cases(std::io::BufReader::new(f), path)
}

pub fn write_holdout(
    cases: &[HoldoutCase],
    provenance: Option<&Provenance>,
    path: &Path,
) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    if let Some(p) = provenance {
        serde_json::to_writer(&mut f, &serde_json::json!({ "provenance": p }))
            .expect("provenance serialises");
        f.write_all(b"\n").map_err(io)?;
    }
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
#[derive(Default)]
pub struct Resolved {
    pub cases: Vec<EvalCase>,
    pub unknown_relevant: usize,
}

impl Resolved {
    /// Resolves one case against a model and adds it.
    pub fn add(
        &mut self,
        manifest: &Manifest,
        catalogue: &Catalogue,
        c: &HoldoutCase,
    ) -> Result<(), String> {
        let history = history_events(c.history.clone(), "history")?;
        let prepared = prepare(manifest, catalogue, &history, &c.context)
            .map_err(|e| format!("(user {:?}): {e}", c.user))?;
        let mut relevant = Vec::new();
        for id in c.relevant.clone() {
            let id = id.into_checked("relevant")?;
            match catalogue.index_of(&id) {
                Some(idx) if !relevant.contains(&idx) => relevant.push(idx),
                Some(_) => {}
                None => self.unknown_relevant += 1,
            }
        }
        self.cases.push(EvalCase {
            query: prepared.query,
            seen: prepared.seen,
            relevant,
        });
        Ok(())
    }
}

/// Resolves holdout cases through `Model::prepare` (the serving path). Bad cases (unknown behaviour,
/// context the model's schema rejects...) fail with the case's line-independent index.
pub fn resolve(
    manifest: &Manifest,
    catalogue: &Catalogue,
    cases: &[HoldoutCase],
) -> Result<Resolved, String> {
    let mut out = Resolved::default();
    for (i, c) in cases.iter().enumerate() {
        out.add(manifest, catalogue, c)
            .map_err(|e| format!("case {}: {e}", i + 1))?;
    }
    Ok(out)
}
