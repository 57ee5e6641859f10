// Attention head layout: rows of a fused projection <-> head-major tensors (used by the resident
// encoder and the resident decoder's per-chunk cross-attention K/V).
//   split  src[L, NP * W] (q|k|v or k|v per row) -> out_p[NH, L, DH] for p < NP; the first
//          ROPE_PARTS parts get whisperspeech's rotary embedding (rope_rotate with rotate_half)
//          at position j * KSUB, from the [cos; sin] table [2P, DH]
//   merge  src[NH, L, DH] -> out[L, W] (the attention output back into rows for the projection)
// S / D: source / destination storage types (f32 or f16), math in f32. One thread per output
// element of part 0 (split) or per output element (merge); the flat index is folded over a 2-D grid.

override DH: u32 = 64u;
override NP: u32 = 3u;          // parts per source row (2 or 3)
override ROPE_PARTS: u32 = 0u;  // the leading parts that get RoPE

struct HP { NH: u32, L: u32, W: u32, P: u32, KSUB: u32, n: u32, ooff: u32, _p1: u32 }  // n = L * W; ooff: split's output offset

@group(0) @binding(0) var<storage, read> src: array<S>;
@group(0) @binding(1) var<storage, read_write> out0: array<D>;
@group(0) @binding(2) var<storage, read_write> out1: array<D>;
@group(0) @binding(3) var<storage, read_write> out2: array<D>;   // bound to a dummy when NP == 2
@group(0) @binding(4) var<storage, read> rope: array<f32>;       // [2P, DH] (a dummy without RoPE)
@group(0) @binding(5) var<uniform> hp: HP;

// #include flat

// part p of row j, column c = h * DH + d, rotated when p < ROPE_PARTS
fn part_value(rb: u32, p: u32, c: u32, d: u32, j: u32) -> f32 {
    let b = rb + p * hp.W + c;
    var v = f32(src[b]);
    if (p < ROPE_PARTS) {
        let half = DH / 2u;
        let pos = j * hp.KSUB;
        var rot: f32;
        if (d < half) { rot = -f32(src[b + half]); } else { rot = f32(src[b - half]); }
        v = v * rope[pos * DH + d] + rot * rope[(hp.P + pos) * DH + d];
    }
    return v;
}

@compute @workgroup_size(256)
fn split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) t: u32) {
    let i = flat(wid, nwg, t);
    if (i >= hp.n) { return; }
    let j = i / hp.W;
    let c = i % hp.W;
    let d = c % DH;
    let rb = j * NP * hp.W;
    let o = hp.ooff + ((c / DH) * hp.L + j) * DH + d;
    out0[o] = D(part_value(rb, 0u, c, d, j));
    out1[o] = D(part_value(rb, 1u, c, d, j));
    if (NP > 2u) { out2[o] = D(part_value(rb, 2u, c, d, j)); }
}

// merge binds its own variables (numbered from 0, as the runtime binds them)
@group(0) @binding(0) var<storage, read> m_src: array<S>;        // [NH, L, DH]
@group(0) @binding(1) var<storage, read_write> m_out: array<D>;  // [L, W]
@group(0) @binding(2) var<uniform> mp: HP;

@compute @workgroup_size(256)
fn merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) t: u32) {
    let i = flat(wid, nwg, t);
    if (i >= mp.n) { return; }
    let j = i / mp.W;
    let c = i % mp.W;
    m_out[i] = D(f32(m_src[((c / DH) * mp.L + j) * DH + c % DH]));
}
