// webgpu-miner command line. The only place that prints for humans and sets exit codes.
import { Command, Option } from 'commander';
import { acquireGpu, type Gpu } from './gpu/device.ts';
import { MinerError, ShapeError } from './errors.ts';
import { runSelfCheck } from '../kernels/selfcheck.ts';
import { kernelTiers } from '../kernels/tiers.ts';
import { describeDecodeTuning } from '../kernels/autotune.ts';
import { WEIGHT_DTYPES } from '../kernels/weights.ts';
import { KV_DTYPES, type KvDtype } from '../kernels/attention.ts';
import { addConnectOptions, addQueryOptions, pingCommand, queryCommand, type PingFlags, type QueryFlags } from './validator/commands.ts';
import { addValidatorCommands } from './validator/validate-commands.ts';
import { Engine } from './engine/engine.ts';
import { openTokenizer, parseTokenIds } from './engine/tokenizer.ts';
import { addServeOptions, developmentServeOptions, parseServeOptions, queryCommandHint, serve, serveUntilStopped } from './axon/serve.ts';
import { TINY_MODEL_ID } from '../models/tiny.ts';
import { describeAttentionWindows } from '../models/config.ts';
import {
  checkSyntheticShape,
  SYNTHETIC_DTYPES,
  SYNTHETIC_SHAPE_NAMES,
  SYNTHETIC_SHAPES,
  syntheticParameters,
  writeSyntheticLlama,
  type SyntheticShape,
  type SyntheticShapeName,
} from '../models/synthetic-gguf.ts';
import cliProgress from 'cli-progress';

const adapterOption = new Option(
  '--adapter <choice>',
  'which WebGPU adapter to use: auto (a hardware GPU, else software), gpu, software (software-core, else software-compat), ' +
    'software-core (Vulkan on lavapipe: f16, subgroups), software-compat (OpenGL ES on llvmpipe)',
)
  .env('WEBGPU_MINER_ADAPTER')
  .default('auto');

/** Every command that runs a model takes it (a new Option each: commander binds an option to one command). */
const kvDtypeOption = () =>
  new Option('--kv-dtype <dtype>', 'how the KV cache stores keys and values: f16 (half the memory of f32), f32, or q8_0 (head dim a multiple of 32)')
    .choices([...KV_DTYPES])
    .default('f16');

function printAdapter(gpu: Gpu): void {
  const { info, limits, features } = gpu;
  const name = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' / ');
  console.log(`adapter   ${name || '(unnamed)'}${info.isSoftware ? '  [software: correct but slow]' : ''}`);
  console.log(`backend   ${info.backend} (featureLevel ${info.featureLevel})`);
  console.log(`features  ${features.size > 0 ? [...features].join(', ') : 'none of shader-f16, subgroups, timestamp-query'}`);
  if (features.has('subgroups')) {
    const { subgroupMinSize: min, subgroupMaxSize: max } = gpu.adapter.info;
    console.log(`subgroups ${min === max ? `${min}` : `${min} to ${max}`} invocations`);
  }
  const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;
  console.log(
    `limits    storage binding ${mib(limits.maxStorageBufferBindingSize)}, buffer ${mib(limits.maxBufferSize)}, ` +
      `workgroup storage ${limits.maxComputeWorkgroupStorageSize} B, invocations/workgroup ` +
      `${limits.maxComputeInvocationsPerWorkgroup}, storage buffers/stage ${limits.maxStorageBuffersPerShaderStage}`,
  );
}

/** What `info --json` prints: the adapter, what it offers, and the kernel tier each family runs. */
function adapterReport(gpu: Gpu) {
  const { info, limits } = gpu;
  const limitValues: Record<string, number> = {};
  // GPUSupportedLimits' fields are getters on its prototype: copy them by name.
  for (const name of Object.keys(Object.getPrototypeOf(limits))) {
    const value = (limits as unknown as Record<string, unknown>)[name];
    if (typeof value === 'number') limitValues[name] = value;
  }
  return {
    adapter: {
      vendor: info.vendor, architecture: info.architecture, device: info.device, description: info.description, backend: info.backend, featureLevel: info.featureLevel, isSoftware: info.isSoftware,
      // The sizes a subgroup may take on this adapter (the subgroup tier assumes none of them).
      ...(gpu.features.has('subgroups') ? { subgroupMinSize: gpu.adapter.info.subgroupMinSize, subgroupMaxSize: gpu.adapter.info.subgroupMaxSize } : {}),
    },
    features: [...gpu.adapter.features].sort(),
    limits: limitValues,
    tiers: kernelTiers(gpu),
  };
}

