//! `seqserve import`: models trained in PyTorch score here exactly as they did there.
//!
//! * a pmixer/SASRec.pytorch state dict (that layout built in PyTorch by tests/python/pmixer_sasrec.py)
//!   through mappings/pmixer-sasrec.toml;
//! * a real RecBole SASRec trained here on a slice of Beauty (tests/python/recbole_tool.py, in the
//!   RecBole venv of scripts/ops-tools.sh recbole), compared with RecBole's own full_sort_predict
//!   through `seqserve recommend` and `POST /recommend`, and evaluated as RecBole evaluated it;
//! * bad input of every kind: its error, exit status 1, no traceback, no output directory.
//!
//! The RecBole tests skip when ../shared/data is absent or the RecBole venv cannot be made.
mod common;

use common::server::Server;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn seqserve(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seqserve"))
        .args(args)
        .envs(envs.iter().copied())
        .env("SEQSERVE_LOG", "warn")
        .output()
        .expect("run seqserve")
}

fn python(python: &Path, script: &str, args: &[&str], cwd: &Path) -> Output {
    let out = Command::new(python)
        .arg(format!("{ROOT}/tests/python/{script}"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run python");
    common::assert_ran(&out);
    out
}

/// An import that must fail: exit status 1, `needles` in its message, no traceback, and nothing
/// left at `out` or beside it.
fn assert_refused(args: &[&str], envs: &[(&str, &str)], out: &Path, needles: &[&str]) -> String {
    let o = seqserve(args, envs);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected {n:?} in: {err}");
    }
    assert!(
        !err.contains("Traceback"),
        "{args:?}: a Python traceback: {err}"
    );
    assert!(!out.exists(), "{args:?} left {}", out.display());
    let parent = out.parent().unwrap();
    let debris: Vec<_> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".") && n.contains(".tmp-"))
        .collect();
    assert!(debris.is_empty(), "{args:?} left {debris:?}");
    err
}

/// Largest |Δ| between two score rows, and whether their top-10 agree when items whose scores tie
/// (within `tie`) with the 10th are set aside.
fn compare(ours: &HashMap<String, f64>, theirs: &[(String, f64)], tie: f64) -> (f64, bool, bool) {
    assert_eq!(ours.len(), theirs.len(), "different item sets");
    let mut worst = 0f64;
    for (item, s) in theirs {
        let o = ours
            .get(item)
            .unwrap_or_else(|| panic!("item {item} missing"));
        worst = worst.max((o - s).abs());
    }
    let top = |v: Vec<(String, f64)>| {
        let mut v = v;
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(10);
        v
    };
    let ref10 = top(theirs.to_vec());
    let our10 = top(ours.iter().map(|(k, v)| (k.clone(), *v)).collect());
    let tenth = ref10[9].1;
    let exact = ref10.iter().map(|x| &x.0).eq(our10.iter().map(|x| &x.0));
    let reference: HashMap<&String, f64> = theirs.iter().map(|(k, v)| (k, *v)).collect();
    let a: std::collections::BTreeSet<&String> = ref10.iter().map(|x| &x.0).collect();
    let b: std::collections::BTreeSet<&String> = our10.iter().map(|x| &x.0).collect();
    let ties_only = a
        .symmetric_difference(&b)
        .all(|item| (reference[item] - tenth).abs() <= tie);
    (worst, exact, ties_only)
}

fn ranked_map(v: &Value) -> HashMap<String, f64> {
    common::ranked_items(v).into_iter().collect()
}

// ---------------------------------------------------------------- pmixer/SASRec.pytorch state dict

const PMIXER_ITEMS: usize = 300;
const PMIXER_MAXLEN: usize = 20;

