// FFT family: mixed-radix (2, 3, 4, 5) Stockham autosort, Bluestein (chirp-z) and the
// real-input/real-output wrappers, all along the last axis of a batch of rows.
//
// The host prepends two type aliases:
//   Row  = array<vec2<f32>, >= M>  the workgroup copy of one row (fft_row; length 1 for other entries)
//   Regs = array<vec2<f32>, K>  butterfly outputs a thread holds across a barrier
// Complex numbers are vec2 (re, im). Buffers are flat f32 so real and complex rows share
// one binding type; complex element k of a row sits at words 2k, 2k+1.
//
// Stage s of the Stockham sweep (radix R, Ns = product of the earlier radixes, nb = M / R):
//   butterfly j reads x[j + r*nb] (r < R), multiplies by w^(r*(j % Ns)), w = exp(-2 pi i/(Ns R)),
//   runs a length-R DFT and writes y[(j / Ns)*Ns*R + j % Ns + r*Ns]. Output is in natural order.
// Only forward transforms run here: an inverse is conj(FFT(conj(x))) / n, done by the
// conj_in / conj_out flags and `scale` in the load and store functions.
// Twiddles, chirps and the Bluestein filter come from the host (computed in float64).

struct Params {
    n: u32,          // FFT length the stages run (M; the padded length for Bluestein)
    nl: u32,         // logical length: n, or the Bluestein length (< M); h for the real wrappers
    m: u32,          // valid input elements per row (shorter rows are zero-padded)
    istride: u32,    // input row stride in f32 words
    no: u32,         // output elements per row
    ostride: u32,    // output row stride in f32 words
    rows: u32,
    in_kind: u32,    // 0 real, 1 complex, 2 real read as pairs, 3 irfft even pre-pass, 4 hermitian (odd irfft)
    out_kind: u32,   // 0 complex, 1 real part, 2 rfft post-pass, 3 Bluestein middle (x * B, conj)
    flags: u32,      // 1 conj_in, 2 conj_out, 4 chirp on load, 8 chirp on finish (Bluestein)
    scale: f32,
    nstages: u32,
    chirp_off: u32,  // table offsets, in complex elements
    filt_off: u32,
    rtw_off: u32,
    _pad: u32,
    st: array<vec4<u32>, 16>,  // per stage: radix, Ns, twiddle offset, unused
}

@group(0) @binding(0) var<storage, read> inp: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> tab: array<vec2<f32>>;
@group(0) @binding(3) var<uniform> p: Params;

override WG: u32 = 64u;
var<workgroup> buf: Row;
var<private> reg: Regs;

const C3 = 0.86602540378443864676;   // sin(2 pi/3)
const C51 = 0.30901699437494742410;  // cos(2 pi/5)
const C52 = -0.80901699437494742410; // cos(4 pi/5)
const S51 = 0.95105651629515357212;  // sin(2 pi/5)
const S52 = 0.58778525229247312917;  // sin(4 pi/5)

fn cmul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

fn conj(a: vec2<f32>) -> vec2<f32> { return vec2<f32>(a.x, -a.y); }

// -i * a
fn mul_negi(a: vec2<f32>) -> vec2<f32> { return vec2<f32>(a.y, -a.x); }

// Forward DFT of length R (2..5) of v[0..R).
fn bfly(R: u32, v: array<vec2<f32>, 5>) -> array<vec2<f32>, 5> {
    var o = v;
    if (R == 2u) {
        o[0] = v[0] + v[1];
        o[1] = v[0] - v[1];
    } else if (R == 4u) {
        let s02 = v[0] + v[2];
        let d02 = v[0] - v[2];
        let s13 = v[1] + v[3];
        let d13 = mul_negi(v[1] - v[3]);
        o[0] = s02 + s13;
        o[1] = d02 + d13;
        o[2] = s02 - s13;
        o[3] = d02 - d13;
    } else if (R == 3u) {
        let t = v[1] + v[2];
        let d = mul_negi(v[1] - v[2]) * C3;
        let a = v[0] - 0.5 * t;
        o[0] = v[0] + t;
        o[1] = a + d;
        o[2] = a - d;
    } else if (R == 5u) {
        let s1 = v[1] + v[4];
        let d1 = v[1] - v[4];
        let s2 = v[2] + v[3];
        let d2 = v[2] - v[3];
        let a1 = v[0] + C51 * s1 + C52 * s2;
        let a2 = v[0] + C52 * s1 + C51 * s2;
        let b1 = mul_negi(S51 * d1 + S52 * d2);
        let b2 = mul_negi(S52 * d1 - S51 * d2);
        o[0] = v[0] + s1 + s2;
        o[1] = a1 + b1;
        o[4] = a1 - b1;
        o[2] = a2 + b2;
        o[3] = a2 - b2;
    }
    return o;
}

