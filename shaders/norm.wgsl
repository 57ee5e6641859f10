// Layer normalization over the last dimension: out = (x - mean) / sqrt(var + eps) * w + b.
// One 256-thread workgroup per row; the statistics are shaders/lib/layer_norm.wgsl's (f32, two
// passes), shared with the norms fused into shaders/convnext.wgsl and the GEMV of shaders/matmul.wgsl.
// T: storage type of the input and parameters, O: of the output (f32/f16). Rows are folded
// over a 2-D grid.

override AFFINE: bool = true;

struct Params { rows: u32, C: u32, eps: f32, _p: u32 }

@group(0) @binding(0) var<storage, read> x: array<T>;        // [rows, C]
@group(0) @binding(1) var<storage, read> w: array<T>;        // [C] (unused when !AFFINE)
@group(0) @binding(2) var<storage, read> b: array<T>;        // [C]
@group(0) @binding(3) var<storage, read_write> out: array<O>;  // [rows, C]
@group(0) @binding(4) var<uniform> p: Params;

const ROW_WG: u32 = 256u;

// #include row_reduce
// #include layer_norm

fn ln_load(base: u32, i: u32) -> f32 { return f32(x[base + i]); }
fn ln_reload(base: u32, i: u32) -> f32 { return f32(x[base + i]); }

@compute @workgroup_size(256)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }  // uniform per workgroup: barriers stay uniform
    let base = row * p.C;
    let st = ln_stats(base, p.C, p.eps, lid);
    for (var i = lid; i < p.C; i += ROW_WG) {
        var y = ln_norm(f32(x[base + i]), st);
        if (AFFINE) { y = y * f32(w[i]) + f32(b[i]); }
        out[base + i] = O(y);
    }
}
