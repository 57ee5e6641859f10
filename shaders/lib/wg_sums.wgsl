// Included by kernel files (`// #include wg_sums`): up to 32 partial sums per thread of a
// 256-thread workgroup -> the workgroup totals. Used by the GEMVs of matmul.wgsl and decoder.wgsl.
// WGSL has no generics, so the partials always travel as array<f32, SUMS_MAX> with a count:
// callers with fewer sums leave the tail unused, and since the count is an override-derived
// constant the compiler unrolls the loops and keeps just the used entries in registers.
//
// SUBGROUPS: every thread holds partials of the same sums, so a subgroupAdd is right whatever
// the subgroup size or layout; subgroup leaders then claim slots with an atomic counter (no
// assumption on how invocations map to subgroups) and the slots are added in the order of their
// leaders' invocation index, so the result is the same run after run (the claiming order is
// not). Otherwise a shared-memory tree, 8 sums at a time. Lines ending in "// [sg]" use subgroup builtins: the runtime drops them on adapters
// without the feature. The entry point sets sg_inv from its subgroup_invocation_id ([sg] lines).

override SUBGROUPS: bool = false;

const SUMS_MAX: u32 = 32u;
const SUMS_WG: u32 = 256u;                    // the callers' workgroup size
var<workgroup> sums_red: array<f32, 2048>;    // 64 subgroup slots x 32 sums, or 256 threads x 8 sums
var<workgroup> sums_slots: atomic<u32>;
var<workgroup> sums_owner: array<u32, 64>;    // slot -> its leader's invocation index
var<workgroup> sums_order: array<u32, 64>;    // rank of the leader's index -> slot
var<private> sg_inv: u32;                     // subgroup_invocation_id

// Thread t < ns gets sum number t (ns <= SUMS_MAX); all threads must call it (it has barriers).
// The subgroup path returns without a final barrier: a caller that writes sums_red or calls it
// again needs a workgroupBarrier() first.
fn wg_sums(acc_in: array<f32, SUMS_MAX>, ns: u32, t: u32) -> f32 {
    var acc = acc_in;
    var total = 0.0;
    if (SUBGROUPS) {
        // Workgroup memory is not reliably zeroed (lavapipe keeps it from the previous workgroup).
        if (t == 0u) { atomicStore(&sums_slots, 0u); }
        workgroupBarrier();  // also rejoins lanes that left their loops early: subgroup ops need them all
        for (var j = 0u; j < ns; j++) { acc[j] = subgroupAdd(acc[j]); }  // [sg]
        var slot = 0u;
        if (sg_inv == 0u) {
            slot = atomicAdd(&sums_slots, 1u);  // < 64: subgroups have at least 4 invocations
            sums_owner[slot] = t;
            for (var j = 0u; j < ns; j++) { sums_red[slot * SUMS_MAX + j] = acc[j]; }
        }
        workgroupBarrier();
        let nslots = atomicLoad(&sums_slots);
        if (sg_inv == 0u) {
            var rank = 0u;
            for (var q = 0u; q < nslots; q++) { rank += select(0u, 1u, sums_owner[q] < t); }
            sums_order[rank] = slot;
        }
        workgroupBarrier();
        if (t < ns) {
            for (var r = 0u; r < nslots; r++) { total += sums_red[sums_order[r] * SUMS_MAX + t]; }
        }
    } else {
        // chunks of 8 sums: sums_red[thread * 8 + c], a tree over the threads
        for (var c0 = 0u; c0 < ns; c0 += 8u) {
            let nc = min(ns - c0, 8u);
            for (var c = 0u; c < 8u; c++) {
                sums_red[t * 8u + c] = select(0.0, acc[min(c0 + c, SUMS_MAX - 1u)], c < nc);
            }
            workgroupBarrier();
            for (var h = SUMS_WG / 2u; h > 0u; h >>= 1u) {
                if (t < h) {
                    for (var c = 0u; c < nc; c++) { sums_red[t * 8u + c] += sums_red[(t + h) * 8u + c]; }
                }
                workgroupBarrier();
            }
            if (t >= c0 && t < c0 + nc) { total = sums_red[t - c0]; }
            workgroupBarrier();  // the next chunk overwrites sums_red
        }
    }
    return total;
}
