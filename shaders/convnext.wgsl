// The Vocos backbone's convolutions (wsvk/kernels/convnext.py), kernel size 7, "same" padding (3 zeros each side), bias.
// Activations are time-major [T, C] (the layout the linear layers read). Storage types are
// aliases prepended by wsvk/kernels/convnext.py (f32 or f16, WSVK_PRECISION): WT conv weights,
// YT the previous block's output y, OT the norm's output; math, the residual stream, biases,
// norm parameters and the norm statistics are f32.
//
// embed:       the backbone's input conv (dense, Cin -> Cout), reading features channel-major
//              [Cin, T] as vocos passes them, or (GATHER) summing codebook rows on the fly:
//              x[t, i] = sum_q cb[codes[q, t] + q * bins, i]  (vocos' codes_to_features).
// dwconv_norm: one ConvNeXt block's depthwise conv fused with the LayerNorm that follows it.
//              The previous block's residual add (r + y) is folded into the loads, and the sum is
//              written out as the next residual. With DWCONV off it is a plain (residual add +)
//              LayerNorm: the norm after the embedding and the backbone's final norm.

const K: u32 = 7u;
const PAD: u32 = 3u;

// ---------------------------------------------------------------- embed (dense conv)

override GATHER: bool = false;

struct EmbedParams { T: u32, Cin: u32, Cout: u32, Q: u32, bins: u32, tiles_o: u32, n_tiles: u32, _p: u32 }

@group(0) @binding(0) var<storage, read> ex: array<f32>;       // [Cin, T] features, or [Q*bins, Cin] codebooks
@group(0) @binding(1) var<storage, read> ecodes: array<i32>;   // [Q, T] (GATHER only; any buffer otherwise)
@group(0) @binding(2) var<storage, read> ew: array<WT>;        // [Cin, K, Cout]: w[o, i, k] at (i*K + k)*Cout + o
@group(0) @binding(3) var<storage, read> eb: array<f32>;       // [Cout]
@group(0) @binding(4) var<storage, read_write> eout: array<f32>;  // [T, Cout]
@group(0) @binding(5) var<uniform> ep: EmbedParams;

const TO: u32 = 64u;            // output channels per workgroup (one per thread column)
const TT: u32 = 16u;            // frames per workgroup
const TJ: u32 = 4u;             // frames per thread
const IC: u32 = 16u;            // input channels staged per step
const XR: u32 = TT + K - 1u;    // staged frames incl. the halo
var<workgroup> xs: array<f32, 352>;  // [XR, IC] = 22 * 16

fn embed_input(t: u32, i: u32) -> f32 {
    if (GATHER) {
        var s = 0.0;
        for (var q = 0u; q < ep.Q; q++) {
            let row = u32(ecodes[q * ep.T + t]) + q * ep.bins;
            s += ex[row * ep.Cin + i];
        }
        return s;
    }
    return ex[i * ep.T + t];
}

@compute @workgroup_size(256)
fn embed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let tile = wid.x + wid.y * nwg.x;
    if (tile >= ep.n_tiles) { return; }  // uniform per workgroup
    let o0 = (tile % ep.tiles_o) * TO;
    let t0 = (tile / ep.tiles_o) * TT;
    let lo = lid % TO;
    let lt = (lid / TO) * TJ;  // first of this thread's frames inside the tile
    let o = o0 + lo;
    var acc = vec4<f32>();  // frames lt + 0..3 (TJ = 4): a vector, not an array indexed in the loop
    for (var i0 = 0u; i0 < ep.Cin; i0 += IC) {
        workgroupBarrier();  // the previous step's reads of xs are done
        for (var e = lid; e < XR * IC; e += 256u) {
            let r = e % XR;          // frame fastest: contiguous reads of channel-major features
            let ii = e / XR;
            let i = i0 + ii;
            var v = 0.0;
            if (t0 + r >= PAD && t0 + r - PAD < ep.T && i < ep.Cin) { v = embed_input(t0 + r - PAD, i); }
            xs[r * IC + ii] = v;
        }
        workgroupBarrier();
        let n_i = min(IC, ep.Cin - i0);
        if (o < ep.Cout) {
            for (var ii = 0u; ii < n_i; ii++) {
                let wbase = (i0 + ii) * K * ep.Cout + o;
                for (var k = 0u; k < K; k++) {
                    let w = f32(ew[wbase + k * ep.Cout]);
                    let xb = (lt + k) * IC + ii;
                    acc = fma(vec4<f32>(w), vec4<f32>(xs[xb], xs[xb + IC], xs[xb + 2u * IC], xs[xb + 3u * IC]), acc);
                }
            }
        }
    }
    if (o < ep.Cout) {
        var a = acc;  // once per thread: a runtime index here costs nothing that matters
        for (var j = 0u; j < TJ; j++) {
            let t = t0 + lt + j;
            if (t < ep.T) { eout[t * ep.Cout + o] = a[j] + eb[o]; }
        }
    }
}

