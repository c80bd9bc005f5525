//! `model.safetensors` read without copies: the file is memory-mapped (private, copy-on-write) and
//! each tensor is a view into the mapping. On the CPU the model's variables then share those pages
//! (nothing is read until touched, and the page cache is shared between processes serving the same
//! model); on CUDA each tensor is copied once to the device. Reading the file into a buffer and
//! copying it into freshly initialised variables, as `Tensor::read_safetensors` does, held three
//! copies of the item matrix at once: 10M items × d 64 is 2.6 GB each.
use safetensors::{Dtype, SafeTensors};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A read-only view of a weights file. Tensors made from it borrow its pages: it must outlive
/// them (the model keeps it as its last field, so it is dropped after the variables).
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is never written through `Mapped` (MAP_PRIVATE: writes through a tensor go
// to the process's own copy-on-write pages) and unmapped only on drop.
unsafe impl Send for Mapped {}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: ptr/len come from a successful mmap and are unmapped once.
            unsafe {
                libc::munmap(self.ptr, self.len);
            }
        }
    }
}

impl Mapped {
    pub fn open(path: &Path) -> Result<Mapped, String> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let len = file
            .metadata()
            .map_err(|e| format!("cannot stat: {e}"))?
            .len() as usize;
        if len == 0 {
            return Err("empty file".into());
        }
        // SAFETY: a fresh private mapping of a file we opened; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("cannot map: {}", std::io::Error::last_os_error()));
        }
        Ok(Mapped { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is len bytes long and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    /// Every tensor of the file as (name, tensor) with the tensor's dtype; float32 tensors whose
    /// data is 4-byte aligned in the file are views of the mapping, others are copied.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>, String> {
        let st = SafeTensors::deserialize(self.bytes())
            .map_err(|e| format!("not a readable safetensors file: {e}"))?;
        let mut out = Vec::new();
        for (name, view) in st.tensors() {
            let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
            let data = view.data();
            let t = match view.dtype() {
                Dtype::F32 if (data.as_ptr() as usize).is_multiple_of(4) => {
                    // SAFETY: `data` lies inside the mapping (which outlives the tensor, see the
                    // type's doc), holds exactly prod(shape) float32 values (checked by
                    // safetensors) and is aligned for f32.
                    unsafe {
                        Tensor::from_blob(data.as_ptr(), &shape, &[], Kind::Float, Device::Cpu)
                    }
                }
                Dtype::F32 => Tensor::from_data_size(data, &shape, Kind::Float),
                other => {
                    return Err(format!("tensor {name}: expected float32, found {other:?}"));
                }
            };
            out.push((name, t));
        }
        Ok(out)
    }
}

/// The tensors a safetensors file declares, read from its header alone (no tensor data is read or
/// mapped): name → (dtype, shape). The header must be well-formed, each tensor's data range must
/// lie inside the file and match its shape and dtype. This is what lets a model be refused before
/// any tensor is built from a manifest that lies about its sizes.
pub fn header(
    path: &Path,
) -> Result<std::collections::BTreeMap<String, (String, Vec<i64>)>, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let file_len = f.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| {
        "not a readable safetensors file (shorter than its header length)".to_string()
    })?;
    let n = u64::from_le_bytes(len);
    // safetensors' own bound on the header (100 MB).
    if n > 100_000_000 || 8 + n > file_len {
        return Err(format!(
            "not a readable safetensors file (header of {n} bytes in a file of {file_len})"
        ));
    }
    let mut text = vec![0u8; n as usize];
    f.read_exact(&mut text)
        .map_err(|e| format!("cannot read the header: {e}"))?;
    let entries: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&text)
            .map_err(|e| format!("not a readable safetensors file: bad header: {e}"))?;
    let data_len = file_len - 8 - n;
    let mut out = std::collections::BTreeMap::new();
    for (name, v) in entries {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| format!("tensor {name}: {what} in the header");
        let dtype = v["dtype"]
            .as_str()
            .ok_or_else(|| bad("no dtype"))?
            .to_string();
        let shape: Vec<i64> = v["shape"]
            .as_array()
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_i64().filter(|&d| d >= 0))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("a bad shape"))?;
        let offsets: Vec<u64> = v["data_offsets"]
            .as_array()
            .ok_or_else(|| bad("no data_offsets"))?
            .iter()
            .map(|o| o.as_u64())
            .collect::<Option<_>>()
            .ok_or_else(|| bad("bad data_offsets"))?;
        let width: u64 = match dtype.as_str() {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        let elems = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| bad("a shape that overflows"))?;
        match offsets[..] {
            [a, b] if a <= b && b <= data_len && Some(b - a) == elems.checked_mul(width) => {}
            _ => {
                return Err(format!(
                    "tensor {name}: its data range {offsets:?} does not hold {shape:?} {dtype} inside the file (truncated or corrupt)"
                ))
            }
        }
        out.insert(name, (dtype, shape));
    }
    Ok(out)
}

/// Compares a file's header with the variables a model needs: every problem at once (missing,
/// unexpected, of the wrong shape or dtype), or Ok.
pub fn check_header(
    path: &Path,
    expected: &std::collections::BTreeMap<String, Vec<i64>>,
) -> Result<(), String> {
    let found = header(path)?;
    let mut problems = Vec::new();
    for (name, shape) in expected {
        match found.get(name) {
            None => problems.push(format!("missing tensor {name}")),
            Some((dtype, _)) if dtype != "F32" => {
                problems.push(format!("tensor {name}: expected float32, found {dtype}"))
            }
            Some((_, s)) if s != shape => problems.push(format!(
                "tensor {name}: expected shape {shape:?}, found {s:?}"
            )),
            Some(_) => {}
        }
    }
    for name in found.keys().filter(|n| !expected.contains_key(*n)) {
        problems.push(format!(
            "unexpected tensor {name} (weights do not match the manifest's architecture)"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        // The first few, and how many in all: a wrong architecture mismatches every tensor.
        let n = problems.len();
        let mut msg = problems.into_iter().take(6).collect::<Vec<_>>().join("; ");
        if n > 6 {
            msg.push_str(&format!("; and {} more", n - 6));
        }
        Err(msg)
    }
}
