//! The SASRec-style encoder: item (+ behaviour) and position embeddings (optionally LayerNorm +
//! dropout over their sum; item embeddings optionally multiplied by `item_input_scale` first), n
//! causal self-attention blocks (pre-LayerNorm, post-LayerNorm or SASRec's original code), then
//! concat(sequence representation, context) → fully connected → z, and scores z · Eᵀ + b over the
//! whole catalogue (item embeddings tied between input and output); or, with `head: none`, the
//! references' y · Eᵀ with no head and no item bias.
//!
//! Layout conventions (the PyTorch reference in tests/python mirrors them exactly):
//! * histories are LEFT-padded with item 0, so the most recent item is always the last column;
//! * positions count from the oldest item of the (truncated) history by default: position = number
//!   of real items before it. A training prefix thus gets exactly the positions that the same
//!   history gets at inference, whatever the batch is padded to. `positions: from_newest` counts
//!   real items after it instead (SASRec's right alignment: the most recent item is always 0);
//! * padding columns are zero vectors; a query attends to earlier non-padding keys and to itself (a
//!   padding query then sees only itself: no empty softmax rows, no NaN). An empty history is thus one
//!   padding column whose output is a learned constant: the cold-start representation, trained on the
//!   "predict the first item" target. With `padding: attended` (imported SASRec code) the window
//!   is instead always max_len columns and padding keys are attended to like items;
//! * the context vector is the categorical features (embedding or one-hot, manifest order) followed by
//!   the standardised numeric features (manifest order).
use super::manifest::{
    Activation, CategoricalEncoding, ContextFeature, Head, Manifest, Norm, Padding, Positions,
};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// A batch already on the model's device.
pub struct TensorBatch {
    /// (B, W) int64 item indices, left-padded with 0.
    pub items: Tensor,
    /// (B, W) int64 behaviour ids (0 = none), when the model has a behaviour vocabulary.
    pub behaviours: Option<Tensor>,
    /// (B, n_categorical) int64 category indices (0 = missing).
    pub ctx_cat: Tensor,
    /// (B, n_numeric) float standardised values.
    pub ctx_num: Tensor,
}

enum ContextEncoder {
    Embedding(Tensor),
    OneHot(i64),
}

