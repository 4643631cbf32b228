// Shared by the two matvec reductions (matvec.wgsl, matvec_subgroup.wgsl): the row limits. The
// including file declares the overrides WG (threads per workgroup), ROWS (outputs per workgroup) and
// W_ROWS (weight rows per workgroup), and is composed with one partial-sums module (matvec_sums.wgsl:
// f32 activations; matvec_sums_q8.wgsl: activations quantised to int8, dot4I8Packed), a weights module, and
// matvec_plain.wgsl or matvec_fusion.wgsl (normalised, first_weight_row, weight_row_end, SQUARE_ROWS).
//
// A thread's partial sums (partial_sums) are slots r * MAX_M + m: weight row r's product with activation
// row m for r < W_ROWS; with a fused RMSNorm (SQUARE_ROWS = 1), slots W_ROWS * MAX_M + m after them hold
// the sums of squares of activation row m, reduced with the products (no reduction of their own).

const MAX_M: u32 = 8u;     // activation rows (M) one dispatch handles
const MAX_ROWS: u32 = 4u;  // weight rows one workgroup may own (W_ROWS)
const MAX_SLOTS: u32 = (MAX_ROWS + 1u) * MAX_M; // a thread's partial sums, the squares' slots included