// ---------------------------------------------------------------- depthwise conv + LayerNorm

override DWCONV: bool = true;     // depthwise conv before the norm (off: norm only)
override RESID: bool = true;      // the input is r + y (previous residual + previous block output)
override WRITE_RES: bool = true;  // store r + y as the next block's residual
override STASH: bool = true;      // OT is f32: keep the pre-norm values in nout between passes
                                  // (f16 would round them before the statistics: recompute then)

struct NormParams { T: u32, C: u32, eps: f32, _p: u32 }

@group(0) @binding(0) var<storage, read> nr: array<f32>;     // [T, C] residual stream
@group(0) @binding(1) var<storage, read> ny: array<YT>;      // [T, C] previous block output (RESID)
@group(0) @binding(2) var<storage, read> nw: array<WT>;      // [K, C] depthwise weights w[c, 0, k] at k*C + c
@group(0) @binding(3) var<storage, read> ncb: array<f32>;    // [C] conv bias
@group(0) @binding(4) var<storage, read> ng: array<f32>;     // [C] norm scale (AdaLayerNorm row or LayerNorm weight)
@group(0) @binding(5) var<storage, read> nb: array<f32>;     // [C] norm shift
@group(0) @binding(6) var<storage, read_write> nres: array<f32>;  // [T, C] next residual (WRITE_RES)
@group(0) @binding(7) var<storage, read_write> nout: array<OT>;   // [T, C]
@group(0) @binding(8) var<uniform> np: NormParams;

const ROW_WG: u32 = 256u;

// #include row_reduce
// #include layer_norm

fn stream(t: u32, c: u32) -> f32 {
    let i = t * np.C + c;
    if (RESID) { return nr[i] + f32(ny[i]); }
    return nr[i];
}

// the value before the norm at (t, c): the depthwise conv of the stream, or the stream itself
fn pre_norm(t: u32, c: u32) -> f32 {
    if (!DWCONV) { return stream(t, c); }
    // torch's conv1d: bias + sum_k w[k] x[t + k - 3], zeros outside [0, T)
    var acc = 0.0;
    for (var k = 0u; k < K; k++) {
        if (t + k >= PAD && t + k - PAD < np.T) {
            acc = fma(f32(nw[k * np.C + c]), stream(t + k - PAD, c), acc);
        }
    }
    return acc + ncb[c];
}

fn stashed(base: u32, t: u32, c: u32) -> f32 {
    if (STASH) { return f32(nout[base + c]); }
    return pre_norm(t, c);
}

// the layer norm's loads (shaders/lib/layer_norm.wgsl): the first writes the residual and the stash
fn ln_load(t: u32, c: u32) -> f32 {
    let i = t * np.C + c;
    let v = pre_norm(t, c);
    if (WRITE_RES) { nres[i] = stream(t, c); }
    if (STASH) { nout[i] = OT(v); }  // exact (OT = f32), re-read by this same thread in ln_reload
    return v;
}
fn ln_reload(t: u32, c: u32) -> f32 { return stashed(t * np.C, t, c); }

@compute @workgroup_size(256)
fn dwconv_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= np.T) { return; }  // uniform per workgroup
    let base = t * np.C;
    let st = ln_stats(t, np.C, np.eps, lid);
    for (var c = lid; c < np.C; c += ROW_WG) {
        nout[base + c] = OT(ln_norm(stashed(base, t, c), st) * ng[c] + nb[c]);
    }
}
