// Element-wise kernels over flat arrays. T: storage type (f32 or f16), math in f32.
// The 1-D index is folded over a 2-D grid so arrays past 65,535 workgroups work.

struct Params { n: u32, alpha: f32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<storage, read> a: array<T>;
@group(0) @binding(1) var<storage, read> b: array<T>;
@group(0) @binding(2) var<storage, read_write> out: array<T>;
@group(0) @binding(3) var<uniform> p: Params;

// #include flat

// out = a + alpha * b
@compute @workgroup_size(256)
fn axpy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid.x);
    if (i >= p.n) { return; }
    out[i] = T(f32(a[i]) + p.alpha * f32(b[i]));
}
