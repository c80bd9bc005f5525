//! The README's request examples are copy-paste runnable: every code block marked
//! `<!-- tested: MODEL_DIR -->` is sent to a server on that shipped model and must answer 200
//! with items (POST /recommend, or the route a curl names, e.g. a KServe v2 infer).
mod common;
use common::server::{post, Server};
use std::path::Path;

/// (model dir, path, JSON body) of every marked example: a `json` block as it is (for
/// /recommend), or each curl of an `sh` block: its localhost:8080 path and its `-d '...'` body.
fn examples() -> Vec<(String, String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut out = Vec::new();
    for part in readme.split("<!-- tested: ").skip(1) {
        let model = part.split_whitespace().next().unwrap().to_string();
        let block = part
            .split("```")
            .nth(1)
            .expect("a code block follows the marker");
        let (lang, body) = block.split_once('\n').unwrap();
        match lang.trim() {
            "json" => out.push((model, "/recommend".to_string(), body.to_string())),
            "sh" => {
                for curl in body.split("curl ").skip(1) {
                    let path = curl
                        .split("localhost:8080")
                        .nth(1)
                        .and_then(|p| p.split_whitespace().next())
                        .expect("a curl to localhost:8080");
                    let d = curl.split("-d '").nth(1).expect("a curl with -d");
                    out.push((
                        model.clone(),
                        path.to_string(),
                        d.split('\'').next().unwrap().to_string(),
                    ));
                }
            }
            other => panic!("marked block of kind {other:?}"),
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn readme_examples_answer_200_on_their_models() {
    let ex = examples();
    let models: std::collections::BTreeSet<&str> = ex.iter().map(|(m, _, _)| m.as_str()).collect();
    assert!(
        models.len() >= 2,
        "one example per shipped model kind: {models:?}"
    );
    for model in models {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(model),
            dir.path(),
        );
        let s = Server::start_with_model(dir, &[]);
        for (_, path, body) in ex.iter().filter(|(m, _, _)| m == model) {
            let json: serde_json::Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("README example is not JSON ({e}): {body}"));
            let (st, v, _) = post(&s.url(path), json).await;
            assert_eq!(st, 200, "{model}: {path} {body} -> {v}");
            if path == "/events" {
                assert!(v["accepted"].as_u64().unwrap() > 0, "{v}");
                continue;
            }
            // /recommend's items, or a v2 answer's first output tensor.
            let items = v.get("items").unwrap_or(&v["outputs"][0]["data"]);
            assert!(!items.as_array().unwrap().is_empty(), "{v}");
        }
    }
}

/// examples/client.py (standard library only) against a real server: a recommendation, and a
/// refusal raised as SeqserveError with the server's status and code.
#[tokio::test]
async fn the_python_client_example_works() {
    let s = Server::start(&[]);
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/client.py"))
            .args([base.as_str(), "i1", "i2"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    common::assert_ran(&out);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["model"], "test");
    assert_eq!(lines[0]["items"].as_array().unwrap().len(), 5);
    assert_eq!(lines[1]["refused"], 422);
    assert_eq!(lines[1]["code"], "validation");
}