// Complex element k of input row `row`, zero past the valid length m.
fn in_c(row: u32, k: u32) -> vec2<f32> {
    if (k >= p.m) { return vec2<f32>(0.0); }
    let b = row * p.istride + 2u * k;
    return vec2<f32>(inp[b], inp[b + 1u]);
}

// Element i (< n) of the sequence the stages transform, built from the input row.
fn load_elem(row: u32, i: u32) -> vec2<f32> {
    var v = vec2<f32>(0.0);
    if (i < p.nl) {
        switch p.in_kind {
            case 0u: {
                if (i < p.m) { v.x = inp[row * p.istride + i]; }
            }
            case 1u: {
                v = in_c(row, i);
            }
            case 2u: {  // rfft of even n: z[i] = x[2i] + i x[2i+1]
                let b = row * p.istride + 2u * i;
                if (2u * i < p.m) { v.x = inp[b]; }
                if (2u * i + 1u < p.m) { v.y = inp[b + 1u]; }
            }
            case 3u: {  // irfft of even n = 2h: Z[i] = (X[i] + X*[h-i]) + i W^-i (X[i] - X*[h-i])
                var a = in_c(row, i);
                var c = in_c(row, p.nl - i);
                if (i == 0u) { a.y = 0.0; c.y = 0.0; }  // numpy drops Im of the DC and Nyquist bins
                let s = a + conj(c);
                let d = cmul(a - conj(c), conj(tab[p.rtw_off + i]));
                v = s + vec2<f32>(-d.y, d.x);
            }
            default: {  // irfft of odd n: the full hermitian spectrum
                if (i == 0u) {
                    v = vec2<f32>(in_c(row, 0u).x, 0.0);
                } else if (2u * i < p.nl) {
                    v = in_c(row, i);
                } else {
                    v = conj(in_c(row, p.nl - i));
                }
            }
        }
        if ((p.flags & 1u) != 0u) { v.y = -v.y; }
        if ((p.flags & 4u) != 0u) { v = cmul(v, tab[p.chirp_off + i]); }
    }
    return v;
}

// Output element i of the transform from the stage result v = buf[i]:
// Bluestein chirp post-multiply (with the inverse's conj), conj_out, scale.
fn finish(i: u32, v: vec2<f32>) -> vec2<f32> {
    var w = v;
    if ((p.flags & 8u) != 0u) { w = cmul(tab[p.chirp_off + i], conj(w)); }
    if ((p.flags & 2u) != 0u) { w.y = -w.y; }
    return w * p.scale;
}

// Element-wise store (out_kind 0, 1, 3); out_kind 2 needs the whole row (fft_row, rfft_post).
fn store_elem(row: u32, i: u32, v: vec2<f32>) {
    if (i >= p.no) { return; }
    if (p.out_kind == 3u) {
        let w = conj(cmul(v, tab[p.filt_off + i]));
        let b = row * p.ostride + 2u * i;
        out[b] = w.x;
        out[b + 1u] = w.y;
        return;
    }
    let w = finish(i, v);
    if (p.out_kind == 1u) {
        out[row * p.ostride + i] = w.x;
    } else {
        let b = row * p.ostride + 2u * i;
        out[b] = w.x;
        out[b + 1u] = w.y;
    }
}

// rfft post-pass: X[k] (k <= h) from the half-length transform Z (z = x_even + i x_odd):
// X[k] = (Z[k] + Z*[h-k]) / 2 - i/2 W^k (Z[k] - Z*[h-k]),  W = exp(-2 pi i / 2h).
fn rfft_bin(k: u32, zk: vec2<f32>, zr: vec2<f32>) -> vec2<f32> {
    let s = zk + conj(zr);
    let d = cmul(zk - conj(zr), tab[p.rtw_off + k]);
    return 0.5 * (s + mul_negi(d));
}