/// A random model of the layout `script` (tests/python) builds, saved as a state dict.
fn layout_checkpoint(script: &str, dir: &Path) -> PathBuf {
    let pt = dir.join(format!("{script}.epoch=1.pth"));
    python(
        &common::python(),
        script,
        &[
            "make",
            pt.to_str().unwrap(),
            "--items",
            &PMIXER_ITEMS.to_string(),
            "--d",
            "32",
            "--blocks",
            "2",
            "--heads",
            "2",
            "--maxlen",
            &PMIXER_MAXLEN.to_string(),
            "--seed",
            "7",
        ],
        dir,
    );
    pt
}

fn pmixer_checkpoint(dir: &Path) -> PathBuf {
    layout_checkpoint("pmixer_sasrec.py", dir)
}

/// A shipped mapping with its head count set (the weights cannot tell it).
fn shipped_mapping(name: &str, dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(format!("{ROOT}/mappings/{name}")).unwrap();
    let text = text.replacen("n_heads = 1 ", "n_heads = 2 ", 1);
    assert!(
        text.contains("n_heads = 2 "),
        "the shipped mapping sets n_heads"
    );
    let p = dir.join(format!("mapping-{}.toml", dir.read_dir().unwrap().count()));
    std::fs::write(&p, edit(text)).unwrap();
    p
}

fn pmixer_mapping(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    shipped_mapping("pmixer-sasrec.toml", dir, edit)
}

