//! Histories and contexts as callers write them in JSON (HTTP requests, holdout files), before
//! resolution. Deserialisation is strict everywhere, the same as for a request's top level: unknown
//! fields inside a history event and duplicate keys in a context are refused with a message that
//! says what was expected (an untagged serde enum would accept `{"item": 1, "behavor": "cart"}` and
//! silently drop the typo, and answer wrong types with "data did not match any variant").
use super::batch::HistoryEvent;
use super::context::ContextValue;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

thread_local! {
    /// Set when an item id arrived as a float equal to 0 (see `visit_f64`).
    static FLOAT_ZERO_ID: Cell<bool> = const { Cell::new(false) };
}

/// Starts watching for item ids given as a float zero (before a JSON text is parsed on this
/// thread); `underflowed_zero_id` then says whether one of them was written as `1e-400`.
pub fn watch_float_zero_ids() {
    FLOAT_ZERO_ID.with(|f| f.set(false));
}

/// After a parse of `text`: when an item id was a float zero and some number literal in the text
/// underflows to zero without being zero (`1e-400`; serde_json gives both as 0.0), the refusal.
/// The text is scanned only in that rare case.
pub fn underflowed_zero_id(text: &[u8]) -> Option<String> {
    if !FLOAT_ZERO_ID.with(|f| f.replace(false)) {
        return None;
    }
    underflowing_literal(text).map(|lit| {
        format!("{lit} is no item id: it is not 0 but rounds to 0 as a float; write id 0 as 0")
    })
}

/// The first number literal outside strings that parses to 0 but has a non-zero digit.
fn underflowing_literal(text: &[u8]) -> Option<String> {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len()
                    && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let lit = std::str::from_utf8(&text[start..i]).ok()?;
                let mantissa = lit.split(['e', 'E']).next().unwrap_or("");
                if lit.parse::<f64>() == Ok(0.0)
                    && mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b))
                {
                    return Some(crate::error::excerpt(lit));
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// An item id as JSON gives it: a non-negative integer or a string.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ItemId {
    Int(u64),
    Str(String),
}

/// Largest integer item id: 2^53 - 1, the largest integer every JSON parser reads exactly (I-JSON,
/// RFC 7493); larger ids must be sent as strings.
pub const MAX_INTEGER_ITEM_ID: u64 = (1 << 53) - 1;

/// Longest item id, in characters (what JSON Schema's maxLength counts, so the OpenAPI document
/// and this check agree on non-ASCII ids).
pub const MAX_ITEM_ID_CHARS: usize = 128;

impl ItemId {
    /// The id as text (an integer in decimal), unchecked: other keys written like item ids (user
    /// and event ids) apply their own bounds.
    pub fn into_text(self) -> String {
        match self {
            ItemId::Int(i) => i.to_string(),
            ItemId::Str(s) => s,
        }
    }

    /// The external id; ids must be 1 to 128 characters.
    pub fn into_checked(self, field: &str) -> Result<String, String> {
        let s = self.into_text();
        if s.is_empty() || s.chars().count() > MAX_ITEM_ID_CHARS {
            return Err(format!("{field}: item ids must be 1 to 128 characters"));
        }
        Ok(s)
    }
}

const ITEM_ID: &str = "an item id (a non-negative integer or a string)";

struct ItemIdVisitor;

fn id_too_large<E: de::Error>(v: impl fmt::Display) -> E {
    E::custom(format!(
        "item id {v} is above 2^53 - 1, which JSON cannot carry exactly: send it as a string"
    ))
}

/// A float that is a u64 exactly (`12.0`), as JSON Schema counts integers.
fn integral(v: f64) -> Option<u64> {
    (v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v)).then_some(v as u64)
}

