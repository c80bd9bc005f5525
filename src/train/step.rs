//! One optimizer step's forward and backward passes over a batch, shared between data-parallel
//! threads (worker 0 is the calling thread).
use super::loss::ItemGrad;
use super::{fused_ce, loss, phases, Sample};
use crate::model::{to_tensors, Model, Query};
use loss::Loss;
use std::sync::Mutex;
use std::time::Instant;
use tch::Tensor;

/// What every step reads: the model, the loss, the training sequences and their samples.
#[derive(Clone, Copy)]
pub(super) struct Inputs<'a> {
    pub model: &'a Model,
    pub loss: &'a Loss,
    pub data: &'a [(Query, Vec<i64>)],
    pub samples: &'a [Sample],
}

/// [`Inputs`] and the step's negatives, read from the threads of one step. libtorch tensors are
/// safe to read concurrently; the one write during a backward pass, gradient accumulation into
/// the parameters, is serialised per parameter by autograd's AccumulateGrad, and the item
/// matrix's hand-made share by the step's lock.
struct Shared<'a>((Inputs<'a>, Option<&'a Tensor>));

// SAFETY: see the type's doc: the threads only read the wrapped values (parameters, the sampling
// distribution, the data, the negatives); gradients are accumulated under autograd's locks and
// the step's.
unsafe impl Sync for Shared<'_> {}

impl<'a> Shared<'a> {
    /// Through a method, so that closures capture the whole wrapper (and its `Sync`), not its field.
    fn get(&self) -> (Inputs<'a>, Option<&'a Tensor>) {
        self.0
    }
}

/// The forward and backward passes of one batch, its gradients accumulated into the parameters.
/// With several `workers`, the batch is shared between threads: each runs its part (with one
/// libtorch thread and its own dropout stream, seeded from `seed` and its index), its loss
/// weighted by its share of the batch's targets, so that the gradients the threads accumulate are
/// exactly the whole batch's mean-loss gradient. Two-thread runs are not bit-reproducible: two
/// runs of the same command were seen to differ in the last bits from the first epoch (the cause is
/// not pinned down: concurrent accumulation into shared gradients, or BLAS results that depend on
/// buffer alignment), drifting apart slightly over epochs; one-thread runs reproduce exactly.
/// Threads are started per step: workers kept for a whole epoch (a channel per worker) measured
/// the same (worker 0 still waits ~5% of an epoch for the other half: imbalance, not start-up).
/// Returns the batch's mean loss and worker 0's time split.
pub(super) fn batch_step(
    inputs: Inputs,
    workers: usize,
    batch: &[usize],
    negatives: Option<&Tensor>,
    seed: u64,
) -> (f64, phases::Worker) {
    if workers <= 1 {
        return run_part(inputs, batch, 0, seed, 0.0, negatives, None);
    }
    let total = targets(inputs, batch).max(1) as f64;
    let size = batch.len().div_ceil(workers);
    let parts: Vec<&[usize]> = batch.chunks(size).collect();
    let shared = Shared((inputs, negatives));
    // The item matrix's gradient from a fused loss is added by hand: one thread at a time.
    let lock = Mutex::new(());
    let run = |i: usize, part: &[usize]| {
        let (inputs, negatives) = shared.get();
        tch::set_num_threads(1);
        run_part(inputs, part, i, seed, total, negatives, Some(&lock))
    };
    std::thread::scope(|s| {
        let others: Vec<_> = parts
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, part)| {
                let run = &run;
                s.spawn(move || run(i, part).0)
            })
            .collect();
        let (mut sum, t) = run(0, parts[0]);
        for h in others {
            sum += h.join().unwrap_or(f64::NAN);
        }
        (sum, t)
    })
}

/// Targets in `part` of a batch.
fn targets(inputs: Inputs, part: &[usize]) -> usize {
    part.iter()
        .map(|&i| {
            let s = inputs.samples[i];
            inputs.data[s.seq].1[s.first..s.end]
                .iter()
                .filter(|&&t| t > 0)
                .count()
        })
        .sum()
}