struct Block {
    ln1: nn::LayerNorm,
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    o: nn::Linear,
    ln2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

pub struct Encoder {
    item_emb: Tensor,
    /// A variable with the linear head; zeros (not a variable, not saved) with `head: none`.
    item_bias: Tensor,
    pos_emb: Tensor,
    behaviour_emb: Option<Tensor>,
    context: Vec<ContextEncoder>,
    blocks: Vec<Block>,
    /// LayerNorm over the summed input embeddings (architecture.embedding_norm).
    emb_ln: Option<nn::LayerNorm>,
    norm: Norm,
    /// Pre-LN and SASRec's blocks: post-LN blocks end normalised already.
    final_ln: Option<nn::LayerNorm>,
    /// architecture.item_input_scale (1: no multiplication).
    item_scale: f64,
    head: Option<nn::Linear>,
    activation: Activation,
    positions: Positions,
    /// `padding: attended`: the window every history is left-padded to (max_len), its padding
    /// columns attended to. None: padding is masked and batches are as wide as their longest history.
    attended_window: Option<i64>,
    d: i64,
    heads: i64,
    dropout: f64,
    n_items: i64,
}

/// Every variable the encoder of `m` has, with its shape, computed from the manifest alone (no
/// tensor is built): what a weights file must hold, checked against its header before loading.
/// A unit test holds it equal to the variables [`Encoder::build`] creates.
pub fn expected_shapes(m: &Manifest) -> std::collections::BTreeMap<String, Vec<i64>> {
    let a = &m.architecture;
    let (d, n, ffn) = (a.d_model as i64, a.n_items as i64, a.ffn_dim as i64);
    let mut out = std::collections::BTreeMap::new();
    let mut put = |name: String, shape: Vec<i64>| {
        out.insert(name, shape);
    };
    let norm = |put: &mut dyn FnMut(String, Vec<i64>), name: &str| {
        put(format!("{name}.weight"), vec![d]);
        put(format!("{name}.bias"), vec![d]);
    };
    let linear = |put: &mut dyn FnMut(String, Vec<i64>), name: &str, i: i64, o: i64| {
        put(format!("{name}.weight"), vec![o, i]);
        put(format!("{name}.bias"), vec![o]);
    };
    put("item_emb".into(), vec![n + 1, d]);
    if a.head == Head::Linear {
        put("item_bias".into(), vec![n + 1]);
        linear(&mut put, "head", d + m.context_width() as i64, d);
    }
    put("pos_emb".into(), vec![a.max_len as i64, d]);
    if !m.behaviours.is_empty() {
        put(
            "behaviour_emb".into(),
            vec![m.behaviours.len() as i64 + 1, d],
        );
    }
    for f in &m.context {
        if let ContextFeature::Categorical {
            name,
            values,
            encoding: CategoricalEncoding::Embedding,
            dim,
        } = f
        {
            put(
                format!("context.{name}"),
                vec![values.len() as i64 + 1, *dim as i64],
            );
        }
    }
    for i in 0..a.n_layers {
        let b = format!("blocks.{i}");
        norm(&mut put, &format!("{b}.ln1"));
        norm(&mut put, &format!("{b}.ln2"));
        for x in ["q", "k", "v", "o"] {
            linear(&mut put, &format!("{b}.attn.{x}"), d, d);
        }
        linear(&mut put, &format!("{b}.ffn.fc1"), d, ffn);
        linear(&mut put, &format!("{b}.ffn.fc2"), ffn, d);
    }
    if a.embedding_norm {
        norm(&mut put, "emb_ln");
    }
    if a.norm != Norm::Post {
        norm(&mut put, "final_ln");
    }
    out
}

impl Encoder {
    /// Creates the variables under `p` (randomly initialised; load weights afterwards to restore).
    pub fn new(p: &nn::Path, m: &Manifest) -> Encoder {
        Encoder::build(p, m, true)
    }

    /// With `init_items` false, `item_emb` and `item_bias` are created with no rows: the loader
    /// replaces their data (`set_data`) with the stored matrix, which for large catalogues is most
    /// of the model, instead of first filling an N × d tensor with random numbers.
    pub fn build(p: &nn::Path, m: &Manifest, init_items: bool) -> Encoder {
        let a = &m.architecture;
        let d = a.d_model as i64;
        let n = a.n_items as i64;
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let rows = if init_items { n + 1 } else { 0 };
        let item_emb = p.var("item_emb", &[rows, d], init);
        let item_bias = match a.head {
            Head::Linear => p.zeros("item_bias", &[rows]),
            Head::None => Tensor::zeros([n + 1], (tch::Kind::Float, p.device())),
        };
        let pos_emb = p.var("pos_emb", &[a.max_len as i64, d], init);
        let behaviour_emb = (!m.behaviours.is_empty())
            .then(|| p.var("behaviour_emb", &[m.behaviours.len() as i64 + 1, d], init));
        let cp = p / "context";
        let context = m
            .context
            .iter()
            .filter_map(|f| match f {
                ContextFeature::Categorical {
                    name,
                    values,
                    encoding: CategoricalEncoding::Embedding,
                    dim,
                } => Some(ContextEncoder::Embedding(cp.var(
                    name,
                    &[values.len() as i64 + 1, *dim as i64],
                    init,
                ))),
                ContextFeature::Categorical { values, .. } => {
                    Some(ContextEncoder::OneHot(values.len() as i64 + 1))
                }
                ContextFeature::Numeric { .. } => None,
            })
            .collect();
        let ln_cfg = nn::LayerNormConfig {
            eps: a.layer_norm_eps,
            ..Default::default()
        };
        let ln = |p: nn::Path| nn::layer_norm(p, vec![d], ln_cfg);
        let lin = |p: nn::Path, i: i64, o: i64| nn::linear(p, i, o, Default::default());
        let blocks = (0..a.n_layers)
            .map(|i| {
                let bp = p / "blocks" / i;
                Block {
                    ln1: ln(&bp / "ln1"),
                    q: lin(&bp / "attn" / "q", d, d),
                    k: lin(&bp / "attn" / "k", d, d),
                    v: lin(&bp / "attn" / "v", d, d),
                    o: lin(&bp / "attn" / "o", d, d),
                    ln2: ln(&bp / "ln2"),
                    fc1: lin(&bp / "ffn" / "fc1", d, a.ffn_dim as i64),
                    fc2: lin(&bp / "ffn" / "fc2", a.ffn_dim as i64, d),
                }
            })
            .collect();
        Encoder {
            item_emb,
            item_bias,
            pos_emb,
            behaviour_emb,
            context,
            blocks,
            emb_ln: a.embedding_norm.then(|| ln(p / "emb_ln")),
            norm: a.norm,
            final_ln: (a.norm != Norm::Post).then(|| ln(p / "final_ln")),
            item_scale: a.item_input_scale,
            head: (a.head == Head::Linear)
                .then(|| lin(p / "head", d + m.context_width() as i64, d)),
            activation: a.activation,
            positions: a.positions,
            attended_window: (a.padding == Padding::Attended).then_some(a.max_len as i64),
            d,
            heads: a.n_heads as i64,
            dropout: a.dropout,
            n_items: n,
        }
    }

