//! The leakage guard: a holdout cut from the same log as a model's training data, but by another
//! split, may hold items the model trained on as "relevant" (a leave-one-out model scored on a
//! leave-last-3 holdout of Beauty reports HR@10 0.297 instead of ~0.08). The holdout's provenance
//! (log content hash + split, written by `seqserve holdout`) is compared with the manifest's
//! training record (the same two facts, written by `seqserve train`).
use super::holdout::Provenance;
use crate::model::Manifest;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Same log, same split: the holdout's relevant items were held out of training.
    Clean,
    /// Another log: nothing to compare (a holdout of other users or another period).
    OtherLog,
    /// Same log, another split: the model may have trained on the holdout's relevant items.
    Leakage,
    /// The holdout or the model does not record its provenance (older files): not checked.
    Unchecked,
}

/// One model's verdict against one holdout, with the reason in words (shown to people).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LeakageCheck {
    pub verdict: Verdict,
    pub message: String,
    /// True when leakage was found and the caller said to go on anyway.
    pub allowed: bool,
}

impl LeakageCheck {
    pub fn is_leakage(&self) -> bool {
        self.verdict == Verdict::Leakage
    }

    /// The `leakage` label of evaluation gauges.
    pub fn label(&self) -> &'static str {
        match self.verdict {
            Verdict::Leakage => "true",
            Verdict::Unchecked => "unchecked",
            Verdict::Clean | Verdict::OtherLog => "false",
        }
    }
}

pub fn check(manifest: &Manifest, holdout: Option<&Provenance>) -> LeakageCheck {
    let verdict = |verdict, message: String| LeakageCheck {
        verdict,
        message,
        allowed: false,
    };
    let Some(h) = holdout else {
        return verdict(
            Verdict::Unchecked,
            "the holdout records no provenance (rebuild it with `seqserve holdout` to check leakage)"
                .into(),
        );
    };
    let Some(t) = &manifest.training else {
        return verdict(
            Verdict::Unchecked,
            format!("model {} has no training record", manifest.name),
        );
    };
    let Some(sha) = &t.log_sha256 else {
        return verdict(
            Verdict::Unchecked,
            format!(
                "model {} does not record its training log's hash",
                manifest.name
            ),
        );
    };
    if *sha != h.log_sha256 {
        return verdict(
            Verdict::OtherLog,
            "the holdout comes from another log than the model's training data".into(),
        );
    }
    if t.split == h.split {
        return verdict(
            Verdict::Clean,
            format!("same log, same split ({})", t.split),
        );
    }
    verdict(
        Verdict::Leakage,
        format!(
            "LEAKAGE: model {} {} was trained on this log with split {}, but the holdout was cut \
             with split {}: its relevant items may be in the model's training data, and the \
             metrics overstate quality. Build the holdout with --split {}",
            manifest.name, manifest.version, t.split, h.split, t.split
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;

    fn shipped() -> Manifest {
        Manifest::read(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/beauty-1l/model.json"
        )))
        .unwrap()
    }

    #[test]
    fn verdicts_follow_log_and_split() {
        let m = shipped();
        let t = m.training.as_ref().unwrap();
        let sha = t.log_sha256.clone().unwrap();
        assert_eq!(t.split, Split::LeaveLastN(1));
        let p = |sha: &str, split: Split| Provenance {
            log: "Beauty.txt".into(),
            log_sha256: sha.into(),
            split,
        };
        assert_eq!(check(&m, None).verdict, Verdict::Unchecked);
        assert_eq!(
            check(&m, Some(&p(&sha, Split::LeaveLastN(1)))).verdict,
            Verdict::Clean
        );
        let leak = check(&m, Some(&p(&sha, Split::LeaveLastN(3))));
        assert!(leak.is_leakage());
        assert_eq!(leak.label(), "true");
        assert!(leak.message.contains("leave-last-3") && leak.message.contains("leave-one-out"));
        assert_eq!(
            check(&m, Some(&p(&"0".repeat(64), Split::LeaveLastN(3)))).verdict,
            Verdict::OtherLog
        );
        let mut old = m.clone();
        old.training.as_mut().unwrap().log_sha256 = None;
        assert_eq!(
            check(&old, Some(&p(&sha, Split::LeaveLastN(3)))).verdict,
            Verdict::Unchecked
        );
    }
}
