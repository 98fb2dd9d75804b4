//! AdamW with fp32 master weights and fp32 gradient accumulation (Megatron/NeMo settings, docs/nemo.md §3,
//! §4.2): β = (0.9, 0.95), ε = 1e-5, decoupled weight decay 0.1 except on 1-D parameters and biases,
//! global-norm gradient clipping.
//!
//! The compute copy of each parameter (f32, or bf16 for mixed precision) is a candle `Var` the model reads;
//! the optimizer owns the f32 master, the moments and the f32 gradient accumulator, and writes the master
//! back into the `Var` after each step.

use crate::error::{Result, TrainError};
use crate::fused;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    pub clip_grad: f64,
    /// NeMo's distributed optimizer (ZeRO-1) when training data-parallel: each rank keeps the f32 masters and
    /// moments of its 1/DP of every parameter, the gradients are reduce-scattered and the updated weights
    /// all-gathered. Off, or with one rank: every rank keeps and updates everything.
    #[serde(default = "on")]
    pub distributed: bool,
}

fn on() -> bool {
    true
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-5,
            weight_decay: 0.1,
            clip_grad: 1.0,
            distributed: true,
        }
    }
}

/// Megatron's rule: no weight decay on 1-D tensors (norm weights, A_log, D, dt_bias, conv bias) or biases.
pub fn decays(name: &str, shape: &[usize]) -> bool {
    shape.len() > 1 && !name.ends_with(".bias")
}

/// One trained tensor.
pub struct Param {
    pub name: String,
    /// What the model computes with (f32 or bf16).
    pub var: Var,
    /// f32 master copy.
    pub master: Tensor,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// f32 gradient accumulated over micro-batches (under the distributed optimizer, between the
    /// reduce-scatter and the all-gather of a step: this rank's part of the summed gradient).
    pub grad: Tensor,
    pub decay: bool,
    /// The full accumulator while `grad` holds this rank's part (distributed optimizer, inside a step).
    full_grad: Option<Tensor>,
}

pub struct AdamW {
    pub config: AdamWConfig,
    pub params: Vec<Param>,
    /// Optimizer steps taken.
    pub step: u64,
    /// `(rank, size)` of the data-parallel group the masters and moments are split over
    /// ([`distribute`](Self::distribute)); `None`: this rank holds them whole.
    shards: Option<(usize, usize)>,
}

