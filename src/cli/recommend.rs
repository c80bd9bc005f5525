use anyhow::{bail, Context, Result};
use clap::Args;
use seqserve::model::{ContextValue, HistoryEvent, RankSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RecommendArgs {
    /// Model directory.
    #[arg(long, default_value = "models/beauty-2l")]
    model: PathBuf,
    /// Item ids, oldest first, comma-separated (may be empty: cold start).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    history: String,
    /// Behaviour of each history item, comma-separated (pv, cart, fav, buy...).
    #[arg(long)]
    behaviours: Option<String>,
    /// Context features, e.g. gender=F,age=25,occupation=4.
    #[arg(long)]
    context: Option<String>,
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Allow items already in the history to be recommended.
    #[arg(long)]
    include_seen: bool,
    /// Never return these item ids (comma-separated).
    #[arg(long)]
    exclude: Option<String>,
    /// Rank only these item ids (comma-separated).
    #[arg(long)]
    candidates: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// auto | cpu | cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn run(a: RecommendArgs) -> Result<()> {
    let device = seqserve::device::parse_device(&a.device)?;
    super::configure_threads(a.threads)?;
    let model = super::load_for_ranking(&a.model, device)?;
    let items = list(&a.history);
    let behaviours = a.behaviours.as_deref().map(list);
    if let Some(b) = &behaviours {
        if b.len() != items.len() {
            bail!(
                "--behaviours has {} entries but --history has {}",
                b.len(),
                items.len()
            );
        }
    }
    let history: Vec<HistoryEvent> = items
        .iter()
        .enumerate()
        .map(|(i, item)| HistoryEvent {
            item: item.clone(),
            behaviour: behaviours.as_ref().map(|b| b[i].clone()),
        })
        .collect();
    let mut context = BTreeMap::new();
    for kv in a.context.as_deref().map(list).unwrap_or_default() {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--context entry {kv:?} is not name=value"))?;
        if context
            .insert(k.trim().to_string(), ContextValue::parse_cli(v.trim()))
            .is_some()
        {
            bail!("--context names {:?} twice", k.trim());
        }
    }
    let prepared = model.prepare(&history, &context)?;
    let mut exclude = if a.include_seen {
        Vec::new()
    } else {
        prepared.seen.clone()
    };
    // Exclusions outside the catalogue have nothing to exclude; candidates outside it are
    // reported (the HTTP API's `unknown_candidates`).
    let excluded = a.exclude.as_deref().map(list).unwrap_or_default();
    exclude.extend(model.catalogue.split_known(excluded).0);
    let (candidates, unknown_candidates) = match a.candidates.as_deref().map(list) {
        Some(c) if c.is_empty() => bail!("--candidates names no item ids"),
        Some(c) => {
            let (idx, unknown) = model.catalogue.split_known(c);
            (Some(idx), unknown)
        }
        None => (None, Vec::new()),
    };
    let spec = RankSpec {
        k: a.k,
        exclude,
        candidates,
    };
    if a.k == 0 {
        bail!("--k must be at least 1");
    }
    let ranked = model.recommend(&[&prepared.query], &[spec]).remove(0);
    if !prepared.unknown_items.is_empty() {
        eprintln!(
            "note: ignored history items not in the catalogue: {}",
            prepared.unknown_items.join(",")
        );
    }
    if !unknown_candidates.is_empty() {
        eprintln!(
            "note: candidates not in the catalogue, not ranked: {}",
            unknown_candidates.join(",")
        );
    }
    if a.json {
        let items: Vec<_> = ranked
            .iter()
            .map(|(i, s)| serde_json::json!({"item": model.catalogue.id_of(*i), "score": s}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "model": model.manifest.name,
                "version": model.manifest.version,
                "items": items,
                "unknown_items": prepared.unknown_items,
                "unknown_candidates": unknown_candidates,
            })
        );
    } else {
        println!("rank  item        score");
        for (r, (i, s)) in ranked.iter().enumerate() {
            println!("{:>4}  {:<10}  {:.6}", r + 1, model.catalogue.id_of(*i), s);
        }
    }
    Ok(())
}
