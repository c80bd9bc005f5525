//! Content hashes of logs: what lets a holdout and a model say whether they came from the same log
//! (the leakage guard, `eval::leakage`), whatever the file is called on either machine.
use crate::error::DataError;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// SHA-256 of a file's bytes, as lowercase hex. Streamed: logs can be large.
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hash_is_the_content_not_the_name() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.txt"), d.path().join("b.txt"));
        std::fs::write(&a, "u1 1 2 3\n").unwrap();
        std::fs::write(&b, "u1 1 2 3\n").unwrap();
        let ha = super::sha256_file(&a).unwrap();
        assert_eq!(ha, super::sha256_file(&b).unwrap());
        assert_eq!(ha.len(), 64);
        std::fs::write(&b, "u1 1 2 4\n").unwrap();
        assert_ne!(ha, super::sha256_file(&b).unwrap());
        assert!(super::sha256_file(&d.path().join("missing")).is_err());
    }
}
