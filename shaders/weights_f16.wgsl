// Weight module: f16, packed two per u32 (low half = even column) and read with unpack2x16float,
// so no `shader-f16` feature is needed. Interface: see weights_f32.wgsl.
// Rows are padded to Kp = K rounded up to 4 (zeros), so four columns are one aligned vec2<u32>.

@group(0) @binding(1) var<storage, read> weight_values: array<vec2<u32>>; // (N, Kp/4), 4 f16 each

fn weight4(row: u32, k: u32, cols: u32) -> vec4<f32> {
  let packed = weight_values[row * ((cols + 3u) / 4u) + k / 4u];
  return vec4<f32>(unpack2x16float(packed.x), unpack2x16float(packed.y));
}
