// The axon's OpenAI-compatible HTTP face, driven by the official `openai` npm client (what Targon's
// and SN1's validators used) through a fetch that adds Epistula v2 headers with real sr25519 keys,
// on a real loopback port, in front of the real engine on the embedded tiny model. Every refusal with
// its status; the SSE stream parsed byte by byte and its signature verified; the same tokens as the
// WebSocket path for the same request and seed; 32 streams at once; a client that goes away; the
// per-hotkey queue. Generations that must still be running when the test acts on them are held
// (support/held-generator.ts); nothing waits for a while, only for events.
import { createHash, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import OpenAI, { APIError } from 'openai';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { PassThrough } from 'node:stream';
import type { Engine } from '../src/engine/engine.ts';
import { pino } from 'pino';
import { OverloadedError } from '../src/errors.ts';
import { AxonServer } from '../src/axon/server.ts';
import { epistulaHeaders, signedMessage, type Signer } from '../src/wire/signing.ts';
import { ValidatorClient, connectMiner } from '../src/validator/client.ts';
import { SseParser, verifyResponseHeaders, verifyStreamSignature, type StreamSignature } from '../src/validator/http-client.ts';
import { pingCommand, queryCommand } from '../src/validator/commands.ts';
import { VerificationError } from '../src/wire/protocol.ts';
import { devKeys, startAxon, waitFor, type TestAxon } from './support/axon-harness.ts';
import { epistulaFetch, type EpistulaFetch } from './support/epistula.ts';
import { heldGenerator, type HeldGenerator } from './support/held-generator.ts';

const keys = await devKeys();

function openai(base: string, signer: Signer = keys.alice, options: Parameters<typeof epistulaFetch>[2] = {}): { client: OpenAI; signed: EpistulaFetch } {
  const signed = epistulaFetch(signer, keys.miner.address, options);
  return { client: new OpenAI({ apiKey: 'unused', baseURL: `${base}/v1`, fetch: signed.fetch, maxRetries: 0 }), signed };
}

/** The events of a whole stream, strictly parsed; the stream must end exactly at its last event. */
function events(bytes: Buffer) {
  const parser = new SseParser();
  const list = parser.push(bytes);
  expect(parser.leftover).toBe(0);
  return list;
}

/** Check a stream's tail (signature chunk, then [DONE]) and its signature over every byte before it. */
function checkSignedStream(bytes: Buffer, uuid: string, validator = keys.alice.address) {
  const list = events(bytes);
  expect(list.at(-1)!.data).toBe('[DONE]');
  const sigEvent = list.at(-2)!;
  const sig = JSON.parse(sigEvent.data).epistula as StreamSignature;
  expect(sig).toMatchObject({ version: 2, uuid, signed_by: keys.miner.address, signed_for: validator });
  verifyStreamSignature(bytes.subarray(0, sigEvent.start), sig, { miner: keys.miner.address, validator, uuid });
  // One byte changed anywhere before the signature chunk, and it no longer verifies.
  const altered = Buffer.from(bytes.subarray(0, sigEvent.start));
  altered[Math.floor(altered.length / 2)] ^= 1;
  expect(() => verifyStreamSignature(altered, sig, { miner: keys.miner.address, validator, uuid })).toThrow(VerificationError);
  return list.slice(0, -2).map((e) => JSON.parse(e.data));
}

/** Expect the OpenAI client's call to fail with `status` and the wire `code`. */
async function refused(call: Promise<unknown>, status: number, code: string, param?: string): Promise<APIError> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(APIError);
  const api = err as APIError;
  expect([api.status, (api.error as { code?: string }).code]).toEqual([status, code]);
  expect((api.error as { type?: string }).type).toBeTypeOf('string');
  if (param !== undefined) expect((api.error as { param?: string }).param).toBe(param);
  return api;
}