// All stages on the workgroup copy of a row; every thread holds its butterflies' outputs in
// `reg` across the barrier, so the row is transformed in place in one buffer.
fn run_stages(tid: u32) {
    for (var s = 0u; s < p.nstages; s++) {
        let R = p.st[s].x;
        let ns = p.st[s].y;
        let toff = p.st[s].z;
        let nb = p.n / R;
        var q = 0u;
        for (var j = tid; j < nb; j += WG) {
            let k = j % ns;
            var v: array<vec2<f32>, 5>;
            v[0] = buf[j];
            for (var r = 1u; r < R; r++) {
                v[r] = cmul(buf[j + r * nb], tab[toff + k * (R - 1u) + r - 1u]);
            }
            v = bfly(R, v);
            for (var r = 0u; r < R; r++) { reg[q + r] = v[r]; }
            q += R;
        }
        workgroupBarrier();
        q = 0u;
        for (var j = tid; j < nb; j += WG) {
            let base = (j / ns) * ns * R + j % ns;
            for (var r = 0u; r < R; r++) { buf[base + r * ns] = reg[q + r]; }
            q += R;
        }
        workgroupBarrier();
    }
}

// One workgroup per row: load, all stages (twice for Bluestein), store; one dispatch in all.
@compute @workgroup_size(WG)
fn fft_row(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }  // uniform per workgroup: the barriers below stay legal
    let tid = lid.x;
    for (var i = tid; i < p.n; i += WG) { buf[i] = load_elem(row, i); }
    workgroupBarrier();
    run_stages(tid);
    if ((p.flags & 4u) != 0u) {
        // Bluestein: multiply by the filter spectrum B, then conj so the same forward
        // stages compute the inverse transform of the product.
        for (var i = tid; i < p.n; i += WG) { buf[i] = conj(cmul(buf[i], tab[p.filt_off + i])); }
        workgroupBarrier();
        run_stages(tid);
    }
    if (p.out_kind == 2u) {
        let h = p.nl;
        for (var k = tid; k <= h; k += WG) {
            let kr = (h - k) % h;
            let x = rfft_bin(k, finish(k % h, buf[k % h]), finish(kr, buf[kr]));
            let b = row * p.ostride + 2u * k;
            out[b] = x.x;
            out[b + 1u] = x.y;
        }
    } else {
        for (var i = tid; i < p.no; i += WG) { store_elem(row, i, buf[i]); }
    }
}

// Global-memory path (rows too long for workgroup memory): one stage per dispatch, one
// butterfly per thread. The first stage loads through load_elem, the last stores through
// store_elem; stages between use in_kind 1 / out_kind 0 with no flags.
@compute @workgroup_size(256)
fn fft_stage(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    let R = p.st[0].x;
    let ns = p.st[0].y;
    let toff = p.st[0].z;
    let nb = p.n / R;
    if (t >= p.rows * nb) { return; }
    let row = t / nb;
    let j = t % nb;
    let k = j % ns;
    var v: array<vec2<f32>, 5>;
    v[0] = load_elem(row, j);
    for (var r = 1u; r < R; r++) {
        v[r] = cmul(load_elem(row, j + r * nb), tab[toff + k * (R - 1u) + r - 1u]);
    }
    v = bfly(R, v);
    let base = (j / ns) * ns * R + k;
    for (var r = 0u; r < R; r++) { store_elem(row, base + r * ns, v[r]); }
}

// Global-memory rfft post-pass: inp holds Z (rows x h complex, already finished),
// out gets X (rows x (h+1) complex).
@compute @workgroup_size(256)
fn rfft_post(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    let h = p.nl;
    if (t >= p.rows * (h + 1u)) { return; }
    let row = t / (h + 1u);
    let k = t % (h + 1u);
    let x = rfft_bin(k, in_c(row, k % h), in_c(row, (h - k) % h));
    let b = row * p.ostride + 2u * k;
    out[b] = x.x;
    out[b + 1u] = x.y;
}
