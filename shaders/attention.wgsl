// Scaled dot-product attention, torch SDPA semantics.
//   q [B, H, Lq, D], k [B, H, Lk, D], v [B, H, Lk, DV] -> out [B, H, Lq, DV]   (all contiguous)
// T: q/k/v/out storage type (f32 or f16); M: mask storage type; WT: decode_cache's KV caches.
// All math in f32.
// The mask is additive and read through broadcast strides (0 on broadcast dims), so a
// [Lq, Lk] or [B, 1, 1, Lk] mask is never expanded to [B, H, Lq, Lk].
//
// Masked scores are stored as -inf (compared by bit pattern, never used in arithmetic:
// WGSL lets compilers assume floats are finite). The running max starts at -FLT_MAX, so
// every exp() argument is finite. A row whose keys are all masked ends with sum 0 and
// writes 0, which is what torch 2.11 CPU returns for such rows (additive -inf or bool).
//
// Entry points:
//   prefill  one workgroup per (b, h, block of BQ queries); loops over blocks of BK keys
//            staged in workgroup memory with an online softmax (flash-style), so memory
//            does not grow with Lq x Lk. Causal rows stop at the last visible key block.
//   decode   one workgroup per (query row, split of CH keys): 64 threads share the split
//            (flash decoding). With one split it writes the output directly; otherwise it
//            writes (max, sum, unnormalized out[DV]) per split and `combine` merges them.
//   combine  one thread per (row, d): merges the splits' partial results.
//   decode_cache  the resident decoder's step: one query per sequence over its own KV cache
//            (per-sequence lengths, the new key/value appended), split over keys like decode.

struct Params {
    h: u32,         // H
    lq: u32,        // Lq
    lk: u32,        // Lk
    n_groups: u32,  // workgroups (prefill, decode) or threads (combine) doing real work
    causal: u32,    // 1: key j visible to query i only when j <= i (top-left aligned)
    has_mask: u32,
    scale: f32,
    n_split: u32,   // decode: key splits per row
    m_sb: u32,      // mask strides in elements for b, h, i, j (0 where broadcast)
    m_sh: u32,
    m_si: u32,
    m_sj: u32,
}

@group(0) @binding(0) var<storage, read> q: array<T>;
@group(0) @binding(1) var<storage, read> k: array<T>;
@group(0) @binding(2) var<storage, read> v: array<T>;
@group(0) @binding(3) var<storage, read> mask: array<M>;
@group(0) @binding(4) var<storage, read_write> out: array<T>;
@group(0) @binding(5) var<uniform> p: Params;

const NEG_INF_BITS = 0xff800000u;
const NEG_MAX = -3.40282347e38;  // -FLT_MAX: below every finite score

fn is_masked(s: f32) -> bool {
    return bitcast<u32>(s) == NEG_INF_BITS;
}

fn masked() -> f32 {
    return bitcast<f32>(NEG_INF_BITS);
}

// score + mask for query row (b, h, i) and key j, or -inf when the mask says so.
fn add_mask(dot: f32, moff: u32, j: u32) -> f32 {
    if (p.has_mask == 0u) {
        return dot;
    }
    let mv = f32(mask[moff + j * p.m_sj]);
    if (is_masked(mv)) {
        return masked();
    }
    return dot + mv;
}

// ------------------------------------------------------------------ prefill

override D: u32 = 64u;   // q/k head dim
override DV: u32 = 64u;  // v head dim
override BQ: u32 = 16u;  // queries per workgroup
override BK: u32 = 16u;  // keys per staged block
override TPQ: u32 = 4u;  // threads per query; BK % TPQ == 0
override WG: u32 = BQ * TPQ;
override KS: u32 = D + 1u - D % 2u;       // odd K row stride: lanes hit different banks
override QSZ: u32 = BQ * D;
override KSZ: u32 = BK * KS;
override VSZ: u32 = BK * DV + 4u * TPQ;   // + 4 TPQ: the last vec4 of a lane may read past DV (unused)
override SSZ: u32 = BQ * BK;
override NSC: u32 = BK / TPQ;             // scores per thread per block
override NOC: u32 = (DV + TPQ - 1u) / TPQ;  // output columns per thread (<= 32)
override NV: u32 = (NOC + 3u) / 4u;       // vec4 accumulators per thread (<= 8)

