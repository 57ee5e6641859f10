// Kernels of the resident decoder step (wsvk/resident.py): one decode step of a WhisperSpeech
// decoder (batch 1, one new position) recorded as a handful of dispatches per layer.
// WT (prepended by wsvk/resident_decoder.py as f32 or f16, WSVK_PRECISION): the storage type of
// the weight matrices, embedding tables and KV caches. Everything else (activations, biases,
// layer-norm parameters, softmax/layer-norm statistics, partials, logits) is f32, and every
// product accumulates in f32: WT values are widened on load. Values that change per step (the position, the token ids) come from the `step`
// storage buffer written once per step: step[0] = position, step[1 + q] = token id of quantizer q.
// So every bind group and uniform is built once, at load.
//
// Entry points (each binds its own variables, numbered from 0):
//   embed     x[W] = sum_q table[q, tok_q] (+ pos_emb[pos]) (+ extra)           token + position embedding
//   gemv      out[N] (+)= act(xin @ w[N, K]^T + bias), xin = x, layer_norm(x), or the merged
//             attention partials: the layer norm and the split-K combine are fused in front
//   attn      decode attention of one query over a KV cache, split over keys (partials out);
//             SELF: appends the new key/value (RoPE'd) at `pos` and stops at pos + 1 keys
// Workgroup ids are folded over a 2-D grid (flat id = wid.x + wid.y * nwg.x) where counts can be large.

// ------------------------------------------------------------------ embed

struct EmbP { W: u32, V: u32, NQ: u32, flags: u32 }  // flags: 1 = add pos_emb[pos], 2 = add extra

@group(0) @binding(0) var<storage, read> e_step: array<u32>;
@group(0) @binding(1) var<storage, read> e_tab: array<WT>;     // [NQ, V, W]
@group(0) @binding(2) var<storage, read> e_pos: array<WT>;     // [P, W]
@group(0) @binding(3) var<storage, read> e_extra: array<f32>;  // [W]
@group(0) @binding(4) var<storage, read_write> e_out: array<f32>;  // [W]
@group(0) @binding(5) var<uniform> ep: EmbP;

@compute @workgroup_size(256)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= ep.W) { return; }
    // the sum in whisperspeech's order: ((e_0 + e_1) + ...) + pos + extra
    var v = 0.0;
    for (var q = 0u; q < ep.NQ; q++) {
        let tok = min(e_step[1u + q], ep.V - 1u);  // the host validates ids; never read out of bounds
        v += f32(e_tab[(q * ep.V + tok) * ep.W + i]);
    }
    if ((ep.flags & 1u) != 0u) { v += f32(e_pos[e_step[0] * ep.W + i]); }
    if ((ep.flags & 2u) != 0u) { v += e_extra[i]; }
    e_out[i] = v;
}

// ------------------------------------------------------------------ gemv
// One 256-thread workgroup owns 8 output rows; every thread sweeps K (thread t reads vec4 t,
// t + 256, ... of each row: consecutive threads read consecutive addresses) for all 8 rows, so
// every thread holds partials of the same 8 sums, reduced by wg_sums (shaders/lib/wg_sums.wgsl,
// shared with the GEMV of shaders/matmul.wgsl; it declares the SUBGROUPS override).
// Before the sweep the workgroup stages its input in workgroup memory when it is computed
// (XMODE 1: layer norm, 2: combine attention splits); XMODE 0 reads x from memory (GROUP > 0:
// row n reads x[(n / GROUP) * K ..], e.g. the S2A unembeddings of all quantizers in one launch).

override XMODE: u32 = 0u;
override HAS_BIAS: bool = false;
override GELU: bool = false;
override RESID: bool = false;     // out[n] += value (the residual stream, updated in place)
override VEC4: bool = false;      // K % 4 == 0
override XS: u32 = 4u;            // staged input length (K for XMODE 1 and 2)
override GROUP: u32 = 0u;
// XMODE 2: the partials of `attn` are [NH, MAXS, DH + 2] = (max, sum, unnormalized out[DH])
override G_DH: u32 = 64u;
override G_CH: u32 = 256u;
override G_NSPLIT: u32 = 0u;      // splits per head; 0: ceil((pos + 1) / G_CH) (self-attention)
override G_MAXS: u32 = 1u;
override G_CW: u32 = 1u;          // NH * MAXS: the per-(head, split) weights staged by XMODE 2

