// Matrix products, accumulated in f32. Storage types are aliases prepended by the runtime (f32 or
// f16): T for every array of `tiled`; X (activations) and WT (weights) for `gemv`.
//
// Two entry points, with bias and GELU fused:
//   tiled:  c[z, M, N] = a[z, M, K] @ B[z]   where B is b[K, N], or weight[N, K]^T when TRANS_B,
//           or (CONV) the implicit im2col matrix of a 1-D convolution's input (see conv_input)
//   gemv:   out[c, N] (+)= act(xin_c @ weight[N, K]^T + bias) for a few columns c (decode steps of
//           several sequences, linear() with M <= 8), a layer norm or an attention combine in front
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

// ------------------------------------------------------------------ GEMV (decode: a few columns)
// out[c, n] (+)= act(xin_c . w[n, :] + bias[n]) for every column c of x: the decode step of B
// sequences (the resident decoder's slots) or linear() with at most 8 rows. One 256-thread
// workgroup owns 8 weight rows of one column; the workgroups of one row group (one per column)
// are next to each other in launch order (flat id = group x columns + column), so they run
// together and read the same weights: from memory once, then from the cache, even where the
// cache is far smaller than the weight matrix and the GPU runs only a few workgroups at once.
// Every thread sweeps K (thread t reads vec4 t, t + 256, ...: consecutive threads read
// consecutive addresses) for the 8 rows and ends with 8 partial sums, reduced by wg_sums
// (shaders/lib/wg_sums.wgsl, which declares the SUBGROUPS override).
// Before the sweep the workgroup stages its column's input in workgroup memory when it is
// computed (XMODE 1: layer norm, 2: combine the attention splits of shaders/attention.wgsl's
// decode_cache); XMODE 0 reads x from memory (GROUP > 0: row n reads x[(n / GROUP) * K ..], e.g.
// the S2A unembeddings of all quantizers in one launch).
// X: the activation type (x, bias, layer-norm parameters, out); WT: the weights' (both prepended by
// the runtime; the resident decoder keeps activations f32 under f16 or 8-bit weights, Q8 below). Every product
// accumulates in f32. STEP: the active columns come from the step buffer (step[0], the resident
// decoder), else from the uniform (linear); the column entries of the step buffer start at word
// 4, `ss` words each: [slot, pos, token ids...].

override XMODE: u32 = 0u;
override STEP: bool = false;
override RESID: bool = false;     // out[c, n] += value (the residual stream, updated in place)
override VEC4: bool = false;      // K % 4 == 0
override XS: u32 = 4u;            // staged input length (K for XMODE 1 and 2)
override GROUP: u32 = 0u;         // divides only through max(GROUP, 1u): once resolved, a divisor
                                  // of 0 fails naga 30's validation and FXC, even where unreached
// XMODE 2: a column's partials are [NH, MAXS, DH + 2] = (max, sum, unnormalized out[DH])
override G_DH: u32 = 64u;
override G_CH: u32 = 256u;
override G_NSPLIT: u32 = 0u;      // splits per head; 0: ceil((pos + 1) / G_CH) (self-attention)
override G_MAXS: u32 = 1u;
override G_CW: u32 = 1u;          // NH * MAXS: the per-(head, split) weights staged by XMODE 2
// Q8 (WT = u32): weight[n, k] = code * block scale * column scale. Codes are int8 in blocks of 32
// along K, one f32 scale per block; the column scales (one per input channel) take the outlier
// channels of trained weights out of the blocks, and are applied to x as it is loaded. Row n's
// codes are the u32 words [4 * K4 * n, 4 * K4 * (n + 1)) (four codes a word, the lowest byte
// first; K4 counts vec4s of 16 codes, two per block, zero-padded past K), then come the block
// scales' bit patterns, row by row (word 4 * K4 * N + n * K4 / 2 + block), then the K column
// scales'. One buffer, so that the kernel stays within 8 storage bindings.
override Q8: bool = false;

struct GP { N: u32, K: u32, K4: u32, groups: u32, eps: f32, x_stride: u32, cols: u32, ss: u32 }