impl AdamW {
    /// Takes f32 masters by name; the compute copies are made in `dtype`.
    pub fn new(config: AdamWConfig, masters: Vec<(String, Tensor)>, dtype: DType) -> Result<Self> {
        let params = masters
            .into_iter()
            .map(|(name, t)| {
                let master = t.to_dtype(DType::F32)?;
                let decay = decays(&name, master.dims());
                Ok(Param {
                    var: Var::from_tensor(&master.to_dtype(dtype)?)?,
                    exp_avg: master.zeros_like()?,
                    exp_avg_sq: master.zeros_like()?,
                    grad: master.zeros_like()?,
                    master,
                    decay,
                    name,
                    full_grad: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            config,
            params,
            step: 0,
            shards: None,
        })
    }

    /// Keeps only data-parallel rank `rank`'s part of every master and moment (the distributed optimizer):
    /// the flattened parameter padded with zeros to a multiple of `size`, part `rank` of `size` equal parts.
    /// Call after [`load_state`](Self::load_state) when resuming.
    pub fn distribute(&mut self, rank: usize, size: usize) -> Result<()> {
        if self.shards.is_some() || size <= 1 {
            return Ok(());
        }
        for p in &mut self.params {
            p.master = part_of(&p.master, rank, size)?;
            p.exp_avg = part_of(&p.exp_avg, rank, size)?;
            p.exp_avg_sq = part_of(&p.exp_avg_sq, rank, size)?;
        }
        self.shards = Some((rank, size));
        Ok(())
    }

    /// True when the masters and moments are split over the data-parallel ranks.
    pub fn is_distributed(&self) -> bool {
        self.shards.is_some()
    }

    /// Distributed optimizer, before the step: sums the accumulated gradients over the data-parallel ranks,
    /// keeping this rank's part (reduce-scatter); the full accumulators wait for [`gather_params`]
    /// (Self::gather_params).
    pub fn reduce_scatter_grads(&mut self, comm: &mut dyn crate::dist::Collective) -> Result<()> {
        let Some((rank, size)) = self.shards else {
            return self.all_reduce_grads(comm);
        };
        for p in &mut self.params {
            let padded = padded_flat(&p.grad, size)?.to_vec1::<f32>()?;
            let mine = comm.reduce_scatter_sum(&padded)?;
            let part = Tensor::from_vec(mine, padded.len() / size, p.grad.device())?;
            debug_assert_eq!(part.dim(0)?, p.master.dim(0)?, "rank {rank}");
            p.full_grad = Some(std::mem::replace(&mut p.grad, part));
        }
        Ok(())
    }

    /// Distributed optimizer, after the step: every rank's updated part of each master, gathered, becomes the
    /// compute copy; the gradient accumulators are the full ones again.
    pub fn gather_params(&mut self, comm: &mut dyn crate::dist::Collective) -> Result<()> {
        if self.shards.is_none() {
            return Ok(());
        }
        for p in &mut self.params {
            let full = gather_full(&p.master, p.var.as_tensor(), comm)?;
            p.var.set(&full.to_dtype(p.var.dtype())?)?;
            if let Some(g) = p.full_grad.take() {
                p.grad = g;
            }
        }
        Ok(())
    }

    /// The full masters and moments (as [`masters`](Self::masters) and [`state_tensors`](Self::state_tensors)
    /// give them undistributed), gathered from every data-parallel rank: a collective call.
    #[allow(clippy::type_complexity)]
    pub fn gather_state(
        &self,
        comm: &mut dyn crate::dist::Collective,
    ) -> Result<(Vec<(String, Tensor)>, HashMap<String, Tensor>)> {
        if self.shards.is_none() {
            return Ok((self.masters(), self.state_tensors()));
        }
        let mut masters = vec![];
        let mut state = HashMap::new();
        for p in &self.params {
            let like = p.var.as_tensor();
            masters.push((p.name.clone(), gather_full(&p.master, like, comm)?));
            state.insert(
                format!("exp_avg.{}", p.name),
                gather_full(&p.exp_avg, like, comm)?,
            );
            state.insert(
                format!("exp_avg_sq.{}", p.name),
                gather_full(&p.exp_avg_sq, like, comm)?,
            );
        }
        Ok((masters, state))
    }

    /// The compute tensors by name, for building the model.
    pub fn compute_tensors(&self) -> std::collections::BTreeMap<String, Tensor> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect()
    }

    /// Adds `scale ·` the gradients of one backward pass to the f32 accumulators.
    pub fn accumulate(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        scale: f64,
    ) -> Result<()> {
        for p in &mut self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                let g = g.to_dtype(DType::F32)?;
                if fused::applies(&p.grad) && fused::applies(&g) {
                    fused::ema(&p.grad, &g, 1.0, scale, false)?;
                } else {
                    p.grad = (&p.grad + (g * scale)?)?;
                }
            }
        }
        Ok(())
    }

    /// Sums the accumulated gradients over the data-parallel ranks, one parameter at a time through the host
    /// (so the extra host memory is one parameter's, not the model's); afterwards every rank holds the same
    /// gradients, so the replicated optimizer steps agree.
    pub fn all_reduce_grads(&mut self, comm: &mut dyn crate::dist::Collective) -> Result<()> {
        self.all_reduce_grads_where(comm, |_| true)
    }

    /// [`all_reduce_grads`](Self::all_reduce_grads) of the parameters whose name `pick` accepts.
    pub fn all_reduce_grads_where(
        &mut self,
        comm: &mut dyn crate::dist::Collective,
        pick: impl Fn(&str) -> bool,
    ) -> Result<()> {
        if comm.world_size() == 1 {
            return Ok(());
        }
        for p in self.params.iter_mut().filter(|p| pick(&p.name)) {
            let mut g = p.grad.flatten_all()?.to_vec1::<f32>()?;
            comm.all_reduce_sum(&mut g)?;
            p.grad = Tensor::from_vec(g, p.grad.shape(), p.grad.device())?;
        }
        Ok(())
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        for p in &mut self.params {
            if fused::applies(&p.grad) {
                fused::fill(&p.grad, 0.0)?;
            } else {
                p.grad = p.grad.zeros_like()?;
            }
        }
        Ok(())
    }

    /// Global L2 norm of the accumulated gradients.
    pub fn grad_norm(&self) -> Result<f64> {
        Ok(self.grad_sq_sums()?.iter().sum::<f64>().sqrt())
    }

    /// Σ g² of every parameter's accumulated gradient, in parameter order (the parts of the global norm; under
    /// tensor parallelism the trainer sums the split parameters' parts over the ranks).
    pub fn grad_sq_sums(&self) -> Result<Vec<f64>> {
        let mut sq = vec![0f64; self.params.len()];
        // On a GPU the per-tensor sums stay on the device and come back in one transfer.
        let mut on_device: Vec<(usize, Tensor)> = vec![];
        for (i, p) in self.params.iter().enumerate() {
            if fused::applies(&p.grad) {
                sq[i] = fused::sum_sq(&p.grad)?;
            } else {
                on_device.push((i, p.grad.sqr()?.sum_all()?.reshape(1)?));
            }
        }
        if !on_device.is_empty() {
            let parts: Vec<&Tensor> = on_device.iter().map(|(_, t)| t).collect();
            let sums = Tensor::cat(&parts, 0)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?;
            for ((i, _), v) in on_device.iter().zip(sums) {
                sq[*i] = v;
            }
        }
        Ok(sq)
    }

    /// Clips, then applies one AdamW update with learning rate `lr`; returns the pre-clip gradient norm.
    pub fn step(&mut self, lr: f64) -> Result<f64> {
        let norm = self.grad_norm()?;
        self.step_with_norm(lr, norm)
    }

    /// [`step`](Self::step) with the global gradient norm computed by the caller (over the ranks of a split
    /// model); every rank passes the same norm, so all clip alike.
    pub fn step_with_norm(&mut self, lr: f64, norm: f64) -> Result<f64> {
        if !norm.is_finite() {
            let bad = self.params.iter().find(|p| {
                p.grad
                    .sqr()
                    .and_then(|s| s.sum_all())
                    .and_then(|s| s.to_scalar::<f32>())
                    .map_or(true, |v| !v.is_finite())
            });
            return Err(TrainError::NonFinite(format!(
                "gradient norm is {norm} (first non-finite gradient: {})",
                bad.map_or("on another tensor-parallel rank", |p| p.name.as_str())
            )));
        }
        let c = &self.config;
        let clip = if c.clip_grad > 0.0 {
            (c.clip_grad / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        self.step += 1;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for p in &mut self.params {
            let wd = if p.decay { c.weight_decay } else { 0.0 };
            let tensors = [&p.grad, &p.master, &p.exp_avg, &p.exp_avg_sq];
            if tensors.iter().all(|t| fused::applies(t)) {
                // One in-place pass per tensor, no temporaries.
                fused::ema(&p.exp_avg, &p.grad, c.beta1, (1.0 - c.beta1) * clip, false)?;
                fused::ema(
                    &p.exp_avg_sq,
                    &p.grad,
                    c.beta2,
                    (1.0 - c.beta2) * clip * clip,
                    true,
                )?;
                fused::adamw_update(
                    &p.master,
                    &p.exp_avg,
                    &p.exp_avg_sq,
                    lr,
                    wd,
                    bc1,
                    bc2,
                    c.eps,
                )?;
                if self.shards.is_none() {
                    p.var.set(&p.master.to_dtype(p.var.dtype())?)?;
                }
                continue;
            }
            let g = if clip < 1.0 {
                (&p.grad * clip)?
            } else {
                p.grad.clone()
            };
            p.exp_avg = ((&p.exp_avg * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            p.exp_avg_sq = ((&p.exp_avg_sq * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let mut master = p.master.clone();
            if p.decay && c.weight_decay > 0.0 {
                master = (master * (1.0 - lr * c.weight_decay))?;
            }
            let denom = ((p.exp_avg_sq.sqrt()? / bc2.sqrt())? + c.eps)?;
            let update = ((&p.exp_avg / denom)? * (lr / bc1))?;
            p.master = (master - update)?;
            if self.shards.is_none() {
                p.var.set(&p.master.to_dtype(p.var.dtype())?)?;
            }
        }
        Ok(norm)
    }

    /// Moments by name (`exp_avg.<name>`, `exp_avg_sq.<name>`) for checkpoints (this rank's parts under the
    /// distributed optimizer: use [`gather_state`](Self::gather_state)).
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("exp_avg.{}", p.name), p.exp_avg.clone());
            out.insert(format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.clone());
        }
        out
    }

    /// Restores moments saved by [`state_tensors`](Self::state_tensors); every parameter must be present.
    pub fn load_state(
        &mut self,
        state: &HashMap<String, Tensor>,
        step: u64,
        what: &str,
    ) -> Result<()> {
        for p in &mut self.params {
            for (key, slot) in [
                ("exp_avg", &mut p.exp_avg),
                ("exp_avg_sq", &mut p.exp_avg_sq),
            ] {
                let k = format!("{key}.{}", p.name);
                let t = state.get(&k).ok_or_else(|| {
                    TrainError::Checkpoint(format!("{what}: missing optimizer tensor `{k}`"))
                })?;
                if t.dims() != p.master.dims() {
                    return Err(TrainError::Checkpoint(format!(
                        "{what}: optimizer tensor `{k}` has shape {:?}, expected {:?}",
                        t.dims(),
                        p.master.dims()
                    )));
                }
                *slot = t.to_dtype(DType::F32)?.to_device(p.master.device())?;
            }
        }
        self.step = step;
        Ok(())
    }

    /// f32 masters by name.
    pub fn masters(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.master.clone()))
            .collect()
    }
}