    /// Hidden states at every position, (B, W, d).
    pub fn hidden(&self, b: &TensorBatch, train: bool) -> Tensor {
        self.encode(b, train, false)
    }

    /// Hidden state at the most recent position only, (B, 1, d).
    pub fn hidden_last(&self, b: &TensorBatch, train: bool) -> Tensor {
        self.encode(b, train, true)
    }

    /// With `last_only`, the final block computes only the most recent position (its keys and values
    /// still come from every position): inference needs nothing else, and this skips most of the last
    /// block's work. Returns (B, W, d), or (B, 1, d) with `last_only`.
    fn encode(&self, b: &TensorBatch, train: bool, last_only: bool) -> Tensor {
        let (bsz, given) = b.items.size2().expect("items is (B, W)");
        // Attended padding: the padding columns a history gets in a max_len window take part, so
        // the batch is widened to exactly that window (and cut back to its own columns at the end).
        let widen = |t: &Tensor| match self.attended_window {
            Some(window) if window > given => Tensor::cat(
                &[
                    Tensor::zeros([bsz, window - given], (t.kind(), t.device())),
                    t.shallow_clone(),
                ],
                1,
            ),
            _ => t.shallow_clone(),
        };
        let items = widen(&b.items);
        let behaviours = b.behaviours.as_ref().map(widen);
        let w = items.size()[1];
        let dev = items.device();
        let nonpad = items.ne(0);
        // Padding columns get a position too; they are zeroed below.
        let pos = self.position_ids(&nonpad);
        let mut x = self.scaled(Tensor::embedding(&self.item_emb, &items, 0, false, false))
            + Tensor::embedding(&self.pos_emb, &pos, -1, false, false);
        if let (Some(emb), Some(beh)) = (&self.behaviour_emb, &behaviours) {
            x += Tensor::embedding(emb, beh, 0, false, false);
        }
        let keep = nonpad.unsqueeze(-1).to_kind(x.kind());
        if let Some(ln) = &self.emb_ln {
            x = ln.forward(&x);
        }
        // Padding columns stay zero vectors (after the LayerNorm, which would give them its bias).
        let mut x = self.drop(&(x * keep), train);

        let mask = if self.attended_window.is_some() {
            Tensor::ones([w, w], (Kind::Bool, dev))
                .tril(0)
                .view([1, 1, w, w])
        } else {
            masked_causal(&nonpad)
        };
        let dh = self.d / self.heads;
        let n_blocks = self.blocks.len();
        for (i, blk) in self.blocks.iter().enumerate() {
            let (h, kv, base) = self.attention_inputs(blk, &x);
            // Queries: every position, or only the last one in the final block.
            let (xq, hq, mq, wq) = if last_only && i + 1 == n_blocks {
                (
                    base.narrow(1, w - 1, 1),
                    h.narrow(1, w - 1, 1),
                    mask.narrow(2, w - 1, 1),
                    1,
                )
            } else {
                (base, h, mask.shallow_clone(), w)
            };
            let split = |t: Tensor, len: i64| t.view([bsz, len, self.heads, dh]).transpose(1, 2);
            let q = split(blk.q.forward(&hq), wq);
            let k = split(blk.k.forward(&kv), w);
            let v = split(blk.v.forward(&kv), w);
            let a = self
                .attend(&q, &k, &v, &mq, train)
                .transpose(1, 2)
                .contiguous()
                .view([bsz, wq, self.d]);
            let xr = xq + self.drop(&blk.o.forward(&a), train);
            x = self.feed_forward(blk, &xr, train);
        }
        let x = match &self.final_ln {
            Some(ln) => ln.forward(&x),
            None => x,
        };
        if last_only || w == given {
            x
        } else {
            x.narrow(1, w - given, given)
        }
    }