async function infoCommand(options: { adapter: string; check: boolean; json?: boolean }): Promise<void> {
  const gpu = await acquireGpu({ adapter: options.adapter });
  try {
    if (options.json) {
      const selfCheck = options.check ? await runSelfCheck(gpu) : undefined;
      console.log(JSON.stringify({ ...adapterReport(gpu), ...(selfCheck ? { selfCheck } : {}) }, null, 2));
      if (selfCheck?.some((r) => !r.ok)) throw new MinerError('SELF_CHECK', 'kernel self-check failed on this adapter');
      return;
    }
    printAdapter(gpu);
    const tiers = kernelTiers(gpu);
    console.log(`tiers     ${Object.entries(tiers).map(([family, tier]) => `${family} ${tier}`).join(', ')}`);
    if (options.check) {
      console.log('kernel self-check (float64 reference on the CPU):');
      const results = await runSelfCheck(gpu);
      const width = Math.max(...results.map((r) => r.kernel.length));
      for (const r of results) {
        console.log(`  ${r.ok ? 'ok  ' : 'FAIL'} ${r.kernel.padEnd(width)}  rel-L2 ${r.relL2.toExponential(2)} (bound ${r.bound})`);
      }
      if (results.some((r) => !r.ok)) throw new MinerError('SELF_CHECK', 'kernel self-check failed on this adapter');
    }
  } finally {
    gpu.destroy();
  }
}

/** Load the engine with a progress bar on stderr (stdout stays clean for JSON and text). */
/** `--no-autotune` for every command that runs a model: commander sets o.autotune to false. */
function noAutotuneOption(): Option {
  return new Option('--no-autotune', 'use the static decode matvec variants: no timing of candidates at load (see kernels/autotune.ts for the cache)');
}

