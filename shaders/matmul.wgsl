// Matrix products. T: storage type (f32 or f16, prepended by the runtime); accumulation in f32.
//
// Two entry points share the epilogue (bias + optional GELU):
//   tiled:  c[z, M, N] = a[z, M, K] @ B[z]   where B is b[K, N], or weight[N, K]^T when TRANS_B,
//           or (CONV) the implicit im2col matrix of a 1-D convolution's input (see conv_input)
//   gemv:   out[M, N]  = x[M, K] @ weight[N, K]^T for the decode case M <= 8
// Workgroup ids are folded over a 2-D grid (flat id = wid.x + wid.y * nwg.x) so counts past
// 65,535 work; ids past the end return at once (uniform per workgroup, before any barrier).

override TRANS_B: bool = false;   // b holds weight[N, K] (linear) instead of [K, N] (matmul)
override CONV: bool = false;      // b is a conv input x[z, Cin, T_in]; a = weight [Cout, Cin * ks]
override HAS_BIAS: bool = false;  // add bias[N] (bias[M] when CONV: one per output channel)
override GELU: bool = false;      // nn.GELU() (erf form) after the bias

// #include gelu

fn epilogue(acc: f32, bias_v: f32) -> f32 {
    var v = acc;
    if (HAS_BIAS) { v += bias_v; }
    if (GELU) { v = gelu(v); }
    return v;
}

// ------------------------------------------------------------------ tiled matmul
// 64x64 output tile per 256-thread workgroup, each thread a 4x4 block (rows ty+16i, cols tx+16j:
// strided so that neighbouring threads touch neighbouring shared-memory words and output columns),
// K walked in steps of 16 through shared memory. Out-of-range loads read 0, stores are checked.

struct MMParams {
    M: u32, N: u32, K: u32, tiles_n: u32,
    tiles_m: u32, tiles: u32, a_batch: u32, b_batch: u32,   // batch strides in elements (0 = shared)
    t_in: u32, ks: u32, dil: u32, pad: u32,                 // CONV only: input length, kernel size,
    stride: u32, _p0: u32, _p1: u32, _p2: u32,              // dilation, left zero padding, stride
}

@group(0) @binding(0) var<storage, read> a: array<T>;
@group(0) @binding(1) var<storage, read> b: array<T>;
@group(0) @binding(2) var<storage, read> bias: array<T>;
@group(0) @binding(3) var<storage, read_write> c: array<T>;
@group(0) @binding(4) var<uniform> mp: MMParams;

const TM: u32 = 64u;
const TN: u32 = 64u;
const BK: u32 = 16u;
const SS: u32 = 65u;  // shared row stride: 65 keeps the transposed stores free of bank conflicts

var<workgroup> As: array<f32, 1040>;  // [BK][SS]: As[k * SS + m]
var<workgroup> Bs: array<f32, 1040>;  // [BK][SS]: Bs[k * SS + n]

// CONV: B[k, n] with k = ci * ks + tap is input channel ci at time n * stride + tap * dil - pad,
// zero outside [0, t_in) -- torch's conv1d (a cross-correlation) as a GEMM, no im2col buffer.
fn conv_input(b_off: u32, gk: u32, gn: u32) -> f32 {
    let ci = gk / mp.ks;
    let t = i32(gn * mp.stride + (gk % mp.ks) * mp.dil) - i32(mp.pad);
    if (t < 0 || t >= i32(mp.t_in)) { return 0.0; }
    return f32(b[b_off + ci * mp.t_in + u32(t)]);
}

@compute @workgroup_size(256)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let tile = wid.x + wid.y * nwg.x;
    if (tile >= mp.tiles) { return; }
    let M = mp.M;
    let N = mp.N;
    let K = mp.K;
    // tile order: n fastest, so neighbouring workgroups share the same rows of a
    let tn = tile % mp.tiles_n;
    let rest = tile / mp.tiles_n;
    let tm = rest % mp.tiles_m;
    let z = rest / mp.tiles_m;
    let m0 = tm * TM;
    let n0 = tn * TN;
    let a_off = z * mp.a_batch;
    let b_off = z * mp.b_batch;
    let c_off = z * M * N;
    let tx = lid % 16u;
    let ty = lid / 16u;

    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < K; k0 += BK) {
        // a tile [64 rows][16 k]: 16 consecutive threads read 16 consecutive k of one row
        for (var i = 0u; i < 4u; i++) {
            let e = lid + 256u * i;
            let r = e / BK;
            let kk = e % BK;
            let gm = m0 + r;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < M && gk < K) { v = f32(a[a_off + gm * K + gk]); }
            As[kk * SS + r] = v;
        }
        for (var i = 0u; i < 4u; i++) {
            let e = lid + 256u * i;
            var v = 0.0;
            if (TRANS_B) {
                // weight[N, K]: same pattern as a
                let r = e / BK;
                let kk = e % BK;
                let gn = n0 + r;
                let gk = k0 + kk;
                if (gn < N && gk < K) { v = f32(b[b_off + gn * K + gk]); }
                Bs[kk * SS + r] = v;
            } else {
                // b[K, N]: 64 consecutive threads read 64 consecutive n of one k
                let kk = e / TN;
                let cn = e % TN;
                let gn = n0 + cn;
                let gk = k0 + kk;
                if (gn < N && gk < K) {
                    if (CONV) { v = conv_input(b_off, gk, gn); } else { v = f32(b[b_off + gk * N + gn]); }
                }
                Bs[kk * SS + cn] = v;
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let row = kk * SS;
            let bv = vec4<f32>(Bs[row + tx], Bs[row + tx + 16u], Bs[row + tx + 32u], Bs[row + tx + 48u]);
            for (var i = 0u; i < 4u; i++) {
                acc[i] += As[row + ty + 16u * i] * bv;
            }
        }
        workgroupBarrier();
    }

    for (var j = 0u; j < 4u; j++) {
        let gn = n0 + tx + 16u * j;
        if (gn >= N) { continue; }
        for (var i = 0u; i < 4u; i++) {
            let gm = m0 + ty + 16u * i;
            if (gm >= M) { continue; }
            var bias_v = 0.0;
            if (HAS_BIAS) { bias_v = f32(bias[select(gn, gm, CONV)]); }
            c[c_off + gm * N + gn] = T(epilogue(acc[i][j], bias_v));
        }
    }
}

