// A fetch that signs every request with Epistula v2 headers (what Targon's and SN1's validators put in
// front of the OpenAI client), and keeps the exact bytes of every response body it returns.
import { epistulaHeaders, type Signer } from '../../src/wire/signing.ts';

export interface Exchange {
  url: string;
  requestHeaders: Headers;
  status: number;
  responseHeaders: Headers;
  /** Resolves with every byte of the response body, once it has ended (or the reader went away). */
  bytes: Promise<Buffer>;
}

export interface EpistulaFetch {
  fetch: typeof fetch;
  exchanges: Exchange[];
}

/**
 * `signer` signs each request for `signedFor`; `tamper` may rewrite the headers after signing (to
 * test refusals) and `body` replace the body after signing.
 */
export function epistulaFetch(
  signer: Signer,
  signedFor: string,
  options: { tamper?: (headers: Headers) => void; timestamp?: () => number } = {},
): EpistulaFetch {
  const exchanges: Exchange[] = [];
  const signed: typeof fetch = async (input, init = {}) => {
    const headers = new Headers(init.headers);
    const raw = init.body;
    const body = typeof raw === 'string' ? Buffer.from(raw, 'utf8') : raw instanceof Uint8Array ? Buffer.from(raw) : Buffer.alloc(0);
    for (const [name, value] of Object.entries(epistulaHeaders(signer, { body, signedFor, timestamp: options.timestamp?.() }))) headers.set(name, value);
    options.tamper?.(headers);
    const res = await fetch(input, { ...init, headers, body: init.body === undefined ? undefined : body });
    let bytes: Promise<Buffer> = Promise.resolve(Buffer.alloc(0));
    let returned = res;
    if (res.body) {
      const [mine, theirs] = res.body.tee();
      bytes = (async () => {
        const parts: Buffer[] = [];
        const reader = mine.getReader();
        try {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            parts.push(Buffer.from(value));
          }
        } catch {
          // the reader went away (a client that disconnects): what came is kept
        }
        return Buffer.concat(parts);
      })();
      returned = new Response(theirs, { status: res.status, statusText: res.statusText, headers: res.headers });
    }
    exchanges.push({ url: String(input), requestHeaders: headers, status: res.status, responseHeaders: res.headers, bytes });
    return returned;
  };
  return { fetch: signed, exchanges };
}
