//! The mapping format: which source tensor becomes which of our tensors, how it is reshaped on the
//! way, and (for a plain state dict) the architecture that the weights alone cannot tell.
//!
//! ```toml
//! [architecture]            # state dicts only; RecBole's comes from its checkpoint
//! n_heads = 1
//! norm = "pre"              # pre | post | sasrec
//! activation = "relu"       # gelu | relu
//! layer_norm_eps = 1e-8
//! embedding_norm = false
//! positions = "from_newest" # from_oldest | from_newest
//! padding = "attended"      # masked | attended
//! dropout = 0.2             # recorded only: inference applies none
//!
//! [input]
//! item_scale = "sqrt_d_model"   # or a number: item embeddings multiplied on input only
//!
//! [tensors]                 # our name = source key, or a table; `{i}` = layer index
//! item_emb = "item_emb.weight"
//! pos_emb = { from = "pos_emb.weight", skip_rows = 1, reverse_rows = true }
//! "blocks.{i}.attn.q.weight" = { from = "attention_layers.{i}.in_proj_weight", chunk = [0, 3] }
//! "blocks.{i}.ffn.fc1.weight" = { from = "forward_layers.{i}.conv1.weight", squeeze = true }
//! ```
//!
//! A table's reshapes apply in this order: `chunk = [k, n]` (the k-th of n equal parts along the
//! first dimension, 0-based), `squeeze` (drop trailing dimensions of size 1: a 1×1 convolution's
//! kernel), `transpose` (a 2-D tensor), `skip_rows = r` (drop the first r rows), `take_rows = n`
//! (keep the first n of those), `reverse_rows`.
//! The sizes (n_items, d_model, n_layers, ffn_dim, max_len) are read from the tensors.
use crate::model::manifest::{Activation, Norm, Padding, Positions};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use tch::Tensor;

/// The layer-index placeholder of tensor names.
const LAYER: &str = "{i}";

#[derive(Debug, Clone)]
pub struct Mapping {
    pub architecture: Option<MappedArchitecture>,
    pub input: InputTransform,
    /// Our tensor name (template) → where it comes from.
    pub tensors: BTreeMap<String, SourceSpec>,
}

/// What a plain state dict cannot say about its model.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MappedArchitecture {
    pub n_heads: usize,
    pub norm: Norm,
    pub activation: String,
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub embedding_norm: bool,
    pub positions: Positions,
    #[serde(default)]
    pub padding: Padding,
    #[serde(default)]
    pub dropout: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputTransform {
    /// `"sqrt_d_model"` or a number.
    #[serde(default)]
    pub item_scale: Option<toml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub from: String,
    #[serde(default)]
    pub chunk: Option<[usize; 2]>,
    #[serde(default)]
    pub squeeze: bool,
    #[serde(default)]
    pub transpose: bool,
    #[serde(default)]
    pub skip_rows: usize,
    #[serde(default)]
    pub take_rows: Option<usize>,
    #[serde(default)]
    pub reverse_rows: bool,
}

/// The activations our encoder has, by the names PyTorch code uses for them.
pub fn parse_activation(name: &str) -> Result<Activation, String> {
    match name {
        "gelu" => Ok(Activation::Gelu),
        "relu" => Ok(Activation::Relu),
        other => Err(format!(
            "unknown activation {other:?}: seqserve's encoder has \"gelu\" (exact, erf form) and \"relu\""
        )),
    }
}

impl Mapping {
    /// Parses a mapping file's text; errors name the section and key.
    pub fn parse(text: &str) -> Result<Mapping, String> {
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let mut architecture = None;
        let mut input = InputTransform::default();
        let mut tensors = BTreeMap::new();
        for (section, value) in doc {
            match section.as_str() {
                "architecture" => {
                    let a: MappedArchitecture = value
                        .try_into()
                        .map_err(|e: toml::de::Error| format!("[architecture]: {}", e.message()))?;
                    parse_activation(&a.activation).map_err(|e| format!("[architecture]: {e}"))?;
                    architecture = Some(a);
                }
                "input" => {
                    input = value
                        .try_into()
                        .map_err(|e: toml::de::Error| format!("[input]: {}", e.message()))?;
                }
                "tensors" => {
                    let table = value
                        .as_table()
                        .ok_or("[tensors] must be a table of `ours = source`")?;
                    for (ours, src) in table {
                        let spec = match src {
                            toml::Value::String(key) => SourceSpec {
                                from: key.clone(),
                                ..Default::default()
                            },
                            toml::Value::Table(_) => {
                                src.clone().try_into().map_err(|e: toml::de::Error| {
                                    format!("[tensors] {ours:?}: {}", e.message())
                                })?
                            }
                            _ => {
                                return Err(format!(
                                    "[tensors] {ours:?}: expected a source key or a table"
                                ))
                            }
                        };
                        if ours.contains(LAYER) != spec.from.contains(LAYER) {
                            return Err(format!(
                                "[tensors] {ours:?}: {LAYER} must appear in both names or in neither"
                            ));
                        }
                        if let Some([k, n]) = spec.chunk {
                            if n == 0 || k >= n {
                                return Err(format!(
                                    "[tensors] {ours:?}: chunk = [{k}, {n}] is not the k-th of n parts"
                                ));
                            }
                        }
                        tensors.insert(ours.clone(), spec);
                    }
                }
                other => {
                    return Err(format!(
                        "unknown section [{other}] (expected [architecture], [input], [tensors])"
                    ))
                }
            }
        }
        if tensors.is_empty() {
            return Err("no [tensors] section: nothing says which tensor is which".into());
        }
        Ok(Mapping {
            architecture,
            input,
            tensors,
        })
    }

