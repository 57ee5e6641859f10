// Included by kernel files (`// #include splitk_combine`): the merge of split-K attention partials.
// A split s of one (query, head) row wrote [m_s, l_s, o_s[0..dv)] (running max, softmax sum,
// unnormalized output) at base + s * (dv + 2); the row's output element d is
//   sum_s e^(m_s - M) o_s[d] / sum_s e^(m_s - M) l_s,  M = max of m_s over the splits with l_s > 0,
// and 0 when every key was masked (as torch). The including file defines
// `fn partial_at(i: u32) -> f32` (its partials buffer), since WGSL functions cannot take
// storage pointers portably. shaders/matmul.wgsl's GEMV merges these partials too, with weights
// staged once per head (a hot path): it shares splitk_weight, not splitk_combine.

// split s's weight e^(m_s - M), 0 for a split whose keys were all masked (l_s = 0)
fn splitk_weight(m: f32, l: f32, mx: f32) -> f32 { return select(0.0, exp(m - mx), l > 0.0); }

fn splitk_combine(base: u32, n_split: u32, dv: u32, d: u32) -> f32 {
    let stride = dv + 2u;
    var mx = -3.40282347e38;
    for (var s = 0u; s < n_split; s++) {
        if (partial_at(base + s * stride + 1u) > 0.0) { mx = max(mx, partial_at(base + s * stride)); }
    }
    var num = 0.0;
    var den = 0.0;
    for (var s = 0u; s < n_split; s++) {
        let o = base + s * stride;
        let l = partial_at(o + 1u);
        if (l > 0.0) {  // an empty split's output is never read
            let w = splitk_weight(partial_at(o), l, mx);
            num += w * partial_at(o + 2u + d);
            den += w * l;
        }
    }
    return select(0.0, num / den, den > 0.0);
}
