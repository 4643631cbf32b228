// Units of the axon without sockets: the codec, signatures, wallet files, metagraph, replay cache,
// rate limits and serve's option parsing.
import { mkdtemp, mkdir, writeFile } from 'node:fs/promises';
import { OrderedVerifyQueue } from '../src/wire/ordered-queue.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
// A second, independent msgpack implementation: frames it writes must decode, and frames we write
// must read back to the same values in it (the wire is plain msgpack, whoever speaks it).
import { decode, encode } from '@msgpack/msgpack';
import { Packr } from 'msgpackr';
import { Command } from 'commander';
import { describe, expect, test } from 'vitest';
import { OptionError } from '../src/errors.ts';
import {
  AxonError,
  VerificationError,
  decodeCancelPayload,
  decodeEmptyPayload,
  decodeGeneratePayload,
  decodeRequestFrame,
  decodeResponseBody,
  encodeBody,
  encodeFrame,
  type ErrorCode,
} from '../src/wire/protocol.ts';
import { Policy, RateLimiter, ReplayCache } from '../src/axon/policy.ts';
import { parseMetagraph } from '../src/wire/metagraph.ts';
import { addServeOptions, parseServeOptions } from '../src/axon/serve.ts';
import { cryptoReady, isValidHotkey, signRequest, signedMessage, signerFromSeed, verifyFrame, verifySignature } from '../src/wire/signing.ts';
import { hotkeyFilePath, loadWalletHotkey } from '../src/wire/wallet.ts';
import { devKeys, devMetagraph } from './support/axon-harness.ts';

await cryptoReady();
const keys = await devKeys();

function codeOf(fn: () => unknown): ErrorCode | string {
  try {
    fn();
  } catch (err) {
    return (err as AxonError).code;
  }
  return 'no error';
}

const goodFrame = () => signRequest(keys.alice, { op: 'ping', payload: {}, signedFor: keys.miner.address });
const mutate = (changes: Record<string, unknown>, drop: string[] = []) => {
  const frame: Record<string, unknown> = { ...goodFrame(), ...changes };
  for (const key of drop) delete frame[key];
  return encode(frame);
};

describe('request frame codec', () => {
  test('a signed frame round-trips and verifies', () => {
    const frame = goodFrame();
    const decoded = decodeRequestFrame(encodeFrame(frame));
    expect(decoded).toEqual({ ...frame, body: expect.any(Uint8Array) });
    expect(Buffer.from(decoded.body)).toEqual(Buffer.from(frame.body));
    expect(verifyFrame(decoded)).toBe(true);
  });

  test.each([
    ['not msgpack', new Uint8Array([0xc1]), 'BAD_FRAME'],
    ['trailing bytes', new Uint8Array([...encode({}), 0]), 'BAD_FRAME'],
    ['an array', encode([1, 2]), 'BAD_FRAME'],
    ['a string', encode('hello'), 'BAD_FRAME'],
    ['no version', mutate({}, ['v']), 'BAD_FRAME'],
    ['version 2', mutate({ v: 2 }), 'UNSUPPORTED_VERSION'],
    ['version "1"', mutate({ v: '1' }), 'BAD_FRAME'],
    ['unknown field', mutate({ extra: 1 }), 'BAD_FRAME'],
    ['unknown op', mutate({ op: 'mine' }), 'BAD_FRAME'],
    ['id not a uuid', mutate({ id: 'abc' }), 'BAD_FRAME'],
    ['timestamp float', mutate({ timestamp: 1.5 }), 'BAD_FRAME'],
    ['timestamp negative', mutate({ timestamp: -1 }), 'BAD_FRAME'],
    ['timestamp past 2^53', mutate({ timestamp: 2 ** 60 }), 'BAD_FRAME'],
    ['signed_by not ss58', mutate({ signed_by: '0xabc' }), 'BAD_FRAME'],
    ['signed_for missing', mutate({}, ['signed_for']), 'BAD_FRAME'],
    ['body as string', mutate({ body: 'x' }), 'BAD_FRAME'],
    ['signature as bin', mutate({ signature: new Uint8Array(64) }), 'BAD_FRAME'],
    ['__proto__ key', new Uint8Array([0x81, 0xa9, ...Buffer.from('__proto__'), 0x01]), 'BAD_FRAME'],
  ])('%s -> %s', (_name, bytes, code) => {
    expect(codeOf(() => decodeRequestFrame(bytes))).toBe(code);
  });

  test('body over the limit is TOO_LARGE, and the error keeps the id for the reply', () => {
    const frame = signRequest(keys.alice, { op: 'ping', body: new Uint8Array(101), signedFor: keys.miner.address });
    try {
      decodeRequestFrame(encodeFrame(frame), { maxBodyBytes: 100 });
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(AxonError);
      expect((err as AxonError).code).toBe('TOO_LARGE');
      expect((err as AxonError).requestId).toBe(frame.id);
      expect((err as AxonError).signedBy).toBe(keys.alice.address);
    }
  });
});

