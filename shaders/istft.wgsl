// Vocos' ISTFT head around the irfft (f32):
//   spectrum:     head output [T, 2F] (F log-magnitudes, then F phases) -> complex [T, F, 2]:
//                 min(exp(m), 100) * (cos p, sin p)
//   overlap_add:  irfft frames [T, n_fft] -> waveform [L]: window, overlap-add, division by the
//                 window envelope (sum of squared windows), "same" padding trimmed (pad each side).
// exp/sin/cos are computed here with Cody-Waite reduction and Cephes polynomials (~1 ulp) because
// the built-ins only promise a few ulp (exp) or 2^-11 absolute error (sin/cos) on Vulkan.

struct SpecParams { T: u32, F: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<storage, read> sx: array<f32>;           // [T, 2F]
@group(0) @binding(1) var<storage, read_write> sout: array<f32>;   // [T, F, 2]
@group(0) @binding(2) var<uniform> sp: SpecParams;

// #include flat

// exp(x) for x <= 88.7: x = k ln2 + r, |r| <= ln2/2, exp(r) by Cephes' expf polynomial.
fn exp_acc(x_in: f32) -> f32 {
    let x = clamp(x_in, -103.0, 88.7);
    let k = round(x * 1.44269504088896341);
    var r = fma(-k, 0.693359375, x);       // ln2 split in two: k * 0.693359375 is exact
    r = fma(k, 2.12194440e-4, r);
    let z = r * r;
    var pl = 1.9875691500e-4;
    pl = fma(pl, r, 1.3981999507e-3);
    pl = fma(pl, r, 8.3334519073e-3);
    pl = fma(pl, r, 4.1665795894e-2);
    pl = fma(pl, r, 1.6666665459e-1);
    pl = fma(pl, r, 5.0000001201e-1);
    let e = fma(pl, z, r) + 1.0;
    return ldexp(e, i32(k));
}

// (cos x, sin x): x = k pi/2 + r with pi/2 split in three (exact products for |k| < 2^15),
// polynomials on |r| <= pi/4, quadrant from k mod 4.
fn cos_sin(x: f32) -> vec2<f32> {
    let k = round(x * 0.636619772367581343);
    var r = fma(-k, 1.5703125, x);
    r = fma(-k, 4.837512969970703125e-4, r);
    r = fma(-k, 7.54978995489188216e-8, r);
    let z = r * r;
    var ps = -1.9515295891e-4;
    ps = fma(ps, z, 8.3321608736e-3);
    ps = fma(ps, z, -1.6666654611e-1);
    let s = fma(ps * z, r, r);
    var pc = 2.443315711809948e-5;
    pc = fma(pc, z, -1.388731625493765e-3);
    pc = fma(pc, z, 4.166664568298827e-2);
    let c = fma(pc * z, z, fma(-0.5, z, 1.0));
    let q = i32(k) & 3;  // two's complement: also right for negative k
    var cs: vec2<f32>;
    if (q == 0) { cs = vec2<f32>(c, s); }
    else if (q == 1) { cs = vec2<f32>(-s, c); }
    else if (q == 2) { cs = vec2<f32>(-c, -s); }
    else { cs = vec2<f32>(s, -c); }
    return cs;
}

@compute @workgroup_size(256)
fn spectrum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);  // t * F + f
    if (i >= sp.T * sp.F) { return; }
    let t = i / sp.F;
    let f = i - t * sp.F;
    let mag = min(exp_acc(sx[t * 2u * sp.F + f]), 100.0);  // torch.clip(exp(m), max=1e2)
    let cs = cos_sin(sx[t * 2u * sp.F + sp.F + f]);
    sout[2u * i] = mag * cs.x;
    sout[2u * i + 1u] = mag * cs.y;
}

// ---------------------------------------------------------------- overlap-add

struct OlaParams { T: u32, n_fft: u32, hop: u32, pad: u32, L: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> frames: array<f32>;        // [T, n_fft]
@group(0) @binding(1) var<storage, read> win: array<f32>;           // [n_fft]
@group(0) @binding(2) var<storage, read_write> wave: array<f32>;    // [L]
@group(0) @binding(3) var<uniform> op: OlaParams;

@compute @workgroup_size(256)
fn overlap_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let s = flat(wid, nwg, lid);
    if (s >= op.L) { return; }
    let pos = s + op.pad;  // position in the untrimmed fold output
    // frames t with t*hop <= pos < t*hop + n_fft, in increasing t as fold sums them
    var t = 0u;
    if (pos + 1u > op.n_fft) { t = (pos + 1u - op.n_fft + op.hop - 1u) / op.hop; }
    let last = min(op.T - 1u, pos / op.hop);
    var y = 0.0;
    var env = 0.0;
    for (; t <= last; t++) {
        let n = pos - t * op.hop;
        let w = win[n];
        y += frames[t * op.n_fft + n] * w;
        env += w * w;
    }
    wave[s] = y / env;
}
