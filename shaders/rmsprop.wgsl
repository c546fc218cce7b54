// RMSprop (Hinton, Lecture 6e; centered variant: Graves 2013), as torch.optim.RMSprop:
//   g = g + wd * p;   sq = alpha * sq + (1 - alpha) * g * g
//   centered: ga = ga + (1 - alpha) * (g - ga);   avg = sqrt(sq - ga * ga) + eps
//   else:     avg = sqrt(sq) + eps
//   momentum: buf = mu * buf + g / avg;   p = p - lr * buf
//   else:     p = p - lr * g / avg

struct RmspropScalars {
    lr: f32,
    alpha: f32,
    one_minus_alpha: f32,
    eps: f32,
    weight_decay: f32,
    momentum: f32,
    _pad0: u32,
    _pad1: u32,
}

override CENTERED: bool = false;
override MOMENTUM: bool = false;
override MAXIMIZE: bool = false;

@group(0) @binding(1) var<storage, read_write> param: array<V>;
@group(0) @binding(2) var<storage, read> grad: array<V>;
@group(0) @binding(3) var<storage, read_write> square_avg: array<V>;
@group(0) @binding(4) var<storage, read_write> grad_avg: array<V>;
@group(0) @binding(5) var<storage, read_write> momentum_buffer: array<V>;

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
    let sq = s.alpha * square_avg[i] + s.one_minus_alpha * g * g;
    square_avg[i] = sq;
    var avg: V;
    if (CENTERED) {
        let ga = lerp_to(grad_avg[i], g, s.one_minus_alpha, s.alpha);
        grad_avg[i] = ga;
        avg = sqrt(sq - ga * ga) + s.eps;
    } else {
        avg = sqrt(sq) + s.eps;
    }
    if (MOMENTUM) {
        let buf = s.momentum * momentum_buffer[i] + g / avg;
        momentum_buffer[i] = buf;
        param[i] = p - s.lr * buf;
    } else {
        param[i] = p - s.lr * g / avg;
    }
}
