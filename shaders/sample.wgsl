// Sampling helpers over logits (M, V): argmax and top-k, each in two passes so a vocabulary row of
// 152k entries spreads over many workgroups and the CPU only ever reads k entries per row.
//
// Order: larger logit first, ties to the lower index (candidate_before in reduce.wgsl); -inf
// entries order like any value (after every finite one). NaN logits have no defined place.
//
// argmax_chunks (grid chunks x M): each workgroup reduces CHUNK entries of a row to one candidate.
// argmax_rows   (grid M):          each workgroup reduces a row's chunk candidates to its index.
// topk_chunks   (grid chunks x M): each workgroup stages CHUNK entries in workgroup memory and
//                                  writes their k best in order (k rounds of a workgroup argmax,
//                                  each round taking the best entry after the previous pick), plus
//                                  the chunk's softmax statistics (max, sum of exp(v - max)).
// topk_rows     (grid M):          the same k rounds over the row's chunks * k candidates, and the
//                                  row's log-sum-exp from the chunk statistics.
// Candidates past the end of a short chunk carry index NO_INDEX and never win.
//! include grid.wgsl
//! include reduce.wgsl

struct Params {
  rows: u32,           // M: rows of logits
  cols: u32,           // V: entries per row
  k: u32,              // candidates kept per row (argmax: 1)
  chunks: u32,         // ceil(V / CHUNK): chunk candidates per row
  logits_offset: u32,  // first element of logits (elements)
  values_offset: u32,  // first element of values (elements)
  indices_offset: u32, // first element of indices (elements)
  lse_offset: u32,     // first element of lse (elements)
}

override WG: u32 = 256;
override CHUNK: u32 = 2048; // entries of a row per first-pass workgroup

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;             // (M, V)
@group(0) @binding(2) var<storage, read_write> cand_values: array<f32>;  // (M, chunks, k) scratch
@group(0) @binding(3) var<storage, read_write> cand_indices: array<u32>; // (M, chunks, k) scratch: column, or NO_INDEX
@group(0) @binding(4) var<storage, read_write> cand_stats: array<f32>;   // (M, chunks, 2) scratch: (max, sum exp)
@group(0) @binding(5) var<storage, read_write> values: array<f32>;       // (M, k) top-k logits, best first
@group(0) @binding(6) var<storage, read_write> indices: array<u32>;      // (M, k) their columns (argmax: (M))
@group(0) @binding(7) var<storage, read_write> lse: array<f32>;          // (M) log(sum(exp(row)))

var<workgroup> stage: array<f32, CHUNK>; // (CHUNK) topk_chunks: the chunk's logits

@compute @workgroup_size(WG)
fn argmax_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let chunk = wid.x;
  let row = wid.y;
  let start = chunk * CHUNK;
  let n = min(CHUNK, params.cols - start);
  let src = params.logits_offset + row * params.cols + start;
  var best = Candidate(0.0, NO_INDEX);
  for (var j = lid; j < n; j += WG) {
    let c = Candidate(logits[src + j], start + j);
    if (candidate_before(c, best)) { best = c; }
  }
  best = workgroup_best(lid, best);
  if (lid == 0u) {
    cand_values[row * params.chunks + chunk] = best.value;
    cand_indices[row * params.chunks + chunk] = best.index;
  }
}

@compute @workgroup_size(WG)
fn argmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
  let row = grid_group(wid, nwg);
  if (row >= params.rows) { return; }
  let first = row * params.chunks;
  var best = Candidate(0.0, NO_INDEX);
  for (var j = lid; j < params.chunks; j += WG) {
    let c = Candidate(cand_values[first + j], cand_indices[first + j]);
    if (candidate_before(c, best)) { best = c; }
  }
  best = workgroup_best(lid, best);
  if (lid == 0u) {
    indices[params.indices_offset + row] = best.index;
  }
}

@compute @workgroup_size(WG)
fn topk_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let chunk = wid.x;
  let row = wid.y;
  let start = chunk * CHUNK;
  let n = min(CHUNK, params.cols - start);
  let src = params.logits_offset + row * params.cols + start;
  var stats = softmax_stats_empty();
  for (var j = lid; j < n; j += WG) {
    let v = logits[src + j];
    stage[j] = v;
    stats = softmax_stats_push(stats, v);
  }
  // The reduction's barriers also make the staged chunk visible to the whole workgroup.
  stats = workgroup_softmax_stats(lid, stats);
  let slot = row * params.chunks + chunk;
  if (lid == 0u) {
    cand_stats[2u * slot] = stats.x;
    cand_stats[2u * slot + 1u] = stats.y;
  }
  var previous = Candidate(0.0, NO_INDEX);
  for (var r = 0u; r < params.k; r++) {
    var best = Candidate(0.0, NO_INDEX);
    if (r == 0u || previous.index != NO_INDEX) {
      for (var j = lid; j < n; j += WG) {
        let c = Candidate(stage[j], start + j);
        if ((r == 0u || candidate_before(previous, c)) && candidate_before(c, best)) { best = c; }
      }
    }
    best = workgroup_best(lid, best);
    if (lid == 0u) {
      cand_values[slot * params.k + r] = best.value;
      cand_indices[slot * params.k + r] = best.index;
    }
    previous = best;
  }
}

@compute @workgroup_size(WG)
fn topk_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
  let row = grid_group(wid, nwg);
  if (row >= params.rows) { return; }
  let first = row * params.chunks;
  var stats = softmax_stats_empty();
  for (var j = lid; j < params.chunks; j += WG) {
    stats = softmax_stats_merge(stats, vec2<f32>(cand_stats[2u * (first + j)], cand_stats[2u * (first + j) + 1u]));
  }
  stats = workgroup_softmax_stats(lid, stats);
  if (lid == 0u) {
    // A row of only -inf has sum 0: its log-sum-exp is -inf (written as bits: WGSL has no inf literal).
    lse[params.lse_offset + row] = bitcast<f32>(select(bitcast<u32>(stats.x + log(stats.y)), 0xff800000u, stats.y == 0.0));
  }
  let count = params.chunks * params.k;
  let base = first * params.k;
  var previous = Candidate(0.0, NO_INDEX);
  for (var r = 0u; r < params.k; r++) {
    var best = Candidate(0.0, NO_INDEX);
    if (r == 0u || previous.index != NO_INDEX) {
      for (var j = lid; j < count; j += WG) {
        let c = Candidate(cand_values[base + j], cand_indices[base + j]);
        if ((r == 0u || candidate_before(previous, c)) && candidate_before(c, best)) { best = c; }
      }
    }
    best = workgroup_best(lid, best);
    if (lid == 0u) {
      values[params.values_offset + row * params.k + r] = best.value;
      indices[params.indices_offset + row * params.k + r] = best.index;
    }
    previous = best;
  }
}
