// Layer normalization over the last dimension: out = (x - mean) / sqrt(var + eps) * w + b.
// One 256-thread workgroup per row; statistics in f32 (two passes: mean, then the centred
// variance, as torch does, so rows with a large mean keep their precision).
// T: storage type of the input and parameters, O: of the output (f32/f16). Rows are folded
// over a 2-D grid.

override AFFINE: bool = true;

struct Params { rows: u32, C: u32, eps: f32, _p: u32 }

@group(0) @binding(0) var<storage, read> x: array<T>;        // [rows, C]
@group(0) @binding(1) var<storage, read> w: array<T>;        // [C] (unused when !AFFINE)
@group(0) @binding(2) var<storage, read> b: array<T>;        // [C]
@group(0) @binding(3) var<storage, read_write> out: array<O>;  // [rows, C]
@group(0) @binding(4) var<uniform> p: Params;

// #include row_sum

@compute @workgroup_size(256)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }  // uniform per workgroup: barriers stay uniform
    let base = row * p.C;
    var s = 0.0;
    for (var i = lid; i < p.C; i += WG) { s += f32(x[base + i]); }
    let mean = row_sum(s, lid) / f32(p.C);
    var q = 0.0;
    for (var i = lid; i < p.C; i += WG) { let d = f32(x[base + i]) - mean; q += d * d; }
    let inv = inverseSqrt(row_sum(q, lid) / f32(p.C) + p.eps);
    for (var i = lid; i < p.C; i += WG) {
        var y = (f32(x[base + i]) - mean) * inv;
        if (AFFINE) { y = y * f32(w[i]) + f32(b[i]); }
        out[base + i] = O(y);
    }
}
