// The rotary angle, shared by rope.wgsl and rope_kv_write.wgsl. The angle is the f32-rounded product
// position * inv_freq, as HF computes it; sin/cos are taken after reducing it to about [-pi, pi], since
// GPU sin/cos are only accurate there (positions up to ~400k stay exact-ish).

// 2 pi = TWO_PI_A + TWO_PI_B + TWO_PI_C; A and B have 8 significant bits, so k * A and k * B are
// exact for k < 2^16 and the first two subtractions lose nothing (Cody-Waite reduction).
const TWO_PI_A: f32 = 6.28125;
const TWO_PI_B: f32 = 0.00193023681640625;
const TWO_PI_C: f32 = 5.070363386039389e-6;
const INV_TWO_PI: f32 = 0.15915494309189535;

// position * inv_freq rounded to f32, reduced to about [-pi, pi]. inv_freq must be >= 0.
fn rope_angle(position: u32, frequency: f32) -> f32 {
  // max() sits between the product and the subtractions so no compiler fuses them into an fma:
  // the angle is the rounded f32 product, as the reference (HF) computes it.
  let a = max(f32(position) * frequency, 0.0);
  let k = round(a * INV_TWO_PI);
  return ((a - k * TWO_PI_A) - k * TWO_PI_B) - k * TWO_PI_C;
}