    /// Inference of the most recent position, (B, d), with the per-position work (LayerNorms, Q/K/V
    /// and output projections, FFN: most of the FLOPs) done on the real positions only, packed as
    /// (T, d) rows. A batch is as wide as its longest history, so with histories of mixed lengths
    /// most of a padded batch is padding (real Beauty histories: 8 items on average against a batch
    /// width of 50). Attention alone sees the padded (B, W) layout: keys and values are scattered
    /// into zeros, which the mask hides from every real query exactly as in [`Encoder::encode`]
    /// (padding keys are never attended), so the answer is the padded path's. An empty history
    /// keeps its one padding column as a token (the cold-start representation). Not for attended
    /// padding (its padding columns take part).
    fn encode_packed(&self, b: &TensorBatch) -> Tensor {
        let (bsz, w) = b.items.size2().expect("items is (B, W)");
        let dev = b.items.device();
        let nonpad = b.items.ne(0);
        let pos = self.position_ids(&nonpad);
        // Tokens: the real positions, and the last column of every row (real unless the history
        // is empty). Row-major order, so each row's last token is at its running count - 1.
        let last_col = Tensor::zeros([bsz, w], (Kind::Bool, dev));
        let _ = last_col.narrow(1, w - 1, 1).fill_(1);
        let tok = nonpad.logical_or(&last_col);
        let flat = tok.view([-1]).nonzero().squeeze_dim(1);
        let last = tok
            .sum_dim_intlist(1, false, Kind::Int64)
            .cumsum(0, Kind::Int64)
            - 1;
        let pack = |t: &Tensor| t.reshape([bsz * w, -1]).index_select(0, &flat);
        let d = self.d;
        // Packed rows (T, width) back into the padded layout (B, W, width), padding rows zero.
        let unpack = |t: &Tensor| {
            let width = t.size()[1];
            Tensor::zeros([bsz * w, width], (t.kind(), dev))
                .index_copy(0, &flat, t)
                .view([bsz, w, width])
        };
        let mut x =
            self.scaled(Tensor::embedding(
                &self.item_emb,
                &pack(&b.items).squeeze_dim(1),
                0,
                false,
                false,
            )) + Tensor::embedding(&self.pos_emb, &pack(&pos).squeeze_dim(1), -1, false, false);
        if let (Some(emb), Some(beh)) = (&self.behaviour_emb, &b.behaviours) {
            x += Tensor::embedding(emb, &pack(beh).squeeze_dim(1), 0, false, false);
        }
        if let Some(ln) = &self.emb_ln {
            x = ln.forward(&x);
        }
        // The padding column kept for an empty history is a zero vector, as in the padded path.
        let x_keep = pack(&nonpad).to_kind(x.kind());
        let mut x = x * x_keep;

        let mask = masked_causal(&nonpad);
        let dh = d / self.heads;
        let n_blocks = self.blocks.len();
        for (i, blk) in self.blocks.iter().enumerate() {
            let (h, kv, base) = self.attention_inputs(blk, &x);
            let heads = |t: Tensor, len: i64| t.view([bsz, len, self.heads, dh]).transpose(1, 2);
            let final_block = i + 1 == n_blocks;
            // The projections that read the same rows run as one product and are unpacked once
            // (K and V always; Q too where it reads them, as outside SASRec's norm placement).
            let fuse_q = !final_block && self.norm != Norm::Sasrec;
            let layers: &[&nn::Linear] = if fuse_q {
                &[&blk.q, &blk.k, &blk.v]
            } else {
                &[&blk.k, &blk.v]
            };
            let projected = unpack(&project_fused(layers, &kv));
            let part = |j: i64| heads(projected.narrow(2, j * d, d), w);
            // Q, when fused, is the first part; K and V follow it.
            let off = fuse_q as i64;
            let (k, v) = (part(off), part(off + 1));
            let (xq, q, mq, wq) = if final_block {
                let hq = h.index_select(0, &last);
                (
                    base.index_select(0, &last),
                    heads(blk.q.forward(&hq), 1),
                    mask.narrow(2, w - 1, 1),
                    1,
                )
            } else {
                let q = if fuse_q {
                    part(0)
                } else {
                    heads(unpack(&blk.q.forward(&h)), w)
                };
                (base, q, mask.shallow_clone(), w)
            };
            let a = self
                .attend(&q, &k, &v, &mq, false)
                .transpose(1, 2)
                .contiguous()
                .view([bsz * wq, d]);
            let a = if final_block {
                a
            } else {
                a.index_select(0, &flat)
            };
            let xr = xq + blk.o.forward(&a);
            x = self.feed_forward(blk, &xr, false);
        }
        // A model without blocks: the last token of each row is its representation.
        if n_blocks == 0 {
            x = x.index_select(0, &last);
        }
        match &self.final_ln {
            Some(ln) => ln.forward(&x),
            None => x,
        }
    }