/// Imports a random model of `script`'s layout with the shipped `mapping`, checks the manifest
/// with `check`, and compares its scores with the PyTorch model's on histories of every length
/// from `min_len` (shorter than the window, exactly it, longer: truncated).
fn state_dict_scores_as_pytorch(
    script: &str,
    mapping: &str,
    min_len: usize,
    check: impl Fn(&Value),
) {
    let tmp = tempfile::tempdir().unwrap();
    let pt = layout_checkpoint(script, tmp.path());
    let mapping = shipped_mapping(mapping, tmp.path(), |t| t);
    let out = tmp.path().join("models/imported");
    let o = seqserve(
        &[
            "import",
            "state-dict",
            "--checkpoint",
            pt.to_str().unwrap(),
            "--mapping",
            mapping.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    common::assert_ran(&o);
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    let a = &m["architecture"];
    assert_eq!(
        (
            a["n_items"].as_u64(),
            a["d_model"].as_u64(),
            a["n_layers"].as_u64()
        ),
        (Some(PMIXER_ITEMS as u64), Some(32), Some(2))
    );
    assert_eq!(
        (a["max_len"].as_u64(), a["ffn_dim"].as_u64()),
        (Some(20), Some(32))
    );
    assert_eq!(a["activation"], "relu");
    assert_eq!(a["head"], "none");
    assert_eq!(m["imported"]["from"], "state_dict");
    assert_eq!(
        m["imported"]["checkpoint_sha256"].as_str().unwrap().len(),
        64
    );
    check(a);

    let mut rng = common::Lcg(11);
    let histories: Vec<Vec<i64>> = (0..60)
        .map(|q| {
            let len = [0, 1, PMIXER_MAXLEN, PMIXER_MAXLEN + 7][q % 4]
                .max(rng.next(30) as usize * (q % 2))
                .max(min_len);
            (0..len)
                .map(|_| 1 + rng.next(PMIXER_ITEMS as u64) as i64)
                .collect()
        })
        .collect();
    let hist_file = tmp.path().join("histories.json");
    std::fs::write(&hist_file, json!({ "histories": histories }).to_string()).unwrap();
    let scores_file = tmp.path().join("scores.json");
    python(
        &common::python(),
        script,
        &[
            "score",
            pt.to_str().unwrap(),
            hist_file.to_str().unwrap(),
            scores_file.to_str().unwrap(),
            "--heads",
            "2",
        ],
        tmp.path(),
    );
    let theirs: Value =
        serde_json::from_str(&std::fs::read_to_string(&scores_file).unwrap()).unwrap();

    // Scored here in one padded batch, by the model directory as `serve` loads it.
    let model = seqserve::model::Model::load(&out, tch::Device::Cpu).unwrap();
    let queries: Vec<seqserve::model::Query> = histories
        .iter()
        .map(|h| {
            let events: Vec<_> = h
                .iter()
                .map(|i| seqserve::model::HistoryEvent {
                    item: i.to_string(),
                    behaviour: None,
                })
                .collect();
            model.prepare(&events, &Default::default()).unwrap().query
        })
        .collect();
    let ours = model.score(&queries.iter().collect::<Vec<_>>());
    let (mut worst, mut exact) = (0f64, 0);
    for (row, their) in ours.iter().zip(theirs["scores"].as_array().unwrap()) {
        let mine: HashMap<String, f64> = row
            .iter()
            .enumerate()
            .map(|(j, s)| (model.catalogue.id_of(j + 1).to_string(), *s as f64))
            .collect();
        let their: Vec<(String, f64)> = their
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(j, s)| ((j + 1).to_string(), s.as_f64().unwrap()))
            .collect();
        let (w, same, ties_only) = compare(&mine, &their, 1e-4);
        worst = worst.max(w);
        exact += same as usize;
        assert!(ties_only, "top-10 differs beyond ties");
    }
    eprintln!(
        "{script}: max |seqserve - pytorch| = {worst:e} over {} histories × {PMIXER_ITEMS} items; identical top-10 for {exact}",
        histories.len()
    );
    assert!(worst <= 1e-4, "max |Δ| {worst}");
}

#[test]
fn a_pmixer_state_dict_scores_as_its_pytorch_model_does() {
    state_dict_scores_as_pytorch("pmixer_sasrec.py", "pmixer-sasrec.toml", 0, |a| {
        assert_eq!(a["norm"], "pre");
        assert_eq!(a["positions"], "from_newest");
        assert_eq!(a["padding"], "attended");
    });
}

/// The SASRec+ reference's own code (antklen/sasrec-bert4rec-recsys23): SASRec's original blocks
/// (`norm: sasrec`), right-padded batches read at the last real item. An empty history is left
/// out: that code gives it the last LayerNorm of a zero vector (see the mapping).
#[test]
fn a_sasrec_plus_state_dict_scores_as_its_pytorch_model_does() {
    state_dict_scores_as_pytorch("sasrec_plus.py", "sasrec-plus.toml", 1, |a| {
        assert_eq!(a["norm"], "sasrec");
        assert_eq!(a["positions"], "from_oldest");
        assert_eq!(a["padding"], "masked");
    });
}

/// The checkpoint reader runs in a scratch directory of its own; paths the user gives relative to
/// where they stand must still be read from there.
#[test]
fn paths_relative_to_the_working_directory_are_read_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let pt = pmixer_checkpoint(tmp.path());
    let mapping = pmixer_mapping(tmp.path(), |t| t);
    let items: String = (1..=PMIXER_ITEMS).map(|i| format!("sku-{i}\n")).collect();
    std::fs::write(tmp.path().join("items.txt"), items).unwrap();
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_seqserve"))
        .args(["import", "state-dict", "--checkpoint", &name(&pt)])
        .args(["--mapping", &name(&mapping), "--items", "items.txt"])
        .args(["--out", "models/relative"])
        .current_dir(tmp.path())
        .env("SEQSERVE_LOG", "warn")
        .output()
        .expect("run seqserve");
    common::assert_ran(&o);
    let model = seqserve::model::Model::load(&tmp.path().join("models/relative"), tch::Device::Cpu)
        .unwrap();
    assert_eq!(
        model.catalogue.id_of(PMIXER_ITEMS),
        format!("sku-{PMIXER_ITEMS}")
    );
}

