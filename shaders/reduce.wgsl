// A sum over one workgroup, shared by the norm and finalize kernels.

var<workgroup> sums: array<f32, WORKGROUP_SIZE>;

// Every invocation of the workgroup calls this with its value; all get the total.
fn workgroup_sum(lid: u32, value: f32) -> f32 {
    sums[lid] = value;
    workgroupBarrier();
    for (var half = WORKGROUP_SIZE / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            sums[lid] = sums[lid] + sums[lid + half];
        }
        workgroupBarrier();
    }
    return sums[0];
}