var<workgroup> qs: array<f32, QSZ>;  // [BQ, D] scaled queries
var<workgroup> ks: array<f32, KSZ>;  // [BK, KS]
var<workgroup> vs: array<f32, VSZ>;  // [BK, DV]
var<workgroup> ss: array<f32, SSZ>;  // [BQ, BK] scores of the current block

// v of staged key j at this lane's output columns lane + (4i + c) TPQ, c < 4 (accumulator i)
fn v4(j: u32, lane: u32, i: u32) -> vec4<f32> {
    let b = j * DV + lane + 4u * i * TPQ;
    return vec4<f32>(vs[b], vs[b + TPQ], vs[b + 2u * TPQ], vs[b + 3u * TPQ]);
}

// q row r . staged key j, four dimensions per step (fewer dependent adds)
fn qk(r: u32, j: u32) -> f32 {
    var s = 0.0;
    var d = 0u;
    for (; d + 4u <= D; d += 4u) {
        let qb = r * D + d;
        let kb = j * KS + d;
        s += dot(vec4<f32>(qs[qb], qs[qb + 1u], qs[qb + 2u], qs[qb + 3u]),
                 vec4<f32>(ks[kb], ks[kb + 1u], ks[kb + 2u], ks[kb + 3u]));
    }
    for (; d < D; d++) { s += qs[r * D + d] * ks[j * KS + d]; }
    return s;
}

