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
// Two tile sizes (override BIG):
//   64x64 output tile per 256-thread workgroup, each thread a 4x4 block, K in steps of 16.
//          More workgroups: the choice for small and mid-size products.
//   BIG:   128x128 tile, each thread an 8x8 block, K in steps of 8. Half the shared-memory
//          reads per FMA: the choice when there are enough tiles to fill the GPU.
// Each thread reads its rows of a and columns of b from shared memory as vec4s: per k, 2 (4)
// loads for 16 (64) FMAs, where scalar loads would make shared memory the bottleneck.
// Out-of-range loads read 0, stores are checked.

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

// CONV: B[k, n] with k = ci * ks + tap is input channel ci at time n * stride + tap * dil - pad,
// zero outside [0, t_in) -- torch's conv1d (a cross-correlation) as a GEMM, no im2col buffer.
fn conv_input(b_off: u32, gk: u32, gn: u32) -> f32 {
    let ci = gk / mp.ks;
    let t = i32(gn * mp.stride + (gk % mp.ks) * mp.dil) - i32(mp.pad);
    if (t < 0 || t >= i32(mp.t_in)) { return 0.0; }
    return f32(b[b_off + ci * mp.t_in + u32(t)]);
}

// A[gm, gk], 0 outside the matrix
fn a_at(a_off: u32, gm: u32, gk: u32) -> f32 {
    if (gm < mp.M && gk < mp.K) { return f32(a[a_off + gm * mp.K + gk]); }
    return 0.0;
}

// B[gk, gn] (b[K, N], weight[N, K]^T when TRANS_B, the conv input's im2col when CONV), 0 outside
fn b_at(b_off: u32, gk: u32, gn: u32) -> f32 {
    if (gn >= mp.N || gk >= mp.K) { return 0.0; }
    if (TRANS_B) { return f32(b[b_off + gn * mp.K + gk]); }
    if (CONV) { return conv_input(b_off, gk, gn); }
    return f32(b[b_off + gk * mp.N + gn]);
}

fn store_c(c_off: u32, gm: u32, gn: u32, v: f32) {
    if (gm >= mp.M || gn >= mp.N) { return; }
    var bias_v = 0.0;
    if (HAS_BIAS) { bias_v = f32(bias[select(gn, gm, CONV)]); }
    c[c_off + gm * mp.N + gn] = T(epilogue(v, bias_v));
}

// 256 threads (tx = lid % 16, ty = lid / 16); thread outputs: rows 64h + ty + 16i, columns
// 64g + tx + 16j (h, g < H; i, j < 4), read from shared memory as H vec4s per operand and k,
// so that a warp's reads stay within few banks and its stores to c are contiguous. The loads
// of the next K step are issued before this step's FMAs (register prefetch), so their latency
// hides behind the math.
override BIG: bool = false;                  // 128x128 tiles (else 64x64)
override H: u32 = select(1u, 2u, BIG);       // vec4s per operand, thread and k
override EDGE: u32 = 64u * H;                // tile edge
override KSTEP: u32 = select(16u, 8u, BIG);  // k per step: 1024 values of a and of b each
override SS: u32 = select(17u, 33u, BIG);    // As4/Bs4 row stride in vec4s: the padding keeps
                                             // each 8-lane phase of the vec4 stores on distinct banks

// KSTEP rows of k, each the tile's EDGE values of m (As4) or n (Bs4) as EDGE / 4 vec4s: component
// j of vec4 v holds row / column spread(v, j), so that a thread reads its 4 rows (columns) in one
// load, and 16 neighbouring threads read (and load from memory) 16 neighbouring rows (columns)
var<workgroup> As4: array<vec4<f32>, 272>;  // As4[k * SS + v][j]
var<workgroup> Bs4: array<vec4<f32>, 272>;  // Bs4[k * SS + v][j]

struct Tile { m0: u32, n0: u32, a_off: u32, b_off: u32, c_off: u32 }

// Where flat tile `tile` starts: tiles ordered n fastest (neighbouring workgroups share the same
// rows of a), then m, then the batch.
fn tile_origin(tile: u32) -> Tile {
    let rest = tile / mp.tiles_n;
    let z = rest / mp.tiles_m;
    return Tile((rest % mp.tiles_m) * EDGE, (tile % mp.tiles_n) * EDGE, z * mp.a_batch, z * mp.b_batch,
                z * mp.M * mp.N);
}

fn spread(v: u32, j: u32) -> u32 { return 64u * (v / 16u) + v % 16u + 16u * j; }