@group(0) @binding(0) var<storage, read> g_step: array<u32>;
@group(0) @binding(1) var<storage, read> g_x: array<X>;         // [cols, x_stride] or partials
@group(0) @binding(2) var<storage, read> g_w: array<WT>;        // [N, K]
@group(0) @binding(3) var<storage, read> g_w4: array<vec4<WT>>;  // the same buffer as vec4
@group(0) @binding(4) var<storage, read> g_bias: array<X>;      // [N]
@group(0) @binding(5) var<storage, read> g_gamma: array<X>;     // [K] layer-norm weight
@group(0) @binding(6) var<storage, read> g_beta: array<X>;      // [K] layer-norm bias
@group(0) @binding(7) var<storage, read_write> g_out: array<X>;  // [cols, N]
@group(0) @binding(8) var<uniform> gp: GP;

const GWG: u32 = 256u;
const GR: u32 = 8u;                       // rows per workgroup
var<workgroup> xs: array<f32, XS>;

// #include wg_sums
// #include layer_norm
// #include splitk_combine

// XMODE 2: xs = the attention output of every head of column c, merged from its key splits'
// partials as shaders/lib/splitk_combine.wgsl does (0 for a head whose keys were all masked), with
// its splitk_weight. Not its splitk_combine, which recomputes the weights for every element: here
// the splits' maxima and sums are staged first, each head's split weights e^(m_s - M) / sum e^(m_s - M) l_s
// computed once, and then every element is a weighted sum of the splits' outputs, read four
// splits at a time so that their loads overlap.
var<workgroup> cw_m: array<f32, G_CW>;  // m_s (-inf-like when l_s = 0), then the split's weight
var<workgroup> cw_l: array<f32, G_CW>;

fn partial_at(i: u32) -> f32 { return f32(g_x[i]); }

fn combine_prologue(t: u32, x0: u32, c: u32) {
    var ns = G_NSPLIT;
    if (ns == 0u) { ns = (g_step[4u + c * gp.ss + 1u] + G_CH) / G_CH; }
    let nh = gp.K / G_DH;
    let stride = G_DH + 2u;
    for (var i = t; i < nh * ns; i += GWG) {
        let s = (i / ns) * G_MAXS + i % ns;
        let l = partial_at(x0 + s * stride + 1u);
        cw_l[s] = l;
        cw_m[s] = select(-3.40282347e38, partial_at(x0 + s * stride), l > 0.0);
    }
    workgroupBarrier();
    for (var h = t; h < nh; h += GWG) {
        let s0 = h * G_MAXS;
        var mx = -3.40282347e38;
        for (var s = 0u; s < ns; s++) { mx = max(mx, cw_m[s0 + s]); }
        var den = 0.0;
        for (var s = 0u; s < ns; s++) {
            let w = splitk_weight(cw_m[s0 + s], cw_l[s0 + s], mx);
            cw_m[s0 + s] = w;
            den += w * cw_l[s0 + s];
        }
        let inv = select(0.0, 1.0 / den, den > 0.0);
        for (var s = 0u; s < ns; s++) { cw_m[s0 + s] *= inv; }
    }
    workgroupBarrier();
    for (var i = t; i < gp.K; i += GWG) {
        let s0 = (i / G_DH) * G_MAXS;
        let o0 = x0 + s0 * stride + 2u + i % G_DH;  // element i's output in split 0 of its head
        var v = 0.0;
        var s = 0u;
        for (; s + 4u <= ns; s += 4u) {
            let o = vec4<f32>(f32(g_x[o0 + s * stride]), f32(g_x[o0 + (s + 1u) * stride]),
                              f32(g_x[o0 + (s + 2u) * stride]), f32(g_x[o0 + (s + 3u) * stride]));
            v += dot(o, vec4<f32>(cw_m[s0 + s], cw_m[s0 + s + 1u], cw_m[s0 + s + 2u], cw_m[s0 + s + 3u]));
        }
        for (; s < ns; s++) { v += cw_m[s0 + s] * f32(g_x[o0 + s * stride]); }
        xs[i] = v;
    }
    workgroupBarrier();
}

// The sum of one value per thread, returned to every thread: the row_sum that layer_norm.wgsl
// calls. Not row_reduce.wgsl's: this one reuses wg_sums' workgroup memory (16 KiB budget) and subgroups.
const ROW_WG: u32 = GWG;
fn row_sum(v: f32, t: u32) -> f32 {
    let s = wg_sums(vec4<f32>(v, 0.0, 0.0, 0.0), vec4<f32>(), t);
    if (t == 0u) { sums_red[255] = vec4<f32>(s); }  // a slot wg_sums' final reads never touch
    workgroupBarrier();
    let total = sums_red[255].x;
    workgroupBarrier();  // free for the next wg_sums
    return total;
}

