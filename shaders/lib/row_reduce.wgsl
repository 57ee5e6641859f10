// Included by kernel files (`// #include row_sum`): the sum of one value per thread over a
// 256-thread workgroup (a tree in workgroup memory), returned to every thread.

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

fn row_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();  // red is reused by the next reduction
    return total;
}
