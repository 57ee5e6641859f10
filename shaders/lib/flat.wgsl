// Included by kernel files (`// #include flat`): the flat index of invocation `lid` of a
// 256-invocation workgroup whose id is folded over a 2-D grid (flat id = wid.x + wid.y * nwg.x,
// Runtime.grid), so that arrays past 65,535 workgroups work.
fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}
