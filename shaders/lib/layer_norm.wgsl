// Included by kernel files (`// #include layer_norm`): the statistics of a layer norm over one row
// of n values spread over the workgroup (thread lid takes i = lid, lid + ROW_WG, ...), in f32 and in
// two passes, the mean and then the centred variance (as torch: a row with a large mean keeps its
// precision). WGSL has no function arguments that are functions, so the including file defines
//   const ROW_WG: u32 and fn row_sum(v: f32, lid: u32) -> f32  (shaders/lib/row_reduce.wgsl, or its own)
//   fn ln_load(row: u32, i: u32) -> f32    element i, first read (it may stage the value)
//   fn ln_reload(row: u32, i: u32) -> f32  element i again, read by the thread that loaded it
// `row` is passed through untouched (each kernel's row index or offset). The kernel then writes
// ln_norm(value, stats) * gamma + beta itself, in its last pass.

// (mean, 1 / sqrt(variance + eps)). inverseSqrt, not 1.0 / sqrt: WGSL bounds inverseSqrt by 2 ULP
// and derives sqrt from it, so 1.0 / sqrt rounds twice more (and costs a division).
fn ln_stats(row: u32, n: u32, eps: f32, lid: u32) -> vec2<f32> {
    var s = 0.0;
    for (var i = lid; i < n; i += ROW_WG) { s += ln_load(row, i); }
    let mean = row_sum(s, lid) / f32(n);
    var q = 0.0;
    for (var i = lid; i < n; i += ROW_WG) { let d = ln_reload(row, i) - mean; q += d * d; }
    return vec2<f32>(mean, inverseSqrt(row_sum(q, lid) / f32(n) + eps));
}

fn ln_norm(v: f32, stats: vec2<f32>) -> f32 { return (v - stats.x) * stats.y; }
