//! The Python half of an import: only what Python alone can do (read a pickle, ask RecBole for its
//! ids). The scripts are compiled into the binary and written into the import's scratch directory,
//! so the command works from any directory; they answer one JSON object on stdout, and an expected
//! failure is `{"ok": false, "error": ...}`, worded there and reported here without a traceback.
use super::ImportError;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

pub struct Script {
    pub file: &'static str,
    pub source: &'static str,
    /// What it does, for messages ("the checkpoint reader").
    pub role: &'static str,
}

pub const READ_CHECKPOINT: Script = Script {
    file: "read_checkpoint.py",
    source: include_str!("read_checkpoint.py"),
    role: "the checkpoint reader",
};

pub const RECBOLE_ITEMS: Script = Script {
    file: "recbole_items.py",
    source: include_str!("recbole_items.py"),
    role: "RecBole's dataset loader",
};

/// The Python with torch and safetensors: `SEQSERVE_PYTHON` (scripts/env.sh sets it to the
/// project's venv), else `python3` on the PATH.
pub fn project_python() -> PathBuf {
    std::env::var_os("SEQSERVE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// The Python of RecBole's venv: `SEQSERVE_RECBOLE_PYTHON`, else the one scripts/ops-tools.sh
/// recbole makes in the shared cache.
pub fn recbole_python() -> Result<PathBuf, ImportError> {
    if let Some(p) = std::env::var_os("SEQSERVE_RECBOLE_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let cache = std::env::var_os("SEQSERVE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("seqserve")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/seqserve")))
        .unwrap_or_default();
    let p = cache.join("venv-recbole/bin/python");
    if p.is_file() {
        Ok(p)
    } else {
        Err(ImportError::Setup(format!(
            "rebuilding RecBole's item ids needs RecBole, and {} does not exist: run \
             scripts/ops-tools.sh recbole (which makes it) or set SEQSERVE_RECBOLE_PYTHON",
            p.display()
        )))
    }
}

/// Runs `script` with `python` in `workdir` and returns its JSON answer when it says `"ok": true`.
pub fn run(
    python: &Path,
    script: &Script,
    args: &[&OsStr],
    workdir: &Path,
) -> Result<serde_json::Value, ImportError> {
    let path = workdir.join(script.file);
    std::fs::write(&path, script.source)
        .map_err(|e| ImportError::Setup(format!("cannot write {}: {e}", path.display())))?;
    let out = std::process::Command::new(python)
        .arg(&path)
        .args(args)
        .current_dir(workdir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .map_err(|e| {
            ImportError::Setup(format!(
                "cannot run {} ({}): {e}; set SEQSERVE_PYTHON to a Python with torch and \
                 safetensors (scripts/env.sh does)",
                python.display(),
                script.role
            ))
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let answer = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    match answer {
        Some(v) if out.status.success() && v["ok"] == true => Ok(v),
        Some(v) if out.status.success() && v["error"].is_string() => Err(ImportError::Input(
            v["error"].as_str().unwrap_or_default().to_string(),
        )),
        _ => {
            // A crash here is a bug or a broken environment, not bad input: say where to look.
            tracing::debug!(%stderr, "{} failed", script.role);
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output");
            Err(ImportError::Setup(format!(
                "{} failed ({}, with {}): {last} (SEQSERVE_LOG=debug shows its whole output)",
                script.role,
                out.status,
                python.display()
            )))
        }
    }
}