describe('msgpack on the wire', () => {
  test('a frame we write reads back in another msgpack library to the same fields, the timestamp an int64', () => {
    const frame = goodFrame();
    const bytes = encodeFrame(frame);
    expect(bytes[0]).toBe(0x88); // fixmap of 8 fields, as any encoder writes it
    // ms timestamps are past 2^32: written as msgpack int64 (0xd3 + 8 bytes big-endian), never as a float.
    const at = Buffer.from(bytes).indexOf(Buffer.from([0xa9, ...Buffer.from('timestamp')])) + 10;
    expect(bytes[at]).toBe(0xd3);
    expect(Buffer.from(bytes.subarray(at + 1, at + 9)).readBigInt64BE()).toBe(BigInt(frame.timestamp));
    const other = decode(bytes, { useBigInt64: true }) as Record<string, unknown>;
    expect(other).toEqual({ ...frame, timestamp: BigInt(frame.timestamp), body: expect.any(Uint8Array) });
    expect(Buffer.from(other.body as Uint8Array)).toEqual(Buffer.from(frame.body));
    // The documented example frame (docs/protocol.md) has the same size from both encoders.
    expect(bytes.length).toBe(encode(frame).length);
  });

  test('a frame another library wrote decodes to the same fields and verifies', () => {
    const frame = goodFrame();
    const decoded = decodeRequestFrame(encode(frame));
    expect({ ...decoded, body: Buffer.from(decoded.body) }).toEqual({ ...frame, body: Buffer.from(frame.body) });
    expect(verifyFrame(decoded)).toBe(true);
  });

  test('integers wider than 32 bits stay integers in bodies; other values are written as they are', () => {
    const payload = { prompt: 'x', seed: 2 ** 40 + 3, temperature: 0.5, stop: ['a'], max_tokens: 7, offset: -(2 ** 35) };
    const bytes = encodeBody(payload);
    expect(decode(bytes, { useBigInt64: true })).toEqual({ ...payload, seed: BigInt(2 ** 40 + 3), offset: BigInt(-(2 ** 35)) });
    expect(decode(bytes)).toEqual(payload);
    expect(payload.seed).toBe(2 ** 40 + 3); // the caller's object is not rewritten
    expect(decodeGeneratePayload(encodeBody({ prompt: 'x', max_tokens: 4, seed: 2 ** 40 + 3 })).seed).toBe(2 ** 40 + 3);
  });

  test("msgpackr's own extensions (records, its structured types) are refused unread", () => {
    const withRecords = new Packr({ useRecords: true }).pack({ ...goodFrame(), timestamp: 1 });
    expect(codeOf(() => decodeRequestFrame(withRecords))).toBe('BAD_FRAME');
    const timestampExt = new Packr({ useRecords: false }).pack({ ...goodFrame(), timestamp: new Date() });
    expect(codeOf(() => decodeRequestFrame(timestampExt))).toBe('BAD_FRAME');
  });
});