struct GP { N: u32, K: u32, K4: u32, groups: u32, eps: f32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> g_step: array<u32>;
@group(0) @binding(1) var<storage, read> g_x: array<f32>;       // [K] (or [groups of K]) or partials
@group(0) @binding(2) var<storage, read> g_w: array<WT>;        // [N, K]
@group(0) @binding(3) var<storage, read> g_w4: array<vec4<WT>>;  // the same buffer as vec4
@group(0) @binding(4) var<storage, read> g_bias: array<f32>;    // [N]
@group(0) @binding(5) var<storage, read> g_gamma: array<f32>;   // [K] layer-norm weight
@group(0) @binding(6) var<storage, read> g_beta: array<f32>;    // [K] layer-norm bias
@group(0) @binding(7) var<storage, read_write> g_out: array<f32>;  // [N]
@group(0) @binding(8) var<uniform> gp: GP;

const GWG: u32 = 256u;
const GR: u32 = 8u;                       // rows per workgroup
var<workgroup> xs: array<f32, XS>;

// #include gelu
// #include wg_sums

// XMODE 2: xs = the attention output of every head, merged from its key splits' partials as
// shaders/lib/splitk_combine.wgsl does (0 for a head whose keys were all masked). The splits'
// maxima and sums are staged first, each head's split weights e^(m_s - M) / sum e^(m_s - M) l_s
// computed once, and then every element is a weighted sum of the splits' outputs, read four
// splits at a time so that their loads overlap.
var<workgroup> cw_m: array<f32, G_CW>;  // m_s (-inf-like when l_s = 0), then the split's weight
var<workgroup> cw_l: array<f32, G_CW>;

fn combine_prologue(t: u32) {
    var ns = G_NSPLIT;
    if (ns == 0u) { ns = (g_step[0] + G_CH) / G_CH; }
    let nh = gp.K / G_DH;
    let stride = G_DH + 2u;
    for (var i = t; i < nh * ns; i += GWG) {
        let c = (i / ns) * G_MAXS + i % ns;
        let l = g_x[c * stride + 1u];
        cw_l[c] = l;
        cw_m[c] = select(-3.40282347e38, g_x[c * stride], l > 0.0);
    }
    workgroupBarrier();
    for (var h = t; h < nh; h += GWG) {
        let c0 = h * G_MAXS;
        var mx = -3.40282347e38;
        for (var s = 0u; s < ns; s++) { mx = max(mx, cw_m[c0 + s]); }
        var den = 0.0;
        for (var s = 0u; s < ns; s++) {
            let w = select(0.0, exp(cw_m[c0 + s] - mx), cw_l[c0 + s] > 0.0);
            cw_m[c0 + s] = w;
            den += w * cw_l[c0 + s];
        }
        let inv = select(0.0, 1.0 / den, den > 0.0);
        for (var s = 0u; s < ns; s++) { cw_m[c0 + s] *= inv; }
    }
    workgroupBarrier();
    for (var i = t; i < gp.K; i += GWG) {
        let c0 = (i / G_DH) * G_MAXS;
        let o0 = c0 * stride + 2u + i % G_DH;  // element i's output in split 0 of its head
        var v = 0.0;
        var s = 0u;
        for (; s + 4u <= ns; s += 4u) {
            let o = vec4<f32>(g_x[o0 + s * stride], g_x[o0 + (s + 1u) * stride],
                              g_x[o0 + (s + 2u) * stride], g_x[o0 + (s + 3u) * stride]);
            v += dot(o, vec4<f32>(cw_m[c0 + s], cw_m[c0 + s + 1u], cw_m[c0 + s + 2u], cw_m[c0 + s + 3u]));
        }
        for (; s < ns; s++) { v += cw_m[c0 + s] * g_x[o0 + s * stride]; }
        xs[i] = v;
    }
    workgroupBarrier();
}

// The sum of one value per thread, returned to every thread.
fn wg_sum(v: f32, t: u32) -> f32 {
    let s = wg_sums(vec4<f32>(v, 0.0, 0.0, 0.0), vec4<f32>(), t);
    if (t == 0u) { sums_red[255] = vec4<f32>(s); }  // a slot wg_sums' final reads never touch
    workgroupBarrier();
    let total = sums_red[255].x;
    workgroupBarrier();  // free for the next wg_sums
    return total;
}

fn xin(i: u32) -> f32 {
    if (XMODE == 0u) { return g_x[i]; }
    return xs[i];
}

fn xin4(i: u32) -> vec4<f32> {
    return vec4<f32>(xin(i), xin(i + 1u), xin(i + 2u), xin(i + 3u));
}

// Weight row row0 + r (the last group's extra rows reread a valid row) at vec4 k4 / element k.
fn wrow4(row0: u32, r: u32, k4: u32) -> vec4<WT> { return g_w4[min(row0 + r, gp.N - 1u) * gp.K4 + k4]; }

// Row row0 + r's product term at vec4 k4 (element k): x . w, where x is xv, or under GROUP the
// input of the row's group.
fn term4(row0: u32, r: u32, k4: u32, xv: vec4<f32>, w: vec4<WT>) -> f32 {
    var x = xv;
    if (GROUP > 0u) { x = xin4((min(row0 + r, gp.N - 1u) / GROUP) * gp.K + 4u * k4); }
    return dot(x, vec4<f32>(w));
}

fn term1(row0: u32, r: u32, k: u32, xv: f32) -> f32 {
    let row = min(row0 + r, gp.N - 1u);
    var x = xv;
    if (GROUP > 0u) { x = xin((row / GROUP) * gp.K + k); }
    return x * f32(g_w[row * gp.K + k]);
}

@compute @workgroup_size(256)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) sg_id: u32,  // [sg]
        @builtin(local_invocation_index) t: u32) {
    sg_inv = sg_id;  // [sg]
    let g = wid.x + wid.y * nwg.x;
    if (g >= gp.groups) { return; }  // uniform per workgroup: the barriers below stay uniform
    let K = gp.K;
    let row0 = g * GR;
    // The first sweep's weights are loaded before the prologue, so that their memory latency
    // overlaps the layer norm's / combine's reductions (at width <= 1024 that is all of them).
    // Rows are written out one by one here and below (constant indices only, see wg_sums).
    var wf: array<vec4<WT>, 8>;  // WT: f16 weights hold half the registers through the prologue
    if (VEC4 && t < gp.K4) {
        wf = array<vec4<WT>, 8>(wrow4(row0, 0u, t), wrow4(row0, 1u, t), wrow4(row0, 2u, t), wrow4(row0, 3u, t),
                                wrow4(row0, 4u, t), wrow4(row0, 5u, t), wrow4(row0, 6u, t), wrow4(row0, 7u, t));
    }
    if (XMODE == 1u) {
        // layer norm as shaders/norm.wgsl: two passes (mean, centred variance), f32
        var s = 0.0;
        for (var i = t; i < K; i += GWG) { let v = g_x[i]; xs[i] = v; s += v; }
        let mean = wg_sum(s, t) / f32(K);
        var q = 0.0;
        for (var i = t; i < K; i += GWG) { let d = xs[i] - mean; q += d * d; }
        let inv = inverseSqrt(wg_sum(q, t) / f32(K) + gp.eps);
        for (var i = t; i < K; i += GWG) { xs[i] = (xs[i] - mean) * inv * g_gamma[i] + g_beta[i]; }
        workgroupBarrier();
    } else if (XMODE == 2u) {
        combine_prologue(t);
    }

    var lo = vec4<f32>();  // rows row0 + 0..3
    var hi = vec4<f32>();  // rows row0 + 4..7
    if (VEC4) {
        for (var k4 = t; k4 < gp.K4; k4 += GWG) {
            var w = wf;
            if (k4 != t) {
                w = array<vec4<WT>, 8>(wrow4(row0, 0u, k4), wrow4(row0, 1u, k4), wrow4(row0, 2u, k4), wrow4(row0, 3u, k4),
                                       wrow4(row0, 4u, k4), wrow4(row0, 5u, k4), wrow4(row0, 6u, k4), wrow4(row0, 7u, k4));
            }
            let xv = xin4(4u * k4);
            lo += vec4<f32>(term4(row0, 0u, k4, xv, w[0]), term4(row0, 1u, k4, xv, w[1]),
                            term4(row0, 2u, k4, xv, w[2]), term4(row0, 3u, k4, xv, w[3]));
            hi += vec4<f32>(term4(row0, 4u, k4, xv, w[4]), term4(row0, 5u, k4, xv, w[5]),
                            term4(row0, 6u, k4, xv, w[6]), term4(row0, 7u, k4, xv, w[7]));
        }
    } else {
        for (var k = t; k < K; k += GWG) {
            let xv = xin(k);
            lo += vec4<f32>(term1(row0, 0u, k, xv), term1(row0, 1u, k, xv), term1(row0, 2u, k, xv), term1(row0, 3u, k, xv));
            hi += vec4<f32>(term1(row0, 4u, k, xv), term1(row0, 5u, k, xv), term1(row0, 6u, k, xv), term1(row0, 7u, k, xv));
        }
    }
    let total = wg_sums(lo, hi, t);
    let row = row0 + t;
    if (t < GR && row < gp.N) {
        var v = total;
        if (HAS_BIAS) { v += g_bias[row]; }
        if (GELU) { v = gelu(v); }
        if (RESID) { v = g_out[row] + v; }
        g_out[row] = v;
    }
}