    /// Position of each column (B, W): real items before it (from the oldest), or after it (from
    /// the newest); padding columns get a clamped value and are zeroed or dropped by the callers.
    fn position_ids(&self, nonpad: &Tensor) -> Tensor {
        let before = nonpad.cumsum(1, Kind::Int64);
        match self.positions {
            Positions::FromOldest => (before - 1).clamp_min(0),
            Positions::FromNewest => {
                (nonpad.sum_dim_intlist(1, true, Kind::Int64) - before).clamp_min(0)
            }
        }
    }

    /// The item embeddings as they enter the encoder (SASRec's code multiplies them by sqrt(d)).
    fn scaled(&self, items: Tensor) -> Tensor {
        if self.item_scale == 1.0 {
            items
        } else {
            items * self.item_scale
        }
    }

    /// A block's attention inputs from its stream `x`: (what the queries are projected from, what
    /// the keys and values are projected from, the residual the attention output is added to).
    /// Pre-LN: (LN1(x), LN1(x), x); post-LN: (x, x, x), normalising after the sum; SASRec's code:
    /// (LN1(x), x, LN1(x)).
    fn attention_inputs(&self, blk: &Block, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        match self.norm {
            Norm::Post => (x.shallow_clone(), x.shallow_clone(), x.shallow_clone()),
            Norm::Pre => {
                let h = blk.ln1.forward(x);
                (h.shallow_clone(), h, x.shallow_clone())
            }
            Norm::Sasrec => {
                let h = blk.ln1.forward(x);
                (h.shallow_clone(), x.shallow_clone(), h)
            }
        }
    }

    /// The rest of a block after the attention residual `xr`: the FFN and its residual, with
    /// the LayerNorms where the norm placement puts them.
    fn feed_forward(&self, blk: &Block, xr: &Tensor, train: bool) -> Tensor {
        let ffn = |t: &Tensor| {
            let h = blk.fc1.forward(t);
            let h = match self.activation {
                Activation::Gelu => h.gelu("none"),
                Activation::Relu => h.relu(),
            };
            self.drop(&blk.fc2.forward(&h), train)
        };
        match self.norm {
            Norm::Post => {
                let xr = blk.ln1.forward(xr);
                blk.ln2.forward(&(&xr + ffn(&xr)))
            }
            Norm::Pre => xr + ffn(&blk.ln2.forward(xr)),
            Norm::Sasrec => {
                let u = blk.ln2.forward(xr);
                &u + ffn(&u)
            }
        }
    }

