//! The scan's parallelism: the item matrix cut into one contiguous range per thread, each range
//! scanned on its own thread with one libtorch intra-op thread (shared by the f32 scan in
//! `exact.rs` and the bf16 first pass in `bf16.rs`), and the plain view of a tensor that the
//! hand-written loops read.
use tch::{Device, Kind, Tensor};

/// A contiguous CPU f32 tensor's elements, read in place (no copy: at 10M items a copy is
/// 2.5 GB and seconds). Panics on any other tensor, which would be a bug in the caller.
pub fn f32_slice(t: &Tensor) -> &[f32] {
    assert!(
        t.kind() == Kind::Float && t.device() == Device::Cpu && t.is_contiguous(),
        "f32_slice needs a contiguous CPU float tensor"
    );
    let n = t.numel();
    if n == 0 {
        return &[];
    }
    // SAFETY: checked just above: `n` f32 at the data pointer. The slice borrows `t`, which
    // keeps the storage alive, and nothing writes to it meanwhile.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) }
}

/// One thread's share of a scan: the queries and a contiguous range of the item matrix, whose
/// first row is row `offset` of the whole matrix (item index offset + 1).
pub struct RangePart {
    pub z: Tensor,
    pub emb: Tensor,
    pub bias: Tensor,
    pub offset: usize,
}

/// Cuts the item matrix `emb` (N, d) / `bias` (N) into one range per thread (at most `threads`)
/// and runs `f` on each with the queries `z`: on this thread alone when there is one range, else
/// in parallel. Results in range order.
pub fn scan_ranges<T: Send>(
    z: &Tensor,
    emb: &Tensor,
    bias: &Tensor,
    threads: usize,
    f: impl Fn(RangePart) -> T + Sync,
) -> Vec<T> {
    let n = emb.size()[0] as usize;
    let parts: Vec<RangePart> = split_ranges(n, threads)
        .into_iter()
        .map(|(lo, hi)| RangePart {
            z: z.shallow_clone(),
            emb: emb.narrow(0, lo as i64, (hi - lo) as i64),
            bias: bias.narrow(0, lo as i64, (hi - lo) as i64),
            offset: lo,
        })
        .collect();
    if parts.len() == 1 {
        parts.into_iter().map(f).collect()
    } else {
        in_parallel(parts, f)
    }
}

/// Splits 0..n into at most `threads` contiguous ranges of similar size.
fn split_ranges(n: usize, threads: usize) -> Vec<(usize, usize)> {
    let t = threads.clamp(1, n.max(1));
    (0..t).map(|i| (n * i / t, n * (i + 1) / t)).collect()
}

/// Runs `f` on each part, the first on this thread and the others on scoped threads, each with
/// one libtorch intra-op thread (the parts are the parallelism); results in order. Tensors are not
/// Sync, so each part carries its own (shallow) handles.
pub(super) fn in_parallel<C: Send, T: Send>(parts: Vec<C>, f: impl Fn(C) -> T + Sync) -> Vec<T> {
    let prev = tch::get_num_threads();
    tch::set_num_threads(1);
    let mut parts = parts.into_iter();
    let first = parts.next();
    let out = std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = parts
            .map(|p| {
                s.spawn(move || {
                    tch::set_num_threads(1);
                    let _guard = tch::no_grad_guard();
                    f(p)
                })
            })
            .collect();
        let mut out: Vec<T> = first.into_iter().map(f).collect();
        for h in handles {
            out.push(h.join().expect("scan thread"));
        }
        out
    });
    tch::set_num_threads(prev);
    out
}
