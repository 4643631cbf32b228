// Split-K flash-decoding: R query rows, each one token of its own sequence, attend that sequence's
// paged KV cache. Every row has its own (table_row, kv_len) metadata, so one dispatch serves a batch.
// The row's query sits at position kv_len - 1; with a sliding window (attention_common.wgsl) it sees
// keys kv_len - window .. kv_len - 1 only, and the splits tile those keys alone, so the work is bounded
// by the window rather than the context.
//
// Pass 1 (decode_split): one workgroup per (row, head, split) scores the split's `chunk` keys,
// softmaxes them against the split's own max and writes the partial (m, l, acc[D]) with acc
// unnormalised. Pass 2 (decode_reduce): one workgroup per (row, head) rescales the splits to their
// common max and writes O = sum acc * exp(m - M) / sum l * exp(m - M). Everything in f32. A run of
// one split (S = 1) is pass 1 alone: it normalises and writes O itself, and the host skips pass 2.
// Compose as: the KV dtype module (kv_f32.wgsl, ...), this file.
// Legend: R = params.rows, S = params.splits, Hq = params.q_heads, Hkv = Hq / params.group,
// D = head dim (override).
//! include attention_decode_common.wgsl

var<workgroup> red: array<f32, WG>;            // reduction scratch

// Tree reduction of red[0..WG) into red[0]; max when `take_max`, else sum. Every invocation calls it.
fn reduce_red(lid: u32, take_max: bool) -> f32 {
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    workgroupBarrier();
    if (lid < s) {
      if (take_max) {
        red[lid] = max(red[lid], red[lid + s]);
      } else {
        red[lid] = red[lid] + red[lid + s];
      }
    }
  }
  workgroupBarrier();
  let result = red[0];
  workgroupBarrier();  // everyone has read red[0] before the next reduction overwrites it
  return result;
}

fn workgroup_max(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  return reduce_red(lid, true);
}

fn workgroup_sum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  return reduce_red(lid, false);
}

// Grid: (S, Hq, R).
@compute @workgroup_size(WG)
fn decode_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  split_partial(wid, lid);
}

// Grid: (Hq, R).
@compute @workgroup_size(WG)
fn decode_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let h = wid.x;
  let row = wid.y;
  let first = ((row * params.q_heads) + h) * params.splits * (D + 2u);
  var m_all = NEG_BIG;
  for (var s = 0u; s < params.splits; s++) {
    m_all = max(m_all, partials[first + s * (D + 2u)]);
  }
  var l_all = 0.0;
  for (var s = 0u; s < params.splits; s++) {
    let p = first + s * (D + 2u);
    l_all += partials[p + 1u] * exp(partials[p] - m_all);
  }
  // l_all is 0 only for a row with no keys (kv_len 0): its output is 0.
  let inv = select(0.0, 1.0 / l_all, l_all > 0.0);
  let o = params.out_offset + row * params.out_row_stride + h * D;
  for (var d = lid; d < D; d += WG) {
    var a = 0.0;
    for (var s = 0u; s < params.splits; s++) {
      let p = first + s * (D + 2u);
      a += partials[p + 2u + d] * exp(partials[p] - m_all);
    }
    out[o + d] = a * inv;
  }
}
