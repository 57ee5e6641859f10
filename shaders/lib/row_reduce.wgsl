// Included by kernel files (`// #include row_reduce`): the sum or the max of one value per thread
// over a workgroup of ROW_WG threads (a power of two; the including file defines the const), by a
// tree in workgroup memory, returned to every thread. Every thread must call it (it has barriers).
// The GEMV keeps its own row_sum on top of shaders/lib/wg_sums.wgsl (shaders/matmul.wgsl): that one
// reuses wg_sums' workgroup memory, which its 16 KiB budget counts, and its subgroup path.

var<workgroup> red: array<f32, ROW_WG>;

fn row_reduce(v: f32, lid: u32, take_max: bool) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = ROW_WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] = select(red[lid] + red[lid + s], max(red[lid], red[lid + s]), take_max); }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();  // red is reused by the next reduction
    return total;
}

fn row_sum(v: f32, lid: u32) -> f32 { return row_reduce(v, lid, false); }
fn row_max(v: f32, lid: u32) -> f32 { return row_reduce(v, lid, true); }