// This thread's vec4 of a and of b for the K step at k0 (0 past the matrices), stored whole: a
// store to one component may touch the whole vector in WGSL's memory model, so 4 threads filling
// one vec4 would race. a (and a weight): vec4 lid / KSTEP at k0 + lid % KSTEP, KSTEP consecutive
// threads on consecutive k. b[K, N]: vec4 lid % (EDGE / 4) at k0 + lid / (EDGE / 4), 16
// consecutive threads on 16 consecutive columns.
fn tile_loads(o: Tile, k0: u32, lid: u32) -> array<vec4<f32>, 2> {
    let v = lid / KSTEP;
    let k = k0 + lid % KSTEP;
    let va = vec4<f32>(a_at(o.a_off, o.m0 + spread(v, 0u), k), a_at(o.a_off, o.m0 + spread(v, 1u), k),
                       a_at(o.a_off, o.m0 + spread(v, 2u), k), a_at(o.a_off, o.m0 + spread(v, 3u), k));
    if (TRANS_B) {
        return array<vec4<f32>, 2>(va, vec4<f32>(
            b_at(o.b_off, k, o.n0 + spread(v, 0u)), b_at(o.b_off, k, o.n0 + spread(v, 1u)),
            b_at(o.b_off, k, o.n0 + spread(v, 2u)), b_at(o.b_off, k, o.n0 + spread(v, 3u))));
    }
    let vb = lid % (EDGE / 4u);
    let kb = k0 + lid / (EDGE / 4u);
    return array<vec4<f32>, 2>(va, vec4<f32>(
        b_at(o.b_off, kb, o.n0 + spread(vb, 0u)), b_at(o.b_off, kb, o.n0 + spread(vb, 1u)),
        b_at(o.b_off, kb, o.n0 + spread(vb, 2u)), b_at(o.b_off, kb, o.n0 + spread(vb, 3u))));
}

// tile_loads' vec4s into As4 / Bs4
fn tile_stash(v: array<vec4<f32>, 2>, lid: u32) {
    As4[(lid % KSTEP) * SS + lid / KSTEP] = v[0];
    if (TRANS_B) {
        Bs4[(lid % KSTEP) * SS + lid / KSTEP] = v[1];
    } else {
        Bs4[(lid / (EDGE / 4u)) * SS + lid % (EDGE / 4u)] = v[1];
    }
}

// One k of the outer product on a 4x4 register block: row i of the block gains a[i] * b. The
// blocks are whole values and every index is a constant: a loop over an accumulator array with
// a runtime index leaves the array in local memory on some drivers (WGSL has no unroll hint).
fn outer4(c: mat4x4<f32>, av: vec4<f32>, bv: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(c[0] + av.x * bv, c[1] + av.y * bv, c[2] + av.z * bv, c[3] + av.w * bv);
}

// Block (h, g) of this thread's outputs: element [i][j] is row 64h + ty + 16i, column 64g + tx + 16j
fn store_block(o: Tile, h: u32, g: u32, ty: u32, tx: u32, blk: mat4x4<f32>) {
    var m = blk;  // runs once per tile: a runtime index into it costs nothing that matters
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store_c(o.c_off, o.m0 + spread(16u * h + ty, i), o.n0 + spread(16u * g + tx, j), m[i][j]);
        }
    }
}

@compute @workgroup_size(256)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let tile = wid.x + wid.y * nwg.x;
    if (tile >= mp.tiles) { return; }
    let o = tile_origin(tile);
    let tx = lid % 16u;
    let ty = lid / 16u;
    var ld = tile_loads(o, 0u, lid);
    var c00: mat4x4<f32>;  // block (h, g) = (0, 0); BIG adds (0, 1), (1, 0), (1, 1)
    var c01: mat4x4<f32>;
    var c10: mat4x4<f32>;
    var c11: mat4x4<f32>;
    for (var k0 = 0u; k0 < mp.K; k0 += KSTEP) {
        tile_stash(ld, lid);
        workgroupBarrier();
        if (k0 + KSTEP < mp.K) { ld = tile_loads(o, k0 + KSTEP, lid); }
        for (var row = 0u; row < KSTEP * SS; row += SS) {
            let a0 = As4[row + ty];
            let b0 = Bs4[row + tx];
            c00 = outer4(c00, a0, b0);
            if (BIG) {
                let a1 = As4[row + 16u + ty];
                let b1 = Bs4[row + 16u + tx];
                c01 = outer4(c01, a0, b1);
                c10 = outer4(c10, a1, b0);
                c11 = outer4(c11, a1, b1);
            }
        }
        workgroupBarrier();
    }
    store_block(o, 0u, 0u, ty, tx, c00);
    if (BIG) {
        store_block(o, 0u, 1u, ty, tx, c01);
        store_block(o, 1u, 0u, ty, tx, c10);
        store_block(o, 1u, 1u, ty, tx, c11);
    }
}

