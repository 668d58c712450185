// HTTP for the hubs over Node's built-in fetch (undici): redirects followed by hand so the hub's own headers
// (X-Linked-Etag, X-Repo-Commit) are seen and credentials never reach a CDN, a stall timeout that restarts with
// every chunk, and retries with exponential backoff for 5xx, 429 and network failures.
import { TunaError } from "../errors.ts";
import type { HubFileHeaders } from "./types.ts";

/** A failure worth trying again (server error, rate limit, dropped or stalled connection). */
export class TransientError extends Error {
  constructor(
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = "TransientError";
  }
}

export interface RequestOptions {
  headers?: Record<string, string>;
  method?: string;
  body?: string;
  /** Abort when no byte arrives for this long (connect, headers, and each body chunk). */
  stallMs: number;
}

export interface Stall {
  signal: AbortSignal;
  /** Restart the countdown (call on every chunk received). */
  touch(): void;
  done(): void;
}

export function stallTimer(ms: number): Stall {
  const ctl = new AbortController();
  let t: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(t);
    t = setTimeout(
      () => ctl.abort(new TransientError(`no data for ${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)}s`)),
      ms,
    );
    t.unref?.();
  };
  arm();
  return { signal: ctl.signal, touch: arm, done: () => clearTimeout(t) };
}

export interface HubResponse {
  res: Response;
  /** Headers of the first (hub) answer, before a redirect. */
  hub: HubFileHeaders;
  finalUrl: string;
  stall: Stall;
}

const CREDENTIALS = ["authorization", "cookie"];

/**
 * GET (or other method) following up to 5 redirects by hand. Credentials go only to the origin they were meant
 * for: a redirect to another host (the CDN that serves LFS files) gets the request without them, as browsers do.
 */
export async function request(url: string, opts: RequestOptions): Promise<HubResponse> {
  const stall = stallTimer(opts.stallMs);
  const origin = new URL(url).origin;
  let current = url;
  let first: HubFileHeaders | null = null;
  try {
    for (let hop = 0; hop <= 5; hop++) {
      const sameOrigin = new URL(current).origin === origin;
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(opts.headers ?? {})) {
        if (sameOrigin || !CREDENTIALS.includes(k.toLowerCase())) headers[k] = v;
      }
      let res: Response;
      try {
        res = await fetch(current, {
          method: opts.method ?? "GET",
          headers,
          body: opts.body,
          redirect: "manual",
          signal: stall.signal,
        });
      } catch (e) {
        throw asTransient(e, stall.signal);
      }
      stall.touch();
      if (!first) first = hubHeaders(res);
      const location = res.headers.get("location");
      if (res.status >= 300 && res.status < 400 && location) {
        await res.body?.cancel();
        current = new URL(location, current).toString();
        continue;
      }
      return { res, hub: first, finalUrl: current, stall };
    }
  } catch (e) {
    stall.done();
    throw e;
  }
  stall.done();
  throw new TunaError("HUB_REDIRECTS", `more than 5 redirects from ${url}`, { hint: "check the --endpoint" });
}

function hubHeaders(res: Response): HubFileHeaders {
  const size = res.headers.get("x-linked-size");
  return {
    status: res.status,
    etag: unquote(res.headers.get("etag")),
    linkedEtag: unquote(res.headers.get("x-linked-etag")),
    linkedSize: size !== null && /^\d+$/.test(size) ? Number(size) : null,
    repoCommit: res.headers.get("x-repo-commit"),
  };
}

function unquote(etag: string | null): string | null {
  if (etag === null) return null;
  return etag.replace(/^W\//, "").replace(/^"(.*)"$/, "$1");
}

/** Network-level failures (reset, refused, stalled, truncated body) become TransientError. */
export function asTransient(e: unknown, signal?: AbortSignal): unknown {
  if (e instanceof TunaError || e instanceof TransientError) return e;
  if (signal?.aborted && signal.reason instanceof TransientError) return signal.reason;
  const err = e as Error & { cause?: { code?: string; message?: string } };
  const cause = err?.cause?.code ?? err?.cause?.message;
  return new TransientError(`${err?.message ?? String(e)}${cause ? ` (${cause})` : ""}`);
}

/** Throws TransientError for statuses worth retrying; returns otherwise. */
export function checkTransientStatus(res: Response, url: string): void {
  if (res.status >= 500 || res.status === 429 || res.status === 408) {
    const ra = res.headers.get("retry-after");
    const ms = ra !== null && /^\d+$/.test(ra) ? Number(ra) * 1000 : undefined;
    throw new TransientError(`HTTP ${res.status} from ${url}`, ms);
  }
}

export interface RetryOptions {
  retries: number;
  backoffMs: number;
  onRetry?: (attempt: number, waitMs: number, error: TransientError) => void;
}

/** Run `fn` until it succeeds, retrying TransientError up to `retries` times with doubling waits. */
export async function withRetries<T>(fn: (attempt: number) => Promise<T>, o: RetryOptions): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (e) {
      if (!(e instanceof TransientError) || attempt >= o.retries) throw e;
      const wait = Math.min(e.retryAfterMs ?? o.backoffMs * 2 ** attempt, 60_000);
      o.onRetry?.(attempt + 1, wait, e);
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

/** GET a JSON document from a hub API, retrying transient failures; other HTTP errors go through `onError`. */
export async function getJson(
  url: string,
  headers: Record<string, string>,
  o: RetryOptions & { stallMs: number },
  onError: (status: number, headers: Headers, body: string) => Error,
): Promise<{ json: unknown; headers: Headers }> {
  return withRetries(async () => {
    const { res, stall } = await request(url, {
      headers: { accept: "application/json", ...headers },
      stallMs: o.stallMs,
    });
    try {
      checkTransientStatus(res, url);
      let text: string;
      try {
        text = await res.text();
      } catch (e) {
        throw asTransient(e, stall.signal);
      }
      if (!res.ok) throw onError(res.status, res.headers, text);
      try {
        return { json: JSON.parse(text), headers: res.headers };
      } catch {
        throw new TunaError("HUB_BAD_RESPONSE", `${url} did not answer JSON: ${text.slice(0, 120)}`, {
          hint: "check the --endpoint: it must be the hub's address (e.g. https://hf-mirror.com), not a web page",
        });
      }
    } finally {
      stall.done();
    }
  }, o);
}
