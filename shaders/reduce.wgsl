// Workgroup reductions shared by the row-wise kernels (softmax, norm, sample).
//
// Contract for the including shader:
// - it declares `override WG: u32` and runs @workgroup_size(WG); the TS module enforces a power of
//   two (checkWorkgroupSize), which the halving loops below rely on;
// - every invocation of the workgroup calls a helper, from uniform control flow (they hold barriers);
// - each helper ends with reduce_done(), so the next call may reuse the scratch arrays at once.
// An entry point that uses no helper allocates none of this workgroup memory.

var<workgroup> reduce_f32: array<f32, WG>; // (WG) partial sums, maxima or candidate values
var<workgroup> reduce_u32: array<u32, WG>; // (WG) candidate indices

// Called once every invocation has read the result out of the scratch arrays, before they are
// reused. storageBarrier() adds a memory fence: Mesa's llvmpipe (the software adapter, Mesa 22.3)
// compiles a bare barrier() as no fence and sank the result's load past it, so lanes 8 and up read
// the next reduction's partial sums. Any shader that reads workgroup memory, then reuses it after a
// barrier, needs the same.
fn reduce_done() {
  storageBarrier();
  workgroupBarrier();
}

fn workgroup_sum(lid: u32, value: f32) -> f32 {
  reduce_f32[lid] = value;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      reduce_f32[lid] = reduce_f32[lid] + reduce_f32[lid + s];
    }
    workgroupBarrier();
  }
  let total = reduce_f32[0];
  reduce_done();
  return total;
}

fn workgroup_max(lid: u32, value: f32) -> f32 {
  reduce_f32[lid] = value;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      reduce_f32[lid] = max(reduce_f32[lid], reduce_f32[lid + s]);
    }
    workgroupBarrier();
  }
  let largest = reduce_f32[0];
  reduce_done();
  return largest;
}

// A (value, index) pair for argmax and top-k. index == NO_INDEX marks "no candidate" (its value is
// ignored), so no infinity constant is needed and -inf logits order like any other value.
const NO_INDEX: u32 = 0xffffffffu;

struct Candidate {
  value: f32,
  index: u32,
}

// The total order argmax and top-k share: larger value first, ties to the lower index, and "no
// candidate" after everything. NaN values have no defined place (WGSL lets compilers assume none).
fn candidate_before(a: Candidate, b: Candidate) -> bool {
  if (a.index == NO_INDEX) {
    return false;
  }
  if (b.index == NO_INDEX) {
    return true;
  }
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

// The first candidate of the workgroup in candidate_before order.
fn workgroup_best(lid: u32, c: Candidate) -> Candidate {
  reduce_f32[lid] = c.value;
  reduce_u32[lid] = c.index;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      let other = Candidate(reduce_f32[lid + s], reduce_u32[lid + s]);
      if (candidate_before(other, Candidate(reduce_f32[lid], reduce_u32[lid]))) {
        reduce_f32[lid] = other.value;
        reduce_u32[lid] = other.index;
      }
    }
    workgroupBarrier();
  }
  let best = Candidate(reduce_f32[0], reduce_u32[0]);
  reduce_done();
  return best;
}

// Running softmax statistics (m, s) of a set of values: m the largest value seen, s = sum exp(v - m).
// The empty set is (F32_LOWEST, 0). A -inf value adds exp(-inf) = 0, so a set of only -inf values
// stays at s == 0: callers test s == 0 for "everything masked". +inf and NaN are not supported.
const F32_LOWEST: f32 = -0x1.fffffep+127f;

fn softmax_stats_empty() -> vec2<f32> {
  return vec2<f32>(F32_LOWEST, 0.0);
}

fn softmax_stats_push(stats: vec2<f32>, v: f32) -> vec2<f32> {
  if (v > stats.x) {
    return vec2<f32>(v, stats.y * exp(stats.x - v) + 1.0);
  }
  return vec2<f32>(stats.x, stats.y + exp(v - stats.x));
}

fn softmax_stats_merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  let m = max(a.x, b.x);
  return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

// The statistics of the whole workgroup's values, given each invocation's own.
fn workgroup_softmax_stats(lid: u32, stats: vec2<f32>) -> vec2<f32> {
  let m = workgroup_max(lid, stats.x);
  return vec2<f32>(m, workgroup_sum(lid, stats.y * exp(stats.x - m)));
}
