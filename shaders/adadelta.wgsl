// Adadelta (Zeiler 2012), as torch.optim.Adadelta:
//   g = g + wd * p;   sq = rho * sq + (1 - rho) * g * g
//   delta = sqrt(acc + eps) / sqrt(sq + eps) * g;   acc = rho * acc + (1 - rho) * delta * delta
//   p = p - lr * delta

struct AdadeltaScalars {
    lr: f32,
    rho: f32,
    one_minus_rho: f32,
    eps: f32,
    weight_decay: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override MAXIMIZE: bool = false;

@group(0) @binding(1) var<storage, read_write> param: array<V>;
@group(0) @binding(2) var<storage, read> grad: array<V>;
@group(0) @binding(3) var<storage, read_write> square_avg: array<V>;
@group(0) @binding(4) var<storage, read_write> acc_delta: array<V>;

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
    let sq = s.rho * square_avg[i] + s.one_minus_rho * g * g;
    square_avg[i] = sq;
    let acc = acc_delta[i];
    let delta = sqrt(acc + s.eps) / sqrt(sq + s.eps) * g;
    acc_delta[i] = s.rho * acc + s.one_minus_rho * delta * delta;
    param[i] = p - s.lr * delta;
}
