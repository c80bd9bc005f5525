//! Event CSV `user,item,category,behaviour,timestamp` (Taobao UserBehavior), grouped into per-user sequences.
use super::log::{Dataset, Event, LineSink, ReadOptions, UserLog};
use super::sequences::valid_id;
use crate::error::DataError;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

pub fn read_events(path: &Path, opts: &ReadOptions) -> Result<Dataset, DataError> {
    let reader = super::log::open(path)?;
    let mut sink = LineSink::new(path, opts);
    // (timestamp, line) keeps the sort stable for events in the same second: file order breaks ties.
    let mut by_user: HashMap<String, Vec<(i64, usize, Event)>> = HashMap::new();
    let mut user_order = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| sink.io(e))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != 5 {
            sink.malformed(
                line_no,
                format!(
                    "expected 5 fields user,item,category,behaviour,timestamp, found {}",
                    fields.len()
                ),
            )?;
            continue;
        }
        let (user, item, behaviour, ts) = (fields[0], fields[1], fields[3], fields[4]);
        if line_no == 1 && ts.parse::<i64>().is_err() && !valid_behaviour(behaviour) {
            // A header line such as `user_id,item_id,...`.
            continue;
        }
        if !valid_id(user) {
            sink.malformed(line_no, format!("bad user id {user:?}"))?;
            continue;
        }
        if !valid_id(item) {
            sink.malformed(line_no, format!("bad item id {item:?}"))?;
            continue;
        }
        if !valid_behaviour(behaviour) {
            sink.malformed(line_no, format!("bad behaviour {behaviour:?}"))?;
            continue;
        }
        let Ok(timestamp) = ts.parse::<i64>() else {
            sink.malformed(line_no, format!("bad timestamp {ts:?}"))?;
            continue;
        };
        let entry = by_user.entry(user.to_string()).or_insert_with(|| {
            user_order.push(user.to_string());
            Vec::new()
        });
        entry.push((
            timestamp,
            line_no,
            Event {
                item: item.to_string(),
                behaviour: Some(behaviour.to_string()),
                timestamp: Some(timestamp),
            },
        ));
    }
    let users: Vec<UserLog> = user_order
        .into_iter()
        .map(|user| {
            let mut events = by_user.remove(&user).unwrap_or_default();
            events.sort_by_key(|(ts, line, _)| (*ts, *line));
            UserLog {
                user,
                events: events.into_iter().map(|(_, _, e)| e).collect(),
            }
        })
        .collect();
    if users.is_empty() {
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            message: "no events found".into(),
        });
    }
    Ok(Dataset {
        path: path.to_path_buf(),
        users,
        skipped: sink.skipped,
    })
}

fn valid_behaviour(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
