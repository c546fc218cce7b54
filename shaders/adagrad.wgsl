// Adagrad (Duchi, Hazan & Singer 2011), as torch.optim.Adagrad:
//   g = g + wd * p;   sum = sum + g * g;   p = p - clr * g / (sqrt(sum) + eps)
// with clr = lr / (1 + (step - 1) * lr_decay), from the device's step count.

struct AdagradScalars {
    lr: f32,
    lr_decay: f32,
    weight_decay: f32,
    eps: f32,
}

override MAXIMIZE: bool = false;

@group(0) @binding(1) var<storage, read_write> param: array<V>;
@group(0) @binding(2) var<storage, read> grad: array<V>;
@group(0) @binding(3) var<storage, read_write> sum: array<V>;

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
    let acc = sum[i] + g * g;
    sum[i] = acc;
    let clr = s.lr / (1.0 + f32(control.step - 1u) * s.lr_decay);
    param[i] = p - clr * g / (sqrt(acc) + s.eps);
}
