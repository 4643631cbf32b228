// Split-K flash-decoding, shared by both tiers of pass 1 (attention_decode.wgsl, the baseline, and
// attention_decode_subgroup.wgsl) and by pass 2: the run contract (uniforms, bindings), the
// workgroup buffers, and the body of one split. The including file provides the split's two
// reductions over the workgroup (every invocation calls each, in uniform control flow):
//   fn workgroup_max(v: f32, lid: u32) -> f32
//   fn workgroup_sum(v: f32, lid: u32) -> f32
// and the barrier that publishes the split's scores comes from the second of them.
// Where the step's key and value come from is the variant module's business, composed before this
// file: attention_decode_cached.wgsl reads every key from the caches (another kernel wrote the step's
// own), attention_decode_new_kv.wgsl normalises (a head norm) and rotates the step's query and key and
// writes its key and value itself. It declares k_cache and v_cache and provides
//   fn load_query(row: u32, h: u32, kv_len: u32, lid: u32)   q_s = the query head times params.scale
//   fn load_new_kv(row: u32, h: u32, kv_len: u32, first: u32, count: u32, table_row: u32,
//                  block_elems: u32, pool_blocks: u32, lid: u32)  the step's key and value, where the
//                  split's keys first .. first + count - 1 hold its position (no barriers inside)
//   fn is_new_key(pos: u32, kv_len: u32) -> bool      the key at pos is the step's own
//   fn new_key_score() -> f32, fn new_value(d: u32) -> f32   q_s . the step's key, and its value
// The caches are paged (attention_common.wgsl): a row's metadata names its row of the block table,
// and keys whose block the table does not name are masked. Compose with the KV dtype module first.
// Legend: R = params.rows, S = params.splits, Hq = params.q_heads, Hkv = Hq / params.group,
// N = params.kv_blocks, TW = params.table_width, D = head dim (override).
//! include attention_common.wgsl

struct DecodeAttentionParams {
  rows: u32,            // R: query rows (sequences) in this batch
  splits: u32,          // S: splits per (row, head)
  chunk: u32,           // keys per split (<= CHUNK_MAX); split s covers keys w0 + s * chunk .. w0 + (s + 1) * chunk - 1,
                        // w0 = the row's first visible key (0 without a window)
  window: u32,          // sliding window in keys, the query's own included (0 = unlimited)
  table_width: u32,     // TW: block ids per table row (a row holds at most TW * 16 keys)
  kv_blocks: u32,       // N: blocks in each pool
  q_heads: u32,         // Hq: query heads
  group: u32,           // Hq / Hkv: query heads sharing one kv head (head h reads kv head h / group)
  q_offset: u32,        // element of row 0, head 0, dim 0 in q
  q_row_stride: u32,    // elements between consecutive rows of q (>= Hq * D)
  out_offset: u32,      // element of row 0, head 0, dim 0 in out
  out_row_stride: u32,  // elements between consecutive rows of out (>= Hq * D)
  meta_offset: u32,     // u32 index of row 0's (table_row, kv_len) pair in row_meta
  scale: f32,           // multiplies q.k before the softmax (1/sqrt(D) by default)
  k_offset: u32,        // attention_decode_new_kv.wgsl: element of row 0, key head 0 in q (the step's qkv rows)
  v_offset: u32,        // attention_decode_new_kv.wgsl: element of row 0, value head 0 in q
}

override D: u32 = 64;            // head dim (elements)
override WG: u32 = 64;           // invocations per workgroup (power of two, checked in TS)
override CHUNK_MAX: u32 = 256;   // the longest split any run may use (its scores sit in workgroup memory)

@group(0) @binding(0) var<uniform> params: DecodeAttentionParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;                // (R, q_row_stride): (Hq, D) at q_offset
@group(0) @binding(2) var<storage, read> row_meta: array<u32>;         // (R, 2) at meta_offset: table_row, kv_len (tokens)
// binding 3: k_cache, binding 4: v_cache, (N, Hkv, 16, D) as the dtype stores them (the variant module)
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;   // (R, Hq, S, D + 2): m, l, acc[D]
@group(0) @binding(6) var<storage, read_write> out: array<f32>;        // (R, out_row_stride): (Hq, D) at out_offset
@group(0) @binding(7) var<storage, read> block_table: array<u32>;      // (rows, TW) block ids

var<workgroup> q_s: array<f32, D>;             // the query head, pre-multiplied by scale
var<workgroup> scores: array<f32, CHUNK_MAX>;  // the split's scores, then exp(score - m)

// p * V[pos, d] of the row's key at `pos`, or 0 where the table names no block (p is 0 there too,
// but the value must not be read).
fn split_value(table_row: u32, pos: u32, kv_len: u32, kv_head: u32, d: u32, pool_blocks: u32, block_elems: u32, p: f32) -> f32 {
  let block = kv_block(table_row, pos, params.table_width, pool_blocks);
  if (block == KV_NO_BLOCK) {
    return 0.0;
  }
  if (is_new_key(pos, kv_len)) {
    return p * new_value(d);
  }
  return p * v_at(block, block_elems, kv_in_block(kv_head, pos, D) + d);
}
// Pass 1 for workgroup (split, head, row) = wid of the grid (S, Hq, R): score the split's keys, softmax
// them against the split's max, write the partial (m, l, acc[D]); with S = 1, the final output instead.
fn split_partial(wid: vec3<u32>, lid: u32) {
  let split = wid.x;
  let h = wid.y;
  let row = wid.z;
  let table_row = row_meta[params.meta_offset + 2u * row];
  let kv_len = row_meta[params.meta_offset + 2u * row + 1u];
  let n = min(kv_len, params.table_width * KV_BLOCK_TOKENS);
  let kv_head = h / params.group;
  let block_elems = kv_block_elements(params.q_heads / params.group, D);
  let pool_blocks = kv_pool_blocks(params.kv_blocks, block_elems);
  // The query is at position n - 1; its first visible key is w0 (0 without a window or for n = 0).
  let w0 = select(0u, window_start(n - 1u, params.window), n > 0u);
  let start = w0 + split * params.chunk;
  let count = select(0u, min(params.chunk, n - start), start < n);

  load_query(row, h, kv_len, lid);
  load_new_kv(row, h, kv_len, start, count, table_row, block_elems, pool_blocks, lid);
  workgroupBarrier();

  var local_max = NEG_BIG;
  for (var j = lid; j < count; j += WG) {
    // A key whose block the table does not name scores NEG_BIG and weighs 0 below.
    var dot = NEG_BIG;
    let block = kv_block(table_row, start + j, params.table_width, pool_blocks);
    if (block != KV_NO_BLOCK && is_new_key(start + j, kv_len)) {
      dot = new_key_score();
    } else if (block != KV_NO_BLOCK) {
      dot = 0.0;
      let key = kv_in_block(kv_head, start + j, D);
      for (var d = 0u; d < D; d++) {
        dot += q_s[d] * k_at(block, block_elems, key + d);
      }
    }
    dot = soft_capped(dot);
    scores[j] = dot;
    local_max = max(local_max, dot);
  }
  let m = workgroup_max(local_max, lid);

  var local_sum = 0.0;
  for (var j = lid; j < count; j += WG) {
    let p = select(0.0, exp(scores[j] - m), scores[j] > NEG_BIG);
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
        a += split_value(table_row, start + j, kv_len, kv_head, d, pool_blocks, block_elems, scores[j]);
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
      a += split_value(table_row, start + j, kv_len, kv_head, d, pool_blocks, block_elems, scores[j]);
    }
    partials[p_base + 2u + d] = a;
  }
}