describe('the HTTP face on the real engine', () => {
  let axon: TestAxon;
  let base: string;
  let model: string;
  beforeAll(async () => {
    axon = await startAxon({
      limits: { maxConnectionsPerIp: 64, maxPendingConnectionsPerIp: 64, maxFrameBytes: 64 * 1024, maxPromptBytes: 4096, maxTokens: 64 },
      // 32 streams at once: 8 run, the other 24 wait for a slot in alice's queue.
      policy: { maxConcurrentPerHotkey: 8, maxQueuedPerHotkey: 32 },
    });
    base = `http://127.0.0.1:${axon.port}`;
    model = axon.generator.info().modelId;
  });
  afterAll(() => axon.close());

  test('GET /v1/models is unsigned and lists the served model', async () => {
    const models = await new OpenAI({ apiKey: 'unused', baseURL: `${base}/v1`, maxRetries: 0 }).models.list();
    expect(models.data.map((m) => m.id)).toEqual([model]);
  });

  test('streamed chat: one token per chunk with logprobs and top_logprobs, a finish chunk, usage, the signature chunk, [DONE]', async () => {
    const { client, signed } = openai(base);
    const stream = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'Hello there' }],
      max_tokens: 10,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    const exchange = signed.exchanges[0];
    expect(exchange.responseHeaders.get('content-type')).toBe('text/event-stream');
    const raw = await exchange.bytes;
    const parsed = checkSignedStream(raw, exchange.requestHeaders.get('epistula-uuid')!);
    // What the client yielded is what was on the wire, the signature chunk included (choices: []).
    expect(chunks).toEqual([...parsed, JSON.parse(events(raw).at(-2)!.data)]);
    const tokenChunks = chunks.filter((c) => c.choices.length > 0 && c.choices[0].finish_reason === null);
    const usage = chunks.find((c) => c.usage)!.usage!;
    expect(tokenChunks.length).toBe(usage.completion_tokens);
    expect(tokenChunks.length).toBeGreaterThan(0);
    expect(tokenChunks[0].choices[0].delta.role).toBe('assistant');
    for (const c of tokenChunks) {
      const content = c.choices[0].logprobs!.content!;
      expect(content).toHaveLength(1);
      expect(content[0].top_logprobs).toHaveLength(3);
      expect(content[0].logprob).toBeLessThanOrEqual(0);
      // Greedy: the chosen token is the most likely one.
      expect(content[0].logprob).toBeCloseTo(content[0].top_logprobs[0].logprob, 5);
    }
    const finish = chunks.filter((c) => c.choices.length > 0 && c.choices[0].finish_reason !== null);
    expect(finish).toHaveLength(1);
    expect(['stop', 'length']).toContain(finish[0].choices[0].finish_reason);
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
  });

  test('completions with return_tokens_as_token_ids, and the same tokens as the WebSocket path for the same request and seed', async () => {
    const { client, signed } = openai(base);
    const request = { model, prompt: 'Once upon a time', max_tokens: 12, temperature: 0.9, top_p: 0.95, top_k: 40, seed: 1234, logprobs: 2 };
    const stream = await client.completions.create({ ...request, stream: true, return_tokens_as_token_ids: true } as OpenAI.Completions.CompletionCreateParamsStreaming);
    const chunks: OpenAI.Completions.Completion[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    checkSignedStream(await signed.exchanges[0].bytes, signed.exchanges[0].requestHeaders.get('epistula-uuid')!);
    const tokenChunks = chunks.filter((c) => c.choices.length > 0 && c.choices[0].finish_reason === null);
    const httpIds = tokenChunks.map((c) => {
      const lp = c.choices[0].logprobs!;
      expect(lp.tokens).toHaveLength(1);
      expect(Object.keys(lp.top_logprobs![0])).toHaveLength(2);
      return Number(/^token_id:(\d+)$/.exec(lp.tokens![0])![1]);
    });
    const ws = await ValidatorClient.connect({ url: axon.url, signer: keys.alice, minerHotkey: keys.miner.address });
    try {
      const result = await ws.generate({ prompt: request.prompt, maxTokens: 12, temperature: 0.9, topP: 0.95, topK: 40, seed: 1234, logprobs: 2 }).collect();
      expect(httpIds).toEqual(result.tokens.map((t) => t.tokenId));
      expect(tokenChunks.map((c) => c.choices[0].text).join('')).toBe(result.text);
      expect(tokenChunks.map((c) => c.choices[0].logprobs!.token_logprobs![0])).toEqual(result.tokens.map((t) => t.logprob));
    } finally {
      await ws.close();
    }
    // The HTTP transport of the validator client gets them too, verified.
    const http = await connectMiner({ url: base, signer: keys.alice, minerHotkey: keys.miner.address });
    const viaHttp = await http.generate({ prompt: request.prompt, maxTokens: 12, temperature: 0.9, topP: 0.95, topK: 40, seed: 1234, logprobs: 2 }).collect();
    expect(viaHttp.tokens.map((t) => t.tokenId)).toEqual(httpIds);
    expect(viaHttp.framesVerified).toBe(1);
  });

  test('non-streaming chat: one JSON body whose Epistula response headers sign it', async () => {
    const { client, signed } = openai(base);
    const completion = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], max_completion_tokens: 6, seed: 3, logprobs: true });
    const exchange = signed.exchanges[0];
    const raw = await exchange.bytes;
    expect(JSON.parse(raw.toString('utf8'))).toEqual(completion);
    const uuid = exchange.requestHeaders.get('epistula-uuid')!;
    verifyResponseHeaders(exchange.responseHeaders, raw, { miner: keys.miner.address, validator: keys.alice.address, uuid });
    expect(() => verifyResponseHeaders(exchange.responseHeaders, Buffer.concat([raw, Buffer.from(' ')]), { miner: keys.miner.address, validator: keys.alice.address, uuid })).toThrow(VerificationError);
    expect(completion.object).toBe('chat.completion');
    expect(completion.choices[0].logprobs!.content!.length).toBe(completion.usage!.completion_tokens);
    expect(completion.choices[0].message.content).toBe(completion.choices[0].logprobs!.content!.map((c) => c.token).join(''));
  });

  test('/tokenize and /detokenize, signed, agree with the engine', async () => {
    const engine = axon.generator as Engine;
    const post = async (path: string, value: unknown) => {
      const body = Buffer.from(JSON.stringify(value));
      const headers: Record<string, string> = { 'Content-Type': 'application/json', ...epistulaHeaders(keys.alice, { body, signedFor: keys.miner.address }) };
      const res = await fetch(`${base}${path}`, { method: 'POST', headers, body });
      const raw = Buffer.from(await res.arrayBuffer());
      verifyResponseHeaders(res.headers, raw, { miner: keys.miner.address, validator: keys.alice.address, uuid: headers['Epistula-Uuid'] });
      return { status: res.status, json: JSON.parse(raw.toString('utf8')) };
    };
    const tokens = await post('/tokenize', { model, prompt: 'Hello world' });
    expect(tokens.status).toBe(200);
    expect(tokens.json.tokens).toEqual(engine.tokenizer.encode('Hello world'));
    expect(tokens.json.count).toBe(tokens.json.tokens.length);
    const chat = await post('/tokenize', { messages: [{ role: 'user', content: 'Hi' }] });
    expect(chat.json.tokens).toEqual(engine.encodePrompt({ messages: [{ role: 'user', content: 'Hi' }], maxTokens: 1 }));
    const text = await post('/detokenize', { tokens: tokens.json.tokens });
    expect(text.json.prompt).toBe(engine.tokenizer.decode(tokens.json.tokens));
    const outside = await post('/detokenize', { tokens: [1 << 30] });
    expect([outside.status, outside.json.error.code]).toEqual([400, 'BAD_REQUEST']);
  });

  test('every refusal has its status and OpenAI error shape', async () => {
    const chat = (client: OpenAI, extra: Record<string, unknown> = {}) =>
      client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], max_tokens: 2, ...extra } as OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming);
    const { client } = openai(base);
    // 400: fields out of range, n other than 1, Epistula version; 404: unknown model; 413: too large.
    await refused(chat(client, { n: 2 }), 400, 'BAD_REQUEST', 'n');
    await refused(chat(client, { temperature: 3 }), 400, 'BAD_REQUEST', 'temperature');
    await refused(chat(client, { top_logprobs: 21, logprobs: true }), 400, 'BAD_REQUEST', 'top_logprobs');
    await refused(chat(client, { max_tokens: 65 }), 400, 'BAD_REQUEST', 'max_tokens');
    await refused(chat(client, { model: 'gpt-4o' }), 404, 'BAD_REQUEST', 'model');
    await refused(chat(client, { messages: [{ role: 'user', content: 'x'.repeat(5000) }] }), 413, 'TOO_LARGE', 'messages');
    await refused(chat(client, { messages: [{ role: 'user', content: 'x'.repeat(70 * 1024) }] }), 413, 'TOO_LARGE');
    await refused(chat(openai(base, keys.alice, { tamper: (h) => h.set('Epistula-Version', '1') }).client), 400, 'UNSUPPORTED_VERSION');
    // 401: missing headers, stale, a signature that does not verify (another signer, or the body changed).
    await refused(chat(new OpenAI({ apiKey: 'unused', baseURL: `${base}/v1`, maxRetries: 0 })), 401, 'BAD_FRAME');
    await refused(chat(openai(base, keys.alice, { timestamp: () => Date.now() - 3_600_000 }).client), 401, 'STALE');
    await refused(chat(openai(base, keys.bob, { tamper: (h) => h.set('Epistula-Signed-By', keys.alice.address) }).client), 401, 'BAD_SIGNATURE');
    // 403: signed for another miner, not registered, denied.
    await refused(chat(openai(base, keys.alice, { tamper: (h) => h.set('Epistula-Signed-For', keys.bob.address) }).client), 403, 'WRONG_MINER');
    await refused(chat(openai(base, keys.charlie).client), 403, 'NOT_REGISTERED');
    await refused(chat(openai(base, keys.dave).client), 403, 'FORBIDDEN');
    // 409: the same signed request twice.
    const body = Buffer.from(JSON.stringify({ model, prompt: 'again', max_tokens: 1 }));
    const headers = { 'Content-Type': 'application/json', ...epistulaHeaders(keys.alice, { body, signedFor: keys.miner.address }) };
    const first = await fetch(`${base}/v1/completions`, { method: 'POST', headers, body });
    expect(first.status).toBe(200);
    await first.arrayBuffer();
    const again = await fetch(`${base}/v1/completions`, { method: 'POST', headers, body });
    expect([again.status, ((await again.json()) as { error: { code: string } }).error.code]).toEqual([409, 'REPLAY']);
    // The body changed after signing.
    const changed = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { ...headers, 'Epistula-Uuid': randomUUID() }, body });
    expect(changed.status).toBe(401);
    // A chunked body (no Content-Length) is cut off at the limit as it is read.
    const chunked = Buffer.from(JSON.stringify({ model, prompt: 'y'.repeat(70 * 1024), max_tokens: 1 }));
    const big = await fetch(`${base}/v1/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...epistulaHeaders(keys.alice, { body: chunked, signedFor: keys.miner.address }) },
      body: new ReadableStream({
        start(controller) {
          for (let at = 0; at < chunked.length; at += 8192) controller.enqueue(chunked.subarray(at, at + 8192));
          controller.close();
        },
      }),
      duplex: 'half',
    } as RequestInit);
    expect([big.status, ((await big.json()) as { error: { code: string } }).error.code]).toEqual([413, 'TOO_LARGE']);
    // An unknown route under /v1 is 404 in OpenAI's shape; the face still serves afterwards.
    const missing = await fetch(`${base}/v1/embeddings`, { method: 'POST' });
    expect([missing.status, ((await missing.json()) as { error: { type: string } }).error.type]).toEqual([404, 'invalid_request_error']);
    expect((await chat(client)).choices).toHaveLength(1);
  });

  test('32 streams at once, 8 running and the rest queued, each one token per chunk and signed', async () => {
    const { client, signed } = openai(base);
    const results = await Promise.all(
      Array.from({ length: 32 }, async (_, i) => {
        const stream = await client.completions.create({ model, prompt: `stream ${i}`, max_tokens: 6, temperature: 0, stream: true, stream_options: { include_usage: true } });
        let tokens = 0;
        let usage = -1;
        for await (const chunk of stream) {
          if (chunk.choices.length > 0 && chunk.choices[0].finish_reason === null) tokens++;
          if (chunk.usage) usage = chunk.usage.completion_tokens;
        }
        return { tokens, usage };
      }),
    );
    for (const r of results) expect(r.tokens).toBe(r.usage);
    expect(signed.exchanges).toHaveLength(32);
    for (const e of signed.exchanges) checkSignedStream(await e.bytes, e.requestHeaders.get('epistula-uuid')!);
    expect(axon.server.stats().activeRequests).toBe(0);
  });

  test('ping and query speak HTTP', async () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (d) => (text += d));
    await pingCommand({ url: base, miner: keys.miner.address, hotkeyUri: '//Alice' }, out);
    expect(text).toMatch(/signature OK/);
    expect(text).toContain(model);
    text = '';
    const err = new PassThrough();
    let errText = '';
    err.on('data', (d) => (errText += d));
    await queryCommand('Hello', { url: base, miner: keys.miner.address, hotkeyUri: '//Alice', maxTokens: '5', seed: '1', json: true }, out, err);
    const result = JSON.parse(text);
    expect(result.usage.completionTokens).toBe(result.tokens.length);
    expect(result.transcriptSha256).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe('the HTTP face with held generations', () => {
  let held: HeldGenerator;
  let axon: TestAxon;
  let base: string;
  beforeAll(async () => {
    held = heldGenerator(2);
    axon = await startAxon({ generator: held, policy: { maxConcurrentPerHotkey: 1, maxQueuedPerHotkey: 1, allow: [keys.eve.address] } });
    base = `http://127.0.0.1:${axon.port}`;
  });
  afterAll(() => axon.close());

  const start = (client: OpenAI, prompt: string) => client.completions.create({ model: 'held', prompt, max_tokens: 50, stream: true });

  test('beyond --max-concurrent a request waits in the queue, one more is refused (429, Retry-After); a client that goes away frees its slot', async () => {
    const { client } = openai(base);
    const first = await start(client, 'first');
    const it = first[Symbol.asyncIterator]();
    expect((await it.next()).value.choices[0].text).toBe('t0 ');
    // The second waits for the first's slot: not refused, not started.
    const second = start(client, 'second');
    await waitFor('the second request to wait for a slot', () => axon.server.policy.waitingFor(keys.alice.address) === 1);
    expect(held.calls).toHaveLength(1);
    const third = await refused(start(client, 'third'), 429, 'RATE_LIMITED');
    expect(third.headers?.get('retry-after')).toBe('1');
    // Another hotkey is not held up by alice's queue.
    const eve = await start(openai(base, keys.eve).client, 'eve');
    const eveCall = await held.call(1);
    expect(eveCall.request.prompt).toBe('eve');
    eveCall.finish();
    let eveTokens = 0;
    for await (const c of eve) if (c.choices.length > 0 && c.choices[0].finish_reason === null) eveTokens++;
    expect(eveTokens).toBe(2);
    // The first client goes away mid-stream: its generation is aborted and the second takes the slot.
    await it.return!();
    await waitFor('the first generation to end', () => held.calls[0].ended);
    expect(held.calls[0].signal?.aborted).toBe(true);
    const secondCall = await held.call(2);
    expect(secondCall.request.prompt).toBe('second');
    secondCall.finish();
    const chunks = [];
    for await (const c of await second) chunks.push(c);
    expect(chunks.at(-1)!.choices).toEqual([]); // the signature chunk
    expect(chunks.filter((c) => c.choices[0]?.finish_reason === 'length')).toHaveLength(1);
    await waitFor('the disconnect to be counted', () => axon.server.stats().activeRequests === 0);
  });

  test('--metrics-host: /metrics on its own address, 404 on the axon port', async () => {
    const server = new AxonServer({ generator: heldGenerator(1), signer: keys.miner, logger: pino({ level: 'silent' }), cryptoWorkers: 0, metrics: { host: '127.0.0.1', port: 0 }, policy: { allow: [keys.alice.address] } });
    const { port } = await server.listen(0, '127.0.0.1');
    try {
      const at = server.metricsAddress!;
      expect(at.port).not.toBe(port);
      const metrics = await fetch(`http://127.0.0.1:${at.port}/metrics`);
      expect([metrics.status, (await metrics.text()).includes('axon_requests_total')]).toEqual([200, true]);
      const onAxon = await fetch(`http://127.0.0.1:${port}/metrics`);
      await onAxon.arrayBuffer();
      expect(onAxon.status).toBe(404);
    } finally {
      await server.close(0);
    }
  });

  test('shutdown ends a running stream with an error event, still signed, then [DONE]', async () => {
    const generator = heldGenerator(1);
    const closing = await startAxon({ generator, policy: { allow: [keys.alice.address] } });
    const body = Buffer.from(JSON.stringify({ prompt: 'until shutdown', max_tokens: 50, stream: true }));
    const headers: Record<string, string> = { 'Content-Type': 'application/json', ...epistulaHeaders(keys.alice, { body, signedFor: keys.miner.address }) };
    const res = await fetch(`http://127.0.0.1:${closing.port}/v1/completions`, { method: 'POST', headers, body });
    expect(res.status).toBe(200);
    await generator.call(0); // running, its first token sent
    const [bytes] = await Promise.all([res.arrayBuffer(), closing.server.close(0)]);
    const chunks = checkSignedStream(Buffer.from(bytes), headers['Epistula-Uuid']);
    expect(chunks[0].choices[0].text).toBe('t0 ');
    expect(chunks.at(-1)).toEqual({ error: { message: 'miner is shutting down', type: 'overloaded_error', param: null, code: 'OVERLOADED' } });
    await generator.close();
  });

  test('an engine that is overloaded answers 503 before the stream starts', async () => {
    const overloaded = heldGenerator(1);
    const busy = await startAxon({
      generator: {
        ...overloaded,
        generate: () =>
          (async function* () {
            throw new OverloadedError('queue full (256 requests waiting)');
          })(),
      },
    });
    try {
      const { client } = openai(`http://127.0.0.1:${busy.port}`);
      const err = await refused(start(client, 'x'), 503, 'OVERLOADED');
      expect(err.message).toMatch(/queue full/);
    } finally {
      await busy.close();
    }
  });
});

