// attention_decode_new_kv.wgsl with Qwen3's and Gemma 3's RMSNorm of each query and key head before
// RoPE (their q_norm / k_norm): composed in place of attention_decode_new_kv_plain.wgsl. A head becomes
// x / sqrt(mean(x^2) + eps) * weight, its squares summed as rope_kv_write_head_norm.wgsl sums them
// (each invocation its strided share, then reduce.wgsl's tree over the workgroup), so the two kernels
// agree. reduce.wgsl itself cannot be included here: its workgroup_sum would clash with the attention
// tier's (attention_decode.wgsl, attention_decode_subgroup.wgsl), which takes other arguments. The weights follow the inverse frequencies in rope_table: the query heads' (D), then the
// key heads' (D). Values are not normalised.

override HEAD_NORM_EPS: f32 = 0.0; // added to a head's mean square (unitless)

var<workgroup> head_squares: array<f32, WG>;

// 1 / rms of the head whose element 0 is q[head]. Call from uniform control flow (it holds barriers).
fn head_scale(head: u32, lid: u32) -> f32 {
  var squares = 0.0;
  for (var d = lid; d < D; d += WG) {
    let v = q[head + d];
    squares += v * v;
  }
  head_squares[lid] = squares;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      head_squares[lid] = head_squares[lid] + head_squares[lid + s];
    }
    workgroupBarrier();
  }
  let total = head_squares[0];
  // Everyone has read the total before the next head's sum overwrites it (see reduce.wgsl's reduce_done).
  storageBarrier();
  workgroupBarrier();
  return 1.0 / sqrt(total / f32(D) + HEAD_NORM_EPS);
}

// Element x of a head, normalised (scale: the head's 1 / rms; w: the element's weight, 0 .. 2D).
fn head_normed(x: f32, scale: f32, w: u32) -> f32 {
  return x * scale * rope_table[ROTARY_DIMS / 2u + w];
}
