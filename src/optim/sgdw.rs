//! SGDW: SGD with momentum and decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight
//! Decay Regularization", ICLR 2019, Algorithm 1). The momentum accumulates learning-rate-scaled
//! gradients and the decay is applied to the parameter itself:
//!
//! ```text
//! m_t = momentum * m_{t-1} + lr * g_t          (m_1 = lr * g_1)
//! p_t = p_{t-1} - m_t - lr * weight_decay * p_{t-1}
//! ```
//!
//! PyTorch has no SGDW; the fixture's `sgdw` cases follow this formula in float64. Dampening,
//! Nesterov and maximize behave as in SGD, whose hyperparameters, kernel and reference it shares
//! ([`SgdConfig`](super::sgd::SgdConfig) with decoupled weight decay).

/// SGDW's hyperparameters: SGD's names, with `weight_decay` decoupled.
pub type Sgdw = super::sgd::SgdConfig<super::Decoupled>;
