// Adamax (Kingma & Ba 2015, section 7.1), as torch.optim.Adamax:
//   g = g + wd * p;   m = m + (1 - b1) * (g - m);   u = max(b2 * u, |g| + eps)
//   p = p - lr / (1 - b1^t) * m / u

struct AdamaxScalars {
    one_minus_beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    lr: f32,
    beta1: f32,
    _pad1: u32,
    _pad2: u32,
}

override MAXIMIZE: bool = false;

@group(0) @binding(1) var<storage, read_write> param: array<V>;
@group(0) @binding(2) var<storage, read> grad: array<V>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<V>;
@group(0) @binding(4) var<storage, read_write> exp_inf: array<V>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wg, nwg, lid);
    if (i >= arrayLength(&param) || control.skip != 0u) {
        return;
    }
    var g = load_grad(i);
    if (MAXIMIZE) {
        g = -g;
    }
    let p = param[i];
    if (s.weight_decay != 0.0) {
        g = g + s.weight_decay * p;
    }
    let m = lerp_to(exp_avg[i], g, s.one_minus_beta1, s.beta1);
    exp_avg[i] = m;
    let u = max(s.beta2 * exp_inf[i], abs(g) + s.eps);
    exp_inf[i] = u;
    // Step factor x = 1 / (1 - beta1^t).
    param[i] = p - s.lr * control.factors.x * m / u;
}
