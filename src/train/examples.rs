//! Turning a split log into training sequences and validation/test cases.
use crate::data::{split::UserSplit, Dataset, Event, Split, UserTable};
use crate::error::DataError;
use crate::eval::EvalCase;
use crate::model::{user_context, Catalogue, ContextValue, HistoryEvent, Model};
use std::collections::BTreeMap;

/// One training sequence: inputs (left part) and next-item targets, aligned.
/// `inputs[0]` is the padding "start" token, so the first target is predicted from an empty history
/// (this trains the cold-start representation).
#[derive(Debug, Clone)]
pub struct TrainSequence {
    pub inputs: Vec<i64>,
    pub behaviours: Vec<i64>,
    pub targets: Vec<i64>,
    pub context: BTreeMap<String, ContextValue>,
}

pub fn splits<'a>(data: &'a Dataset, split: &Split) -> Result<Vec<UserSplit<'a>>, DataError> {
    data.users.iter().map(|u| split.apply(u)).collect()
}

/// Training sequences from the train part of every user (at least one target each), keeping the
/// most recent max_len inputs.
pub fn train_sequences(
    splits: &[UserSplit<'_>],
    catalogue: &Catalogue,
    behaviours: &[String],
    users: Option<&UserTable>,
    max_len: usize,
) -> Vec<TrainSequence> {
    let mut out = Vec::new();
    for s in splits {
        let mut items = vec![0i64];
        let mut behs = vec![0i64];
        for e in s.train {
            if let Some(idx) = catalogue.index_of(&e.item) {
                items.push(idx as i64);
                behs.push(behaviour_id(behaviours, e));
            }
        }
        if items.len() < 2 {
            continue;
        }
        let start = items.len().saturating_sub(max_len + 1);
        let items = &items[start..];
        let behs = &behs[start..];
        out.push(TrainSequence {
            inputs: items[..items.len() - 1].to_vec(),
            behaviours: behs[..behs.len() - 1].to_vec(),
            targets: items[1..].to_vec(),
            context: user_context(users, s.user),
        });
    }
    out
}

fn behaviour_id(vocab: &[String], e: &Event) -> i64 {
    e.behaviour
        .as_ref()
        .and_then(|b| vocab.iter().position(|x| x == b))
        .map_or(0, |p| p as i64 + 1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Validation,
    Test,
}

/// Evaluation cases for one part of the split, resolved through `Model::prepare` (the serving path).
/// Users with no target in that part are left out; targets unknown to the model are dropped from
/// `relevant` (a case left with none is kept and counted by the evaluator).
pub fn cases(
    splits: &[UserSplit<'_>],
    model: &Model,
    users: Option<&UserTable>,
    part: Part,
) -> Result<Vec<EvalCase>, crate::error::InputError> {
    let mut out = Vec::new();
    for s in splits {
        let (history, targets) = match part {
            Part::Validation => (s.train, s.valid),
            Part::Test => (s.history, s.test),
        };
        if targets.is_empty() {
            continue;
        }
        let hist: Vec<HistoryEvent> = history
            .iter()
            .map(|e| HistoryEvent {
                item: e.item.clone(),
                behaviour: e.behaviour.clone(),
            })
            .collect();
        let prepared = model.prepare(&hist, &user_context(users, s.user))?;
        let mut relevant: Vec<usize> = targets
            .iter()
            .filter_map(|e| model.catalogue.index_of(&e.item))
            .collect();
        // Keep first occurrence order; repeats are one relevant item.
        let mut seen = std::collections::HashSet::new();
        relevant.retain(|i| seen.insert(*i));
        out.push(EvalCase {
            query: prepared.query,
            seen: prepared.seen,
            relevant,
        });
    }
    Ok(out)
}
