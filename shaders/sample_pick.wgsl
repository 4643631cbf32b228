// The next token of each row, picked on the GPU from the row's top-k candidates (topk_rows in
// sample.wgsl: logits sorted best first, equal logits lower id first) the way the CPU sampler
// picks (src/engine/sampler.ts, Sampler.sample):
// - with a repetition penalty p != 1, the candidates the row's sequence has seen (a bit each in its
//   slot's row of `seen`) score logit / p when positive, logit * p when not, and are sorted again
//   (score descending, equal scores lower id first); the picked token's bit is then set;
// - temperature 0: the first candidate;
// - else weights w_j = exp((logit_j - logit_0) / T) over the first top_k candidates (0: all k),
//   min_p keeps those with w_j >= min_p * w_0, top_p the shortest prefix whose share reaches p,
//   and the host's uniform number u in [0, 1) picks the first j where u * sum(w) - (w_0 + .. + w_j) < 0
//   (logit_j being the scores when penalised).
// The weights fall along the row, so every filter keeps a prefix. Arithmetic is f32 where the CPU's
// is f64: the two agree except where u lands within rounding of a boundary between two candidates.
//
// pick (grid ceil(M / 64)): one invocation per row; k <= 64, so a row is a short serial loop. The rows
// of one run hold different slots, so no two invocations touch one row of `seen`.

struct Params {
  rows: u32,             // M: rows
  k: u32,                // candidates per row in values / indices
  sampling_offset: u32,  // first word of row 0's sampling parameters in `sampling`
  picked_offset: u32,    // first element of picked
  seen_words: u32,       // u32 words of one slot's row in `seen`
}

const MAX_K: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> values: array<f32>;        // (M, k) candidate logits, best first
@group(0) @binding(2) var<storage, read> indices: array<u32>;       // (M, k) their token ids
// (M, 7) per row: temperature, top_k (u32), top_p, min_p, u, repetition penalty, slot (u32); f32 as bits unless marked.
@group(0) @binding(3) var<storage, read> sampling: array<u32>;
@group(0) @binding(4) var<storage, read_write> picked: array<u32>;  // (M) the picked token ids
@group(0) @binding(5) var<storage, read_write> seen: array<u32>;    // (slots, seen_words) bit t: token t seen

@compute @workgroup_size(64)
fn pick(@builtin(global_invocation_id) gid: vec3<u32>) {
  let row = gid.x;
  if (row >= params.rows) { return; }
  let s = params.sampling_offset + 7u * row;
  let temperature = bitcast<f32>(sampling[s]);
  let top_k = sampling[s + 1u];
  let top_p = bitcast<f32>(sampling[s + 2u]);
  let min_p = bitcast<f32>(sampling[s + 3u]);
  let u = bitcast<f32>(sampling[s + 4u]);
  let penalty = bitcast<f32>(sampling[s + 5u]);
  let seen_base = sampling[s + 6u] * params.seen_words;
  let base = row * params.k;
  let k = min(params.k, MAX_K);
  var score: array<f32, MAX_K>;
  var id: array<u32, MAX_K>;
  for (var j = 0u; j < k; j++) {
    score[j] = values[base + j];
    id[j] = indices[base + j];
  }
  if (penalty != 1.0) {
    for (var j = 0u; j < k; j++) {
      if ((seen[seen_base + id[j] / 32u] & (1u << (id[j] % 32u))) != 0u) {
        score[j] = select(score[j] * penalty, score[j] / penalty, score[j] > 0.0);
      }
    }
    // Insertion sort: score descending, equal scores lower id first.
    for (var i = 1u; i < k; i++) {
      let v = score[i];
      let t = id[i];
      var j = i;
      while (j > 0u && (score[j - 1u] < v || (score[j - 1u] == v && id[j - 1u] > t))) {
        score[j] = score[j - 1u];
        id[j] = id[j - 1u];
        j--;
      }
      score[j] = v;
      id[j] = t;
    }
  }
  var chosen = 0u;
  if (temperature > 0.0) {
    var n = k;
    if (top_k > 0u) { n = min(n, top_k); }
    let best = score[0];
    var w: array<f32, MAX_K>;
    var total = 0.0;
    for (var j = 0u; j < n; j++) {
      w[j] = exp((score[j] - best) / temperature);
      total += w[j];
    }
    if (min_p > 0.0) {
      // The CPU compares shares: w_j / total >= min_p * (w_0 / total).
      var kept = 0u;
      var kept_total = 0.0;
      for (var j = 0u; j < n; j++) {
        if (w[j] / total < min_p * (w[0] / total)) { break; }
        kept = j + 1u;
        kept_total += w[j];
      }
      n = kept;
      total = kept_total;
    }
    if (top_p < 1.0) {
      var cumulative = 0.0;
      var kept_total = 0.0;
      var cut = n;
      for (var j = 0u; j < n; j++) {
        cumulative += w[j] / total;
        kept_total += w[j];
        if (cumulative >= top_p) {
          cut = j + 1u;
          break;
        }
      }
      n = cut;
      total = kept_total;
    }
    var r = u * total;
    chosen = n - 1u;
    for (var j = 0u; j < n; j++) {
      r -= w[j];
      if (r < 0.0) {
        chosen = j;
        break;
      }
    }
  }
  let token = id[chosen];
  picked[params.picked_offset + row] = token;
  if (penalty != 1.0) {
    seen[seen_base + token / 32u] |= 1u << (token % 32u);
  }
}
