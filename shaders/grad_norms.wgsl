// Per-tensor gradient norms of a group (`Optimizer::grad_norms`), for logging. Before this the
// host puts the element type (`V`), the gradients' accessors (`load_raw_grad`, binding 0) and
// `masked_squares(g, e, end)`: the sum of squares of the lanes of `g` (its first element `e`)
// below `end`, so that an arena's padding after a tensor never counts.
//
// `main`, one dispatch per segment: one workgroup per chunk of up to 4,096 V values of one
// tensor, its sum of squares into the chunk's slot of `partials`; the slots of a tensor are
// consecutive. `finalize`, one invocation per tensor: the sum of its slots.

struct NormChunk {
    // The partial-sum slot.
    slot: u32,
    // First and end element (in the segment's elements, not V values) of the chunk.
    first: u32,
    end: u32,
    _pad: u32,
}

struct NormRange {
    // This segment's first chunk in `chunks`, and how many it has.
    first: u32,
    count: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(1) var<storage, read> chunks: array<NormChunk>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(3) var<uniform> range: NormRange;

const NORM_THREADS: u32 = 256u;
const NORM_VALUES_PER_THREAD: u32 = 16u;

var<workgroup> norm_scratch: array<f32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let w = wg.y * nwg.x + wg.x;
    if (w >= range.count) {
        return;
    }
    let chunk = chunks[range.first + w];
    var total = 0.0;
    for (var k = 0u; k < NORM_VALUES_PER_THREAD; k++) {
        let e = chunk.first + (k * NORM_THREADS + local) * LANES;
        if (e < chunk.end) {
            total += masked_squares(load_raw_grad(e / LANES), e, chunk.end);
        }
    }
    norm_scratch[local] = total;
    workgroupBarrier();
    for (var stride = NORM_THREADS / 2u; stride > 0u; stride = stride / 2u) {
        if (local < stride) {
            norm_scratch[local] += norm_scratch[local + stride];
        }
        workgroupBarrier();
    }
    if (local == 0u) {
        partials[chunk.slot] = norm_scratch[0];
    }
}
