//! Where an evaluation's cases come from: a holdout file inside admin.holdout_dir (the name is
//! sandboxed, the file streamed with size and case limits) or cases sent inline; either way
//! resolved against each evaluated version's catalogue.
use super::error::EvalError;
use super::jobs::EvalJob;
use crate::eval::holdout::{read_cases, HoldoutCase, Provenance, Resolved};
use crate::serve::config::AdminSection;
use crate::serve::registry::Served;
use std::path::{Component, Path, PathBuf};

/// What holdout_path accepts as a name, as the OpenAPI document's pattern: '/'-separated
/// segments, none empty, `.` or `..`.
pub const HOLDOUT_NAME_PATTERN: &str =
    r"^(?:[^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+)(?:/(?:[^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+))*$";

/// The cases of one evaluation.
pub enum CaseSource {
    /// A file (resolved inside admin.holdout_dir) and the name it was asked by.
    File(PathBuf, String),
    Inline(Vec<HoldoutCase>),
}

impl CaseSource {
    /// The holdout's label in reports and metrics.
    pub fn label(&self) -> String {
        match self {
            CaseSource::File(_, name) => name.clone(),
            CaseSource::Inline(_) => "inline".to_string(),
        }
    }

    /// Exactly one of a holdout file name and inline cases, each within its limits.
    pub fn from_request(
        cfg: &AdminSection,
        holdout: Option<String>,
        cases: Option<Vec<HoldoutCase>>,
    ) -> Result<CaseSource, EvalError> {
        let max_cases = cfg.max_evaluation_cases;
        match (holdout, cases) {
            (Some(name), None) => Ok(CaseSource::File(
                holdout_path(&cfg.holdout_dir, &name)?,
                name,
            )),
            (None, Some(cases)) => {
                if cases.is_empty() {
                    return Err(EvalError::Invalid("cases must not be empty".into()));
                }
                if cases.len() > max_cases {
                    return Err(EvalError::Invalid(format!(
                        "{} cases; the limit is {max_cases} (admin.max_evaluation_cases)",
                        cases.len()
                    )));
                }
                if let Some(i) = cases.iter().position(|c| c.relevant.is_empty()) {
                    return Err(EvalError::Invalid(format!(
                        "cases[{i}]: relevant must list at least one item"
                    )));
                }
                Ok(CaseSource::Inline(cases))
            }
            _ => Err(EvalError::Invalid(
                "give exactly one of holdout (a file name in admin.holdout_dir) or cases (inline)"
                    .into(),
            )),
        }
    }

    /// The cases resolved against one version, and the holdout's provenance (files only).
    pub fn resolve(
        &self,
        cfg: &AdminSection,
        served: &Served,
        job: &EvalJob,
    ) -> Result<(Resolved, Option<Provenance>), EvalError> {
        match self {
            CaseSource::File(path, name) => stream_holdout(cfg, path, name, served, job),
            CaseSource::Inline(cases) => resolve_inline(served, cases, job).map(|r| (r, None)),
        }
    }
}

/// A holdout name must stay inside the configured directory: relative, no `..`, and no symlink
/// that leads out of it.
fn holdout_path(dir: &Path, name: &str) -> Result<PathBuf, EvalError> {
    let p = Path::new(name);
    if name
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        || p.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(EvalError::Invalid(
            "holdout must be a relative file name inside admin.holdout_dir ('..' and absolute paths are refused)".into(),
        ));
    }
    if dir.as_os_str().is_empty() {
        return Err(EvalError::HoldoutNotFound(
            "no admin.holdout_dir is configured: send the cases inline".into(),
        ));
    }
    let base = dir
        .canonicalize()
        .map_err(|e| EvalError::Internal(format!("admin.holdout_dir is unusable: {e}")))?;
    let full = base
        .join(p)
        .canonicalize()
        .map_err(|_| EvalError::HoldoutNotFound(format!("holdout file {name:?} not found")))?;
    if !full.starts_with(&base) {
        return Err(EvalError::HoldoutOutside);
    }
    Ok(full)
}

fn resolve_inline(
    served: &Served,
    cases: &[HoldoutCase],
    job: &EvalJob,
) -> Result<Resolved, EvalError> {
    let (manifest, catalogue) = (&*served.manifest, &*served.catalogue);
    let mut out = Resolved::default();
    for (i, c) in cases.iter().enumerate() {
        if i % 1024 == 0 && job.is_cancelled() {
            return Err(EvalError::Cancelled);
        }
        out.add(manifest, catalogue, c)
            .map_err(|e| EvalError::Invalid(format!("cases[{i}]: {e}")))?;
    }
    Ok(out)
}

/// Opens a holdout refusing anything but a regular file (a FIFO would block the reader forever;
/// O_NONBLOCK makes the open itself return at once), checks its size, and streams it case by case
/// into resolved cases: memory grows with the resolved cases, never with the file's text.
fn stream_holdout(
    cfg: &AdminSection,
    path: &Path,
    name: &str,
    served: &Served,
    job: &EvalJob,
) -> Result<(Resolved, Option<Provenance>), EvalError> {
    use std::os::unix::fs::OpenOptionsExt;
    let (manifest, catalogue) = (&*served.manifest, &*served.catalogue);
    let max_bytes = cfg.max_holdout_bytes;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| EvalError::Invalid(format!("cannot open holdout {name:?}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| EvalError::Invalid(format!("cannot read holdout {name:?}: {e}")))?;
    if !meta.is_file() {
        return Err(EvalError::Invalid(format!(
            "holdout {name:?} is not a regular file"
        )));
    }
    if meta.len() > max_bytes {
        return Err(EvalError::HoldoutTooLarge(format!(
            "holdout {name:?} is {} bytes; the limit is {max_bytes} (admin.max_holdout_bytes)",
            meta.len()
        )));
    }
    // Bounded even if the file grows while it is read.
    let reader = std::io::BufReader::with_capacity(
        1 << 16,
        std::io::Read::take(file, max_bytes.saturating_add(1)),
    );
    let mut out = Resolved::default();
    let source = Path::new(name);
    let summary = read_cases(reader, source, cfg.max_evaluation_cases, |line, case| {
        let fail = |message: String| {
            crate::error::DataError::Malformed(crate::error::LineError {
                path: source.to_path_buf(),
                line,
                message,
            })
        };
        if line % 1024 == 0 && job.is_cancelled() {
            return Err(fail("evaluation cancelled".into()));
        }
        out.add(manifest, catalogue, &case).map_err(fail)
    })
    .map_err(|e| EvalError::Invalid(e.to_string()))?;
    Ok((out, summary.provenance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_names_stay_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.jsonl"), "").unwrap();
        assert!(holdout_path(dir.path(), "a.jsonl").is_ok());
        assert!(holdout_path(dir.path(), "sub/b.jsonl").is_ok());
        for bad in [
            "../a.jsonl",
            "/etc/passwd",
            "sub/../a.jsonl",
            "./a.jsonl",
            "sub//b.jsonl",
        ] {
            assert!(
                matches!(holdout_path(dir.path(), bad), Err(EvalError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            holdout_path(dir.path(), "missing.jsonl"),
            Err(EvalError::HoldoutNotFound(_))
        ));
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x.jsonl"), "").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("x.jsonl"),
            dir.path().join("link.jsonl"),
        )
        .unwrap();
        assert!(matches!(
            holdout_path(dir.path(), "link.jsonl"),
            Err(EvalError::HoldoutOutside)
        ));
        assert!(matches!(
            holdout_path(Path::new(""), "a.jsonl"),
            Err(EvalError::HoldoutNotFound(_))
        ));
    }
}
