//! A model repository on disk: `<root>/<name>/<version>/`, each version a model directory
//! (`model.json`, `model.safetensors`, `items.txt`). The directory names are the identity that
//! requests, routes and metrics use. Versions order numerically when both are numbers (2 < 10),
//! else as text; numbers sort before text. The newest is the greatest. Names starting with `.` are
//! ignored, so a version can be copied in under a hidden name and renamed into place when complete.
use std::cmp::Ordering;
use std::path::{Path, PathBuf};

/// A model or version name: 1–64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`. Checked
/// before any path is built from it (a name like `../x` never reaches the file system).
/// What check_name accepts, as the OpenAPI document's ECMA-262 pattern.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$";

pub fn check_name(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['.', '-'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {s:?} is not a valid name (1 to 64 of A-Z a-z 0-9 . _ -, not starting with . or -)"
        ))
    }
}

/// Version order: numeric when both parse as numbers, numbers before text, else text order.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        _ => a.cmp(b),
    }
}

#[derive(Debug, Clone)]
pub struct Repository {
    pub root: PathBuf,
}

impl Repository {
    pub fn open(root: &Path) -> Result<Repository, String> {
        if !root.is_dir() {
            return Err(format!(
                "model repository {} is not a directory",
                root.display()
            ));
        }
        Ok(Repository {
            root: root.to_path_buf(),
        })
    }

    fn subdirs(dir: &Path) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_name("name", n).is_ok())
            .collect()
    }

    /// Model names, sorted.
    pub fn models(&self) -> Vec<String> {
        let mut v: Vec<String> = Self::subdirs(&self.root)
            .into_iter()
            .filter(|n| !self.versions(n).is_empty())
            .collect();
        v.sort();
        v
    }

    /// A model's versions (directories holding a model.json), oldest first.
    pub fn versions(&self, name: &str) -> Vec<String> {
        if check_name("model", name).is_err() {
            return Vec::new();
        }
        let dir = self.root.join(name);
        let mut v: Vec<String> = Self::subdirs(&dir)
            .into_iter()
            .filter(|ver| dir.join(ver).join(super::MANIFEST_FILE).is_file())
            .collect();
        v.sort_by(|a, b| compare_versions(a, b));
        v
    }

    pub fn latest(&self, name: &str) -> Option<String> {
        self.versions(name).pop()
    }

    /// The directory of `name` at `version` (the newest when `None`), checked to exist.
    pub fn locate(&self, name: &str, version: Option<&str>) -> Result<(String, PathBuf), String> {
        check_name("model", name)?;
        let version = match version {
            Some(v) => {
                check_name("version", v)?;
                v.to_string()
            }
            None => self.latest(name).ok_or_else(|| {
                format!(
                    "no model {name:?} in the repository {} (it has: {})",
                    self.root.display(),
                    self.models().join(", ")
                )
            })?,
        };
        let dir = self.root.join(name).join(&version);
        if !dir.join(super::MANIFEST_FILE).is_file() {
            return Err(format!(
                "no version {version:?} of model {name:?} in the repository {} (it has: {})",
                self.root.display(),
                self.versions(name).join(", ")
            ));
        }
        Ok((version, dir))
    }

    /// Size and modification time of a version's files: what a poller compares to know whether
    /// a version that failed to load has changed since (and so is worth another try).
    pub fn stamp(&self, name: &str, version: &str) -> String {
        let dir = self.root.join(name).join(version);
        let mut parts = Vec::new();
        for f in [super::MANIFEST_FILE, super::WEIGHTS_FILE, super::ITEMS_FILE] {
            let m = std::fs::metadata(dir.join(f));
            let (len, t) = match m {
                Ok(m) => (
                    m.len(),
                    m.modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_nanos())
                        .unwrap_or(0),
                ),
                Err(_) => (0, 0),
            };
            parts.push(format!("{f}:{len}:{t}"));
        }
        parts.join(",")
    }
}

/// `NAME` or `NAME:VERSION` (the CLI's way to name a model in a repository).
pub fn parse_spec(spec: &str) -> Result<(String, Option<String>), String> {
    let (name, version) = match spec.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (spec, None),
    };
    check_name("model", name)?;
    if let Some(v) = version {
        check_name("version", v)?;
    }
    Ok((name.to_string(), version.map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically_then_as_text() {
        let mut v = vec!["10", "2", "b", "1", "a"];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(v, ["1", "2", "10", "a", "b"]);
    }

    #[test]
    fn names_that_could_leave_the_repository_are_refused() {
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(check_name("model", bad).is_err(), "{bad:?}");
        }
        for good in ["beauty-2l", "v1.2", "2026_12_02", "A"] {
            assert!(check_name("model", good).is_ok(), "{good:?}");
        }
        assert_eq!(parse_spec("m:3").unwrap(), ("m".into(), Some("3".into())));
        assert!(parse_spec("m:../3").is_err());
    }

    #[test]
    fn a_repository_lists_complete_versions_only() {
        let d = tempfile::tempdir().unwrap();
        for (m, v, complete) in [
            ("a", "1", true),
            ("a", "10", true),
            ("a", "2", true),
            ("a", ".3-copying", true),
            ("a", "4", false),
            ("b", "x", false),
        ] {
            let dir = d.path().join(m).join(v);
            std::fs::create_dir_all(&dir).unwrap();
            if complete {
                std::fs::write(dir.join("model.json"), "{}").unwrap();
            }
        }
        let r = Repository::open(d.path()).unwrap();
        assert_eq!(r.models(), ["a"]);
        assert_eq!(r.versions("a"), ["1", "2", "10"]);
        assert_eq!(r.locate("a", None).unwrap().0, "10");
        assert!(r.locate("a", Some("4")).unwrap_err().contains("1, 2, 10"));
        assert!(r.locate("b", None).is_err());
        assert!(r.locate("../a", None).is_err());
    }
}