async function loadEngine(options: {
  model: string; adapter: string; slots?: number; capacity?: number; prefixCacheMin?: number; gpuMemory?: string; kvDtype?: KvDtype; autotune?: boolean;
}): Promise<Engine> {
  if (options.model === TINY_MODEL_ID) {
    console.error(`model ${TINY_MODEL_ID}: the embedded default with RANDOM weights (for trying the runtime; its text is noise)`);
  }
  const bar = new cliProgress.SingleBar(
    { stream: process.stderr, format: 'loading {bar} {value}/{total} tensors  {name}', hideCursor: true, clearOnComplete: true },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  try {
    return await Engine.load({
      model: options.model,
      adapter: options.adapter,
      slots: options.slots,
      capacity: options.capacity,
      prefixCacheMin: options.prefixCacheMin,
      gpuMemory: options.gpuMemory,
      kvDtype: options.kvDtype,
      // --no-autotune: the static matvec defaults; else tuned once per adapter and cached (kernels/autotune.ts).
      autotune: options.autotune === false ? false : { progress: (line) => console.error(line) },
      onProgress: (done, total, name) => {
        if (!started) bar.start(total, 0, { name });
        started = true;
        bar.update(done, { name });
      },
    });
  } catch (err) {
    // The model's head dim decides whether a KV dtype fits: say which flag to change.
    if (err instanceof ShapeError && err.message.startsWith('kvDtype ')) throw new MinerError('BAD_OPTION', `--kv-dtype${err.message.slice('kvDtype'.length)}`);
    throw err;
  } finally {
    bar.stop();
  }
}

function describeModel(engine: Engine): string {
  const { stats, config } = engine.model;
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const window = describeAttentionWindows(config);
  const dtypes = Object.entries(stats.dtypes)
    .map(([role, dtype]) => `${role} ${dtype}`)
    .join(', ');
  const info = engine.info();
  const plan = engine.kvPlan;
  return (
    `model ${engine.model.id}: ${config.architecture}, ${(stats.parameters / 1e6).toFixed(2)}M parameters, ` +
    `${config.numLayers} layers, ${window ? `${window}, ` : ''}context ${engine.model.options.capacity} per sequence, ${engine.model.options.slots} sequences at most\n` +
    `  on the GPU (${engine.gpu.info.backend}): weights ${mib(stats.weightBytes)}, KV cache ${mib(stats.kvBytes)}, ` +
    `activations ${mib(stats.activationBytes - stats.kvBytes)}\n` +
    `  KV pool: ${info.kvBlocksTotal} blocks of ${info.kvBlockTokens} tokens (${plan.bytesPerToken} bytes per token, ${stats.kvDtype}; limited by ${plan.limitedBy}` +
    `${plan.budgetBytes !== undefined ? ` at --gpu-memory ${mib(plan.budgetBytes)}` : ''}), ${info.kvBlocksUsed} used, ${info.kvBlocksShared} shared, ${info.kvBlocksCached} cached\n` +
    `  weight types: ${dtypes}\n` +
    `  decode: ${describeDecodeTuning(engine.model.decodeTuning)}`
  );
}

const GPU_MEMORY_HELP =
  'GPU memory for weights, activations and the KV pool, which gets what is left: bytes ("12GiB", "12GB", "12e9") or a fraction of the ' +
  'adapter\'s maxBufferSize ("0.8"; WebGPU reports no memory size). Default: a pool of min(slots, 16) full contexts, within the adapter\'s buffer limits';

const number = (name: string) => (value: string) => {
  const n = Number(value);
  if (!Number.isFinite(n)) throw new MinerError('BAD_OPTION', `${name} must be a number (got "${value}")`);
  return n;
};

const program = new Command('webgpu-miner')
  .description('GPU miner runtime: transformer inference in WGSL kernels on any WebGPU adapter')
  .showHelpAfterError();

program
  .command('info')
  .description('print the WebGPU adapter, its backend, limits and features, and check the kernels on it')
  .addOption(adapterOption)
  .option('--no-check', 'skip the kernel self-check')
  .option('--json', 'print adapter, features, limits, kernel tiers (and the self-check) as JSON')
  .action(infoCommand);


program
  .command('generate')
  .description('generate text from a prompt or a chat message, streaming it to stdout')
  .option('--model <path>', 'Hugging Face folder, .gguf file, or the embedded model', TINY_MODEL_ID)
  .option('--prompt <text>', 'plain prompt')
  .option('--chat <text>', 'a user message, rendered with the model chat template')
  .option('--max-tokens <n>', 'tokens to generate', number('--max-tokens'), 64)
  .option('--temperature <t>', '0 = greedy', number('--temperature'), 0.7)
  .option('--top-p <p>', 'nucleus sampling', number('--top-p'), 1)
  .option('--top-k <k>', 'keep the k most likely tokens (0 = off)', number('--top-k'), 0)
  .option('--min-p <p>', 'min-p sampling (0 = off)', number('--min-p'), 0)
  .option('--repetition-penalty <r>', '1 = off', number('--repetition-penalty'), 1)
  .option('--seed <s>', 'sampling seed (same seed, same adapter: same output)', number('--seed'))
  .option('--stop <text...>', 'stop strings')
  .option('--gpu-memory <size>', GPU_MEMORY_HELP)
  .addOption(kvDtypeOption())
  .addOption(adapterOption)
  .addOption(noAutotuneOption())
  .action(async (o) => {
    if ((o.prompt === undefined) === (o.chat === undefined)) throw new MinerError('BAD_OPTION', 'give exactly one of --prompt or --chat');
    const engine = await loadEngine(o);
    try {
      console.error(describeModel(engine));
      const it = engine.generate({
        prompt: o.prompt,
        messages: o.chat !== undefined ? [{ role: 'user', content: o.chat }] : undefined,
        maxTokens: o.maxTokens,
        temperature: o.temperature,
        topP: o.topP,
        topK: o.topK,
        minP: o.minP,
        repetitionPenalty: o.repetitionPenalty,
        seed: o.seed,
        stop: o.stop,
      });
      let next = await it.next();
      while (!next.done) {
        process.stdout.write(next.value.text);
        next = await it.next();
      }
      const s = next.value;
      process.stdout.write('\n');
      console.error(
        `prompt tokens ${s.promptTokens}, generated tokens ${s.completionTokens} (${s.finishReason}), ` +
          `time to first token ${s.ttftMs.toFixed(0)} ms, ${s.tokensPerS.toFixed(2)} tokens/s`,
      );
    } finally {
      await engine.close();
    }
  });

program
  .command('logits')
  .description('print {"model","tokens","logits"} as JSON: the last position\'s logits, or every position\'s with --all')
  .option('--model <path>', 'Hugging Face folder, .gguf file, or the embedded model', TINY_MODEL_ID)
  .requiredOption('--tokens <ids>', 'comma-separated token ids')
  .option('--all', 'every position, not just the last')
  .addOption(kvDtypeOption())
  .addOption(adapterOption)
  .addOption(noAutotuneOption())
  .action(async (o) => {
    const tokens = String(o.tokens).split(',').map((t: string) => Number(t.trim()));
    if (tokens.length === 0 || tokens.some((t: number) => !Number.isSafeInteger(t) || t < 0)) {
      throw new MinerError('BAD_OPTION', `--tokens must be comma-separated non-negative integers (got "${o.tokens}")`);
    }
    const engine = await loadEngine({ ...o, slots: 1, capacity: tokens.length });
    try {
      const rows = await engine.logits(tokens, Boolean(o.all));
      process.stdout.write(JSON.stringify({ model: engine.model.id, tokens, logits: rows.map((r) => Array.from(r)) }) + '\n');
    } finally {
      await engine.close();
    }
  });

program
  .command('tokenize')
  .description('print {"ids","tokens"} as JSON: the token ids of TEXT as the engine encodes a prompt (loads the tokenizer only)')
  .option('--model <path>', 'Hugging Face folder, .gguf file, or the embedded model', TINY_MODEL_ID)
  .option('--chat', 'TEXT is a user message: render it with the model chat template first')
  .option('--no-special-tokens', 'do not add the tokens the tokenizer adds around a prompt (BOS)')
  .argument('<text>', 'the text')
  .action(async (text: string, o: { model: string; chat?: boolean; specialTokens: boolean }) => {
    const tokenizer = await openTokenizer(o.model);
    const ids = o.chat ? tokenizer.encodeChat([{ role: 'user', content: text }]) : tokenizer.encode(text, o.specialTokens);
    process.stdout.write(JSON.stringify({ ids, tokens: tokenizer.tokens(ids) }) + '\n');
  });

program
  .command('detokenize')
  .description('print {"text"} as JSON: the text of token ids, as the engine streams it (loads the tokenizer only)')
  .option('--model <path>', 'Hugging Face folder, .gguf file, or the embedded model', TINY_MODEL_ID)
  .option('--special', 'keep special tokens (BOS, end of turn, ...) in the text')
  .argument('<ids...>', 'token ids: separate arguments, comma-separated, or a JSON array')
  .action(async (args: string[], o: { model: string; special?: boolean }) => {
    const tokenizer = await openTokenizer(o.model);
    const ids = parseTokenIds(args.join(' '), tokenizer.vocabSize);
    process.stdout.write(JSON.stringify({ text: tokenizer.decode(ids, !o.special) }) + '\n');
  });

addServeOptions(
  program
    .command('serve')
    .description('serve a model to validators: signed WebSocket + msgpack axon and an OpenAI-compatible HTTP face (Epistula v2), /metrics and /health on the same port')
    .option('--model <path>', 'Hugging Face folder, .gguf file, or the embedded model', TINY_MODEL_ID)
    .option('--slots <n>', 'sequences held (and decoded together) at most: block-table rows (default 32)', number('--slots'))
    .option('--context <n>', 'most tokens per sequence (prompt + completion): a limit, not a reservation (default min(1024, the model\'s))', number('--context'))
    .option('--gpu-memory <size>', GPU_MEMORY_HELP)
    .addOption(kvDtypeOption())
    .option('--prefix-cache-min <n>', 'reuse a cached prompt prefix of at least n tokens (KV blocks shared with earlier or running sequences; 0 = off; default 16)', number('--prefix-cache-min'))
    .addOption(adapterOption)
    .addOption(noAutotuneOption()),
).action(async (o) => {
  const options = parseServeOptions(o);
  const engine = await loadEngine({ model: o.model, adapter: o.adapter, slots: o.slots, capacity: o.context, prefixCacheMin: o.prefixCacheMin, gpuMemory: o.gpuMemory, kvDtype: o.kvDtype, autotune: o.autotune });
  console.error(describeModel(engine));
  const handle = await serve(engine, options);
  console.error(`axon listening on ${handle.url} (OpenAI-compatible: ${handle.httpUrl}/v1) as miner ${handle.hotkey}`);
  await serveUntilStopped(handle, engine.gpu, (line) => console.error(line));
});

program
  .command('start')
  .description('the default job: check the kernels, then serve the embedded model locally with development keys')
  .option('--port <n>', 'port', number('--port'), 8091)
  .addOption(adapterOption)
  .addOption(noAutotuneOption())
  .action(async (o: { port: number; adapter: string; autotune: boolean }) => {
    await infoCommand({ adapter: o.adapter, check: true });
    const dev = await developmentServeOptions({ port: o.port });
    const engine = await loadEngine({ model: TINY_MODEL_ID, adapter: o.adapter, autotune: o.autotune });
    console.error(describeModel(engine));
    const handle = await serve(engine, dev.options);
    console.log(`\naxon listening on ${handle.url} (OpenAI-compatible: ${handle.httpUrl}/v1) as miner ${handle.hotkey} (development key //Miner)`);
    console.log(`the development metagraph admits validator ${dev.validatorUri} (${dev.validatorHotkey}); try, in another terminal:\n`);
    console.log(`  ${queryCommandHint(handle, dev.validatorUri)}\n`);
    await serveUntilStopped(handle, engine.gpu, (line) => console.error(line));
  });

addConnectOptions(program.command('ping').description("ping a miner's axon: latency, miner info, signature check"))
  .option('--count <n>', 'pings to send', '1')
  .action((options: PingFlags) => pingCommand(options));

addQueryOptions(
  program
    .command('query')
    .description('ask a miner for a generation: tokens stream as they arrive; signatures and the transcript are verified')
    .argument('<prompt>', 'the prompt'),
).action((prompt: string, options: QueryFlags) => queryCommand(prompt, options));

addValidatorCommands(program, adapterOption);

program
  .command('synth-model')
  .description('write a Llama-shaped GGUF with seeded RANDOM weights (its text is noise), one tensor in memory at a time: ' +
    'a model of a real size for bench, here and in llama.cpp, on a machine with no network')
  .argument('<out>', 'the .gguf file to write (replaced if it exists)')
  .addOption(new Option('--shape <name>', 'dimensions: a preset, which the options below change').choices(SYNTHETIC_SHAPE_NAMES).default('small'))
  .addOption(new Option('--dtype <type>', 'type of every matrix (norms stay f32)').choices(SYNTHETIC_DTYPES).default('q4_0'))
  .option('--seed <n>', 'weights seed (same seed, same bytes)', number('--seed'), 1)
  .option('--hidden <n>', 'hidden size', number('--hidden'))
  .option('--ffn <n>', 'FFN (intermediate) size', number('--ffn'))
  .option('--layers <n>', 'layers', number('--layers'))
  .option('--heads <n>', 'attention heads', number('--heads'))
  .option('--kv-heads <n>', 'key/value heads', number('--kv-heads'))
  .option('--vocab <n>', 'vocabulary size', number('--vocab'))
  .option('--context <n>', 'context length (llama.context_length)', number('--context'))
  .action(async (out: string, o) => {
    const preset: SyntheticShape = SYNTHETIC_SHAPES[o.shape as SyntheticShapeName];
    const shape: SyntheticShape = {
      ...preset,
      hiddenSize: o.hidden ?? preset.hiddenSize,
      intermediateSize: o.ffn ?? preset.intermediateSize,
      numLayers: o.layers ?? preset.numLayers,
      numHeads: o.heads ?? preset.numHeads,
      numKvHeads: o.kvHeads ?? preset.numKvHeads,
      vocabSize: o.vocab ?? preset.vocabSize,
      contextLength: o.context ?? preset.contextLength,
    };
    if (!out.endsWith('.gguf')) throw new MinerError('BAD_OPTION', `the output file must end in .gguf (got "${out}"): --model recognises GGUF files by it`);
    checkSyntheticShape(shape, o.dtype);
    const custom = Object.entries(shape).some(([key, value]) => value !== preset[key as keyof SyntheticShape]);
    const name = `synthetic-${o.shape}${custom ? '-custom' : ''}-${o.dtype}-seed${o.seed}`;
    console.error(
      `${name}: RANDOM weights, ${(syntheticParameters(shape) / 1e6).toFixed(syntheticParameters(shape) < 1e7 ? 2 : 0)}M parameters ` +
        `(hidden ${shape.hiddenSize}, FFN ${shape.intermediateSize}, ${shape.numLayers} layers, ${shape.numHeads} heads / ${shape.numKvHeads} KV, vocabulary ${shape.vocabSize})`,
    );
    const bar = new cliProgress.SingleBar(
      { stream: process.stderr, format: 'writing {bar} {value}/{total} tensors  {name}', hideCursor: true, clearOnComplete: true },
      cliProgress.Presets.shades_classic,
    );
    const start = performance.now();
    let peakRss = process.memoryUsage.rss();
    let result;
    try {
      result = await writeSyntheticLlama(out, { shape, dtype: o.dtype, seed: o.seed, name }, (index, total, tensor) => {
        if (index === 0) bar.start(total, 0, { name: tensor });
        bar.update(index + 1, { name: tensor });
        peakRss = Math.max(peakRss, process.memoryUsage.rss());
      });
    } finally {
      bar.stop();
    }
    const seconds = (performance.now() - start) / 1000;
    console.log(
      `${out}: ${result.bytes >= 2 ** 30 ? `${(result.bytes / 2 ** 30).toFixed(2)} GiB` : `${(result.bytes / 2 ** 20).toFixed(1)} MiB`} (${result.bytes} bytes), ${result.tensors} tensors, ` +
        `written in ${seconds.toFixed(1)} s (${(result.bytes / 2 ** 20 / seconds).toFixed(0)} MiB/s), peak RSS ${(peakRss / 2 ** 20).toFixed(0)} MiB`,
    );
  });

program
  .command('bench')
  .description('throughput against the A100 and against this adapter\'s own roofline (table on stdout, progress on stderr)')
  .option('--quick', 'small shapes: about two minutes on the software adapter')
  .option('--model <path>', 'Hugging Face folder, .gguf file, or the embedded model: run end to end, and its shapes for the kernels', TINY_MODEL_ID)
  .option('--shapes <list>', 'comma-separated shapes: the first sets the kernel shapes ("model", "llama-7b", "llama-3-8b", "qwen3-8b"; default: the model\'s with --quick or --model, else llama-7b); ' +
    'the KV memory report covers the model and each 8B shape listed (default: llama-3-8b,qwen3-8b)')
  .option('--gpu-memory <size>', 'GPU memory budget of the KV memory report: bytes ("12GiB", "12GB", "12e9") or a fraction of the adapter\'s maxBufferSize ("0.8")', '12GiB')
  .option('--batch <n>', 'the larger decode batch (concurrent requests)', number('--batch'))
  .option('--prefill-chunk <n>', 'prompt tokens per prefill step (default: the engine\'s)', number('--prefill-chunk'))
  .option('--json <file>', 'write the report as JSON (and the Markdown and SVG next to it)')
  .option('--markdown <file>', 'write the Markdown summary here')
  .option('--svg <file>', 'write the chart here')
  .option('--no-peer', 'skip llama.cpp on the same GGUF')
  .option('--peer-gpu', 'run the llama.cpp peer on its GPU build (install it with: node scripts/llama-cpp.mjs --gpu vulkan|cuda)')
  .option('--host-only', 'only the host overhead of a batch-1 decode step (CPU ms to record and submit it)')
  .option('--budget <seconds>', 'time for the whole run: the kernels come last, and those not started by then are listed as skipped', number('--budget'))
  .option('--dtypes <list>', 'kernel timings for these weight dtypes only, comma-separated (e.g. q4_0,q4_k,q8_0,f16)')
  .addOption(kvDtypeOption())
  .addOption(new Option('--preset <name>', 'sizes: full, quick or test').choices(['full', 'quick', 'test']).hideHelp())
  .addOption(adapterOption)
  .addOption(noAutotuneOption())
  .action(async (o, command: Command) => {
    const { runBench, runHostOnly, printReport } = await import('../bench/run.ts');
    const { parseList } = await import('../bench/kernels.ts');
    if (o.hostOnly) {
      await runHostOnly({ preset: o.preset, quick: o.quick, adapter: o.adapter, json: o.json });
      return;
    }
    // A --model given on the command line also sets the kernel shapes (unless --shapes says otherwise).
    const modelGiven = command.getOptionValueSource('model') !== 'default';
    const report = await runBench({
      preset: o.preset,
      quick: o.quick,
      model: o.model,
      shapes: o.shapes ?? (modelGiven ? 'model' : undefined),
      batch: o.batch,
      prefillChunk: o.prefillChunk,
      gpuMemory: o.gpuMemory,
      kvDtype: o.kvDtype,
      adapter: o.adapter,
      json: o.json,
      markdown: o.markdown,
      svg: o.svg,
      peer: o.peer,
      peerGpu: o.peerGpu,
      autotune: o.autotune,
      budgetSeconds: o.budget,
      dtypes: o.dtypes !== undefined ? parseList(o.dtypes, WEIGHT_DTYPES, 'dtypes') : undefined,
    });
    printReport(report);
  });

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof MinerError) {
    console.error(`error [${err.code}]: ${err.message}`);
    process.exit(1);
  }
  throw err;
}
