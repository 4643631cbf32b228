// One thread's partial sums over its share of K from q8 activations (the matvec's q8 tier): the
// activation rows were quantised once per step by matvec_quantise_q8.wgsl (int8 in blocks of 32 with
// an f32 scale each), and each weight dtype's q8 module serves 16 columns of a weight row as int8
// quants with a scale and an offset (weight_chunk16), so 16 products are 4 dot4I8Packed:
//   sum_i W[row, k + i] * qa[k + i] = scale * sum_i qw[i] * qa[i] + offset * sum_i qa[i].
// Composed with matvec.wgsl or matvec_subgroup.wgsl (which include matvec_common.wgsl), a
// weights_<dtype>_q8.wgsl module, and matvec_plain.wgsl or matvec_fusion.wgsl (its norm has already
// been applied by the quantise step: composed with NORM = 0).
// Legend: M activation rows, K input features (K % 32 == 0), C = K / 16 chunks per row.

struct Chunk16 {
  q: vec4<u32>,  // 16 int8 weight quants, column k + 4 i + j at byte j of q[i]
  scale: f32,    // the chunk's value per unit of q
  offset: f32,   // added per column: W = scale * q + offset
}

@group(0) @binding(9) var<storage, read> a_quants: array<vec4<u32>>; // (M, C): 16 int8 per vec4, column order as Chunk16
@group(0) @binding(10) var<storage, read> a_scales: array<f32>;      // (M, K / 32): block scales

const ONES: u32 = 0x01010101u; // dot4I8Packed(x, ONES) sums x's four int8 lanes

// acc[r * MAX_M + m] = sum over this thread's chunks c (lid, then every WG) of W[w0 + r, 16 c ..] .
// a[m, 16 c ..] with the activations dequantised: each weight chunk is read once and used for all
// M rows, each activation chunk once and used for all W_ROWS rows. Integer products are exact; one
// f32 rounding per chunk and row.
fn partial_sums(row0: u32, lid: u32) -> array<f32, MAX_ROWS * MAX_M> {
  let chunks = params.k / 16u;
  let w0 = first_weight_row(row0);
  let w_end = weight_row_end();
  var acc: array<f32, MAX_ROWS * MAX_M>;
  for (var c = lid; c < chunks; c += WG) {
    var qa: array<vec4<u32>, MAX_M>;
    var qa_sum: array<f32, MAX_M>;
    var da: array<f32, MAX_M>;
    for (var m = 0u; m < MAX_M; m++) {
      if (m < params.m) {
        let q = a_quants[m * chunks + c];
        qa[m] = q;
        qa_sum[m] = f32(dot4I8Packed(q.x, ONES) + dot4I8Packed(q.y, ONES) + dot4I8Packed(q.z, ONES) + dot4I8Packed(q.w, ONES));
        da[m] = a_scales[m * (chunks / 2u) + c / 2u];
      }
    }
    for (var r = 0u; r < W_ROWS; r++) {
      if (w0 + r < w_end) {
        let w = weight_chunk16(w0 + r, 16u * c, params.k);
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
  return acc;
}