// XMODE 1's loads (shaders/lib/layer_norm.wgsl): x staged in xs as it is first read
fn ln_load(x0: u32, i: u32) -> f32 { let v = f32(g_x[x0 + i]); xs[i] = v; return v; }
fn ln_reload(x0: u32, i: u32) -> f32 { return xs[i]; }

// input element i of the column starting at x0 (staged, or from memory)
fn xin(x0: u32, i: u32) -> f32 {
    if (XMODE == 0u) { return f32(g_x[x0 + i]); }
    return xs[i];
}

fn xin4(x0: u32, i: u32) -> vec4<f32> {
    return vec4<f32>(xin(x0, i), xin(x0, i + 1u), xin(x0, i + 2u), xin(x0, i + 3u));
}

// Weight row row0 + r (the last group's extra rows reread a valid row) at vec4 k4.
fn wrow4(row0: u32, r: u32, k4: u32) -> vec4<WT> { return g_w4[min(row0 + r, gp.N - 1u) * gp.K4 + k4]; }

// Row row0 + r's product term at vec4 k4: x . w, where x is xv, or under GROUP the input of the
// row's group.
fn term4(x0: u32, row0: u32, r: u32, k4: u32, xv: vec4<f32>, w: vec4<WT>) -> f32 {
    var x = xv;
    if (GROUP > 0u) { x = xin4(x0, (min(row0 + r, gp.N - 1u) / max(GROUP, 1u)) * gp.K + 4u * k4); }
    return dot(x, vec4<f32>(w));
}

// Q8: input elements i..i+15 at offset base of the column (a row's group under GROUP) times their
// column scales, 0 past K where the row's codes are padding.
fn xq(x0: u32, base: u32, i: u32) -> f32 {
    let k = min(i, gp.K - 1u);
    let scale = bitcast<f32>(u32(g_w[4u * gp.K4 * gp.N + gp.N * (gp.K4 / 2u) + k]));
    return select(0.0, xin(x0, base + k) * scale, i < gp.K);
}
fn xq4(x0: u32, base: u32, i: u32) -> vec4<f32> {
    return vec4<f32>(xq(x0, base, i), xq(x0, base, i + 1u), xq(x0, base, i + 2u), xq(x0, base, i + 3u));
}
fn xq16(x0: u32, base: u32, i: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(xq4(x0, base, i), xq4(x0, base, i + 4u), xq4(x0, base, i + 8u), xq4(x0, base, i + 12u));
}

