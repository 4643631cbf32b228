// webgpu-miner command line. The only place that prints for humans and sets exit codes.
import { Command, Option } from 'commander';
import { acquireGpu, type Gpu } from './gpu/device.ts';
import { MinerError } from './errors.ts';
import { runSelfCheck } from '../kernels/selfcheck.ts';

const adapterOption = new Option('--adapter <choice>', 'which WebGPU adapter to use: auto, gpu or software')
  .env('WEBGPU_MINER_ADAPTER')
  .default('auto');

function printAdapter(gpu: Gpu): void {
  const { info, limits, features } = gpu;
  const name = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' / ');
  console.log(`adapter   ${name || '(unnamed)'}${info.isSoftware ? '  [software: correct but slow]' : ''}`);
  console.log(`backend   ${info.backend} (featureLevel ${info.featureLevel})`);
  console.log(`features  ${features.size > 0 ? [...features].join(', ') : 'none of shader-f16, subgroups, timestamp-query'}`);
  const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;
  console.log(
    `limits    storage binding ${mib(limits.maxStorageBufferBindingSize)}, buffer ${mib(limits.maxBufferSize)}, ` +
      `workgroup storage ${limits.maxComputeWorkgroupStorageSize} B, invocations/workgroup ` +
      `${limits.maxComputeInvocationsPerWorkgroup}, storage buffers/stage ${limits.maxStorageBuffersPerShaderStage}`,
  );
}

async function infoCommand(options: { adapter: string; check: boolean }): Promise<void> {
  const gpu = await acquireGpu({ adapter: options.adapter });
  try {
    printAdapter(gpu);
    if (options.check) {
      console.log('kernel self-check (float64 reference on the CPU):');
      const results = await runSelfCheck(gpu);
      for (const r of results) {
        console.log(`  ${r.ok ? 'ok  ' : 'FAIL'} ${r.kernel.padEnd(28)} rel-L2 ${r.relL2.toExponential(2)} (bound ${r.bound})`);
      }
      if (results.some((r) => !r.ok)) throw new MinerError('SELF_CHECK', 'kernel self-check failed on this adapter');
    }
  } finally {
    gpu.destroy();
  }
}

const program = new Command('webgpu-miner')
  .description('GPU miner runtime: transformer inference in WGSL kernels on any WebGPU adapter')
  .showHelpAfterError();

program
  .command('info')
  .description('print the WebGPU adapter, its backend, limits and features, and check the kernels on it')
  .addOption(adapterOption)
  .option('--no-check', 'skip the kernel self-check')
  .action(infoCommand);

program
  .command('start')
  .description('set-up check and default job: adapter report and kernel self-check')
  .addOption(adapterOption)
  .action((options: { adapter: string }) => infoCommand({ ...options, check: true }));

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof MinerError) {
    console.error(`error [${err.code}]: ${err.message}`);
    process.exit(1);
  }
  throw err;
}
