// The bench chart as hand-written SVG (no plotting dependency): on the left the roofline of this
// adapter and of the reference A100 on log-log axes with every kernel as a point; on the right
// tokens/s bars (ours, our roofline, llama.cpp when run) against the A100's lines, log scale.
import type { BenchReport } from './report.ts';
import { adapterName, isPeerSkipped, num } from './report.ts';
import type { KernelKind } from './kernels.ts';

const WIDTH = 1280;
const HEIGHT = 660;
const FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"';
/** A white outline under text drawn over lines and bars, so it stays legible. */
const HALO = 'paint-order="stroke" stroke="#ffffff" stroke-width="3" stroke-linejoin="round"';

const KIND_COLOR: Record<KernelKind, string> = {
  matmul: '#1f77b4',
  matvec: '#ff7f0e',
  'attention.prefill': '#2ca02c',
  'attention.decode': '#9467bd',
};
const KIND_LABEL: Record<KernelKind, string> = {
  matmul: 'matmul (prefill)',
  matvec: 'matvec (decode)',
  'attention.prefill': 'attention prefill',
  'attention.decode': 'attention decode',
};
const A100_COLOR = '#d62728';
const OURS_COLOR = '#1f77b4';
const ROOF_COLOR = '#9ecae1';
const PEER_COLOR = '#2ca02c';