// ------------------------------------------------------------------ attn
// One 64-thread workgroup per (head, split of CH keys); the query of head h is src[h * DH ..],
// RoPE'd at `pos` when ROPE, scaled by `scale`. SELF: src is the fused qkv row [3W]; the
// workgroup whose split holds `pos` first writes the new key (RoPE'd) and value into the caches,
// and the keys stop at pos + 1 (whisperspeech's additive -inf mask over its fixed-size cache:
// the masked keys contribute exactly 0). Cross: all L keys.

override DH: u32 = 64u;
override CH: u32 = 256u;
override SELF: bool = false;
override ROPE: bool = false;

struct AP { NH: u32, L: u32, W: u32, MAXS: u32, nsplit: u32, P: u32, scale: f32, _p: u32 }

@group(0) @binding(0) var<storage, read> a_step: array<u32>;
@group(0) @binding(1) var<storage, read> a_src: array<f32>;          // q [W] or qkv [3W]
@group(0) @binding(2) var<storage, read_write> a_kc: array<WT>;      // [NH, L, DH]
@group(0) @binding(3) var<storage, read_write> a_vc: array<WT>;      // [NH, L, DH]
@group(0) @binding(4) var<storage, read> a_rope: array<f32>;         // cos [P, DH] then sin [P, DH]
@group(0) @binding(5) var<storage, read_write> a_part: array<f32>;   // [NH, MAXS, DH + 2]
@group(0) @binding(6) var<uniform> ap: AP;