// ------------------------------------------------------------------ GEMV (decode, M <= 8)
// One workgroup owns NR weight rows and all MROWS rows of x, so each weight row is read once.
// All 256 threads sweep K for every owned row (thread t reads elements t, t+256, ... or vec4s):
// consecutive threads read consecutive addresses. Each thread ends with MROWS*NR partial sums
// of the same outputs, reduced by wg_sums (subgroups where SUBGROUPS, else a shared-memory tree).

override MROWS: u32 = 1u;         // rows of x, 1..8
override NR: u32 = 4u;            // weight rows per workgroup; MROWS * NR <= 32
override VEC4: bool = false;      // K % 4 == 0: read x and w as vec4

struct GVParams { N: u32, K: u32, K4: u32, groups: u32 }

// x4/w4 view the buffers of x/w (bound twice): one entry point may not put two variables on
// one binding, even if an override makes one of them unused.
@group(0) @binding(0) var<storage, read> x: array<T>;          // [MROWS, K]
@group(0) @binding(1) var<storage, read> w: array<T>;          // [N, K]
@group(0) @binding(3) var<storage, read_write> out: array<T>;  // [MROWS, N]
@group(0) @binding(4) var<uniform> gp: GVParams;
@group(0) @binding(5) var<storage, read> x4: array<vec4<T>>;   // x as [MROWS, K / 4] when VEC4
@group(0) @binding(6) var<storage, read> w4: array<vec4<T>>;   // w as [N, K / 4] when VEC4

// #include wg_sums

@compute @workgroup_size(256)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) sg_id: u32,  // [sg]
        @builtin(local_invocation_index) lid: u32) {
    sg_inv = sg_id;  // [sg]
    let g = wid.x + wid.y * nwg.x;
    if (g >= gp.groups) { return; }
    let row0 = g * NR;
    var acc: array<f32, SUMS_MAX>;  // acc[m * NR + r]: x row m . weight row row0 + r
    // uniform trip counts: all lanes reach the reduction together
    if (VEC4) {
        let K4 = gp.K4;
        for (var k0 = 0u; k0 < K4; k0 += 256u) {
            let k = k0 + lid;
            if (k >= K4) { break; }
            var xv: array<vec4<f32>, 8>;
            for (var m = 0u; m < MROWS; m++) { xv[m] = vec4<f32>(x4[m * K4 + k]); }
            for (var r = 0u; r < NR; r++) {
                let row = min(row0 + r, gp.N - 1u);  // the last group's extra rows reread a valid row
                let wv = vec4<f32>(w4[row * K4 + k]);
                for (var m = 0u; m < MROWS; m++) { acc[m * NR + r] += dot(xv[m], wv); }
            }
        }
    } else {
        let K = gp.K;
        for (var k0 = 0u; k0 < K; k0 += 256u) {
            let k = k0 + lid;
            if (k >= K) { break; }
            var xv: array<f32, 8>;
            for (var m = 0u; m < MROWS; m++) { xv[m] = f32(x[m * K + k]); }
            for (var r = 0u; r < NR; r++) {
                let row = min(row0 + r, gp.N - 1u);
                let wv = f32(w[row * K + k]);
                for (var m = 0u; m < MROWS; m++) { acc[m * NR + r] += xv[m] * wv; }
            }
        }
    }
    let total = wg_sums(acc, MROWS * NR, lid);  // thread lid < MROWS * NR: output (lid / NR, row0 + lid % NR)
    let row = row0 + lid % NR;
    if (lid < MROWS * NR && row < gp.N) {
        var bias_v = 0.0;
        if (HAS_BIAS) { bias_v = f32(bias[row]); }
        out[(lid / NR) * gp.N + row] = T(epilogue(total, bias_v));
    }
}
