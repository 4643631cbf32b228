// Workgroup grids larger than the per-dimension limit are split over x and y by the host
// (kernels/shader.ts dispatchGrid); these helpers turn the pair back into one linear index.

// Linear workgroup index for a grid split over x and y.
fn grid_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return wid.x + wid.y * nwg.x;
}

// Linear invocation index when each workgroup covers `wg` consecutive elements.
fn grid_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, wg: u32) -> u32 {
  return grid_group(wid, nwg) * wg + lid;
}