// The four int8 codes of a word, sign-extended by shifts (no packed-integer extension needed):
// each code moved to the top byte unsigned, then an arithmetic shift of the signed value.
fn q8_unpack(word: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(word) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// Row row0 + r's product term over the 16 codes of vec4 q: scale x (x . codes). Written for any
// WT (the conversions are identities for u32), since the module is validated whole.
fn q8_term(x0: u32, row0: u32, r: u32, q: u32, xv: array<vec4<f32>, 4>, w: vec4<WT>) -> f32 {
    let row = min(row0 + r, gp.N - 1u);
    var x = xv;
    if (GROUP > 0u) { x = xq16(x0, (row / max(GROUP, 1u)) * gp.K, 16u * q); }
    let u = vec4<u32>(w);
    let d = dot(x[0], q8_unpack(u.x)) + dot(x[1], q8_unpack(u.y)) + dot(x[2], q8_unpack(u.z))
          + dot(x[3], q8_unpack(u.w));
    return d * bitcast<f32>(u32(g_w[4u * gp.K4 * gp.N + row * (gp.K4 / 2u) + q / 2u]));
}

fn term1(x0: u32, row0: u32, r: u32, k: u32, xv: f32) -> f32 {
    let row = min(row0 + r, gp.N - 1u);
    var x = xv;
    if (GROUP > 0u) { x = xin(x0, (row / max(GROUP, 1u)) * gp.K + k); }
    return x * f32(g_w[row * gp.K + k]);
}

@compute @workgroup_size(256)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) sg_id: u32,  // [sg]
        @builtin(local_invocation_index) t: u32) {
    sg_inv = sg_id;  // [sg]
    let id = wid.x + wid.y * nwg.x;
    var cols = gp.cols;
    if (STEP) { cols = g_step[0]; }
    if (cols == 0u) { return; }
    let c = id % cols;  // the column; a row group's columns are consecutive
    let g = id / cols;
    if (g >= gp.groups) { return; }  // uniform per workgroup: the barriers below stay uniform
    let K = gp.K;
    let row0 = g * GR;
    let x0 = c * gp.x_stride;
    // The first sweep's weights are loaded before the prologue, so that their memory latency
    // overlaps the layer norm's / combine's reductions (at width <= 1024 that is all of them).
    // Rows are written out one by one here and below (constant indices only, see wg_sums).
    var wf: array<vec4<WT>, 8>;  // WT: f16 weights hold half the registers through the prologue
    if ((VEC4 || Q8) && t < gp.K4) {
        wf = array<vec4<WT>, 8>(wrow4(row0, 0u, t), wrow4(row0, 1u, t), wrow4(row0, 2u, t), wrow4(row0, 3u, t),
                                wrow4(row0, 4u, t), wrow4(row0, 5u, t), wrow4(row0, 6u, t), wrow4(row0, 7u, t));
    }
    if (XMODE == 1u) {
        let st = ln_stats(x0, K, gp.eps, t);
        for (var i = t; i < K; i += GWG) { xs[i] = ln_norm(xs[i], st) * f32(g_gamma[i]) + f32(g_beta[i]); }
        workgroupBarrier();
    } else if (XMODE == 2u) {
        combine_prologue(t, x0, c);
    }

    var lo = vec4<f32>();  // rows row0 + 0..3
    var hi = vec4<f32>();  // rows row0 + 4..7
    if (Q8) {
        for (var q = t; q < gp.K4; q += GWG) {
            var w = wf;
            if (q != t) {
                w = array<vec4<WT>, 8>(wrow4(row0, 0u, q), wrow4(row0, 1u, q), wrow4(row0, 2u, q), wrow4(row0, 3u, q),
                                       wrow4(row0, 4u, q), wrow4(row0, 5u, q), wrow4(row0, 6u, q), wrow4(row0, 7u, q));
            }
            let xv = xq16(x0, 0u, 16u * q);
            lo += vec4<f32>(q8_term(x0, row0, 0u, q, xv, w[0]), q8_term(x0, row0, 1u, q, xv, w[1]),
                            q8_term(x0, row0, 2u, q, xv, w[2]), q8_term(x0, row0, 3u, q, xv, w[3]));
            hi += vec4<f32>(q8_term(x0, row0, 4u, q, xv, w[4]), q8_term(x0, row0, 5u, q, xv, w[5]),
                            q8_term(x0, row0, 6u, q, xv, w[6]), q8_term(x0, row0, 7u, q, xv, w[7]));
        }
    } else if (VEC4) {
        for (var k4 = t; k4 < gp.K4; k4 += GWG) {
            var w = wf;
            if (k4 != t) {
                w = array<vec4<WT>, 8>(wrow4(row0, 0u, k4), wrow4(row0, 1u, k4), wrow4(row0, 2u, k4), wrow4(row0, 3u, k4),
                                       wrow4(row0, 4u, k4), wrow4(row0, 5u, k4), wrow4(row0, 6u, k4), wrow4(row0, 7u, k4));
            }
            let xv = xin4(x0, 4u * k4);
            lo += vec4<f32>(term4(x0, row0, 0u, k4, xv, w[0]), term4(x0, row0, 1u, k4, xv, w[1]),
                            term4(x0, row0, 2u, k4, xv, w[2]), term4(x0, row0, 3u, k4, xv, w[3]));
            hi += vec4<f32>(term4(x0, row0, 4u, k4, xv, w[4]), term4(x0, row0, 5u, k4, xv, w[5]),
                            term4(x0, row0, 6u, k4, xv, w[6]), term4(x0, row0, 7u, k4, xv, w[7]));
        }
    } else {
        for (var k = t; k < K; k += GWG) {
            let xv = xin(x0, k);
            lo += vec4<f32>(term1(x0, row0, 0u, k, xv), term1(x0, row0, 1u, k, xv), term1(x0, row0, 2u, k, xv),
                            term1(x0, row0, 3u, k, xv));
            hi += vec4<f32>(term1(x0, row0, 4u, k, xv), term1(x0, row0, 5u, k, xv), term1(x0, row0, 6u, k, xv),
                            term1(x0, row0, 7u, k, xv));
        }
    }
    let total = wg_sums(lo, hi, t);
    let row = row0 + t;
    if (t < GR && row < gp.N) {
        let o = c * gp.N + row;
        var v = total;
        if (HAS_BIAS) { v += f32(g_bias[row]); }
        if (GELU) { v = gelu(v); }
        if (RESID) { v += f32(g_out[o]); }
        g_out[o] = X(v);
    }
}
