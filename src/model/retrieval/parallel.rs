//! The scan's parallelism: the item matrix cut into one contiguous range per thread, each range
//! scanned on its own thread with one libtorch intra-op thread (shared by the f32 scan in
//! `exact.rs` and the bf16 first pass in `bf16.rs`).

/// Splits 0..n into at most `threads` contiguous ranges of similar size.
pub fn split_ranges(n: usize, threads: usize) -> Vec<(usize, usize)> {
    let t = threads.clamp(1, n.max(1));
    (0..t).map(|i| (n * i / t, n * (i + 1) / t)).collect()
}

/// Runs `f` on each part, the first on this thread and the others on scoped threads, each with
/// one libtorch intra-op thread (the parts are the parallelism); results in order. Tensors are not
/// Sync, so each part carries its own (shallow) handles.
pub fn in_parallel<C: Send, T: Send>(parts: Vec<C>, f: impl Fn(C) -> T + Sync) -> Vec<T> {
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