@compute @workgroup_size(WG)
fn prefill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) t: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.n_groups) {
        return;
    }
    let nqb = (p.lq + BQ - 1u) / BQ;
    let bh = g / nqb;
    let q0 = (g % nqb) * BQ;
    let b = bh / p.h;
    let hh = bh % p.h;
    let r = t / TPQ;      // this thread's query within the block
    let lane = t % TPQ;
    let qi = q0 + r;

    let qbase = (bh * p.lq + q0) * D;
    for (var x = t; x < QSZ; x += WG) {
        var val = 0.0;
        if (q0 + x / D < p.lq) {
            val = f32(q[qbase + x]) * p.scale;
        }
        qs[x] = val;
    }

    // key blocks: a causal block of queries sees no key past its last query
    var kend = p.lk;
    if (p.causal != 0u) {
        kend = min(kend, min(q0 + BQ, p.lq));
    }
    let nkb = (kend + BK - 1u) / BK;
    let moff = b * p.m_sb + hh * p.m_sh + qi * p.m_si;
    let kvbase = bh * p.lk;

    var m_run = NEG_MAX;
    var l_run = 0.0;
    // output column lane + c TPQ accumulates in component c % 4 of a(c / 4); the accumulators are
    // named values touched with constant indices only (a runtime-indexed private array lives in
    // slow local memory on some drivers: see shaders/lib/wg_sums.wgsl)
    var a0 = vec4<f32>();
    var a1 = vec4<f32>();
    var a2 = vec4<f32>();
    var a3 = vec4<f32>();
    var a4 = vec4<f32>();
    var a5 = vec4<f32>();
    var a6 = vec4<f32>();
    var a7 = vec4<f32>();

    for (var kb = 0u; kb < nkb; kb++) {
        let k0 = kb * BK;
        for (var x = t; x < BK * D; x += WG) {
            let j = x / D;
            var val = 0.0;
            if (k0 + j < p.lk) {
                val = f32(k[(kvbase + k0) * D + x]);
            }
            ks[j * KS + x % D] = val;
        }
        for (var x = t; x < BK * DV; x += WG) {
            var val = 0.0;
            if (k0 + x / DV < p.lk) {
                val = f32(v[(kvbase + k0) * DV + x]);
            }
            vs[x] = val;
        }
        workgroupBarrier();

        for (var c = 0u; c < NSC; c++) {
            let j = lane + c * TPQ;
            let kj = k0 + j;
            var s = masked();
            if (qi < p.lq && kj < p.lk && (p.causal == 0u || kj <= qi)) {
                s = add_mask(qk(r, j), moff, kj);
            }
            ss[r * BK + j] = s;
        }
        workgroupBarrier();

        // every lane of the query reads the whole score row: no extra barrier for p_j
        var m_new = m_run;
        for (var j = 0u; j < BK; j++) {
            let s = ss[r * BK + j];
            if (!is_masked(s)) {
                m_new = max(m_new, s);
            }
        }
        let corr = exp(m_run - m_new);
        l_run *= corr;
        a0 *= corr; a1 *= corr; a2 *= corr; a3 *= corr;
        a4 *= corr; a5 *= corr; a6 *= corr; a7 *= corr;
        for (var j = 0u; j < BK; j++) {
            let s = ss[r * BK + j];
            if (is_masked(s)) {
                continue;
            }
            let pj = exp(s - m_new);
            l_run += pj;
            a0 += pj * v4(j, lane, 0u);
            if (NV > 1u) { a1 += pj * v4(j, lane, 1u); }
            if (NV > 2u) { a2 += pj * v4(j, lane, 2u); }
            if (NV > 3u) { a3 += pj * v4(j, lane, 3u); }
            if (NV > 4u) { a4 += pj * v4(j, lane, 4u); }
            if (NV > 5u) { a5 += pj * v4(j, lane, 5u); }
            if (NV > 6u) { a6 += pj * v4(j, lane, 6u); }
            if (NV > 7u) { a7 += pj * v4(j, lane, 7u); }
        }
        m_run = m_new;
        workgroupBarrier();
    }

    if (qi < p.lq) {
        var inv = 0.0;  // fully masked row: 0, as torch
        if (l_run > 0.0) {
            inv = 1.0 / l_run;
        }
        let obase = (bh * p.lq + qi) * DV;
        var fin = array<vec4<f32>, 8>(a0, a1, a2, a3, a4, a5, a6, a7);  // once: a runtime index is fine here
        for (var c = 0u; c < NOC; c++) {
            let d = lane + c * TPQ;
            if (d < DV) {
                out[obase + d] = T(fin[c / 4u][c % 4u] * inv);
            }
        }
    }
}

// ------------------------------------------------------------------ decode

override DD: u32 = 64u;    // q/k head dim
override DDV: u32 = 64u;   // v head dim
override CH: u32 = 256u;   // keys per split
const DWG = 64u;

// per split: [max, sum, out[DDV]] (unnormalized), f32
@group(0) @binding(6) var<storage, read_write> part: array<f32>;

var<workgroup> dq: array<f32, DD>;   // scaled query
var<workgroup> dp: array<f32, CH>;   // scores, then probabilities (decode and decode_cache)

// row_max / row_sum over the 64-thread workgroup of decode and decode_cache
const ROW_WG: u32 = DWG;
// #include row_reduce

// The softmax of one split's scores, in place in dp[0..n): given each thread's max over the
// unmasked scores it wrote, returns (the split's max m, its sum l of exp(score - m)) to every
// thread; dp then holds exp(score - m), 0 for a masked key. Shared by decode and decode_cache.
fn split_softmax(lmax: f32, n: u32, t: u32) -> vec2<f32> {
    let m = row_max(lmax, t);
    var lsum = 0.0;
    for (var j = t; j < n; j += DWG) {
        let s = dp[j];
        var pj = 0.0;
        if (!is_masked(s)) {
            pj = exp(s - m);
        }
        dp[j] = pj;
        lsum += pj;
    }
    return vec2<f32>(m, row_sum(lsum, t));
}