    /// Seeds the training dropout masks: from now on they come from this generator, which is
    /// several times faster than libtorch's CPU Bernoulli sampler (on this machine's AMD CPU it
    /// takes a serial path; it was a third of the training forward pass). Same distribution:
    /// each unit kept with probability 1 - dropout, scaled by 1 / (1 - dropout).
    ///
    /// The generator belongs to the calling thread, so that several threads can train on parts of
    /// one batch at once, each with its own reproducible stream.
    pub fn seed_dropout(seed: u64) {
        DROPOUT_RNG.with(|r| *r.borrow_mut() = Some(DropoutRng::new(seed)));
    }

    /// Dropout (training only): this thread's seeded generator on the CPU, libtorch's otherwise.
    fn drop(&self, x: &Tensor, train: bool) -> Tensor {
        if !train || self.dropout <= 0.0 {
            return x.shallow_clone();
        }
        DROPOUT_RNG.with(|r| match r.borrow_mut().as_mut() {
            Some(r) if x.device() == tch::Device::Cpu && x.kind() == Kind::Float => {
                x * r.mask(&x.size(), self.dropout)
            }
            _ => x.dropout(self.dropout, train),
        })
    }

    /// Multi-head attention of queries `q` (B, h, Wq, dh) over keys and values (B, h, W, dh)
    /// where `mask` allows. Inference uses libtorch's fused kernel; training writes it out so
    /// that the attention weights' dropout comes from [`Encoder::drop`]'s generator too (the
    /// fused kernel draws from libtorch's global generator, shared by every thread).
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        if !train || self.dropout <= 0.0 {
            return Tensor::scaled_dot_product_attention(
                q,
                k,
                v,
                Some(mask),
                0.0,
                false,
                None,
                false,
            );
        }
        let dh = q.size()[3] as f64;
        let scores = q.matmul(&k.transpose(-2, -1)) * (1.0 / dh.sqrt());
        let weights = scores
            .masked_fill(&mask.logical_not(), f64::NEG_INFINITY)
            .softmax(-1, Kind::Float);
        self.drop(&weights, train).matmul(v)
    }

    /// The context vector (B, context_width); None when the model has no context features.
    pub fn context_vector(&self, b: &TensorBatch) -> Option<Tensor> {
        let mut parts: Vec<Tensor> = self
            .context
            .iter()
            .enumerate()
            .map(|(i, enc)| {
                let col = b.ctx_cat.select(1, i as i64);
                match enc {
                    ContextEncoder::Embedding(w) => Tensor::embedding(w, &col, -1, false, false),
                    ContextEncoder::OneHot(n) => col.one_hot(*n).to_kind(Kind::Float),
                }
            })
            .collect();
        if b.ctx_num.size()[1] > 0 {
            parts.push(b.ctx_num.shallow_clone());
        }
        (!parts.is_empty()).then(|| Tensor::cat(&parts, 1))
    }

    /// z = FC(concat(h, c)) for rows of sequence representations `h` (M, d) and context `c` (M, cw);
    /// z = h without a head (such a model has no context).
    pub fn project(&self, h: &Tensor, c: Option<&Tensor>) -> Tensor {
        match (&self.head, c) {
            (Some(head), Some(c)) => head.forward(&Tensor::cat(&[h, c], 1)),
            (Some(head), None) => head.forward(h),
            (None, _) => h.shallow_clone(),
        }
    }

    /// Whether scores carry a per-item bias (the linear head) or are y · Eᵀ alone.
    pub fn has_item_bias(&self) -> bool {
        self.head.is_some()
    }

    /// Scores (M, n_items) over the whole catalogue: column j is item index j + 1.
    pub fn logits(&self, z: &Tensor) -> Tensor {
        self.logits_in(z, Kind::Float)
    }