describe('payloads', () => {
  const gen = (payload: unknown) => codeOf(() => decodeGeneratePayload(encode(payload)));
  test('generate payloads', () => {
    expect(decodeGeneratePayload(encode({ prompt: 'hi', max_tokens: 3, seed: 7, logprobs: 5, stop: ['\n'] }))).toEqual({
      prompt: 'hi',
      max_tokens: 3,
      seed: 7,
      logprobs: 5,
      stop: ['\n'],
    });
    expect(decodeGeneratePayload(encode({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 1, temperature: null })).messages).toHaveLength(1);
    expect(gen({ max_tokens: 3 })).toBe('BAD_REQUEST');
    expect(gen({ prompt: 'a', messages: [{ role: 'user', content: 'b' }], max_tokens: 3 })).toBe('BAD_REQUEST');
    expect(gen({ prompt: 'a' })).toBe('BAD_REQUEST');
    expect(gen({ prompt: 'a', max_tokens: 0 })).toBe('BAD_REQUEST');
    expect(gen({ prompt: 'a', max_tokens: 4097 })).toBe('BAD_REQUEST');
    expect(gen({ prompt: 'a', max_tokens: 1.5 })).toBe('BAD_REQUEST');
    expect(gen({ prompt: 'a', max_tokens: 1, logprobs: 21 })).toBe('BAD_REQUEST');
    expect(gen({ prompt: 'a', max_tokens: 1, temperature: -1 })).toBe('BAD_REQUEST');
    expect(gen({ prompt: 'a', max_tokens: 1, top_p: 1.5 })).toBe('BAD_REQUEST');
    expect(gen({ prompt: 'a', max_tokens: 1, seed: 2 ** 60 })).toBe('BAD_REQUEST');
    expect(gen({ prompt: 'a', max_tokens: 1, task: 'x' })).toBe('BAD_REQUEST');
    expect(gen({ messages: [{ role: 'User!', content: 'x' }], max_tokens: 1 })).toBe('BAD_REQUEST');
    expect(gen({ messages: [], max_tokens: 1 })).toBe('BAD_REQUEST');
    expect(gen({ prompt: 'x'.repeat(256 * 1024 + 1), max_tokens: 1 })).toBe('TOO_LARGE');
    expect(gen({ prompt: 'a', max_tokens: 1, stop: Array(17).fill('x') })).toBe('TOO_LARGE');
    expect(gen([1])).toBe('BAD_REQUEST');
    expect(codeOf(() => decodeGeneratePayload(new Uint8Array([0xc1])))).toBe('BAD_REQUEST');
  });

  test('cancel and empty payloads', () => {
    expect(decodeCancelPayload(encode({ target: '3b241101-e2bb-4255-8caf-4136c566a962' }))).toEqual({ target: '3b241101-e2bb-4255-8caf-4136c566a962' });
    expect(codeOf(() => decodeCancelPayload(encode({ target: 'x' })))).toBe('BAD_REQUEST');
    expect(decodeEmptyPayload(encode({}), 'ping')).toEqual({});
    expect(codeOf(() => decodeEmptyPayload(encode({ a: 1 }), 'ping'))).toBe('BAD_REQUEST');
    // A generate body under op "cancel" (the op is outside the signed string) is not a cancel.
    expect(codeOf(() => decodeCancelPayload(encode({ prompt: 'a', max_tokens: 1 })))).toBe('BAD_REQUEST');
  });

  test('response bodies are checked by type', () => {
    expect(() => decodeResponseBody('error', encode({ code: 'NOPE', message: 'x' }))).toThrow(VerificationError);
    expect(() => decodeResponseBody('token', encode({ tokens: [] }))).toThrow(VerificationError);
    expect(() => decodeResponseBody('pong', encode({ tokens: [] }))).toThrow(VerificationError);
    expect(decodeResponseBody('error', encode({ code: 'STALE', message: 'x' })).type).toBe('error');
    const token = (token_id: number) => encode({ tokens: [{ index: 0, token_id, text: 'x', logprob: -1, top_logprobs: [] }] });
    expect(decodeResponseBody('token', token(-1)).type).toBe('token'); // a text-only piece
    expect(() => decodeResponseBody('token', token(-2))).toThrow(VerificationError);
  });
});

describe('signatures', () => {
  test("the signed string is Epistula v2's", () => {
    const body = encode({ a: 1 });
    const text = Buffer.from(signedMessage(body, 'id-1', 1700000000000, keys.miner.address)).toString();
    expect(text).toBe(`${createHash('sha256').update(body).digest('hex')}.id-1.1700000000000.${keys.miner.address}`);
  });

  test('empty, malformed, foreign and wrapped signatures', () => {
    const message = Buffer.from('hello');
    const sig = keys.alice.sign(message);
    expect(verifySignature(message, sig, keys.alice.address)).toBe(true);
    expect(verifySignature(Buffer.from('hellO'), sig, keys.alice.address)).toBe(false);
    expect(verifySignature(message, sig, keys.bob.address)).toBe(false);
    for (const bad of ['', '0x', sig.slice(2), sig.slice(0, -2), `${sig}00`, sig.replace('0x', '0X'), '0x' + 'zz'.repeat(64), null, 42]) {
      expect(verifySignature(message, bad, keys.alice.address)).toBe(false);
    }
    expect(verifySignature(message, sig, 'not-an-address')).toBe(false);
    // What wallets sign: <Bytes>message</Bytes>
    const wrapped = keys.alice.sign(Buffer.from('<Bytes>hello</Bytes>'));
    expect(verifySignature(message, wrapped, keys.alice.address)).toBe(true);
  });

  test('altered fields break the signature', () => {
    const frame = goodFrame();
    expect(verifyFrame(frame)).toBe(true);
    expect(verifyFrame({ ...frame, body: encode({ x: 1 }) })).toBe(false);
    expect(verifyFrame({ ...frame, timestamp: frame.timestamp + 1 })).toBe(false);
    expect(verifyFrame({ ...frame, id: '3b241101-e2bb-4255-8caf-4136c566a962' })).toBe(false);
    expect(verifyFrame({ ...frame, signed_for: keys.bob.address })).toBe(false);
    expect(verifyFrame({ ...frame, signed_by: keys.bob.address })).toBe(false);
  });
});