describe('the HTTP validator client against a miner that lies', () => {
  /**
   * A miner on loopback that answers every completion with a stream built by `events` (JSON values,
   * or raw SSE text), then a signature chunk made with the real miner key over `signedBytes(bytes)`
   * (the bytes it sent, unless the test changes what it signs), then [DONE].
   */
  async function liar(events: (uuid: string) => unknown[], signedBytes: (sent: Buffer) => Buffer = (b) => b) {
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        const uuid = String(req.headers['epistula-uuid']);
        res.writeHead(200, { 'Content-Type': 'text/event-stream' });
        const sent = Buffer.concat(events(uuid).map((e) => Buffer.from(`data: ${JSON.stringify(e)}\n\n`)));
        res.write(sent);
        const timestamp = Date.now();
        const signed = signedBytes(sent);
        const signature = keys.miner.sign(signedMessage(signed, uuid, timestamp, keys.alice.address));
        const sha256 = createHash('sha256').update(signed).digest('hex');
        const epistula = { version: 2, uuid, timestamp, signed_by: keys.miner.address, signed_for: keys.alice.address, sha256, signature };
        res.end(`data: ${JSON.stringify({ choices: [], epistula })}\n\ndata: [DONE]\n\n`);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const port = (server.address() as AddressInfo).port;
    const client = await connectMiner({ url: `http://127.0.0.1:${port}`, signer: keys.alice, minerHotkey: keys.miner.address });
    const outcome = await client.generate({ prompt: 'x', maxTokens: 4 }).collect().then(
      (r) => r,
      (e: unknown) => e,
    );
    await new Promise<void>((resolve) => server.close(() => resolve()));
    return outcome;
  }
  const token = (id: number, text: string) => ({ choices: [{ index: 0, text, logprobs: { tokens: [`token_id:${id}`], token_logprobs: [-0.5], top_logprobs: [{}], text_offset: [0] }, finish_reason: null }] });
  const finish = { choices: [{ index: 0, text: '', logprobs: null, finish_reason: 'length' }] };
  const usage = (n: number) => ({ choices: [], usage: { prompt_tokens: 1, completion_tokens: n, total_tokens: n + 1 } });

  test('an honest stream is accepted', async () => {
    const result = await liar(() => [token(5, 'a'), token(6, 'b'), finish, usage(2)]);
    expect(result).toMatchObject({ text: 'ab', tokens: [{ tokenId: 5 }, { tokenId: 6 }], finishReason: 'length' });
  });

  test('bytes changed after signing, two tokens in one chunk, a usage count that disagrees: each is refused', async () => {
    const altered = await liar(
      () => [token(5, 'a'), token(6, 'b'), finish, usage(2)],
      (sent) => Buffer.from(sent.toString('utf8').replace('"b"', '"c"')),
    );
    expect(altered).toBeInstanceOf(VerificationError);
    expect((altered as Error).message).toMatch(/digest mismatch/);
    const twoInOne = { choices: [{ index: 0, text: 'ab', logprobs: { tokens: ['token_id:5', 'token_id:6'], token_logprobs: [-1, -1], top_logprobs: [{}, {}], text_offset: [0, 1] }, finish_reason: null }] };
    expect(String(await liar(() => [twoInOne, finish, usage(2)]))).toMatch(/exactly one token/);
    expect(String(await liar(() => [token(5, 'a'), finish, usage(3)]))).toMatch(/reports 3 completion tokens; 1 token chunks arrived/);
    expect(String(await liar(() => [token(5, 'a'), usage(1)]))).toMatch(/no finish_reason/);
  });
});
