//! Turning a context object (user attributes, time, device...) into the model's encoded form.
use super::manifest::{ContextFeature, Manifest};
use crate::error::InputError;
use std::collections::BTreeMap;

/// A context value as a caller gives it (JSON string/number, or a CLI `key=value`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum ContextValue {
    Number(f64),
    Text(String),
}

impl<'de> serde::Deserialize<'de> for ContextValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ContextValue, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ContextValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a context value: a number or a string")
            }
            fn visit_u64<E>(self, v: u64) -> Result<ContextValue, E> {
                Ok(ContextValue::Number(v as f64))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ContextValue, E> {
                Ok(ContextValue::Number(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ContextValue, E> {
                Ok(ContextValue::Number(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<ContextValue, E> {
                Ok(ContextValue::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl ContextValue {
    /// CLI values: numbers when they parse as numbers, else text.
    pub fn parse_cli(s: &str) -> ContextValue {
        match s.parse::<f64>() {
            Ok(x) if x.is_finite() => ContextValue::Number(x),
            _ => ContextValue::Text(s.to_string()),
        }
    }

    /// Categorical key: `25` and `"25"` name the same category.
    fn category_key(&self) -> String {
        match self {
            ContextValue::Text(s) => s.clone(),
            ContextValue::Number(x) if x.fract() == 0.0 && x.abs() < 1e15 => {
                format!("{}", *x as i64)
            }
            ContextValue::Number(x) => x.to_string(),
        }
    }
}

/// Encoded context, in the manifest's feature order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedContext {
    /// One index per categorical feature (0 = missing).
    pub categorical: Vec<i64>,
    /// One standardised value per numeric feature (0 = missing, i.e. the mean).
    pub numeric: Vec<f32>,
}

/// Encodes a context map against the manifest's schema. Missing features are allowed (encoded as
/// unknown / the mean); unknown names, unknown categories and mistyped values are the caller's error.
pub fn encode_context(
    manifest: &Manifest,
    context: &BTreeMap<String, ContextValue>,
) -> Result<EncodedContext, InputError> {
    for name in context.keys() {
        if !manifest.context.iter().any(|f| f.name() == name) {
            return Err(InputError::UnknownFeature(
                name.clone(),
                manifest
                    .context
                    .iter()
                    .map(|f| f.name().to_string())
                    .collect(),
            ));
        }
    }
    let mut out = EncodedContext::default();
    for f in &manifest.context {
        let value = context.get(f.name());
        match f {
            ContextFeature::Categorical { name, values, .. } => {
                let idx = match value {
                    None => 0,
                    Some(v) => {
                        let key = v.category_key();
                        match values.iter().position(|x| *x == key) {
                            Some(p) => p as i64 + 1,
                            None => {
                                return Err(InputError::BadFeature {
                                    name: name.clone(),
                                    message: format!(
                                        "unknown value {}; known values: {values:?}",
                                        crate::error::excerpt(&key)
                                    ),
                                })
                            }
                        }
                    }
                };
                out.categorical.push(idx);
            }
            ContextFeature::Numeric { name, mean, std } => {
                let x = match value {
                    None => 0.0,
                    Some(ContextValue::Number(x)) if x.is_finite() => ((x - mean) / std) as f32,
                    Some(other) => {
                        return Err(InputError::BadFeature {
                            name: name.clone(),
                            message: format!(
                                "expected a finite number, got {}",
                                crate::error::excerpt(&format!("{other:?}"))
                            ),
                        })
                    }
                };
                out.numeric.push(x);
            }
        }
    }
    Ok(out)
}

/// A user's context features from a user table (MovieLens users.dat), as a request would send
/// them; empty for a user the table lacks (or without a table). Training and evaluation both
/// read context this way.
pub fn user_context(
    users: Option<&crate::data::UserTable>,
    user: &str,
) -> BTreeMap<String, ContextValue> {
    users
        .and_then(|t| t.rows.get(user))
        .map(|row| {
            row.iter()
                .map(|(k, v)| (k.clone(), ContextValue::Text(v.clone())))
                .collect()
        })
        .unwrap_or_default()
}