#[test]
fn bad_state_dicts_and_mappings_are_refused_with_their_error_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let pt = pmixer_checkpoint(tmp.path());
    let mapping = pmixer_mapping(tmp.path(), |t| t);
    let out = tmp.path().join("models/bad");
    let py = common::python();
    let edited = |name: &str, args: &[&str]| {
        let p = tmp.path().join(name);
        let mut a = vec!["edit", pt.to_str().unwrap(), p.to_str().unwrap()];
        a.extend_from_slice(args);
        python(&py, "pmixer_sasrec.py", &a, tmp.path());
        p
    };
    let import = |ckpt: &Path, mapping: &Path| -> Vec<String> {
        [
            "import",
            "state-dict",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--mapping",
            mapping.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let refused = |args: Vec<String>, needles: &[&str]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&a, &[], &out, needles)
    };

    let extra = edited("extra.pt", &["--add", "item_bias"]);
    refused(
        import(&extra, &mapping),
        &["unexpected keys (1)", "item_bias"],
    );
    let missing = edited(
        "missing.pt",
        &[
            "--drop",
            "attention_layers.1.out_proj.bias",
            "--drop",
            "last_layernorm.weight",
        ],
    );
    let e = refused(import(&missing, &mapping), &["missing keys (2)"]);
    assert!(
        e.contains("attention_layers.1.out_proj.bias (for blocks.1.attn.o.bias)")
            && e.contains("last_layernorm.weight (for final_ln.weight)"),
        "{e}"
    );
    let narrow = edited("narrow.pt", &["--narrow", "forward_layers.1.conv1.weight"]);
    refused(
        import(&narrow, &mapping),
        &["shape mismatches (1)", "blocks.1.ffn.fc1.weight (from forward_layers.1.conv1.weight): expected [32, 32], found [32, 16]"],
    );
    // Several problems at once are all listed.
    let both = edited(
        "both.pt",
        &["--add", "user_emb.weight", "--drop", "pos_emb.weight"],
    );
    refused(
        import(&both, &mapping),
        &[
            "missing keys (1)",
            "pos_emb.weight",
            "unexpected keys (1)",
            "user_emb.weight",
        ],
    );

    let swish = pmixer_mapping(tmp.path(), |t| {
        t.replace("activation = \"relu\"", "activation = \"swish\"")
    });
    refused(import(&pt, &swish), &["unknown activation \"swish\""]);
    let no_arch = pmixer_mapping(tmp.path(), |t| {
        t.replace("[architecture]", "[architectures]")
    });
    refused(import(&pt, &no_arch), &["unknown section"]);
    // A pre-LN mapping without its final LayerNorm: the architecture needs it.
    let no_final = pmixer_mapping(tmp.path(), |t| {
        t.lines()
            .filter(|l| !l.starts_with("\"final_ln"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    refused(
        import(&pt, &no_final),
        &["unexpected keys (2)", "last_layernorm.weight"],
    );

    let bytes = std::fs::read(&pt).unwrap();
    let truncated = tmp.path().join("truncated.pt");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    refused(
        import(&truncated, &mapping),
        &["not a readable PyTorch checkpoint"],
    );
    let empty = tmp.path().join("empty.pt");
    std::fs::write(&empty, b"").unwrap();
    refused(
        import(&empty, &mapping),
        &["not a readable PyTorch checkpoint"],
    );

    // A pickle that would run a command: refused by name, and the command never ran.
    let evil = tmp.path().join("evil.pt");
    let marker = tmp.path().join("ran");
    python(
        &py,
        "pmixer_sasrec.py",
        &["evil", evil.to_str().unwrap(), marker.to_str().unwrap()],
        tmp.path(),
    );
    refused(import(&evil, &mapping), &["refused to unpickle", "system"]);
    assert!(!marker.exists(), "unpickling ran the file's command");

    // A version no request could name.
    let mut odd = import(&pt, &mapping);
    odd.extend(["--version".into(), "../2".into()]);
    refused(odd, &["version \"../2\" is not a valid name"]);

    // An existing output is kept unless --force.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep"), "x").unwrap();
    let o = seqserve(
        &import(&pt, &mapping)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists; pass --force"));
    assert!(out.join("keep").exists());
    let mut forced = import(&pt, &mapping);
    forced.push("--force".into());
    common::assert_ran(&seqserve(
        &forced.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    ));
    assert!(!out.join("keep").exists() && out.join("model.safetensors").exists());
}

// ---------------------------------------------------------------- RecBole SASRec

/// Users of the Beauty slice the RecBole model is trained on.
const SLICE_USERS: usize = 1500;

struct Trained {
    dir: tempfile::TempDir,
    recbole: PathBuf,
    checkpoint: PathBuf,
    dataset_dir: PathBuf,
    /// The slice as a sequence log (the lines of Beauty.txt it holds).
    log: PathBuf,
    /// RecBole's own test metrics of the checkpoint.
    test: Value,
}

/// A RecBole SASRec trained for 2 epochs on the first users of Beauty: once per test binary.
fn trained() -> Option<&'static Trained> {
    static T: OnceLock<Option<Trained>> = OnceLock::new();
    T.get_or_init(|| {
        let beauty = common::shared_data("amazon_s3rec/Beauty.txt")?;
        let tools = Command::new("bash")
            .arg(format!("{ROOT}/scripts/ops-tools.sh"))
            .arg("recbole")
            .output()
            .unwrap();
        if !tools.status.success() {
            eprintln!(
                "SKIP: the RecBole venv could not be created (scripts/ops-tools.sh recbole): {}",
                String::from_utf8_lossy(&tools.stderr)
            );
            return None;
        }
        let recbole = PathBuf::from(String::from_utf8_lossy(&tools.stdout).trim()).join("python");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("beauty-slice.txt");
        let text = std::fs::read_to_string(&beauty).unwrap();
        let lines: Vec<&str> = text.lines().take(SLICE_USERS).collect();
        std::fs::write(&log, lines.join("\n") + "\n").unwrap();
        let data = dir.path().join("data");
        python(
            &recbole,
            "recbole_tool.py",
            &[
                "atomic",
                log.to_str().unwrap(),
                data.to_str().unwrap(),
                "beautyslice",
            ],
            dir.path(),
        );
        let t0 = std::time::Instant::now();
        let out = python(
            &recbole,
            "recbole_tool.py",
            &[
                "train",
                data.to_str().unwrap(),
                "beautyslice",
                dir.path().join("saved").to_str().unwrap(),
                "--set",
                "epochs=2",
                "--set",
                "MAX_ITEM_LIST_LENGTH=20",
                "--set",
                "hidden_size=32",
                "--set",
                "inner_size=64",
                "--set",
                "learning_rate=0.003",
                // RecBole's default batch of 2048 gives these ~9,000 training sequences five
                // updates an epoch: a model that has learned next to nothing (HR@10 0.0027) makes
                // a weak check of evaluate's agreement. 256 gives eight times as many.
                "--set",
                "train_batch_size=256",
            ],
            dir.path(),
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!(
            "RecBole SASRec, 2 epochs on {SLICE_USERS} users: {:.0} s, {v}",
            t0.elapsed().as_secs_f64()
        );
        Some(Trained {
            checkpoint: dir.path().join(v["checkpoint"].as_str().unwrap()),
            dataset_dir: data.join("beautyslice"),
            test: v["test"].clone(),
            recbole,
            log,
            dir,
        })
    })
    .as_ref()
}

fn recbole_env(t: &Trained) -> [(&'static str, String); 1] {
    [("SEQSERVE_RECBOLE_PYTHON", t.recbole.display().to_string())]
}

#[test]
fn a_recbole_sasrec_scores_as_recbole_does_through_the_cli_and_http() {
    let Some(t) = trained() else { return };
    let env = recbole_env(t);
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Served from a directory of its own (the server helper serves a TempDir): --force replaces it.
    let served = tempfile::tempdir().unwrap();
    let o = seqserve(
        &[
            "import",
            "recbole",
            "--checkpoint",
            t.checkpoint.to_str().unwrap(),
            "--dataset-dir",
            t.dataset_dir.to_str().unwrap(),
            "--out",
            served.path().to_str().unwrap(),
            "--force",
        ],
        &envs,
    );
    common::assert_ran(&o);
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(served.path().join("model.json")).unwrap())
            .unwrap();
    let a = &m["architecture"];
    assert_eq!(
        (a["norm"].as_str(), a["embedding_norm"].as_bool()),
        (Some("post"), Some(true))
    );
    assert_eq!(
        (a["positions"].as_str(), a["head"].as_str()),
        (Some("from_oldest"), Some("none"))
    );
    assert_eq!(
        (a["activation"].as_str(), a["layer_norm_eps"].as_f64()),
        (Some("gelu"), Some(1e-12))
    );
    assert_eq!(
        (a["max_len"].as_u64(), a["d_model"].as_u64()),
        (Some(20), Some(32))
    );
    assert_eq!(m["imported"]["from"], "recbole");
    assert_eq!(m["imported"]["source_config"]["model"], "SASRec");
    let n_items = a["n_items"].as_u64().unwrap() as usize;

    // 200 users spread over the slice, each with the history RecBole's test phase gives it (all
    // but the last item, the most recent MAX_ITEM_LIST_LENGTH of them read).
    let text = std::fs::read_to_string(&t.log).unwrap();
    let histories: Vec<Vec<String>> = text
        .lines()
        .step_by(SLICE_USERS / 200)
        .take(200)
        .map(|l| {
            let items: Vec<String> = l.split_whitespace().skip(1).map(String::from).collect();
            items[..items.len() - 1].to_vec()
        })
        .collect();
    assert_eq!(histories.len(), 200);
    assert!(
        histories.iter().any(|h| h.len() > 20),
        "some histories are truncated"
    );
    let hist_file = t.dir.path().join("histories.json");
    std::fs::write(&hist_file, json!({ "histories": histories }).to_string()).unwrap();
    let scores_file = t.dir.path().join("recbole-scores.json");
    python(
        &t.recbole,
        "recbole_tool.py",
        &[
            "score",
            t.checkpoint.to_str().unwrap(),
            hist_file.to_str().unwrap(),
            scores_file.to_str().unwrap(),
            "--dataset-dir",
            t.dataset_dir.to_str().unwrap(),
        ],
        t.dir.path(),
    );
    let rb: Value = serde_json::from_str(&std::fs::read_to_string(&scores_file).unwrap()).unwrap();
    let tokens: Vec<&str> = rb["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), n_items);
    let theirs: Vec<Vec<(String, f64)>> = rb["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            tokens
                .iter()
                .zip(row.as_array().unwrap())
                .map(|(t, s)| (t.to_string(), s.as_f64().unwrap()))
                .collect()
        })
        .collect();

    // The CLI, one process per user (two at a time: the machine has two cores).
    let model_dir = served.path().to_str().unwrap().to_string();
    let k = n_items.to_string();
    let cli: Vec<HashMap<String, f64>> = std::thread::scope(|s| {
        let chunks: Vec<_> = histories
            .chunks(100)
            .map(|chunk| {
                let (model_dir, k) = (&model_dir, &k);
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|h| {
                            let o = seqserve(
                                &[
                                    "recommend",
                                    "--model",
                                    model_dir,
                                    "--history",
                                    &h.join(","),
                                    "--k",
                                    k,
                                    "--include-seen",
                                    "--json",
                                    "--device",
                                    "cpu",
                                    "--threads",
                                    "1",
                                ],
                                &[],
                            );
                            common::assert_ran(&o);
                            ranked_map(&serde_json::from_slice(&o.stdout).unwrap())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });

    // The server, with k up to the whole catalogue.
    let s = Server::start_env(served, &[], &[("SEQSERVE__LIMITS__MAX_K", &k)]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http: Vec<HashMap<String, f64>> = rt.block_on(async {
        let mut out = vec![];
        for h in &histories {
            let (status, v, _) = common::server::post(
                &s.url("/recommend"),
                json!({"history": h, "k": n_items, "exclude_seen": false}),
            )
            .await;
            assert_eq!(status, 200, "{v}");
            out.push(ranked_map(&v));
        }
        out
    });

    // The scale the differences are measured against.
    let (lo, hi) = theirs
        .iter()
        .flatten()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (_, s)| {
            (lo.min(*s), hi.max(*s))
        });
    eprintln!("RecBole's scores range over [{lo:.3}, {hi:.3}]");
    for (way, ours) in [("seqserve recommend", &cli), ("POST /recommend", &http)] {
        let (mut worst, mut exact) = (0f64, 0);
        for (o, r) in ours.iter().zip(&theirs) {
            let (w, same, ties_only) = compare(o, r, 1e-4);
            worst = worst.max(w);
            exact += same as usize;
            assert!(
                ties_only,
                "{way}: top-10 differs from RecBole's beyond ties"
            );
        }
        eprintln!(
            "{way}: max |seqserve - RecBole| = {worst:e} over 200 users × {n_items} items; identical top-10 for {exact}/200"
        );
        assert!(worst <= 1e-4, "{way}: max |Δ| {worst}");
    }
}

#[test]
fn seqserve_evaluate_on_the_imported_model_agrees_with_recboles_own_test_metrics() {
    let Some(t) = trained() else { return };
    let env = recbole_env(t);
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("imported");
    common::assert_ran(&seqserve(
        &[
            "import",
            "recbole",
            "--checkpoint",
            t.checkpoint.to_str().unwrap(),
            "--dataset-dir",
            t.dataset_dir.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
        ],
        &envs,
    ));
    let holdout = dir.path().join("loo.jsonl");
    common::assert_ran(&seqserve(
        &[
            "holdout",
            "--data",
            t.log.to_str().unwrap(),
            "--split",
            "leave-one-out",
            "--out",
            holdout.to_str().unwrap(),
        ],
        &[],
    ));
    // RecBole's full ranking of sequential models masks only its padding item, never the seen
    // ones: --no-mask-seen is the same protocol (README: "Importing models trained elsewhere").
    let report = dir.path().join("report.json");
    common::assert_ran(&seqserve(
        &[
            "evaluate",
            "--model",
            model.to_str().unwrap(),
            "--holdout",
            holdout.to_str().unwrap(),
            "--k",
            "10",
            "--no-mask-seen",
            "--json",
            report.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        &[],
    ));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let ours = find_metric(&r, "hr@10").expect("hr@10 in the report");
    let ndcg = find_metric(&r, "ndcg@10").expect("ndcg@10 in the report");
    let theirs = t.test["hit@10"].as_f64().unwrap();
    let their_ndcg = t.test["ndcg@10"].as_f64().unwrap();
    eprintln!("HR@10 seqserve {ours:.4} vs RecBole {theirs:.4}; NDCG@10 {ndcg:.4} vs {their_ndcg:.4} ({SLICE_USERS} users)");
    // RecBole rounds to 4 places; one user's hit is 1/1500 = 0.00067 (a tie broken the other way).
    assert!(
        (ours - theirs).abs() <= 0.0007 + 5e-5,
        "HR@10 {ours} vs RecBole's {theirs}"
    );
    assert!(
        (ndcg - their_ndcg).abs() <= 0.0007 + 5e-5,
        "NDCG@10 {ndcg} vs RecBole's {their_ndcg}"
    );
}

/// The mean of `metric` in an evaluate --json report, wherever the report nests it.
fn find_metric(v: &Value, metric: &str) -> Option<f64> {
    match v {
        Value::Object(m) => {
            if let Some(x) = m.get(metric) {
                if let Some(f) = x.as_f64() {
                    return Some(f);
                }
                if let Some(f) = x.get("mean").and_then(Value::as_f64) {
                    return Some(f);
                }
            }
            m.values().find_map(|x| find_metric(x, metric))
        }
        Value::Array(a) => a.iter().find_map(|x| find_metric(x, metric)),
        _ => None,
    }
}

#[test]
fn bad_recbole_checkpoints_are_refused_with_their_error_and_no_output() {
    let Some(t) = trained() else { return };
    let env = recbole_env(t);
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("models/bad");
    let import = |ckpt: &Path, dataset: &Path| {
        [
            "import",
            "recbole",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--dataset-dir",
            dataset.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
    };
    let refused = |args: [String; 8], needles: &[&str]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&a, &envs, &out, needles)
    };
    let variant = |what: &str| {
        let p = dir.path().join(format!("{what}.pth"));
        python(
            &t.recbole,
            "recbole_tool.py",
            &[
                "variant",
                t.checkpoint.to_str().unwrap(),
                what,
                p.to_str().unwrap(),
            ],
            dir.path(),
        );
        p
    };

    // Another RecBole model, trained for real.
    let gru = python(
        &t.recbole,
        "recbole_tool.py",
        &[
            "train",
            t.dataset_dir.parent().unwrap().to_str().unwrap(),
            "beautyslice",
            dir.path().join("saved").to_str().unwrap(),
            "--model",
            "GRU4Rec",
            "--set",
            "epochs=1",
            "--set",
            "hidden_size=32",
            "--set",
            "embedding_size=32",
        ],
        dir.path(),
    );
    let gru: Value = serde_json::from_slice(&gru.stdout).unwrap();
    let gru = dir.path().join(gru["checkpoint"].as_str().unwrap());
    refused(
        import(&gru, &t.dataset_dir),
        &["RecBole's GRU4Rec model", "SASRec only"],
    );

    refused(
        import(&variant("swish"), &t.dataset_dir),
        &["hidden_act", "unknown activation \"swish\""],
    );
    refused(
        import(&variant("extra-key"), &t.dataset_dir),
        &["unexpected keys (1)", "trm_encoder.extra.weight"],
    );

    let bytes = std::fs::read(&t.checkpoint).unwrap();
    let truncated = dir.path().join("truncated.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    refused(
        import(&truncated, &t.dataset_dir),
        &["not a readable PyTorch checkpoint"],
    );

    // Not the data it was trained on: fewer users, so fewer items.
    let other = dir.path().join("other/beautyslice");
    std::fs::create_dir_all(&other).unwrap();
    let inter = std::fs::read_to_string(t.dataset_dir.join("beautyslice.inter")).unwrap();
    let cut: Vec<&str> = inter.lines().take(inter.lines().count() / 2).collect();
    std::fs::write(other.join("beautyslice.inter"), cut.join("\n") + "\n").unwrap();
    refused(
        import(&t.checkpoint, &other),
        &["not the data it was trained on"],
    );
    refused(
        import(&t.checkpoint, &dir.path().join("nowhere")),
        &["does not exist", "--dataset-dir"],
    );

    // A plain state dict given to `import recbole`.
    let sd = dir.path().join("plain.pt");
    python(
        &common::python(),
        "pmixer_sasrec.py",
        &[
            "make",
            sd.to_str().unwrap(),
            "--items",
            "5",
            "--d",
            "4",
            "--blocks",
            "1",
            "--heads",
            "1",
            "--maxlen",
            "3",
            "--seed",
            "1",
        ],
        dir.path(),
    );
    refused(
        import(&sd, &t.dataset_dir),
        &["not a RecBole checkpoint", "import state-dict"],
    );
}