// ------------------------------------------------------------------ GEMV (decode, M <= 8)
// One workgroup owns NR weight rows and all MROWS rows of x, so each weight row is read once.
// All 256 threads sweep K for every owned row (thread t reads elements t, t+256, ... or vec4s):
// consecutive threads read consecutive addresses. Each thread ends with MROWS*NR <= 8 partial
// sums of the same outputs, reduced by wg_sums (subgroups where SUBGROUPS, else a tree).
// M = 1 (the decode case) has its 8 rows written out with constant indices (see wg_sums.wgsl on
// runtime-indexed private arrays); M = 2..8 takes a generic loop.

override MROWS: u32 = 1u;         // rows of x, 1..8
override NR: u32 = 8u;            // weight rows per workgroup; MROWS * NR <= 8
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

// weight row row0 + r (the last group's extra rows reread a valid row) at vec4 k / element k
fn w_vec(row0: u32, r: u32, k: u32) -> vec4<f32> { return vec4<f32>(w4[min(row0 + r, gp.N - 1u) * gp.K4 + k]); }
fn w_one(row0: u32, r: u32, k: u32) -> f32 { return f32(w[min(row0 + r, gp.N - 1u) * gp.K + k]); }

@compute @workgroup_size(256)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) sg_id: u32,  // [sg]
        @builtin(local_invocation_index) lid: u32) {
    sg_inv = sg_id;  // [sg]
    let g = wid.x + wid.y * nwg.x;
    if (g >= gp.groups) { return; }
    let row0 = g * NR;
    var lo = vec4<f32>();  // sums 0..3 (sum m * NR + r: x row m . weight row row0 + r)
    var hi = vec4<f32>();  // sums 4..7
    // lanes leave these loops at different k; wg_sums starts with a barrier, so all reach it
    if (MROWS == 1u) {
        if (VEC4) {
            for (var k = lid; k < gp.K4; k += 256u) {
                let xv = vec4<f32>(x4[k]);
                lo += vec4<f32>(dot(xv, w_vec(row0, 0u, k)), dot(xv, w_vec(row0, 1u, k)),
                                dot(xv, w_vec(row0, 2u, k)), dot(xv, w_vec(row0, 3u, k)));
                hi += vec4<f32>(dot(xv, w_vec(row0, 4u, k)), dot(xv, w_vec(row0, 5u, k)),
                                dot(xv, w_vec(row0, 6u, k)), dot(xv, w_vec(row0, 7u, k)));
            }
        } else {
            for (var k = lid; k < gp.K; k += 256u) {
                let xv = f32(x[k]);
                lo += xv * vec4<f32>(w_one(row0, 0u, k), w_one(row0, 1u, k), w_one(row0, 2u, k), w_one(row0, 3u, k));
                hi += xv * vec4<f32>(w_one(row0, 4u, k), w_one(row0, 5u, k), w_one(row0, 6u, k), w_one(row0, 7u, k));
            }
        }
    } else {
        var acc: array<f32, 8>;
        if (VEC4) {
            let K4 = gp.K4;
            for (var k = lid; k < K4; k += 256u) {
                for (var r = 0u; r < NR; r++) {
                    let wv = w_vec(row0, r, k);
                    for (var m = 0u; m < MROWS; m++) { acc[m * NR + r] += dot(vec4<f32>(x4[m * K4 + k]), wv); }
                }
            }
        } else {
            let K = gp.K;
            for (var k = lid; k < K; k += 256u) {
                for (var r = 0u; r < NR; r++) {
                    let wv = w_one(row0, r, k);
                    for (var m = 0u; m < MROWS; m++) { acc[m * NR + r] += f32(x[m * K + k]) * wv; }
                }
            }
        }
        lo = vec4<f32>(acc[0], acc[1], acc[2], acc[3]);
        hi = vec4<f32>(acc[4], acc[5], acc[6], acc[7]);
    }
    let total = wg_sums(lo, hi, lid);  // thread lid < MROWS * NR: output (lid / NR, row0 + lid % NR)
    let row = row0 + lid % NR;
    if (lid < MROWS * NR && row < gp.N) {
        var bias_v = 0.0;
        if (HAS_BIAS) { bias_v = f32(bias[row]); }
        out[(lid / NR) * gp.N + row] = T(epilogue(total, bias_v));
    }
}