const AWG: u32 = 64u;
var<workgroup> dq: array<f32, DH>;
var<workgroup> dp: array<f32, CH>;
var<workgroup> ared: array<f32, AWG>;

// x[base + d] RoPE'd at position p: x * cos + rotate_half(x) * sin, rotate_half = (-x2, x1)
fn rope_at(base: u32, d: u32, p: u32) -> f32 {
    let x = a_src[base + d];
    if (!ROPE) { return x; }
    let half = DH / 2u;
    var rot: f32;
    if (d < half) { rot = -a_src[base + d + half]; } else { rot = a_src[base + d - half]; }
    return x * a_rope[p * DH + d] + rot * a_rope[(ap.P + p) * DH + d];
}

// The scaled query . the key at a_kc[kb ..], eight dimensions per iteration so that their
// loads overlap (a loop is not unrolled for us: each iteration would wait for its load)
fn key_dot(kb: u32) -> f32 {
    var s = 0.0;
    var d = 0u;
    for (; d + 8u <= DH; d += 8u) {
        let k0 = vec4<f32>(f32(a_kc[kb + d]), f32(a_kc[kb + d + 1u]), f32(a_kc[kb + d + 2u]), f32(a_kc[kb + d + 3u]));
        let k1 = vec4<f32>(f32(a_kc[kb + d + 4u]), f32(a_kc[kb + d + 5u]), f32(a_kc[kb + d + 6u]), f32(a_kc[kb + d + 7u]));
        s += dot(k0, vec4<f32>(dq[d], dq[d + 1u], dq[d + 2u], dq[d + 3u]))
           + dot(k1, vec4<f32>(dq[d + 4u], dq[d + 5u], dq[d + 6u], dq[d + 7u]));
    }
    for (; d < DH; d++) { s += dq[d] * f32(a_kc[kb + d]); }
    return s;
}