/// One worker's part of a step: its loss (weighted by its share of `total` targets; `lock` None:
/// the only worker, unweighted), the backward pass and the hand-made item gradient.
fn run_part(
    inputs: Inputs,
    part: &[usize],
    worker: usize,
    seed: u64,
    total: f64,
    negatives: Option<&Tensor>,
    lock: Option<&Mutex<()>>,
) -> (f64, phases::Worker) {
    let weight = match lock {
        Some(_) => {
            crate::model::Encoder::seed_dropout(
                seed.wrapping_add(worker as u64 * 0x2545_f491_4f6c_dd1d),
            );
            targets(inputs, part) as f64 / total
        }
        // One worker keeps the epoch's dropout stream.
        None => 1.0,
    };
    let (c, mut t) = train_step(inputs, part, negatives);
    let mut clock = Instant::now();
    let loss = if lock.is_some() {
        c.loss * weight
    } else {
        c.loss
    };
    loss.backward();
    t.backward = phases::lap(&mut clock);
    if let Some(g) = &c.item_grad {
        let _turn = lock.map(|l| l.lock().unwrap_or_else(|e| e.into_inner()));
        add_item_grad(inputs.model, g, weight);
    }
    t.item_grad = phases::lap(&mut clock);
    (loss.double_value(&[]), t)
}

/// Adds `weight · g` to the gradient of the item matrix (rows 1..=n_items of the item
/// embeddings): a fused loss's share, which autograd did not see ([`loss::Computed`]).
fn add_item_grad(model: &Model, g: &ItemGrad, weight: f64) {
    let mut grad = model.encoder.item_matrix_grad();
    let (e, _) = model.encoder.item_matrix();
    match g {
        ItemGrad::Dense(g) => {
            if grad.defined() && fused_ce::accumulate(&grad, g, weight) {
                return;
            }
            // No gradient yet (or not a plain CPU one): let autograd create and add it.
            (e * (g.to_kind(tch::Kind::Float) * weight))
                .sum(tch::Kind::Float)
                .backward();
        }
        ItemGrad::Rows { index, rows } => {
            let rows = rows * weight;
            if grad.defined() {
                // In place into the view: the rows a sampled loss read, not the whole matrix.
                let _ = grad.index_add_(0, index, &rows);
                return;
            }
            (e.index_select(0, index) * rows)
                .sum(tch::Kind::Float)
                .backward();
        }
    }
}