/// `t` flattened and padded with zeros to a multiple of `size` elements.
fn padded_flat(t: &Tensor, size: usize) -> Result<Tensor> {
    let n = t.elem_count();
    Ok(t.flatten_all()?
        .pad_with_zeros(0, 0, n.div_ceil(size) * size - n)?)
}

/// Part `rank` of `size` of `t` flattened and padded ([`padded_flat`]), contiguous f32.
fn part_of(t: &Tensor, rank: usize, size: usize) -> Result<Tensor> {
    let flat = padded_flat(t, size)?;
    let part = flat.dim(0)? / size;
    Ok(flat
        .narrow(0, rank * part, part)?
        .to_dtype(DType::F32)?
        .contiguous()?)
}

/// Every rank's part gathered into a tensor of `like`'s shape (f32).
fn gather_full(
    part: &Tensor,
    like: &Tensor,
    comm: &mut dyn crate::dist::Collective,
) -> Result<Tensor> {
    let all = comm.all_gather(&part.to_vec1::<f32>()?)?;
    let len = all.len();
    Ok(Tensor::from_vec(all, len, like.device())?
        .narrow(0, 0, like.elem_count())?
        .reshape(like.shape())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One AdamW step by hand, in f64, for a single scalar.
    fn by_hand(p: f64, g: f64, lr: f64, wd: f64) -> f64 {
        let (b1, b2, eps) = (0.9, 0.95, 1e-5);
        let m = (1.0 - b1) * g;
        let v = (1.0 - b2) * g * g;
        let p = p * (1.0 - lr * wd);
        p - lr * (m / (1.0 - b1)) / ((v / (1.0 - b2)).sqrt() + eps)
    }

    #[test]
    fn decay_rule() {
        assert!(decays("backbone.layers.0.mixer.in_proj.weight", &[8, 4]));
        assert!(decays("backbone.layers.0.mixer.conv1d.weight", &[8, 1, 4]));
        assert!(!decays("backbone.layers.0.mixer.A_log", &[8]));
        assert!(!decays("backbone.layers.0.mixer.in_proj.bias", &[8]));
    }

    #[test]
    fn first_step_matches_the_formula_and_clipping_scales() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[0.5f32, -1.0]], &dev).unwrap();
        let b = Tensor::new(&[0.25f32], &dev).unwrap();
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            vec![("w".into(), w), ("x.bias".into(), b)],
            DType::F32,
        )
        .unwrap();
        opt.params[0].grad = Tensor::new(&[[0.1f32, -0.2]], &dev).unwrap();
        opt.params[1].grad = Tensor::new(&[0.3f32], &dev).unwrap();
        let norm = opt.step(1e-2).unwrap();
        assert!((norm - (0.01f64 + 0.04 + 0.09).sqrt()).abs() < 1e-6);
        let w1 = opt.params[0].master.to_vec2::<f32>().unwrap()[0].clone();
        let b1 = opt.params[1].master.to_vec1::<f32>().unwrap()[0];
        assert!((w1[0] as f64 - by_hand(0.5, 0.1, 1e-2, 0.1)).abs() < 1e-6);
        assert!((w1[1] as f64 - by_hand(-1.0, -0.2, 1e-2, 0.1)).abs() < 1e-6);
        assert!(
            (b1 as f64 - by_hand(0.25, 0.3, 1e-2, 0.0)).abs() < 1e-6,
            "no decay on biases"
        );
        // the compute copy follows the master
        assert_eq!(
            opt.params[0].var.as_tensor().to_vec2::<f32>().unwrap()[0],
            w1
        );

        // clipping: a gradient of norm 10 is scaled to norm 1 before the moments see it
        let w = Tensor::new(&[3f32, 4.0], &dev).unwrap();
        let mut opt = AdamW::new(
            AdamWConfig {
                weight_decay: 0.0,
                ..Default::default()
            },
            vec![("v".into(), w)],
            DType::F32,
        )
        .unwrap();
        opt.params[0].grad = Tensor::new(&[6f32, 8.0], &dev).unwrap();
        assert!((opt.step(1e-3).unwrap() - 10.0).abs() < 1e-5);
        let m = opt.params[0].exp_avg.to_vec1::<f32>().unwrap();
        assert!((m[0] - 0.1 * 0.6).abs() < 1e-6 && (m[1] - 0.1 * 0.8).abs() < 1e-6);
    }

    #[test]
    fn non_finite_gradient_is_an_error_naming_the_tensor() {
        let dev = Device::Cpu;
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            vec![
                ("good".into(), Tensor::new(&[1f32], &dev).unwrap()),
                ("bad".into(), Tensor::new(&[1f32], &dev).unwrap()),
            ],
            DType::F32,
        )
        .unwrap();
        opt.params[1].grad = Tensor::new(&[f32::NAN], &dev).unwrap();
        let e = opt.step(1e-3).unwrap_err().to_string();
        assert!(e.contains("bad"), "{e}");
    }
}
