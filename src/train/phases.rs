//! Where an epoch's training time goes (`train --phase-times`): the parts of a step that run on
//! one thread (zeroing the gradients, the optimizer update) against the data-parallel part, and
//! inside that part worker 0's own split (building the batch, the encoder's forward pass, the
//! loss with its fused backward products, autograd's backward pass, adding the item matrix's
//! hand-made gradient). Wall-clock seconds summed over the epoch's steps; worker 0 runs on the
//! calling thread, and the other workers do the same work on their share of each batch.
use std::fmt;
use std::ops::AddAssign;
use std::time::Instant;

/// One worker's share of a step, in seconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Worker {
    pub batch: f64,
    pub encoder: f64,
    pub loss: f64,
    pub backward: f64,
    pub item_grad: f64,
}

impl AddAssign for Worker {
    fn add_assign(&mut self, o: Worker) {
        self.batch += o.batch;
        self.encoder += o.encoder;
        self.loss += o.loss;
        self.backward += o.backward;
        self.item_grad += o.item_grad;
    }
}

/// An epoch's steps, in seconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Epoch {
    pub zero_grad: f64,
    /// The data-parallel part: from handing out the batch to the last worker's return.
    pub parallel: f64,
    pub update: f64,
    pub worker0: Worker,
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.worker0;
        let busy = w.batch + w.encoder + w.loss + w.backward + w.item_grad;
        write!(
            f,
            "phases (s): zero-grad {:.2}  parallel {:.2} [worker 0: batch {:.2}  encoder {:.2}  \
             loss {:.2}  backward {:.2}  item-grad {:.2}  waiting {:.2}]  update {:.2}",
            self.zero_grad,
            self.parallel,
            w.batch,
            w.encoder,
            w.loss,
            w.backward,
            w.item_grad,
            (self.parallel - busy).max(0.0),
            self.update
        )
    }
}

/// Seconds since `t`, and `t` moved to now: consecutive phases with one clock.
pub fn lap(t: &mut Instant) -> f64 {
    let now = Instant::now();
    let s = (now - *t).as_secs_f64();
    *t = now;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worker 0's waiting is the parallel part less its own phases (never negative), and the
    /// line names every phase with its seconds.
    #[test]
    fn the_line_names_each_phase_and_the_wait() {
        let mut w = Worker {
            batch: 0.25,
            encoder: 2.0,
            loss: 3.0,
            backward: 4.0,
            item_grad: 0.25,
        };
        w += Worker {
            encoder: 0.5,
            ..Default::default()
        };
        let e = Epoch {
            zero_grad: 0.125,
            parallel: 10.5,
            update: 0.375,
            worker0: w,
        };
        assert_eq!(
            e.to_string(),
            "phases (s): zero-grad 0.12  parallel 10.50 [worker 0: batch 0.25  encoder 2.50  \
             loss 3.00  backward 4.00  item-grad 0.25  waiting 0.50]  update 0.38"
        );
        let over = Epoch { parallel: 1.0, ..e };
        assert!(over.to_string().contains("waiting 0.00]"));
    }
}
