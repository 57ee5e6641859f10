// Included by kernel files (`// #include wg_sums`): up to 8 partial sums per thread of a
// 256-thread workgroup -> the workgroup totals. Used by the GEMVs of matmul.wgsl and decoder.wgsl.
// The partials travel as two vec4s (sums 0-3, 4-7) and are only ever indexed by constants: a
// private array indexed at run time stays in slow local memory on some drivers (measured on an
// H100: it made these kernels several times slower), and WGSL cannot ask for an unrolled loop.
//
// SUBGROUPS: every thread holds partials of the same sums, so a subgroupAdd is right whatever
// the subgroup size or layout; subgroup leaders then claim slots with an atomic counter (no
// assumption on how invocations map to subgroups) and the slots are added in the order of their
// leaders' invocation index, so the result is the same run after run (the claiming order is
// not). Otherwise a shared-memory tree over the threads. Lines ending in "// [sg]" use subgroup
// builtins: the runtime drops them on adapters without the feature. The entry point sets sg_inv
// from its subgroup_invocation_id ([sg] lines).

override SUBGROUPS: bool = false;

const SUMS_WG: u32 = 256u;                        // the callers' workgroup size
var<workgroup> sums_red: array<vec4<f32>, 256>;   // 64 subgroup slots or 128 threads x 2 vec4s
var<workgroup> sums_slots: atomic<u32>;
var<workgroup> sums_owner: array<u32, 64>;        // slot -> its leader's invocation index
var<workgroup> sums_order: array<u32, 64>;        // rank of the leader's index -> slot
var<private> sg_inv: u32;                         // subgroup_invocation_id

// Thread t < 8 gets sum number t (sums 0-3 in lo, 4-7 in hi); all threads must call it (it has
// barriers). Returns without a final barrier: a caller that writes sums_red or calls it again
// needs a workgroupBarrier() first.
fn wg_sums(lo_in: vec4<f32>, hi_in: vec4<f32>, t: u32) -> f32 {
    var lo = lo_in;
    var hi = hi_in;
    var total = 0.0;
    if (SUBGROUPS) {
        // Workgroup memory is not reliably zeroed (lavapipe keeps it from the previous workgroup).
        if (t == 0u) { atomicStore(&sums_slots, 0u); }
        workgroupBarrier();  // also rejoins lanes that left their loops early: subgroup ops need them all
        lo = subgroupAdd(lo);  // [sg]
        hi = subgroupAdd(hi);  // [sg]
        var slot = 0u;
        if (sg_inv == 0u) {
            slot = atomicAdd(&sums_slots, 1u);  // < 64: subgroups have at least 4 invocations
            sums_owner[slot] = t;
            sums_red[2u * slot] = lo;
            sums_red[2u * slot + 1u] = hi;
        }
        workgroupBarrier();
        let nslots = atomicLoad(&sums_slots);
        if (sg_inv == 0u) {
            var rank = 0u;
            for (var q = 0u; q < nslots; q++) { rank += select(0u, 1u, sums_owner[q] < t); }
            sums_order[rank] = slot;
        }
        workgroupBarrier();
        if (t < 8u) {
            for (var r = 0u; r < nslots; r++) { total += sums_red[2u * sums_order[r] + t / 4u][t % 4u]; }
        }
    } else {
        // a tree in registers: each level the upper half of the threads hands its sums down
        for (var h = SUMS_WG / 2u; h > 0u; h >>= 1u) {
            if (t >= h && t < 2u * h) {
                sums_red[2u * (t - h)] = lo;
                sums_red[2u * (t - h) + 1u] = hi;
            }
            workgroupBarrier();
            if (t < h) {
                lo += sums_red[2u * t];
                hi += sums_red[2u * t + 1u];
            }
            workgroupBarrier();
        }
        if (t == 0u) {
            sums_red[0] = lo;
            sums_red[1] = hi;
        }
        workgroupBarrier();
        if (t < 8u) { total = sums_red[t / 4u][t % 4u]; }
    }
    return total;
}