@compute @workgroup_size(DWG)
fn decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) t: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.n_groups) {
        return;
    }
    let row = g / p.n_split;  // (b, h, i) flattened
    let sp = g % p.n_split;
    let bh = row / p.lq;
    let i = row % p.lq;
    let b = bh / p.h;
    let hh = bh % p.h;
    let k0 = sp * CH;
    var kend = min(k0 + CH, p.lk);
    if (p.causal != 0u) {
        kend = min(kend, i + 1u);  // a split past the query's position sees nothing
    }
    let n = select(0u, kend - k0, kend > k0);
    let moff = b * p.m_sb + hh * p.m_sh + i * p.m_si;
    let kvbase = bh * p.lk + k0;

    for (var d = t; d < DD; d += DWG) {
        dq[d] = f32(q[row * DD + d]) * p.scale;
    }
    workgroupBarrier();

    var lmax = NEG_MAX;
    for (var j = t; j < n; j += DWG) {
        var dot = 0.0;
        let kb = (kvbase + j) * DD;
        for (var d = 0u; d < DD; d++) {
            dot += dq[d] * f32(k[kb + d]);
        }
        let s = add_mask(dot, moff, k0 + j);
        dp[j] = s;
        if (!is_masked(s)) {
            lmax = max(lmax, s);
        }
    }
    let ml = split_softmax(lmax, n, t);
    let m = ml.x;
    let l = ml.y;

    // threads over output columns: v rows are read coalesced
    let pbase = g * (DDV + 2u);
    for (var d = t; d < DDV; d += DWG) {
        var o = 0.0;
        for (var j = 0u; j < n; j++) {
            o += dp[j] * f32(v[(kvbase + j) * DDV + d]);
        }
        if (p.n_split == 1u) {
            var inv = 0.0;  // fully masked row: 0, as torch
            if (l > 0.0) {
                inv = 1.0 / l;
            }
            out[row * DDV + d] = T(o * inv);
        } else {
            part[pbase + 2u + d] = o;
        }
    }
    if (t == 0u && p.n_split > 1u) {
        part[pbase] = m;
        part[pbase + 1u] = l;
    }
}

// combine: the split partials of each row merged (shaders/lib/splitk_combine.wgsl).
// combine binds (part, out, params) at 0..2: layout="auto" and Runtime.bind_group number
// bindings from 0, and no entry point uses both these and the ones above.
@group(0) @binding(0) var<storage, read> cpart: array<f32>;
@group(0) @binding(1) var<storage, read_write> cout: array<T>;
@group(0) @binding(2) var<uniform> cp: Params;

fn partial_at(i: u32) -> f32 { return cpart[i]; }

// #include splitk_combine

@compute @workgroup_size(64)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) t: u32) {
    let x = (wid.x + wid.y * nwg.x) * 64u + t;
    if (x >= cp.n_groups) {
        return;
    }
    let row = x / DDV;
    let d = x % DDV;
    cout[row * DDV + d] = T(splitk_combine(row * cp.n_split * (DDV + 2u), cp.n_split, DDV, d));
}

// ------------------------------------------------------------------ decode_cache
// The resident decoder's attention (wsvk/resident/plan.py): one query per column (a sequence of
// the batch) over that sequence's KV cache, split over keys (partials out, merged by the next
// GEMV's combine prologue in shaders/matmul.wgsl). One 64-thread workgroup per (column, head,
// split of CH keys). The step buffer holds the column count at word 0, the splits per head of this
// step's grid at word 1 (self-attention), and from word 4 one entry of `ss` words per column:
// [slot, pos, token ids...]. The query of head h is src[c * src_stride + h * DH ..], RoPE'd at
// pos when ROPE, scaled by `scale`. SELF: src is the column's fused qkv row [3W]; the workgroup
// whose split holds pos first writes the new key (RoPE'd) and value into the slot's caches, and
// the keys stop at pos + 1 (whisperspeech's additive -inf mask over its fixed-size cache: the
// masked keys contribute exactly 0). Cross: all L keys of the slot's encoder output.
// WT: the caches' storage type (f32 or f16); everything else f32.

override DH: u32 = 64u;
override SELF: bool = false;
override ROPE: bool = false;

