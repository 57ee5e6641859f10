// The resident decoder's input embedding (wsvk/kernels/embed.py), one column per sequence of the
// batch: x[c, :] = sum_q table[q, tok_q] (+ pos_emb[pos]) (+ extra[slot]), summed in
// whisperspeech's order. The step buffer holds from word 4 one entry of `ss` words per column:
// [slot, pos, token ids...]. WT (prepended by the runtime): the tables' storage type.

struct EmbP { W: u32, V: u32, NQ: u32, flags: u32, ss: u32 }  // flags: 1 = add pos_emb[pos], 2 = add extra

@group(0) @binding(0) var<storage, read> e_step: array<u32>;
@group(0) @binding(1) var<storage, read> e_tab: array<WT>;     // [NQ, V, W]
@group(0) @binding(2) var<storage, read> e_pos: array<WT>;     // [P, W]
@group(0) @binding(3) var<storage, read> e_extra: array<f32>;  // [slots, W]
@group(0) @binding(4) var<storage, read_write> e_out: array<f32>;  // [cols, W]
@group(0) @binding(5) var<uniform> ep: EmbP;

// grid: (ceil(W / 256), columns)
@compute @workgroup_size(256)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let c = gid.y;
    if (i >= ep.W || c >= e_step[0]) { return; }
    let e = 4u + c * ep.ss;
    var v = 0.0;
    for (var q = 0u; q < ep.NQ; q++) {
        let tok = min(e_step[e + 2u + q], ep.V - 1u);  // the host validates ids; never read out of bounds
        v += f32(e_tab[(q * ep.V + tok) * ep.W + i]);
    }
    if ((ep.flags & 1u) != 0u) { v += f32(e_pos[e_step[e + 1u] * ep.W + i]); }
    if ((ep.flags & 2u) != 0u) { v += e_extra[e_step[e] * ep.W + i]; }
    e_out[c * ep.W + i] = v;
}