@compute @workgroup_size(64)
fn attn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) t: u32) {
    let pos = a_step[0];
    var ns = ap.nsplit;
    var valid = ap.L;
    if (SELF) { valid = pos + 1u; ns = (valid + CH - 1u) / CH; }
    let g = wid.x + wid.y * nwg.x;
    if (g >= ap.NH * ns) { return; }
    let h = g / ns;
    let sp = g % ns;
    let k0 = sp * CH;
    let n = min(k0 + CH, valid) - k0;
    let hb = h * DH;

    for (var d = t; d < DH; d += AWG) { dq[d] = rope_at(hb, d, pos) * ap.scale; }
    if (SELF && pos >= k0 && pos < k0 + CH) {
        let cb = (h * ap.L + pos) * DH;
        for (var d = t; d < DH; d += AWG) {
            a_kc[cb + d] = WT(rope_at(ap.W + hb, d, pos));
            a_vc[cb + d] = WT(a_src[2u * ap.W + hb + d]);
        }
    }
    storageBarrier();  // the new key/value are read below by other threads of this workgroup
    workgroupBarrier();

    let kvb = (h * ap.L + k0) * DH;
    var lmax = -3.40282347e38;
    for (var j = t; j < n; j += AWG) {
        let s = key_dot(kvb + j * DH);
        dp[j] = s;
        lmax = max(lmax, s);
    }
    ared[t] = lmax;
    workgroupBarrier();
    for (var st = AWG / 2u; st > 0u; st >>= 1u) {
        if (t < st) { ared[t] = max(ared[t], ared[t + st]); }
        workgroupBarrier();
    }
    let m = ared[0];
    workgroupBarrier();
    var lsum = 0.0;
    for (var j = t; j < n; j += AWG) {
        let pj = exp(dp[j] - m);
        dp[j] = pj;
        lsum += pj;
    }
    ared[t] = lsum;
    workgroupBarrier();
    for (var st = AWG / 2u; st > 0u; st >>= 1u) {
        if (t < st) { ared[t] += ared[t + st]; }
        workgroupBarrier();
    }
    let l = ared[0];
    let pb = (h * ap.MAXS + sp) * (DH + 2u);
    for (var d = t; d < DH; d += AWG) {
        // four keys per iteration: their value loads are independent, so they overlap
        let vb = kvb + d;
        var o = 0.0;
        var j = 0u;
        for (; j + 4u <= n; j += 4u) {
            let v = vec4<f32>(f32(a_vc[vb + j * DH]), f32(a_vc[vb + (j + 1u) * DH]),
                              f32(a_vc[vb + (j + 2u) * DH]), f32(a_vc[vb + (j + 3u) * DH]));
            o += dot(v, vec4<f32>(dp[j], dp[j + 1u], dp[j + 2u], dp[j + 3u]));
        }
        for (; j < n; j++) { o += dp[j] * f32(a_vc[vb + j * DH]); }
        a_part[pb + 2u + d] = o;
    }
    if (t == 0u) {
        a_part[pb] = m;
        a_part[pb + 1u] = l;
    }
}