    /// The scale item embeddings get on input, for a model of width `d`.
    pub fn item_scale(&self, d: usize) -> Result<Option<f64>, String> {
        match &self.input.item_scale {
            None => Ok(None),
            Some(toml::Value::String(s)) if s == "sqrt_d_model" => Ok(Some((d as f64).sqrt())),
            Some(toml::Value::Float(f)) if f.is_finite() && *f > 0.0 => Ok(Some(*f)),
            Some(toml::Value::Integer(i)) if *i > 0 => Ok(Some(*i as f64)),
            Some(other) => Err(format!(
                "[input] item_scale = {other}: expected \"sqrt_d_model\" or a positive number"
            )),
        }
    }
}

/// Everything wrong between a state dict and a mapping, reported together.
#[derive(Debug, Default)]
pub struct Mismatch {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub shapes: Vec<String>,
}

impl Mismatch {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shapes.is_empty()
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = |title: &str, items: &[String]| -> std::fmt::Result {
            if !items.is_empty() {
                write!(f, "\n  {title} ({}):", items.len())?;
                for i in items {
                    write!(f, "\n    {i}")?;
                }
            }
            Ok(())
        };
        list("missing keys", &self.missing)?;
        list("unexpected keys", &self.unexpected)?;
        list("shape mismatches", &self.shapes)
    }
}

/// The mapped tensors under our names, the source key of each, and how many layers the source has.
#[derive(Debug)]
pub struct Mapped {
    pub tensors: BTreeMap<String, Tensor>,
    pub origin: BTreeMap<String, String>,
    pub n_layers: usize,
}

/// Applies `mapping` to a state dict: every source key must be used, every key the mapping needs
/// must exist, every reshape must fit. Layers are those `0..n` whose keys the source has.
pub fn apply(mapping: &Mapping, source: &BTreeMap<String, Tensor>) -> Result<Mapped, Mismatch> {
    let n_layers = count_layers(mapping, source);
    let mut out = BTreeMap::new();
    let mut origin = BTreeMap::new();
    let mut used = BTreeSet::new();
    let mut bad = Mismatch::default();
    for (ours, spec) in &mapping.tensors {
        let layers: Vec<Option<usize>> = if ours.contains(LAYER) {
            (0..n_layers).map(Some).collect()
        } else {
            vec![None]
        };
        for layer in layers {
            let fill = |t: &str| match layer {
                Some(i) => t.replace(LAYER, &i.to_string()),
                None => t.to_string(),
            };
            let (name, key) = (fill(ours), fill(&spec.from));
            let Some(t) = source.get(&key) else {
                bad.missing.push(format!("{key} (for {name})"));
                continue;
            };
            used.insert(key.clone());
            match reshape(t, spec) {
                Ok(t) => {
                    out.insert(name.clone(), t);
                    origin.insert(name, key);
                }
                Err(e) => bad
                    .shapes
                    .push(format!("{name} (from {key} {:?}): {e}", t.size())),
            }
        }
    }
    bad.missing.sort();
    bad.shapes.sort();
    bad.unexpected = source
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    if bad.is_empty() {
        Ok(Mapped {
            tensors: out,
            origin,
            n_layers,
        })
    } else {
        Err(bad)
    }
}

/// Layers are numbered 0, 1, ...: the count is one past the highest index any layer key of the
/// mapping finds in the source (a gap then shows up as missing keys).
fn count_layers(mapping: &Mapping, source: &BTreeMap<String, Tensor>) -> usize {
    let mut n = 0;
    for spec in mapping.tensors.values() {
        let Some((pre, post)) = spec.from.split_once(LAYER) else {
            continue;
        };
        for key in source.keys() {
            let Some(rest) = key.strip_prefix(pre).and_then(|r| r.strip_suffix(post)) else {
                continue;
            };
            if let Ok(i) = rest.parse::<usize>() {
                if i.to_string() == rest {
                    n = n.max(i + 1);
                }
            }
        }
    }
    n
}

