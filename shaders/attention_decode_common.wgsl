// Split-K flash-decoding, shared by both tiers of pass 1 (attention_decode.wgsl, the baseline, and
// attention_decode_subgroup.wgsl) and by pass 2: the run contract (uniforms, bindings), the
// workgroup buffers, and the body of one split. The including file provides the split's two
// reductions over the workgroup (every invocation calls each, in uniform control flow):
//   fn workgroup_max(v: f32, lid: u32) -> f32
//   fn workgroup_sum(v: f32, lid: u32) -> f32
// and the barrier that publishes the split's scores comes from the second of them.
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
// Pass 1 for workgroup (split, head, row) = wid of the grid (S, Hq, R): score the split's keys, softmax
// them against the split's max, write the partial (m, l, acc[D]); with S = 1, the final output instead.
fn split_partial(wid: vec3<u32>, lid: u32) {
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
    dot = soft_capped(dot);
    scores[j] = dot;
    local_max = max(local_max, dot);
  }
  let m = workgroup_max(local_max, lid);

  var local_sum = 0.0;
  for (var j = lid; j < count; j += WG) {
    let p = exp(scores[j] - m);
    scores[j] = p;
    local_sum += p;
  }
  let l = workgroup_sum(local_sum, lid);  // its barrier also publishes every scores[j] written above

  // A run with one split has nothing to combine: it writes the normalised output itself and the host
  // skips pass 2 (one dispatch fewer per decode step whenever the visible keys fit one chunk).
  // params.splits is uniform, so the branch is too.
  if (params.splits == 1u) {
    // l is 0 only for a row with no keys (kv_len 0): its output is 0, as in pass 2.
    let inv = select(0.0, 1.0 / l, l > 0.0);
    let o = params.out_offset + row * params.out_row_stride + h * D;
    for (var d = lid; d < D; d += WG) {
      var a = 0.0;
      for (var j = 0u; j < count; j++) {
        a += scores[j] * v_cache[k_head + j * D + d];
      }
      out[o + d] = a * inv;
    }
    return;
  }
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