function esc(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function txt(x: number, y: number, text: string, attrs = ''): string {
  return `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${FONT} ${attrs}>${esc(text)}</text>`;
}

interface LogAxis {
  lo: number;
  hi: number;
  at(value: number): number;
  decades: number[];
}

/** A log10 axis over whole decades covering [min, max], mapped onto [from, to] pixels. */
function logAxis(min: number, max: number, from: number, to: number): LogAxis {
  let l0 = Math.floor(Math.log10(min));
  let l1 = Math.ceil(Math.log10(max));
  if (l1 <= l0) l1 = l0 + 1;
  if (!Number.isFinite(l0) || !Number.isFinite(l1)) [l0, l1] = [0, 1];
  const decades: number[] = [];
  for (let k = l0; k <= l1; k++) decades.push(10 ** k);
  return {
    lo: 10 ** l0,
    hi: 10 ** l1,
    at: (v) => from + ((Math.log10(v) - l0) / (l1 - l0)) * (to - from),
    decades,
  };
}

function tickLabel(v: number): string {
  if (v >= 1e9) return `${v / 1e9}G`;
  if (v >= 1e6) return `${v / 1e6}M`;
  if (v >= 1e3) return `${v / 1e3}k`;
  return String(Number(v.toPrecision(1)));
}

/** SVG points of an n-pointed star around (x, y) (a regular n-gon when inner = outer), a point up. */
function star(x: number, y: number, n: number, outer: number, inner: number): string {
  const pts: string[] = [];
  for (let i = 0; i < 2 * n; i++) {
    const r = i % 2 === 0 ? outer : inner;
    const angle = (Math.PI * i) / n - Math.PI / 2;
    if (inner === outer && i % 2 === 1) continue;
    pts.push(`${(x + r * Math.cos(angle)).toFixed(1)},${(y + r * Math.sin(angle)).toFixed(1)}`);
  }
  return pts.join(' ');
}

function marker(dtype: string, x: number, y: number, color: string, title: string): string {
  const t = `<title>${esc(title)}</title>`;
  const style = `fill="${color}" fill-opacity="0.85" stroke="#222" stroke-width="0.8"`;
  switch (dtype) {
    case 'f16':
      return `<rect x="${(x - 4.5).toFixed(1)}" y="${(y - 4.5).toFixed(1)}" width="9" height="9" ${style}>${t}</rect>`;
    case 'q8_0':
      return `<polygon points="${x},${y - 6} ${x + 5.5},${y + 4} ${x - 5.5},${y + 4}" ${style}>${t}</polygon>`;
    case 'q4_0':
      return `<polygon points="${x},${y - 6} ${x + 5.5},${y} ${x},${y + 6} ${x - 5.5},${y}" ${style}>${t}</polygon>`;
    case 'q4_k':
      return `<polygon points="${x},${y + 6} ${x + 5.5},${y - 4} ${x - 5.5},${y - 4}" ${style}>${t}</polygon>`;
    case 'q6_k': {
      const a = 2;
      const b = 5.5;
      const pts = [[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]];
      return `<polygon points="${pts.map(([dx, dy]) => `${x + dx},${y + dy}`).join(' ')}" ${style}>${t}</polygon>`;
    }
    // Regular polygons and stars for the rest: q4_1 pentagon, q5_0 hexagon, q5_1 star, q5_k 4-point
    // star, q3_k octagon, q2_k 6-point star.
    case 'q4_1':
      return `<polygon points="${star(x, y, 5, 6, 6)}" ${style}>${t}</polygon>`;
    case 'q5_0':
      return `<polygon points="${star(x, y, 6, 6, 6)}" ${style}>${t}</polygon>`;
    case 'q5_1':
      return `<polygon points="${star(x, y, 5, 6.5, 2.8)}" ${style}>${t}</polygon>`;
    case 'q5_k':
      return `<polygon points="${star(x, y, 4, 6.5, 2.2)}" ${style}>${t}</polygon>`;
    case 'q3_k':
      return `<polygon points="${star(x, y, 8, 5.5, 5.5)}" ${style}>${t}</polygon>`;
    case 'q2_k':
      return `<polygon points="${star(x, y, 6, 6.5, 3.2)}" ${style}>${t}</polygon>`;
    default:
      return `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="5" ${style}>${t}</circle>`;
  }
}

/** Grid, ticks and axis titles of one log-log or log-y panel. */
function frame(x0: number, x1: number, y0: number, y1: number, xAxis: LogAxis | undefined, yAxis: LogAxis, xTitle: string, yTitle: string): string[] {
  const parts: string[] = [`<rect x="${x0}" y="${y0}" width="${x1 - x0}" height="${y1 - y0}" fill="#fff" stroke="#888"/>`];
  for (const d of yAxis.decades) {
    const y = yAxis.at(d);
    parts.push(`<line x1="${x0}" x2="${x1}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="#e3e3e3"/>`);
    parts.push(txt(x0 - 6, y + 4, tickLabel(d), 'font-size="12" text-anchor="end" fill="#333"'));
  }
  if (xAxis) {
    for (const d of xAxis.decades) {
      const x = xAxis.at(d);
      parts.push(`<line x1="${x.toFixed(1)}" x2="${x.toFixed(1)}" y1="${y0}" y2="${y1}" stroke="#e3e3e3"/>`);
      parts.push(txt(x, y1 + 17, tickLabel(d), 'font-size="12" text-anchor="middle" fill="#333"'));
    }
  }
  parts.push(txt((x0 + x1) / 2, y1 + 36, xTitle, 'font-size="13" text-anchor="middle" fill="#222"'));
  const cy = (y0 + y1) / 2;
  parts.push(txt(x0 - 52, cy, yTitle, `font-size="13" text-anchor="middle" fill="#222" transform="rotate(-90 ${x0 - 52} ${cy})"`));
  return parts;
}

function rooflinePanel(report: BenchReport, x0: number, x1: number, y0: number, y1: number): string[] {
  const ours = { gbps: report.roofline.bandwidth.gbps, gflops: report.roofline.compute.gflops };
  const a100 = report.a100.kernelRoof;
  const points = report.kernels.results;
  const intensities = points.map((p) => p.intensity);
  const xAxis = logAxis(Math.min(0.1, ...intensities.map((i) => i / 2)), Math.max(1000, ...intensities.map((i) => i * 2)), x0, x1);
  const yValues = [...points.map((p) => p.gflops), ours.gflops, a100.gflops, xAxis.lo * ours.gbps];
  const yAxis = logAxis(Math.max(1e-4, Math.min(...yValues.filter((v) => v > 0)) / 2), Math.max(...yValues) * 2, y1, y0);
  const parts = frame(x0, x1, y0, y1, xAxis, yAxis, 'arithmetic intensity (FLOP per byte moved)', 'GFLOP/s');
  parts.push(txt(x0, y0 - 10, 'Roofline: each kernel on this adapter, against its roofline and the A100\'s', 'font-size="14" font-weight="bold" fill="#222"'));

  // A roof: bandwidth slope up to the ridge, then the flat peak; clipped to the plot. The higher
  // roof is labelled above its line, the lower one below, so close roofs keep their labels apart.
  const roof = (r: { gbps: number; gflops: number }, stroke: string, dash: string, label: string, below: boolean) => {
    const start = Math.max(xAxis.lo, yAxis.lo / r.gbps);
    const ridge = r.gflops / r.gbps;
    const pts = [
      [start, start * r.gbps],
      [ridge, r.gflops],
      [xAxis.hi, r.gflops],
    ].filter(([x]) => x >= xAxis.lo && x <= xAxis.hi);
    parts.push(
      `<polyline fill="none" stroke="${stroke}" stroke-width="2.2" ${dash} points="${pts.map(([x, y]) => `${xAxis.at(x).toFixed(1)},${yAxis.at(y).toFixed(1)}`).join(' ')}"/>`,
    );
    parts.push(txt(x1 - 6, yAxis.at(r.gflops) + (below ? 16 : -7), label, `font-size="12" text-anchor="end" fill="${stroke}" ${HALO}`));
  };
  const a100Below = a100.gflops < ours.gflops;
  roof({ gbps: a100.gbps, gflops: a100.gflops }, A100_COLOR, 'stroke-dasharray="7 4"', `A100 80GB SXM, f32: ${num(a100.gflops)} GFLOP/s, ${num(a100.gbps)} GB/s`, a100Below);
  roof(ours, '#222', '', `this adapter: ${num(ours.gflops)} GFLOP/s, ${num(ours.gbps)} GB/s (measured)`, !a100Below);

  for (const p of points) {
    const x = xAxis.at(p.intensity);
    const y = yAxis.at(Math.max(p.gflops, yAxis.lo));
    parts.push(marker(p.dtype, x, y, KIND_COLOR[p.kind], `${p.label}: ${num(p.gflops)} GFLOP/s, ${num(p.gbps)} GB/s, ${num(p.rooflineShare * 100)} % of roofline`));
  }

  // Legend: colours are kernel kinds, shapes are weight dtypes.
  let lx = x0;
  const ly = y1 + 62;
  for (const kind of Object.keys(KIND_COLOR) as KernelKind[]) {
    parts.push(`<circle cx="${lx + 6}" cy="${ly - 4}" r="5" fill="${KIND_COLOR[kind]}" stroke="#222" stroke-width="0.8"/>`);
    parts.push(txt(lx + 15, ly, KIND_LABEL[kind], 'font-size="12" fill="#222"'));
    lx += 30 + KIND_LABEL[kind].length * 6.6;
  }
  // Dtype shapes, wrapping onto a further line at the panel's right edge (ten dtypes do not fit one).
  lx = x0;
  let ly2 = ly + 22;
  const place = (width: number) => {
    if (lx > x0 && lx + width > x1) {
      lx = x0;
      ly2 += 18;
    }
  };
  const dtypes = [...new Set(points.filter((p) => p.kind === 'matmul' || p.kind === 'matvec').map((p) => p.dtype))];
  for (const dtype of dtypes) {
    place(15 + dtype.length * 7.5);
    parts.push(marker(dtype, lx + 6, ly2 - 4, '#bbb', dtype));
    parts.push(txt(lx + 15, ly2, dtype, 'font-size="12" fill="#222"'));
    lx += 30 + dtype.length * 7.5;
  }
  const note = 'weights (shapes); attention: f32 KV cache';
  place(10 + note.length * 6.6);
  parts.push(txt(lx + (lx > x0 ? 10 : 0), ly2, note, 'font-size="12" fill="#555"'));
  return parts;
}

interface BarGroup {
  label: string;
  bars: Array<{ name: string; value: number; color: string; hollow?: boolean }>;
  lines: Array<{ name: string; value: number; dashed: boolean }>;
}

function barGroups(report: BenchReport): BarGroup[] {
  const groups: BarGroup[] = [];
  const peer = report.peer && !isPeerSkipped(report.peer) ? report.peer : undefined;
  const a100Lines = (label: string) =>
    report.a100.lines
      .filter((l) => l.label === label && l.unit === 'tok/s')
      .map((l) => ({ name: l.a100Kind === 'roofline' ? 'A100 roofline' : `A100 ${l.a100Figure.split(',')[0]}`, value: l.a100, dashed: l.a100Kind === 'roofline' }))
      .slice(0, 3);
  const ourRoof = (label: string) => report.a100.lines.find((l) => l.label === label)?.ourRoofline;
  for (const p of report.e2e.prompt) {
    const label = `prompt, ${p.tokens} tokens`;
    const bars: BarGroup['bars'] = [{ name: 'ours', value: p.tokensPerS, color: OURS_COLOR }];
    const roof = ourRoof(label);
    if (roof) bars.push({ name: 'our roofline', value: roof, color: ROOF_COLOR, hollow: true });
    const peerPrompt = peer?.prompt.find((q) => q.tokens === p.tokens);
    if (peerPrompt) bars.push({ name: 'llama.cpp', value: peerPrompt.tokensPerS, color: PEER_COLOR });
    groups.push({ label: `prompt ${p.tokens}`, bars, lines: a100Lines(label) });
  }
  for (const d of report.e2e.decode) {
    const label = `decode, batch ${d.batch}`;
    const bars: BarGroup['bars'] = [{ name: 'ours', value: d.tokensPerS, color: OURS_COLOR }];
    const roof = ourRoof(label);
    if (roof) bars.push({ name: 'our roofline', value: roof, color: ROOF_COLOR, hollow: true });
    if (peer && d.batch === 1) bars.push({ name: 'llama.cpp', value: peer.decode.tokensPerS, color: PEER_COLOR });
    groups.push({ label: `decode b=${d.batch}`, bars, lines: a100Lines(label) });
  }
  return groups;
}

function barsPanel(report: BenchReport, x0: number, x1: number, y0: number, y1: number): string[] {
  const groups = barGroups(report);
  const values = groups.flatMap((g) => [...g.bars.map((b) => b.value), ...g.lines.map((l) => l.value)]).filter((v) => v > 0);
  const yAxis = logAxis(values.length ? Math.min(...values) / 2 : 0.1, values.length ? Math.max(...values) * 3 : 10, y1, y0);
  const parts = frame(x0, x1, y0, y1, undefined, yAxis, '', 'tokens per second');
  parts.push(txt(x0, y0 - 10, `Tokens/s end to end: ${report.e2e.model.id} (${report.e2e.model.dtype}) against the A100`, 'font-size="14" font-weight="bold" fill="#222"'));
  const gw = (x1 - x0) / Math.max(1, groups.length);
  groups.forEach((g, gi) => {
    const gx = x0 + gi * gw;
    const bw = Math.min(34, (gw - 24) / g.bars.length);
    const left = gx + (gw - bw * g.bars.length) / 2;
    g.bars.forEach((b, bi) => {
      const x = left + bi * bw;
      const top = yAxis.at(Math.max(b.value, yAxis.lo));
      const fill = b.hollow ? `fill="${b.color}" fill-opacity="0.35" stroke="${OURS_COLOR}" stroke-dasharray="3 2"` : `fill="${b.color}"`;
      parts.push(`<rect x="${(x + 1).toFixed(1)}" y="${top.toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${Math.max(0, y1 - top).toFixed(1)}" ${fill}><title>${esc(`${g.label} ${b.name}: ${num(b.value)} tok/s`)}</title></rect>`);
      parts.push(txt(x + bw / 2, top - 4, num(b.value), `font-size="11" text-anchor="middle" fill="#222" ${HALO}`));
    });
    // A100 lines across the group; their values go under the group's label, where nothing collides.
    g.lines.forEach((l, li) => {
      const y = yAxis.at(l.value);
      parts.push(`<line x1="${(gx + 6).toFixed(1)}" x2="${(gx + gw - 6).toFixed(1)}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="${A100_COLOR}" stroke-width="2" ${l.dashed ? 'stroke-dasharray="6 3"' : ''}><title>${esc(`${l.name}: ${num(l.value)} tok/s`)}</title></line>`);
      parts.push(txt(gx + gw / 2, y1 + 32 + 14 * li, `A100 ${l.dashed ? 'roof' : 'measured'} ${num(l.value)}`, `font-size="11" text-anchor="middle" fill="${A100_COLOR}"`));
    });
    parts.push(txt(gx + gw / 2, y1 + 17, g.label, 'font-size="12" text-anchor="middle" fill="#222"'));
  });

  // Legend, below the A100 values.
  const ly = y1 + 48 + 14 * Math.max(1, ...groups.map((g) => g.lines.length));
  let lx = x0;
  const swatch = (fill: string, extra = '') => (x: number) => `<rect x="${x}" y="${ly - 10}" width="14" height="12" fill="${fill}" ${extra}/>`;
  const entries: Array<[(x: number) => string, string]> = [
    [swatch(OURS_COLOR), 'ours (measured)'],
    [swatch(ROOF_COLOR, `fill-opacity="0.35" stroke="${OURS_COLOR}" stroke-dasharray="3 2"`), 'our roofline'],
  ];
  if (report.peer && !isPeerSkipped(report.peer)) entries.push([swatch(PEER_COLOR), 'llama.cpp, same machine']);
  for (const [shape, label] of entries) {
    parts.push(shape(lx));
    parts.push(txt(lx + 20, ly, label, 'font-size="12" fill="#222"'));
    lx += 40 + label.length * 6.6;
  }
  const ly2 = ly + 22;
  parts.push(`<line x1="${x0}" x2="${x0 + 26}" y1="${ly2 - 4}" y2="${ly2 - 4}" stroke="${A100_COLOR}" stroke-width="2" stroke-dasharray="6 3"/>`);
  parts.push(txt(x0 + 32, ly2, 'A100 80GB SXM roofline (datasheet)', 'font-size="12" fill="#222"'));
  parts.push(`<line x1="${x0 + 270}" x2="${x0 + 296}" y1="${ly2 - 4}" y2="${ly2 - 4}" stroke="${A100_COLOR}" stroke-width="2"/>`);
  parts.push(txt(x0 + 302, ly2, 'A100 measured (sourced, same model)', 'font-size="12" fill="#222"'));
  return parts;
}

function shortName(name: string, max: number): string {
  return name.length <= max ? name : `${name.slice(0, max - 1)}…`;
}

export function renderChart(report: BenchReport): string {
  const a = report.adapter;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="#fafafa"/>`,
    txt(24, 30, `webgpu-miner bench (${report.preset}): ${shortName(a.device || adapterName(a), 56)} (${a.backend}${a.isSoftware ? ', software adapter' : ''})`, 'font-size="17" font-weight="bold" fill="#111"'),
    txt(
      24,
      50,
      `kernels at ${report.kernels.shapes.name} shapes; timing by ${a.timing}; A100 figures from bench/a100.json (NVIDIA datasheet; sourced runs named in the report); ${report.createdAt.slice(0, 10)}`,
      'font-size="12" fill="#555"',
    ),
    ...rooflinePanel(report, 90, 610, 90, 530),
    ...barsPanel(report, 730, 1250, 90, 530),
    '</svg>',
  ];
  return parts.join('\n') + '\n';
}