describe('wallet', () => {
  test('reads a Bittensor hotkey file and checks its address', async () => {
    const seed = '0x' + '42'.repeat(32);
    const expected = (await signerFromSeed(seed)).address;
    const root = await mkdtemp(join(tmpdir(), 'wallets-'));
    await mkdir(join(root, 'miner', 'hotkeys'), { recursive: true });
    const file = join(root, 'miner', 'hotkeys', 'hk');
    await writeFile(file, JSON.stringify({ secretSeed: seed, ss58Address: expected, accountId: '0x', publicKey: '0x' }));
    expect(hotkeyFilePath({ path: root, name: 'miner', hotkey: 'hk' })).toBe(file);
    const signer = await loadWalletHotkey({ path: root, name: 'miner', hotkey: 'hk' });
    expect(signer.address).toBe(expected);
    expect(verifySignature(Buffer.from('x'), signer.sign(Buffer.from('x')), expected)).toBe(true);

    await writeFile(file, JSON.stringify({ secretSeed: seed, ss58Address: keys.alice.address }));
    await expect(loadWalletHotkey({ path: root, name: 'miner', hotkey: 'hk' })).rejects.toThrow(/does not|but ss58Address/);
    await writeFile(file, JSON.stringify({ secretSeed: '0x1234' }));
    await expect(loadWalletHotkey({ path: root, name: 'miner', hotkey: 'hk' })).rejects.toThrow(OptionError);
    await expect(loadWalletHotkey({ path: root, name: 'nobody', hotkey: 'hk' })).rejects.toThrow(/no hotkey file/);
    expect(() => hotkeyFilePath({ name: '../etc' })).toThrow(OptionError);
  });
});

describe('policy parts', () => {
  test('metagraph validation', () => {
    const m = devMetagraph(keys);
    expect(m.neurons.get(keys.alice.address)).toMatchObject({ stake: 1000, validatorPermit: true });
    expect(() => parseMetagraph({ netuid: 1, block: 1, neurons: [{ uid: 0, hotkey: 'x', stake: 1, validator_permit: true }] })).toThrow(/hotkey/);
    expect(() => parseMetagraph({ netuid: 1, block: 1, neurons: [{ uid: 0, hotkey: keys.alice.address, stake: -1, validator_permit: true }] })).toThrow(/stake/);
    const dup = { uid: 0, hotkey: keys.alice.address, stake: 1, validator_permit: true };
    expect(() => parseMetagraph({ netuid: 1, block: 1, neurons: [dup, { ...dup, uid: 1 }] })).toThrow(/twice/);
    expect(() => parseMetagraph([])).toThrow(OptionError);
    expect(isValidHotkey(keys.alice.address)).toBe(true);
    expect(isValidHotkey(keys.alice.address.slice(0, -1) + 'x')).toBe(false);
  });

  test('replay cache: bounded in time, in size and per hotkey', () => {
    const cache = new ReplayCache({ maxEntries: 4, maxPerHotkey: 3 });
    expect(cache.add('a', '1', 100, 0)).toBe('ok');
    expect(cache.has('a', '1', 50)).toBe(true);
    expect(cache.has('a', '1', 100)).toBe(false); // expired
    expect(cache.add('a', '2', 100, 0)).toBe('ok');
    expect(cache.add('a', '3', 100, 0)).toBe('ok');
    expect(cache.add('a', '4', 100, 0)).toBe('quota');
    expect(cache.add('b', '1', 100, 0)).toBe('ok');
    expect(cache.add('c', '1', 100, 0)).toBe('full');
    expect(cache.size).toBe(4);
    expect(cache.add('c', '1', 300, 200)).toBe('ok'); // the old ones expired and were pruned
    expect(cache.size).toBe(1);
  });

  test('rate limiter refills', () => {
    const rate = new RateLimiter(10, 2);
    expect([rate.take('a', 0), rate.take('a', 0), rate.take('a', 0)]).toEqual([true, true, false]);
    expect(rate.take('b', 0)).toBe(true);
    expect(rate.take('a', 100)).toBe(true);
  });

  test('policy options are validated', async () => {
    const base = { minerHotkey: keys.miner.address, requestTimeoutMs: 1000 };
    expect(() => new Policy({ ...base, allow: ['nope'] })).toThrow(/allow list/);
    expect(() => new Policy({ ...base, minStake: -1 })).toThrow(/stake/);
    expect(() => new Policy({ ...base, rateBurst: 2 ** 31 * 2 ** 23 })).toThrow(/rateBurst/);
    expect(() => new Policy({ ...base, minerHotkey: 'x' })).toThrow(/miner hotkey/);
    const p = new Policy({ ...base, maxConcurrentPerHotkey: 1 });
    const release = await p.acquireSlot('a');
    expect(codeOf(() => p.acquireSlot('a'))).toBe('RATE_LIMITED');
    release();
    release();
    expect(() => p.acquireSlot('a')).not.toThrow();
  });

  test('a hotkey beyond its concurrency cap waits in its queue, in arrival order, and leaves it when aborted', async () => {
    const p = new Policy({ minerHotkey: keys.miner.address, requestTimeoutMs: 1000, maxConcurrentPerHotkey: 1, maxQueuedPerHotkey: 2 });
    const first = await p.acquireSlot('a');
    const order: string[] = [];
    const second = p.acquireSlot('a').then((release) => (order.push('second'), release));
    const abort = new AbortController();
    const abandoned = p.acquireSlot('a', {}, abort.signal);
    expect(codeOf(() => p.acquireSlot('a'))).toBe('RATE_LIMITED'); // 1 running, 2 waiting
    expect(p.waitingFor('a')).toBe(2);
    abort.abort(new Error('gone'));
    await expect(abandoned).rejects.toThrow('gone');
    expect(p.waitingFor('a')).toBe(0 + 1);
    const third = p.acquireSlot('a').then((release) => (order.push('third'), release));
    await (await p.acquireSlot('b'))(); // another hotkey is not held up
    first();
    (await second)();
    (await third)();
    expect(order).toEqual(['second', 'third']);
    expect(p.waitingFor('a')).toBe(0);
  });
});

