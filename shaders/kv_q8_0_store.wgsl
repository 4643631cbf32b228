// KV cache writes, dtype q8_0: quantise elements e .. e + 31 (e a multiple of 32) of a block as
// ggml's quantize_row_q8_0_ref does: d = max|x| / 127, q = round(x / d) (halves away from zero, as
// roundf), d stored rounded to f16. Compose after kv_q8_0.wgsl.

// Rounding half away from zero (C's roundf), not WGSL round's half to even.
fn q8_round(x: f32) -> i32 {
  return i32(sign(x) * floor(abs(x) + 0.5));
}

// The 32 values quantised into words[0..8) and the f16-rounded scale as an f32.
fn q8_quantise(x: array<f32, KV_GROUP>, base: u32, scale_at: u32, to_v: bool) {
  var vals = x;
  var amax = 0.0;
  for (var i = 0u; i < KV_GROUP; i++) {
    amax = max(amax, abs(vals[i]));
  }
  let d = amax / 127.0;
  let id = select(0.0, 1.0 / d, d != 0.0);
  for (var w = 0u; w < KV_GROUP / 4u; w++) {
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
      let q = clamp(q8_round(vals[4u * w + j] * id), -127, 127);
      word = word | ((bitcast<u32>(q) & 0xffu) << (8u * j));
    }
    if (to_v) { v_cache[base + w] = word; } else { k_cache[base + w] = word; }
  }
  let d16 = unpack2x16float(pack2x16float(vec2<f32>(d, 0.0))).x;
  if (to_v) { v_cache[scale_at] = bitcast<u32>(d16); } else { k_cache[scale_at] = bitcast<u32>(d16); }
}

fn kv_store(block: u32, block_elems: u32, e: u32, k: array<f32, KV_GROUP>, v: array<f32, KV_GROUP>) {
  let base = block * kv_block_words(block_elems);
  q8_quantise(k, base + e / 4u, base + block_elems / 4u + e / 32u, false);
  q8_quantise(v, base + e / 4u, base + block_elems / 4u + e / 32u, true);
}
