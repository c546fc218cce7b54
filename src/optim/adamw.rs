//! AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay
//! Regularization", ICLR 2019), as `torch.optim.AdamW`: the parameter shrinks by
//! `lr * weight_decay` of itself before the Adam step, instead of the decay entering the
//! gradient. It shares Adam's hyperparameters (default `weight_decay` 0.01), kernel and
//! reference ([`AdamConfig`](super::adam::AdamConfig) with decoupled weight decay).

/// `torch.optim.AdamW`'s arguments and defaults (`betas` as `beta1`, `beta2`).
pub type AdamW = super::adam::AdamConfig<super::Decoupled>;