describe('serve flags', () => {
  const parse = (argv: string[]) => {
    const cmd = addServeOptions(new Command('serve').exitOverride());
    cmd.parse(argv, { from: 'user' });
    return parseServeOptions(cmd.opts());
  };
  test('defaults and values', () => {
    const o = parse(['--hotkey-uri', '//Miner', '--allow', `${keys.alice.address},${keys.bob.address}`, '--deny', keys.dave.address, '--max-connections', '10', '--wallet.name', 'w']);
    expect(o).toMatchObject({ port: 8091, host: '127.0.0.1', hotkeyUri: '//Miner', minStake: 0, requirePermit: false, ratePerSecond: 10, rateBurst: 20 });
    expect(o.allow).toEqual([keys.alice.address, keys.bob.address]);
    expect(o.deny).toEqual([keys.dave.address]);
    expect(o.limits).toEqual({ maxConnections: 10 });
    expect(o.wallet).toEqual({ path: '~/.bittensor/wallets', name: 'w', hotkey: 'default' });
  });
  test.each([
    [['--port', '70000']],
    [['--max-connections', '-1']],
    [['--max-connections', '1e3']],
    [['--max-frame-bytes', '9007199254740993']],
    [['--min-stake', 'lots']],
    [['--rate-limit', '0']],
    [['--log-level', 'loud']],
  ])('%j is refused', (argv) => {
    expect(() => parse(argv)).toThrow(OptionError);
  });
});

describe('the ordered verify queue (src/wire)', () => {
  test('items finish in arrival order whatever order their verdicts come in; a stopped queue drops the rest', async () => {
    const finished: Array<[string, unknown]> = [];
    let stopped = false;
    const queue = new OrderedVerifyQueue<string>({ finish: (item, verdict) => finished.push([item, verdict]), stopped: () => stopped });
    queue.push('at once', true); // nothing waits: finished now
    expect(finished).toEqual([['at once', true]]);
    const later: Array<(v: boolean | Error) => void> = [];
    const pending = () => new Promise<boolean | Error>((resolve) => later.push(resolve));
    queue.push('a', pending());
    queue.push('b', false); // known at once, but behind a
    queue.push('c', pending());
    expect(queue.length).toBe(3);
    later[1](true); // c's verdict first
    await new Promise((r) => setImmediate(r));
    expect(finished).toHaveLength(1);
    later[0](new Error('worker died'));
    await queue.drained;
    expect(finished.slice(1)).toEqual([['a', new Error('worker died')], ['b', false], ['c', true]]);
    queue.push('d', pending());
    queue.push('e', true);
    stopped = true;
    later[2](true);
    await queue.drained;
    expect([finished.length, queue.length]).toEqual([4, 0]);
  });
});