    /// [`Encoder::logits`] with the product's operands in `kind` (training's bf16 option), the
    /// scores returned in f32.
    pub fn logits_in(&self, z: &Tensor, kind: Kind) -> Tensor {
        let e = self.item_emb.narrow(0, 1, self.n_items).to_kind(kind);
        let scores = z.to_kind(kind).matmul(&e.tr()).to_kind(Kind::Float);
        if self.has_item_bias() {
            scores + self.item_bias.narrow(0, 1, self.n_items)
        } else {
            scores
        }
    }

    /// The accumulated gradient of the item matrix (rows 1..=n_items of the item embeddings), a
    /// view into the embeddings' gradient; undefined before a backward pass has reached them.
    pub fn item_matrix_grad(&self) -> Tensor {
        let g = self.item_emb.grad();
        if g.defined() {
            g.narrow(0, 1, self.n_items)
        } else {
            g
        }
    }

    /// Embedding rows and biases of item columns `cols` (column j is item index j + 1), for a loss
    /// that scores only some items.
    pub fn item_rows(&self, cols: &Tensor) -> (Tensor, Tensor) {
        let idx = cols + 1;
        (
            self.item_emb.index_select(0, &idx),
            self.item_bias.index_select(0, &idx),
        )
    }

    /// The query vector z of each history's most recent position, (B, d): what retrieval scores
    /// against the item matrix (scores = z · Eᵀ + b).
    pub fn query_vectors(&self, b: &TensorBatch) -> Tensor {
        let y = match self.attended_window {
            None => self.encode_packed(b),
            Some(_) => self.encode(b, false, true).select(1, 0),
        };
        let c = self.context_vector(b);
        self.project(&y, c.as_ref())
    }

    /// The output item matrix without the padding row: embeddings (n_items, d) and biases
    /// (n_items); row j is item index j + 1. Views, not copies.
    pub fn item_matrix(&self) -> (Tensor, Tensor) {
        (
            self.item_emb.narrow(0, 1, self.n_items),
            self.item_bias.narrow(0, 1, self.n_items),
        )
    }
}

/// `x` through several linear layers of the same input width as one product: their weights (and
/// biases) stacked, outputs side by side in the order given. One GEMM packs `x` once where
/// separate ones pack it each (MKL copies the activations per call: ~10% of serving's CPU at d 64).
fn project_fused(layers: &[&nn::Linear], x: &Tensor) -> Tensor {
    let ws: Vec<&Tensor> = layers.iter().map(|l| &l.ws).collect();
    let bs: Option<Vec<&Tensor>> = layers.iter().map(|l| l.bs.as_ref()).collect();
    let b = bs.map(|bs| Tensor::cat(&bs, 0));
    x.linear(&Tensor::cat(&ws, 0), b.as_ref())
}

/// The attention mask of masked padding (B, 1, W, W): a query attends to earlier non-padding
/// keys and to itself (a padding query sees only itself: no empty softmax row).
fn masked_causal(nonpad: &Tensor) -> Tensor {
    let (w, dev) = (nonpad.size()[1], nonpad.device());
    let causal = Tensor::ones([w, w], (Kind::Bool, dev)).tril(0);
    let eye = Tensor::eye(w, (Kind::Bool, dev));
    causal
        .unsqueeze(0)
        .logical_and(&nonpad.unsqueeze(1))
        .logical_or(&eye.unsqueeze(0))
        .unsqueeze(1)
}

thread_local! {
    /// This thread's dropout generator (see [`Encoder::seed_dropout`]).
    static DROPOUT_RNG: std::cell::RefCell<Option<DropoutRng>> = const { std::cell::RefCell::new(None) };
}

/// A small, fast generator for dropout masks: per mask, one wyrand step (one multiply per 64
/// random bits) gives two 32-bit keys, and element i's 16-bit draw is a hash of i under them
/// (lowbias32: two multiplies), branch-free so that it vectorises (it was a serial loop, 3% of a
/// training epoch). Statistical quality is ample for dropout; speed is the point.
pub struct DropoutRng(u64);

