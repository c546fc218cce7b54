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
    let sq_old = square_avg[i];
    let sq = s.alpha * sq_old + s.one_minus_alpha * g * g;
    square_avg[i] = sq;
    var avg: V;
    if (CENTERED) {
        let ga_old = grad_avg[i];
        let ga = lerp_to(ga_old, g, s.one_minus_alpha, s.alpha);
        grad_avg[i] = ga;
        // The variance sq - ga^2, updated as a variance (Welford):
        //   alpha (sq_old - ga_old^2) + alpha (1 - alpha) (g - ga_old)^2,
        // equal in exact arithmetic, without subtracting two rounded squares of the same size
        // (with alpha = 0 that difference is 0 exactly, not a rounding error whose square root
        // outweighs eps). Never below 0 in exact arithmetic: clamped against rounding.
        let d = g - ga_old;
        let variance = s.alpha * (sq_old - ga_old * ga_old) + s.alpha * s.one_minus_alpha * d * d;
        avg = sqrt(max(variance, V(0.0))) + s.eps;
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
