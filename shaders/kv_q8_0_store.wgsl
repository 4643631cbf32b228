// KV cache writes, dtype q8_0: quantise elements e .. e + 31 (e a multiple of 32) of a block as
// ggml's quantize_row_q8_0_ref does: d = max|x| / 127, q = round(x / d) (halves away from zero, as
// roundf), d stored rounded to f16. Compose after kv_q8_0.wgsl.

// Rounding half away from zero (C's roundf), not WGSL round's half to even.
fn q8_round(x: f32) -> i32 {
  return i32(sign(x) * floor(abs(x) + 0.5));
}

// The 32 values x as kv_store stores them: eight words of four int8 quants, and the scale d rounded
// to f16 (as an f32).
struct Q8Group {
  words: array<u32, 8>,
  d16: f32,
}

fn q8_group(x: array<f32, KV_GROUP>) -> Q8Group {
  var vals = x;
  var amax = 0.0;
  for (var i = 0u; i < KV_GROUP; i++) {
    amax = max(amax, abs(vals[i]));
  }
  let d = amax / 127.0;
  let id = select(0.0, 1.0 / d, d != 0.0);
  var group: Q8Group;
  for (var w = 0u; w < KV_GROUP / 4u; w++) {
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
      let q = clamp(q8_round(vals[4u * w + j] * id), -127, 127);
      word = word | ((bitcast<u32>(q) & 0xffu) << (8u * j));
    }
    group.words[w] = word;
  }
  group.d16 = unpack2x16float(pack2x16float(vec2<f32>(d, 0.0))).x;
  return group;
}

fn kv_store(block: u32, block_elems: u32, e: u32, k: array<f32, KV_GROUP>, v: array<f32, KV_GROUP>) {
  let base = block * kv_block_words(block_elems);
  let scale_at = base + block_elems / 4u + e / 32u;
  let kq = q8_group(k);
  let vq = q8_group(v);
  for (var w = 0u; w < KV_GROUP / 4u; w++) {
    k_cache[base + e / 4u + w] = kq.words[w];
    v_cache[base + e / 4u + w] = vq.words[w];
  }
  k_cache[scale_at] = bitcast<u32>(kq.d16);
  v_cache[scale_at] = bitcast<u32>(vq.d16);
}