impl<'de> Visitor<'de> for ItemIdVisitor {
    type Value = ItemId;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(ITEM_ID)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ItemId, E> {
        if v > MAX_INTEGER_ITEM_ID {
            return Err(id_too_large(v));
        }
        Ok(ItemId::Int(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ItemId, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!(
                "item id {v} is negative; expected {ITEM_ID}"
            ))),
        }
    }
    // `12.0` is the integer 12, as JSON Schema (and so the OpenAPI document) has it, and so is
    // `0.0`. But `1e-400` also reaches here as 0 (it underflows when parsed) and is no integer:
    // a float zero is noted, and `parse_json` looks for such a literal in the text afterwards.
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ItemId, E> {
        if v == 0.0 {
            FLOAT_ZERO_ID.with(|f| f.set(true));
        }
        match integral(v) {
            Some(n) => self.visit_u64(n),
            None if v.fract() == 0.0 && v > 0.0 => Err(id_too_large(v)),
            None => Err(E::custom(format!(
                "item id {v} is not a non-negative integer; expected {ITEM_ID}"
            ))),
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<ItemId, E> {
        Ok(ItemId::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<ItemId, E> {
        Ok(ItemId::Str(v))
    }
}

impl<'de> Deserialize<'de> for ItemId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ItemId, D::Error> {
        d.deserialize_any(ItemIdVisitor)
    }
}

/// One history entry: a bare id, or `{item, behavior}` (`behaviour` accepted too).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum HistoryEntry {
    Id(ItemId),
    Event {
        item: ItemId,
        #[serde(skip_serializing_if = "Option::is_none")]
        behavior: Option<String>,
    },
}

const HISTORY_ENTRY: &str =
    "a history entry: an item id (a non-negative integer or a string) or {\"item\": id, \"behavior\": name}";

struct HistoryEntryVisitor;

impl<'de> Visitor<'de> for HistoryEntryVisitor {
    type Value = HistoryEntry;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(HISTORY_ENTRY)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<HistoryEntry, E> {
        ItemIdVisitor.visit_u64(v).map(HistoryEntry::Id)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<HistoryEntry, E> {
        ItemIdVisitor.visit_i64(v).map(HistoryEntry::Id)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<HistoryEntry, E> {
        if v.fract() == 0.0 && v >= 0.0 {
            return ItemIdVisitor.visit_f64(v).map(HistoryEntry::Id);
        }
        Err(E::custom(format!(
            "{v} is not an integer; expected {HISTORY_ENTRY}"
        )))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<HistoryEntry, E> {
        ItemIdVisitor.visit_str(v).map(HistoryEntry::Id)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<HistoryEntry, E> {
        ItemIdVisitor.visit_string(v).map(HistoryEntry::Id)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HistoryEntry, A::Error> {
        let mut item: Option<ItemId> = None;
        let mut behavior: Option<Option<String>> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "item" => {
                    if item.is_some() {
                        return Err(de::Error::custom("duplicate field `item` in history event"));
                    }
                    item = Some(map.next_value()?);
                }
                "behavior" | "behaviour" => {
                    if behavior.is_some() {
                        return Err(de::Error::custom(
                            "duplicate field `behavior` in history event",
                        ));
                    }
                    behavior = Some(map.next_value()?);
                }
                other => {
                    return Err(de::Error::custom(format!(
                        "unknown field `{other}` in history event; expected `item` and optionally `behavior`"
                    )))
                }
            }
        }
        let item = item.ok_or_else(|| de::Error::custom("history event without `item`"))?;
        Ok(HistoryEntry::Event {
            item,
            behavior: behavior.flatten(),
        })
    }
}

impl<'de> Deserialize<'de> for HistoryEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HistoryEntry, D::Error> {
        d.deserialize_any(HistoryEntryVisitor)
    }
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

/// `deserialize_with` for a context object: like a map, but a repeated key is an error (serde's map
/// would keep the last value silently, where a repeated top-level field is refused).
pub fn unique_context<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, ContextValue>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = BTreeMap<String, ContextValue>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a context object {\"feature\": value, ...}")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                let value: ContextValue = map.next_value()?;
                if out.insert(key.clone(), value).is_some() {
                    return Err(de::Error::custom(format!(
                        "duplicate context feature `{key}`"
                    )));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// Reads a non-negative integer as JSON Schema (and so the OpenAPI document) defines one: `12`
/// or `12.0`, not `12.5` (serde's own integer types refuse `12.0`).
struct Integer<T>(std::marker::PhantomData<T>);

impl<'de, T: TryFrom<u64>> Visitor<'de> for Integer<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "a non-negative integer of at most {} bits",
            8 * std::mem::size_of::<T>()
        )
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            .and_then(|v| self.visit_u64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        match integral(v) {
            Some(n) => self.visit_u64(n),
            None => Err(E::invalid_value(de::Unexpected::Float(v), &self)),
        }
    }
}

/// `deserialize_with` for an integer field (see [`Integer`]).
pub fn integer<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(Integer(std::marker::PhantomData))
}

/// `deserialize_with` for an optional integer field; `null` is absent.
pub fn optional_integer<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap<T: TryFrom<u64>>(#[serde(deserialize_with = "integer")] T);
    Option::<Wrap<T>>::deserialize(d).map(|o| o.map(|w| w.0))
}

/// `deserialize_with` for a list of integers.
pub fn integers<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<Vec<T>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap<T: TryFrom<u64>>(#[serde(deserialize_with = "integer")] T);
    Vec::<Wrap<T>>::deserialize(d).map(|v| v.into_iter().map(|w| w.0).collect())
}

/// A struct that must be written as a JSON object. serde's derived structs also accept the
/// positional array form (`[[1, 2], {}, 3]` for `{history, context, k}`), which callers never mean.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ObjectOnly<T>, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = ObjectOnly<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ObjectOnly<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(ObjectOnly)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[allow(dead_code)]
        history: Vec<HistoryEntry>,
        #[serde(default, deserialize_with = "unique_context")]
        #[allow(dead_code)]
        context: BTreeMap<String, ContextValue>,
    }

    fn err(json: &str) -> String {
        serde_json::from_str::<Body>(json).unwrap_err().to_string()
    }

    #[test]
    fn history_entries_are_strict_and_say_what_they_expect() {
        let ok: Body = serde_json::from_str(
            r#"{"history": [1, "a", {"item": 2}, {"item": "3", "behaviour": "cart"}, {"item": 4, "behavior": null}]}"#,
        )
        .unwrap();
        assert_eq!(ok.history.len(), 5);
        assert_eq!(
            ok.history[3],
            HistoryEntry::Event {
                item: ItemId::Str("3".into()),
                behavior: Some("cart".into())
            }
        );
        assert!(err(r#"{"history": [{"item": 1, "foo": 2}]}"#).contains("unknown field `foo`"));
        assert!(
            err(r#"{"history": [{"item": 1, "behavor": "cart"}]}"#).contains("`behavor`"),
            "typo must be named"
        );
        let e = err(r#"{"history": [1.5]}"#);
        assert!(e.contains("history entry") && !e.contains("variant"), "{e}");
        assert!(err(r#"{"history": [-3]}"#).contains("negative"));
        assert!(err(r#"{"history": [true]}"#).contains("history entry"));
        assert!(err(r#"{"history": [{"behavior": "cart"}]}"#).contains("without `item`"));
        assert!(err(r#"{"history": [{"item": 1, "item": 2}]}"#).contains("duplicate"));
        assert!(err(r#"{"history": [{"item": 1.5}]}"#).contains("not a non-negative integer"));
        // JSON Schema's integers: 12.0 is 12; beyond 2^53 - 1 an id must be a string.
        let ok: Body =
            serde_json::from_str(r#"{"history": [12.0, {"item": 9007199254740991}]}"#).unwrap();
        assert_eq!(ok.history[0], HistoryEntry::Id(ItemId::Int(12)));
        assert!(err(r#"{"history": [9007199254740992]}"#).contains("send it as a string"));
        assert!(err(r#"{"history": [9007199254740992.0]}"#).contains("send it as a string"));
    }

    #[test]
    fn integer_fields_read_integral_floats_and_nothing_else() {
        #[derive(Debug, Deserialize)]
        struct K {
            #[serde(default, deserialize_with = "optional_integer")]
            k: Option<usize>,
            #[serde(default, deserialize_with = "integers")]
            ks: Vec<u32>,
        }
        let k = |s: &str| serde_json::from_str::<K>(s).map_err(|e| e.to_string());
        let ok = k(r#"{"k": 12.0, "ks": [1, 2.0]}"#).unwrap();
        assert_eq!((ok.k, ok.ks), (Some(12), vec![1, 2]));
        assert_eq!(k(r#"{"k": null}"#).unwrap().k, None);
        for bad in [
            r#"{"k": 1.5}"#,
            r#"{"k": -1}"#,
            r#"{"k": "3"}"#,
            r#"{"ks": [4294967296]}"#,
        ] {
            let e = k(bad).unwrap_err();
            assert!(e.contains("non-negative integer"), "{bad}: {e}");
        }
    }

    #[test]
    fn structs_must_be_objects() {
        let e = serde_json::from_str::<ObjectOnly<Body>>(r#"[[1, 2], {}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a JSON object"), "{e}");
        let ok: ObjectOnly<Body> = serde_json::from_str(r#"{"history": [1]}"#).unwrap();
        assert_eq!(ok.0.history.len(), 1);
        let e = serde_json::from_str::<ObjectOnly<Body>>(r#"{"history": [1], "x": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn a_repeated_context_key_is_refused() {
        let e = err(r#"{"history": [], "context": {"gender": "F", "gender": "M"}}"#);
        assert!(e.contains("duplicate context feature `gender`"), "{e}");
        let ok: Body =
            serde_json::from_str(r#"{"history": [], "context": {"gender": "F", "age": 25}}"#)
                .unwrap();
        assert_eq!(ok.context.len(), 2);
    }

    /// `0.0` is the integer 0 (JSON Schema says so, and schemathesis sends it); `1e-400` parses
    /// to the same f64 but is no integer, and is found in the text. Strings are not numbers.
    #[test]
    fn a_float_zero_id_is_zero_unless_written_as_an_underflow() {
        let parse = |text: &str| {
            watch_float_zero_ids();
            let ids: Vec<ItemId> = serde_json::from_str(text).unwrap();
            (ids, underflowed_zero_id(text.as_bytes()))
        };
        let (ids, refusal) = parse(r#"[0.0, -0.0, 0e7, 12.0, "1e-400", 0]"#);
        assert_eq!(ids[0], ItemId::Int(0));
        assert_eq!(ids[3], ItemId::Int(12));
        assert_eq!(refusal, None);
        let (_, refusal) = parse(r#"[5, 1e-400]"#);
        assert!(refusal.unwrap().contains("1e-400"));
        let (_, refusal) = parse(r#"["a\"1e-999", 0.0, 2.5e-330]"#);
        assert!(refusal.unwrap().contains("2.5e-330"));
        // Only watched when an id was a float zero: an underflowing context value alone is fine.
        let (_, refusal) = parse(r#"[3]"#);
        assert_eq!(refusal, None);
    }
}
