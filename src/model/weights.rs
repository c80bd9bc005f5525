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
