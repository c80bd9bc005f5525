//! The one split definition shared by `train` (what it may learn from and validate on) and `holdout`
//! (what it evaluates on), so a model never sees its holdout's relevant items.
//!
//! * `leave-last-N` (`leave-one-out` = `leave-last-1`): per user, the last N events are the test
//!   targets, the N before them the validation targets, the rest the training history.
//! * `temporal:T` (unix seconds): events at or after T are test targets; before T, the last event is
//!   the validation target and the rest the training history. Needs timestamps.
use super::{Event, UserLog};
use crate::error::DataError;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    LeaveLastN(usize),
    Temporal { cutoff: i64 },
}

/// One user's events, cut by a split. Slices borrow from the log.
#[derive(Debug, Clone, Copy)]
pub struct UserSplit<'a> {
    pub user: &'a str,
    /// What training may learn from (inputs and targets).
    pub train: &'a [Event],
    /// Validation targets (model selection), predicted from `train`.
    pub valid: &'a [Event],
    /// Test targets, predicted from `train` + `valid` (which are contiguous: `history`).
    pub test: &'a [Event],
    /// train followed by valid: the history a test case sees.
    pub history: &'a [Event],
}

impl Split {
    pub fn apply<'a>(&self, log: &'a UserLog) -> Result<UserSplit<'a>, DataError> {
        let ev = &log.events[..];
        let (history, test) = match *self {
            Split::LeaveLastN(n) => {
                let cut = ev.len().saturating_sub(n);
                ev.split_at(cut)
            }
            Split::Temporal { cutoff } => {
                let mut cut = ev.len();
                for (i, e) in ev.iter().enumerate() {
                    let ts = e.timestamp.ok_or_else(|| {
                        DataError::Split(format!(
                            "temporal split needs timestamps; user {} has an event without one",
                            log.user
                        ))
                    })?;
                    if ts >= cutoff {
                        cut = i;
                        break;
                    }
                }
                ev.split_at(cut)
            }
        };
        let n_valid = match *self {
            Split::LeaveLastN(n) => n,
            Split::Temporal { .. } => 1,
        };
        let vcut = history.len().saturating_sub(n_valid);
        let (train, valid) = history.split_at(vcut);
        Ok(UserSplit {
            user: &log.user,
            train,
            valid,
            test,
            history,
        })
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Split::LeaveLastN(1) => write!(f, "leave-one-out"),
            Split::LeaveLastN(n) => write!(f, "leave-last-{n}"),
            Split::Temporal { cutoff } => write!(f, "temporal:{cutoff}"),
        }
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "leave-one-out" {
            return Ok(Split::LeaveLastN(1));
        }
        if let Some(n) = s.strip_prefix("leave-last-") {
            return match n.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Split::LeaveLastN(n)),
                _ => Err(format!(
                    "bad split {s:?}: N in leave-last-N must be a positive integer"
                )),
            };
        }
        if let Some(t) = s.strip_prefix("temporal:") {
            return t
                .parse::<i64>()
                .map(|cutoff| Split::Temporal { cutoff })
                .map_err(|_| format!("bad split {s:?}: temporal:T needs T in unix seconds"));
        }
        Err(format!(
            "bad split {s:?}: expected leave-one-out, leave-last-N or temporal:UNIX_SECONDS"
        ))
    }
}

impl serde::Serialize for Split {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Split {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(items: &[&str], ts: Option<&[i64]>) -> UserLog {
        UserLog {
            user: "u".into(),
            events: items
                .iter()
                .enumerate()
                .map(|(i, it)| Event {
                    item: it.to_string(),
                    behaviour: None,
                    timestamp: ts.map(|t| t[i]),
                })
                .collect(),
        }
    }

    fn ids(e: &[Event]) -> Vec<&str> {
        e.iter().map(|e| e.item.as_str()).collect()
    }

    #[test]
    fn leave_one_out_and_last_n() {
        let l = log(&["a", "b", "c", "d", "e", "f", "g", "h"], None);
        let s = Split::LeaveLastN(1).apply(&l).unwrap();
        assert_eq!(ids(s.train), ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(ids(s.valid), ["g"]);
        assert_eq!(ids(s.test), ["h"]);
        let s = Split::LeaveLastN(3).apply(&l).unwrap();
        assert_eq!(ids(s.train), ["a", "b"]);
        assert_eq!(ids(s.valid), ["c", "d", "e"]);
        assert_eq!(ids(s.test), ["f", "g", "h"]);
        assert_eq!(ids(s.history), ["a", "b", "c", "d", "e"]);
        // Short logs: test takes priority, then validation.
        let short = log(&["a", "b"], None);
        let s = Split::LeaveLastN(3).apply(&short).unwrap();
        assert!(s.history.is_empty() && s.train.is_empty());
        assert_eq!(ids(s.test), ["a", "b"]);
    }

    #[test]
    fn temporal() {
        let l = log(&["a", "b", "c", "d"], Some(&[10, 20, 30, 40]));
        let s = Split::Temporal { cutoff: 30 }.apply(&l).unwrap();
        assert_eq!(ids(s.train), ["a"]);
        assert_eq!(ids(s.valid), ["b"]);
        assert_eq!(ids(s.test), ["c", "d"]);
        assert!(Split::Temporal { cutoff: 1 }
            .apply(&log(&["a"], None))
            .is_err());
    }

    #[test]
    fn parse_roundtrip() {
        for s in ["leave-one-out", "leave-last-3", "temporal:1511000000"] {
            assert_eq!(s.parse::<Split>().unwrap().to_string(), s);
        }
        assert_eq!(
            "leave-last-1".parse::<Split>().unwrap(),
            Split::LeaveLastN(1)
        );
        for bad in ["leave-last-0", "leave-last-x", "temporal:", "random"] {
            assert!(bad.parse::<Split>().is_err(), "{bad}");
        }
    }
}
