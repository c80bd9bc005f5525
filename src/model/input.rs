//! Histories as callers write them in JSON (HTTP requests, holdout files), before resolution.
use super::batch::HistoryEvent;
use serde::{Deserialize, Serialize};

/// An item id as JSON gives it: a non-negative integer or a string.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ItemId {
    Int(u64),
    Str(String),
}

impl ItemId {
    /// The external id; ids must be 1 to 128 characters.
    pub fn into_checked(self, field: &str) -> Result<String, String> {
        let s = match self {
            ItemId::Int(i) => i.to_string(),
            ItemId::Str(s) => s,
        };
        if s.is_empty() || s.len() > 128 {
            return Err(format!("{field}: item ids must be 1 to 128 characters"));
        }
        Ok(s)
    }
}

/// One history entry: a bare id, or `{item, behavior}` (`behaviour` accepted too).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum HistoryEntry {
    Id(ItemId),
    Event {
        item: ItemId,
        #[serde(alias = "behaviour", skip_serializing_if = "Option::is_none")]
        behavior: Option<String>,
    },
}

impl HistoryEntry {
    pub fn into_event(self, field: &str) -> Result<HistoryEvent, String> {
        Ok(match self {
            HistoryEntry::Id(id) => HistoryEvent {
                item: id.into_checked(field)?,
                behaviour: None,
            },
            HistoryEntry::Event { item, behavior } => HistoryEvent {
                item: item.into_checked(field)?,
                behaviour: behavior,
            },
        })
    }
}

pub fn history_events(
    entries: Vec<HistoryEntry>,
    field: &str,
) -> Result<Vec<HistoryEvent>, String> {
    entries.into_iter().map(|e| e.into_event(field)).collect()
}
