// Batched matrix products, `out = alpha · op(A) · op(B) + beta · D`, every matrix in one
// storage buffer (`mats`), one table entry per product; the dispatch's z is the entry. Float32
// throughout, accumulated in float32 in the order of k (the tiled kernel: per tile of 16 terms,
// then across tiles).
//
// Two kernels over the same table: `tiled`, each workgroup computing a 64×64 block of the
// output from 64×16 and 16×64 tiles of the operands staged in workgroup memory (each invocation
// 4×4 outputs in registers), and `naive`, one invocation per output reading its row and column
// from memory: the baseline the bench compares it with.

struct Product {
    // out is m×n, the inner dimension k.
    m: u32,
    n: u32,
    k: u32,
    // First elements of A, B, D and out in `mats`, all row-major.
    a: u32,
    b: u32,
    d: u32,
    out: u32,
    // A is stored k×m (read transposed) / B is stored n×k.
    a_transposed: u32,
    b_transposed: u32,
    alpha: f32,
    beta: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> products: array<Product>;
@group(0) @binding(1) var<storage, read_write> mats: array<f32>;

fn load_a(p: Product, i: u32, l: u32) -> f32 {
    if (i >= p.m || l >= p.k) {
        return 0.0;
    }
    if (p.a_transposed != 0u) {
        return mats[p.a + l * p.m + i];
    }
    return mats[p.a + i * p.k + l];
}

fn load_b(p: Product, l: u32, j: u32) -> f32 {
    if (l >= p.k || j >= p.n) {
        return 0.0;
    }
    if (p.b_transposed != 0u) {
        return mats[p.b + j * p.k + l];
    }
    return mats[p.b + l * p.n + j];
}

fn store_out(p: Product, i: u32, j: u32, sum: f32) {
    if (i >= p.m || j >= p.n) {
        return;
    }
    var value = p.alpha * sum;
    if (p.beta != 0.0) {
        value += p.beta * mats[p.d + i * p.n + j];
    }
    mats[p.out + i * p.n + j] = value;
}

const TILE: u32 = 64u;
const TILE_K: u32 = 16u;

var<workgroup> tile_a: array<f32, 1024>; // 64 rows × 16: [i * 16 + l]
var<workgroup> tile_b: array<f32, 1024>; // 16 × 64 columns: [l * 64 + j]
var<workgroup> product: Product;

@compute @workgroup_size(16, 16)
fn tiled(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    if (local == 0u) {
        product = products[wg.z];
    }
    // The same for every invocation, so the barriers below stay in uniform control flow.
    let p = workgroupUniformLoad(&product);
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    var acc: array<f32, 16>;
    // One loop over the tiles of k and nothing else: the host writes the body below with
    // every inner loop unrolled (`TILE_BODY`), because lavapipe ends a loop after 65,535
    // iterations in all (Mesa's llvmpipe counts every loop's iterations of an invocation), and
    // inner loops would count 18 times per tile.
    for (var l0 = 0u; l0 < p.k; l0 += TILE_K) {
        // TILE_BODY
    }
    // STORE_BODY
}

@compute @workgroup_size(16, 16)
fn naive(@builtin(global_invocation_id) id: vec3<u32>) {
    let p = products[id.z];
    let i = id.y;
    let j = id.x;
    if (i >= p.m || j >= p.n) {
        return;
    }
    var sum = 0.0;
    // At most 65,535 terms on lavapipe (see `tiled`): the host refuses longer ones there.
    for (var l = 0u; l < p.k; l++) {
        sum = fma(load_a(p, i, l), load_b(p, l, j), sum);
    }
    store_out(p, i, j, sum);
}