struct AP { NH: u32, L: u32, W: u32, MAXS: u32, nsplit: u32, P: u32, scale: f32, src_stride: u32, ss: u32 }

@group(0) @binding(0) var<storage, read> a_step: array<u32>;
@group(0) @binding(1) var<storage, read> a_src: array<f32>;          // [cols, src_stride]: q or qkv
@group(0) @binding(2) var<storage, read_write> a_kc: array<WT>;      // [slots, NH, L, DH]
@group(0) @binding(3) var<storage, read_write> a_vc: array<WT>;      // [slots, NH, L, DH]
@group(0) @binding(4) var<storage, read> a_rope: array<f32>;         // cos [P, DH] then sin [P, DH]
@group(0) @binding(5) var<storage, read_write> a_part: array<f32>;   // [cols, NH, MAXS, DH + 2]
@group(0) @binding(6) var<uniform> ap: AP;

var<workgroup> cq: array<f32, DH>;

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
fn cache_key_dot(kb: u32) -> f32 {
    var s = 0.0;
    var d = 0u;
    for (; d + 8u <= DH; d += 8u) {
        let k0 = vec4<f32>(f32(a_kc[kb + d]), f32(a_kc[kb + d + 1u]), f32(a_kc[kb + d + 2u]), f32(a_kc[kb + d + 3u]));
        let k1 = vec4<f32>(f32(a_kc[kb + d + 4u]), f32(a_kc[kb + d + 5u]), f32(a_kc[kb + d + 6u]), f32(a_kc[kb + d + 7u]));
        s += dot(k0, vec4<f32>(cq[d], cq[d + 1u], cq[d + 2u], cq[d + 3u]))
           + dot(k1, vec4<f32>(cq[d + 4u], cq[d + 5u], cq[d + 6u], cq[d + 7u]));
    }
    for (; d < DH; d++) { s += cq[d] * f32(a_kc[kb + d]); }
    return s;
}

@compute @workgroup_size(64)
fn decode_cache(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) t: u32) {
    var gs = ap.nsplit;  // splits per head in this grid
    if (SELF) { gs = a_step[1]; }
    let g = wid.x + wid.y * nwg.x;
    let c = g / (ap.NH * gs);
    if (c >= a_step[0]) { return; }  // uniform per workgroup
    let e = 4u + c * ap.ss;
    let slot = a_step[e];
    let pos = a_step[e + 1u];
    var valid = ap.L;
    var ns = ap.nsplit;
    if (SELF) { valid = pos + 1u; ns = (valid + CH - 1u) / CH; }
    let h = (g / gs) % ap.NH;
    let sp = g % gs;
    if (sp >= ns) { return; }
    let k0 = sp * CH;
    let n = min(k0 + CH, valid) - k0;
    let qb = c * ap.src_stride + h * DH;
    let cache = (slot * ap.NH + h) * ap.L;  // the slot's head h, in rows of DH

    for (var d = t; d < DH; d += DWG) { cq[d] = rope_at(qb, d, pos) * ap.scale; }
    if (SELF && pos >= k0 && pos < k0 + CH) {
        let cb = (cache + pos) * DH;
        for (var d = t; d < DH; d += DWG) {
            a_kc[cb + d] = WT(rope_at(qb + ap.W, d, pos));
            a_vc[cb + d] = WT(a_src[qb + 2u * ap.W + d]);
        }
    }
    storageBarrier();  // the new key/value are read below by other threads of this workgroup
    workgroupBarrier();

    let kvb = (cache + k0) * DH;
    var lmax = NEG_MAX;
    for (var j = t; j < n; j += DWG) {
        let s = cache_key_dot(kvb + j * DH);
        dp[j] = s;
        lmax = max(lmax, s);
    }
    let ml = split_softmax(lmax, n, t);  // no key here is masked: the check never holds
    let m = ml.x;
    let l = ml.y;
    let pb = ((c * ap.NH + h) * ap.MAXS + sp) * (DH + 2u);
    for (var d = t; d < DH; d += DWG) {
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