/// Loss of one batch, at the sampled target positions (every non-padding one, or a prefix's last),
/// and the time its parts took (batch, encoder, loss).
fn train_step(
    inputs: Inputs,
    batch: &[usize],
    negatives: Option<&Tensor>,
) -> (loss::Computed, phases::Worker) {
    let Inputs {
        model,
        loss,
        data,
        samples,
    } = inputs;
    let mut t = phases::Worker::default();
    let mut clock = Instant::now();
    let batch: Vec<Sample> = batch.iter().map(|&i| samples[i]).collect();
    let queries: Vec<Query> = batch
        .iter()
        .map(|s| {
            let q = &data[s.seq].0;
            Query {
                items: q.items[..s.end].to_vec(),
                behaviours: q.behaviours.get(..s.end).unwrap_or_default().to_vec(),
                context: q.context.clone(),
            }
        })
        .collect();
    let refs: Vec<&Query> = queries.iter().collect();
    let tb = to_tensors(&refs, &model.manifest, model.device);
    let (b, w) = tb.items.size2().expect("2-d");
    // Targets aligned with the left-padded inputs (0 = no target at that column).
    let mut targets = vec![0i64; (b * w) as usize];
    for (r, s) in batch.iter().enumerate() {
        let t = &data[s.seq].1[s.first..s.end];
        let start = r * w as usize + (w as usize - t.len());
        targets[start..start + t.len()].copy_from_slice(t);
    }
    // Each batch row's user's items (item columns), when the loss leaves them out of the softmax.
    let histories: Vec<Vec<i64>> = if loss.needs_history() {
        batch
            .iter()
            .map(|s| history_columns(&data[s.seq]))
            .collect()
    } else {
        Vec::new()
    };
    let prefixes = batch.iter().all(|s| s.first + 1 == s.end);
    let history = loss_rows(&histories, &targets, w as usize, prefixes);
    let targets = Tensor::from_slice(&targets).to(model.device);
    t.batch = phases::lap(&mut clock);
    if prefixes {
        // One target per row, at the last column: the final block computes that column alone.
        let h = model.encoder.hidden_last(&tb, true).select(1, 0);
        let c = model.encoder.context_vector(&tb);
        let z = model.encoder.project(&h, c.as_ref());
        let y = targets.view([b, w]).select(1, w - 1) - 1;
        t.encoder = phases::lap(&mut clock);
        let computed = loss.compute(&model.encoder, &z, &y, negatives, &history);
        t.loss = phases::lap(&mut clock);
        return (computed, t);
    }
    let h = model.encoder.hidden(&tb, true);
    let d = h.size()[2];
    let keep = targets.gt(0).nonzero().squeeze_dim(1);
    let h_sel = h.view([-1, d]).index_select(0, &keep);
    let c = model.encoder.context_vector(&tb);
    let c_sel = c.map(|c| c.index_select(0, &keep.divide_scalar_mode(w, "floor")));
    let z = model.encoder.project(&h_sel, c_sel.as_ref());
    let y = targets.index_select(0, &keep) - 1;
    t.encoder = phases::lap(&mut clock);
    let computed = loss.compute(&model.encoder, &z, &y, negatives, &history);
    t.loss = phases::lap(&mut clock);
    (computed, t)
}

/// Each loss row's entry of `per_row` (one per batch row; empty: none): a prefix's row is its
/// batch row; otherwise the rows are the target positions of the (B, w) `targets` in row-major
/// order, as `nonzero` lists them.
fn loss_rows<'a>(
    per_row: &'a [Vec<i64>],
    targets: &[i64],
    w: usize,
    prefixes: bool,
) -> Vec<&'a [i64]> {
    if per_row.is_empty() {
        Vec::new()
    } else if prefixes {
        per_row.iter().map(Vec::as_slice).collect()
    } else {
        (0..targets.len())
            .filter(|&p| targets[p] > 0)
            .map(|p| per_row[p / w].as_slice())
            .collect()
    }
}

/// The item columns of a training sequence's items, inputs and targets (sorted, each once).
fn history_columns((query, targets): &(Query, Vec<i64>)) -> Vec<i64> {
    let mut cols: Vec<i64> = query
        .items
        .iter()
        .chain(targets)
        .filter(|&&i| i > 0)
        .map(|&i| i - 1)
        .collect();
    cols.sort_unstable();
    cols.dedup();
    cols
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_loss_row_gets_its_users_history() {
        let h = vec![vec![1, 2], vec![3]];
        // Two batch rows of width 3, targets at (0, 1), (0, 2) and (1, 2).
        let targets = [0, 5, 6, 0, 0, 7];
        let rows = loss_rows(&h, &targets, 3, false);
        assert_eq!(rows, vec![&[1i64, 2][..], &[1, 2], &[3]]);
        assert_eq!(
            loss_rows(&h, &[0, 0, 6, 0, 0, 7], 3, true),
            vec![&[1i64, 2][..], &[3]]
        );
        assert!(loss_rows(&[], &targets, 3, false).is_empty());
        let q = Query {
            items: vec![0, 4, 2, 4],
            behaviours: Vec::new(),
            context: Default::default(),
        };
        assert_eq!(history_columns(&(q, vec![0, 2, 4, 9])), vec![1, 3, 8]);
    }
}