impl DropoutRng {
    pub fn new(seed: u64) -> DropoutRng {
        DropoutRng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = (self.0 as u128).wrapping_mul((self.0 ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) ^ t) as u64
    }

    /// A float mask of `shape`: 1 / (1 - p) with probability 1 - p, else 0 (p to 1/65536).
    pub fn mask(&mut self, shape: &[i64], p: f64) -> Tensor {
        let n = shape.iter().product::<i64>() as usize;
        let draw = Draw {
            keys: self.next(),
            threshold: (p * 65536.0).round() as u32,
            keep: (1.0 / (1.0 - p)) as f32,
        };
        let out = Tensor::empty(shape, (Kind::Float, tch::Device::Cpu));
        // SAFETY: a new contiguous f32 CPU tensor of n elements, referenced nowhere else yet.
        let buf = unsafe { std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, n) };
        fill_mask(buf, draw);
        out
    }
}

/// One mask's draw: its keys, the 16-bit threshold below which a unit is dropped, the kept value.
#[derive(Clone, Copy)]
struct Draw {
    keys: u64,
    threshold: u32,
    keep: f32,
}

crate::simd::multiversion! {
    /// Fills a dropout mask on the widest vector unit the CPU has (integer arithmetic: the mask is
    /// the same on every CPU).
    fn fill_mask(buf: &mut [f32], d: Draw) = fill_mask_body;
}

#[inline(always)]
fn fill_mask_body(buf: &mut [f32], d: Draw) {
    let (k1, k2) = ((d.keys >> 32) as u32, d.keys as u32);
    for (i, v) in buf.iter_mut().enumerate() {
        let mut x = (i as u32).wrapping_add(k2);
        x ^= x >> 16;
        x = x.wrapping_mul(0x7feb_352d);
        x ^= x >> 15;
        x = x.wrapping_mul(0x846c_a68b);
        x ^= x >> 16;
        x ^= k1;
        *v = if (x & 0xffff) >= d.threshold {
            d.keep
        } else {
            0.0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The masks keep each unit with probability 1 − p, scaled by 1 / (1 − p), and successive masks
    /// (and generators of other seeds) are not the same draws.
    #[test]
    fn dropout_masks_keep_one_minus_p() {
        for &p in &[0.1, 0.5, 0.2] {
            let mut r = DropoutRng::new(42);
            let n = 1 << 18;
            let a = r.mask(&[n], p);
            let b = r.mask(&[n], p);
            let keep = (1.0 / (1.0 - p)) as f32;
            for m in [&a, &b] {
                let v = Vec::<f32>::try_from(m).unwrap();
                assert!(v.iter().all(|&x| x == 0.0 || x == keep));
                let kept = v.iter().filter(|&&x| x > 0.0).count() as f64 / n as f64;
                // 6 standard deviations of a binomial share at n = 2^18.
                let sd = (p * (1.0 - p) / n as f64).sqrt();
                assert!((kept - (1.0 - p)).abs() < 6.0 * sd, "p {p}: kept {kept}");
            }
            let same =
                |x: &Tensor, y: &Tensor| x.eq_tensor(y).to_kind(Kind::Float).mean(Kind::Float);
            // Two independent masks agree on p² + (1 − p)² of the units.
            let agree = same(&a, &b).double_value(&[]);
            let want = p * p + (1.0 - p) * (1.0 - p);
            assert!(
                (agree - want).abs() < 0.01,
                "p {p}: successive masks agree on {agree}"
            );
            let c = DropoutRng::new(43).mask(&[n], p);
            let agree = same(&a, &c).double_value(&[]);
            assert!(
                (agree - want).abs() < 0.01,
                "p {p}: other seed agrees on {agree}"
            );
            // Neighbouring units are not correlated either.
            let v = Vec::<f32>::try_from(&a).unwrap();
            let pairs = v
                .windows(2)
                .filter(|w| (w[0] > 0.0) == (w[1] > 0.0))
                .count();
            let agree = pairs as f64 / (n - 1) as f64;
            assert!(
                (agree - want).abs() < 0.01,
                "p {p}: neighbours agree on {agree}"
            );
        }
    }
}
