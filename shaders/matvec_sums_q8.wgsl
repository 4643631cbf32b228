// One thread's partial sums over its share of K on q8 activations (the matvec's q8 tier): the
// workgroup quantises the activation rows to int8 into workgroup memory, a segment of K at a time, by
// ggml's quantize_row_q8_0 rule (after the fused norm, if any: per block of 32, d = amax / 127 and
// q = round(x / d); a fused RMSNorm's 1 / rms, which scales a whole row, is applied to the totals
// instead: the quants are the same, only d lacks the factor); each weight dtype's q8 module serves
// 16 columns of a weight row as int8 quants with a scale and an offset (weight_chunk16), so 16
// products are 4 dot4I8Packed:
//   sum_i W[row, k + i] * a[k + i] ~ d * (scale * sum_i qw[i] * qa[i] + offset * sum_i qa[i]).
// Quantising in every workgroup rather than once per step in a dispatch of its own repeats a little
// arithmetic per workgroup (the activations are read once per workgroup either way, as on f32) and
// keeps the fused decode layer's dispatch count. Every workgroup rounds the same values the same way.
// The quantise loop runs over (row, block) items, not unrolled per row: the shader stays small
// (quick to compile on a software adapter, where each unrolled copy costs seconds).
// Composed with matvec.wgsl or matvec_subgroup.wgsl (which include matvec_common.wgsl), a
// weights_<dtype>_q8.wgsl module, and matvec_plain.wgsl or matvec_fusion.wgsl (normalised,
// SQUARE_ROWS). Call partial_sums from workgroup-uniform control flow: it contains barriers.
// Legend: M activation rows, K input features (K % 32 == 0).
//! include matvec_chunk16.wgsl

// Workgroup memory for one segment's quantised activations: Q8_BLOCKS blocks of 32 columns shared by
// the M rows (Q8_BLOCKS / M blocks each: 6144 columns at M = 1, 768 at M = 8), 6.75 KiB in all
// (kernels/matvec.ts counts it against the adapter's limit as Q8_SEGMENT_BYTES).
const Q8_BLOCKS: u32 = 192u;
var<workgroup> seg_quants: array<vec4<u32>, 2u * Q8_BLOCKS>; // chunk c of row m at m * 2 * row_blocks + c (as Chunk16)
var<workgroup> seg_scales: array<f32, Q8_BLOCKS>;            // block j of row m at m * row_blocks + j

const ONES: u32 = 0x01010101u; // dot4I8Packed(x, ONES) sums x's four int8 lanes

// Quantise block `block` (columns 32 block ..) of activation row m, as the matvec multiplies it
// (normalised), into segment slot `slot`. Returns the sum of the squares of its raw values with
// a fused RMSNorm (SQUARE_ROWS), else 0.
fn quantise_block(m: u32, block: u32, slot: u32) -> f32 {
  var x: array<vec4<f32>, 8>;
  var amax = vec4<f32>(0.0);
  var squares = 0.0;
  for (var i = 0u; i < 8u; i++) {
    let k = 32u * block + 4u * i;
    let raw = raw4(m, k);
    if (SQUARE_ROWS > 0u) { squares += dot(raw, raw); }
    x[i] = normalised(raw, m, k);
    amax = max(amax, abs(x[i]));
  }
  let top = max(max(amax.x, amax.y), max(amax.z, amax.w));
  let inverse = select(0.0, 127.0 / top, top > 0.0); // an all-zero block quantises to zeros
  for (var c = 0u; c < 2u; c++) {
    var q: vec4<u32>;
    for (var i = 0u; i < 4u; i++) { q[i] = pack4xI8(vec4<i32>(round(x[4u * c + i] * inverse))); }
    seg_quants[2u * slot + c] = q;
  }
  seg_scales[slot] = top / 127.0;
  return squares;
}

// acc[r * MAX_M + m] = sum over this thread's chunks of 16 columns (lid, then every WG, in each
// segment) of W[w0 + r, chunk] . qa[m, chunk] d[m, block]: each weight chunk is read once and used for
// all M rows, each quantised chunk once and used for all W_ROWS rows. Integer products are exact; one
// f32 rounding per chunk and row.
fn partial_sums(row0: u32, lid: u32) -> array<f32, MAX_SLOTS> {
  let blocks = params.k / 32u;
  let row_blocks = Q8_BLOCKS / params.m;
  let w0 = first_weight_row(row0);
  let w_end = weight_row_end();
  var acc: array<f32, MAX_SLOTS>;
  // A fused RMSNorm's sums of squares per row: m is computed here, and a computed index into acc
  // could move all of acc out of registers, so they go into acc once, after the loop.
  var squares: array<f32, MAX_M>;
  for (var first = 0u; first < blocks; first += row_blocks) {
    let count = min(row_blocks, blocks - first);
    for (var i = lid; i < params.m * count; i += WG) {
      let m = i / count;
      let j = i % count;
      squares[m] += quantise_block(m, first + j, m * row_blocks + j);
    }
    workgroupBarrier();
    for (var c = lid; c < 2u * count; c += WG) {
      var qa: array<vec4<u32>, MAX_M>;
      var qa_sum: array<f32, MAX_M>;
      var da: array<f32, MAX_M>;
      for (var m = 0u; m < MAX_M; m++) {
        if (m < params.m) {
          let q = seg_quants[2u * m * row_blocks + c];
          qa[m] = q;
          qa_sum[m] = f32(dot4I8Packed(q.x, ONES) + dot4I8Packed(q.y, ONES) + dot4I8Packed(q.z, ONES) + dot4I8Packed(q.w, ONES));
          da[m] = seg_scales[m * row_blocks + c / 2u];
        }
      }
      let k = 32u * first + 16u * c;
      for (var r = 0u; r < W_ROWS; r++) {
        if (w0 + r < w_end) {
          let w = weight_chunk16(w0 + r, k, params.k);
          for (var m = 0u; m < MAX_M; m++) {
            if (m < params.m) {
              let q = qa[m];
              let dot = dot4I8Packed(w.q.x, q.x) + dot4I8Packed(w.q.y, q.y) + dot4I8Packed(w.q.z, q.z) + dot4I8Packed(w.q.w, q.w);
              acc[r * MAX_M + m] += (w.scale * f32(dot) + w.offset * qa_sum[m]) * da[m];
            }
          }
        }
      }
    }
    workgroupBarrier(); // every chunk of this segment is read before the next is written
  }
  if (SQUARE_ROWS > 0u) {
    for (var m = 0u; m < MAX_M; m++) { acc[W_ROWS * MAX_M + m] = squares[m]; }
  }
  return acc;
}