fn reshape(t: &Tensor, spec: &SourceSpec) -> Result<Tensor, String> {
    let mut t = t.shallow_clone();
    if let Some([k, n]) = spec.chunk {
        let rows = *t.size().first().ok_or("chunk of a scalar")?;
        if rows % n as i64 != 0 {
            return Err(format!("{rows} rows do not split into {n} equal parts"));
        }
        let part = rows / n as i64;
        t = t.narrow(0, k as i64 * part, part);
    }
    if spec.squeeze {
        while t.dim() > 1 && t.size().last() == Some(&1) {
            t = t.squeeze_dim(-1);
        }
    }
    if spec.transpose {
        if t.dim() != 2 {
            return Err(format!(
                "transpose needs a matrix, found {} dimensions",
                t.dim()
            ));
        }
        t = t.tr();
    }
    if spec.skip_rows > 0 {
        let rows = *t.size().first().ok_or("skip_rows of a scalar")?;
        if rows <= spec.skip_rows as i64 {
            return Err(format!("cannot skip {} of {rows} rows", spec.skip_rows));
        }
        t = t.narrow(0, spec.skip_rows as i64, rows - spec.skip_rows as i64);
    }
    if let Some(n) = spec.take_rows {
        let rows = *t.size().first().ok_or("take_rows of a scalar")?;
        if n == 0 || n as i64 > rows {
            return Err(format!("cannot take {n} of {rows} rows"));
        }
        t = t.narrow(0, 0, n as i64);
    }
    if spec.reverse_rows {
        t = t.flip([0]);
    }
    Ok(t.contiguous())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(keys: &[(&str, &[i64])]) -> BTreeMap<String, Tensor> {
        keys.iter()
            .map(|(k, s)| {
                (
                    k.to_string(),
                    Tensor::arange(s.iter().product::<i64>(), tch::kind::FLOAT_CPU).view(*s),
                )
            })
            .collect()
    }

    #[test]
    fn templates_reshapes_and_layer_count() {
        let m = Mapping::parse(
            r#"
            [tensors]
            item_emb = "emb"
            pos_emb = { from = "pos", skip_rows = 1, reverse_rows = true }
            "blocks.{i}.attn.k.weight" = { from = "l.{i}.in_proj", chunk = [1, 3] }
            "blocks.{i}.ffn.fc1.weight" = { from = "l.{i}.conv", squeeze = true }
            "#,
        )
        .unwrap();
        let src = source(&[
            ("emb", &[3, 2]),
            ("pos", &[4, 2]),
            ("l.0.in_proj", &[6, 2]),
            ("l.1.in_proj", &[6, 2]),
            ("l.0.conv", &[2, 2, 1]),
            ("l.1.conv", &[2, 2, 1]),
        ]);
        let out = apply(&m, &src).unwrap();
        assert_eq!(out.n_layers, 2);
        let pos = Vec::<f32>::try_from(out.tensors["pos_emb"].view(-1)).unwrap();
        assert_eq!(pos, vec![6.0, 7.0, 4.0, 5.0, 2.0, 3.0]);
        let k = Vec::<f32>::try_from(out.tensors["blocks.1.attn.k.weight"].view(-1)).unwrap();
        assert_eq!(k, vec![4.0, 5.0, 6.0, 7.0]);
        assert_eq!(out.tensors["blocks.0.ffn.fc1.weight"].size(), vec![2, 2]);
    }

    #[test]
    fn every_missing_unexpected_and_misshapen_key_is_listed() {
        let m = Mapping::parse(
            r#"
            [tensors]
            item_emb = "emb"
            "blocks.{i}.attn.q.weight" = { from = "l.{i}.in_proj", chunk = [0, 3] }
            "blocks.{i}.attn.o.weight" = "l.{i}.out"
            "#,
        )
        .unwrap();
        let src = source(&[
            ("l.0.in_proj", &[5, 2]),
            ("l.0.out", &[2, 2]),
            ("l.1.in_proj", &[6, 2]),
            ("extra", &[1]),
        ]);
        let e = apply(&m, &src).unwrap_err();
        assert_eq!(
            e.missing,
            vec!["emb (for item_emb)", "l.1.out (for blocks.1.attn.o.weight)"]
        );
        assert_eq!(e.unexpected, vec!["extra"]);
        assert_eq!(e.shapes.len(), 1);
        assert!(
            e.shapes[0].contains("5 rows do not split into 3"),
            "{}",
            e.shapes[0]
        );
        let text = e.to_string();
        assert!(
            text.contains("missing keys (2)") && text.contains("unexpected keys (1)"),
            "{text}"
        );
    }

    #[test]
    fn bad_mappings_are_refused_naming_the_key() {
        for (text, needle) in [
            ("[tensors]\nx = 3", "expected a source key or a table"),
            ("[tensors]\nx = { from = \"a\", chunk = [3, 3] }", "chunk = [3, 3]"),
            ("[tensors]\nx = { from = \"a\", sideways = true }", "sideways"),
            ("[tensors]\n\"b.{i}.x\" = \"a\"", "{i} must appear in both"),
            ("[weights]\nx = \"a\"", "unknown section [weights]"),
            ("[architecture]\nn_heads = 1\nnorm = \"pre\"\nactivation = \"swish\"\nlayer_norm_eps = 1e-8\npositions = \"from_newest\"\n[tensors]\nx = \"a\"", "unknown activation \"swish\""),
            ("[architecture]\nn_heads = 1\nnorm = \"sideways\"\nactivation = \"relu\"\nlayer_norm_eps = 1e-8\npositions = \"from_newest\"\n[tensors]\nx = \"a\"", "sideways"),
            ("", "no [tensors] section"),
        ] {
            let e = Mapping::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
