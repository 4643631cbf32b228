// Composed first in front of a q8-tier matvec shader (a directive must precede every declaration).
// Needs the WGSL language feature packed_4x8_integer_dot_product (dot4I8Packed, pack4xI8), which
// kernels/tiers.ts checks in the instance's wgslLanguageFeatures.
requires packed_4x8_integer_dot_product;
