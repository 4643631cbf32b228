// Split-K flash-decoding: R query rows, each one token of its own sequence, attend that sequence's
// KV cache region. Every row has its own (kv_base, kv_len) metadata, so one dispatch serves a batch.
// The row's query sits at position kv_len - 1; with a sliding window (attention_common.wgsl) it sees
// keys kv_len - window .. kv_len - 1 only, and the splits tile those keys alone, so the work is bounded
// by the window rather than the context.
//
// Pass 1 (decode_split): one workgroup per (row, head, split) scores the split's `chunk` keys,
// softmaxes them against the split's own max and writes the partial (m, l, acc[D]) with acc
// unnormalised. Pass 2 (decode_reduce): one workgroup per (row, head) rescales the splits to their
// common max and writes O = sum acc * exp(m - M) / sum l * exp(m - M). Everything in f32.
// Legend: R = params.rows, S = params.splits, Hq = params.q_heads, Hkv = Hq / params.group,
// C = params.capacity, D = head dim (override).
//! include attention_common.wgsl

struct DecodeAttentionParams {
  rows: u32,            // R: query rows (sequences) in this batch
  splits: u32,          // S: splits per (row, head)
  chunk: u32,           // keys per split (<= CHUNK_MAX); split s covers keys w0 + s * chunk .. w0 + (s + 1) * chunk - 1,
                        // w0 = the row's first visible key (0 without a window)
  window: u32,          // sliding window in keys, the query's own included (0 = unlimited)
  capacity: u32,        // C: token positions per head in one region
  q_heads: u32,         // Hq: query heads
  group: u32,           // Hq / Hkv: query heads sharing one kv head (head h reads kv head h / group)
  q_offset: u32,        // element of row 0, head 0, dim 0 in q
  q_row_stride: u32,    // elements between consecutive rows of q (>= Hq * D)
  out_offset: u32,      // element of row 0, head 0, dim 0 in out
  out_row_stride: u32,  // elements between consecutive rows of out (>= Hq * D)
  meta_offset: u32,     // u32 index of row 0's (kv_base, kv_len) pair in row_meta
  kv_offset: u32,       // elements added to every row's kv_base (a layer's offset inside a slot)
  scale: f32,           // multiplies q.k before the softmax (1/sqrt(D) by default)
}

override D: u32 = 64;            // head dim (elements)
override WG: u32 = 64;           // invocations per workgroup (power of two, checked in TS)
override CHUNK_MAX: u32 = 256;   // the longest split any run may use (its scores sit in workgroup memory)

@group(0) @binding(0) var<uniform> params: DecodeAttentionParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;                // (R, q_row_stride): (Hq, D) at q_offset
@group(0) @binding(2) var<storage, read> row_meta: array<u32>;         // (R, 2) at meta_offset: kv_base (elements), kv_len (tokens)
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;          // regions of (Hkv, C, D) at kv_base + kv_offset
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;          // regions of (Hkv, C, D) at kv_base + kv_offset
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;   // (R, Hq, S, D + 2): m, l, acc[D]
@group(0) @binding(6) var<storage, read_write> out: array<f32>;        // (R, out_row_stride): (Hq, D) at out_offset

var<workgroup> q_s: array<f32, D>;             // the query head, pre-multiplied by scale
var<workgroup> scores: array<f32, CHUNK_MAX>;  // the split's scores, then exp(score - m)
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

// Grid: (S, Hq, R).
@compute @workgroup_size(WG)
fn decode_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let split = wid.x;
  let h = wid.y;
  let row = wid.z;
  let kv_base = row_meta[params.meta_offset + 2u * row] + params.kv_offset;
  var n = min(row_meta[params.meta_offset + 2u * row + 1u], params.capacity);
  // A region past the end of a cache reads nothing: the row's output becomes 0 rather than another
  // sequence's values (the host validates what it can see; this guards the rest).
  let region_len = (params.q_heads / params.group) * params.capacity * D;
  if (!region_fits(kv_base, region_len, arrayLength(&k_cache)) || !region_fits(kv_base, region_len, arrayLength(&v_cache))) {
    n = 0u;
  }
  // The query is at position n - 1; its first visible key is w0 (0 without a window or for n = 0).
  let w0 = select(0u, window_start(n - 1u, params.window), n > 0u);
  let start = w0 + split * params.chunk;
  let count = select(0u, min(params.chunk, n - start), start < n);
  let k_head = kv_row(kv_base, h / params.group, start, params.capacity, D);

  for (var d = lid; d < D; d += WG) {
    q_s[d] = q[params.q_offset + row * params.q_row_stride + h * D + d] * params.scale;
  }
  workgroupBarrier();

  var local_max = NEG_BIG;
  for (var j = lid; j < count; j += WG) {
    var dot = 0.0;
    let key = k_head + j * D;
    for (var d = 0u; d < D; d++) {
      dot += q_s[d] * k_cache[key + d];
    }
    scores[j] = dot;
    local_max = max(local_max, dot);
  }
  red[lid] = local_max;
  let m = reduce_red(lid, true);

  var local_sum = 0.0;
  for (var j = lid; j < count; j += WG) {
    let p = exp(scores[j] - m);
    scores[j] = p;
    local_sum += p;
  }
  red[lid] = local_sum;
  let l = reduce_red(lid, false);  // its barriers also publish every scores[j] written above

  let p_base = (((row * params.q_heads) + h) * params.splits + split) * (D + 2u);
  if (lid == 0u) {
    partials[p_base] = m;
    partials[p_base + 1u] = l;
  }
  for (var d = lid; d < D; d += WG) {
    var a = 0.0;
    for (var j = 0u; j < count; j++) {
      a += scores[j] * v_cache[k_head + j * D + d];
    }
    partials[p_base + 2u + d] = a;
  }
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
