// Conversations → tokenized samples, in input order, on worker threads when there is enough work to pay for them.
//
// Why not src/tokenizer's createTokenizerPool: masking needs token offsets (the pool returns ids only), and
// rendering the chat template costs about as much as tokenizing, so each worker does the whole step
// (buildSamples → tokenize → mask) with its own template and tokenizer. Batches go out round-robin, a bounded
// number in flight per worker (so memory stays flat and the main thread keeps writing shards meanwhile), and
// come back in order with the id/weight arrays transferred, not copied.
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import type { Conversation } from "../../data/conversation.ts";
import { TunaError } from "../../errors.ts";
import {
  type ErrorData,
  errorFromData,
  mergeRejections,
  type Rejections,
  type SampleContext,
  type TokenizedConvSample,
  tokenizeConversation,
} from "./samples.ts";

export interface TokenizeOptions {
  strict: boolean;
  rejections: Rejections;
  /** Worker threads; 0 = in this thread. Default: auto (see defaultWorkers). */
  workers?: number;
}

/** Below this many conversations the workers' start-up (about a second each) costs more than it saves. */
const MIN_PARALLEL = 2000;
/** Characters of conversation text per batch sent to a worker. */
const BATCH_CHARS = 256 * 1024;
const IN_FLIGHT_PER_WORKER = 3;

export function defaultWorkers(conversations: number): number {
  if (conversations < MIN_PARALLEL) return 0;
  const env = process.env.TUNA_DATA_WORKERS;
  if (env !== undefined && env !== "") {
    const n = Number(env);
    if (!Number.isInteger(n) || n < 0) {
      throw new TunaError("BAD_OPTION", `TUNA_DATA_WORKERS "${env}" is not a whole number ≥ 0`);
    }
    return n;
  }
  return Math.min(availableParallelism(), 8);
}

const convChars = (c: Conversation) =>
  c.messages.reduce((a, m) => a + m.content.length + (m.reasoning?.length ?? 0), 0);

/** The tokenized samples of each conversation (an empty list for a rejected one), in input order. */
export async function* tokenizeConversations(
  convs: readonly Conversation[],
  ctx: SampleContext,
  o: TokenizeOptions,
): AsyncGenerator<TokenizedConvSample[]> {
  const n = o.workers ?? defaultWorkers(convs.length);
  if (n === 0) {
    for (const c of convs) yield tokenizeConversation(c, ctx, o.strict, o.rejections);
    return;
  }
  const pool = await startWorkers(ctx, n);
  try {
    // Lazily cut batches; keep up to n * IN_FLIGHT_PER_WORKER in flight; yield them in order.
    let next = 0;
    let k = 0;
    const pending: Promise<BatchResult>[] = [];
    const dispatch = () => {
      while (next < convs.length && pending.length < n * IN_FLIGHT_PER_WORKER) {
        const batch: Conversation[] = [];
        let chars = 0;
        while (next < convs.length && (batch.length === 0 || chars < BATCH_CHARS)) {
          chars += convChars(convs[next]);
          batch.push(convs[next++]);
        }
        pending.push(pool.run(k++ % n, { convs: batch, strict: o.strict }) as Promise<BatchResult>);
      }
    };
    dispatch();
    while (pending.length) {
      const r = await (pending.shift() as Promise<BatchResult>);
      if ("error" in r) throw errorFromData(r.error);
      mergeRejections(o.rejections, r.rej);
      dispatch();
      yield* r.out;
    }
  } finally {
    await pool.close();
  }
}

type BatchResult = { out: TokenizedConvSample[][]; rej: Rejections } | { error: ErrorData };

/** Sample workers (worker.ts); each answers its messages in order. */
export interface WorkerPool {
  readonly size: number;
  run(
    worker: number,
    message: { convs: Conversation[]; strict: boolean; records?: boolean },
  ): Promise<unknown>;
  close(): Promise<void>;
}

const WORKER_URL = new URL("./worker.mjs", import.meta.url);

export async function startWorkers(
  ctx: Pick<SampleContext, "modelDir" | "policy">,
  n: number,
  o: { oneByOne?: boolean } = {},
): Promise<WorkerPool> {
  const workers: Worker[] = [];
  // Each worker answers its batches in the order it got them: one FIFO of waiting callers per worker.
  const waiting: { resolve: (r: unknown) => void; reject: (e: unknown) => void }[][] = [];
  const startOne = (i: number) => {
    const w = new Worker(WORKER_URL, { workerData: { modelDir: ctx.modelDir, policy: ctx.policy } });
    workers.push(w);
    waiting.push([]);
    return new Promise<void>((resolve, reject) => {
      w.once("message", (m: { ready?: boolean; error?: ErrorData }) => {
        if (m.ready) {
          w.on("message", (r: unknown) => waiting[i].shift()?.resolve(r));
          resolve();
        } else
          reject(errorFromData(m.error ?? { code: "INTERNAL", message: "sample worker failed to start" }));
      });
      w.on("error", (e) => {
        reject(e);
        for (const x of waiting[i].splice(0)) x.reject(e);
      });
    });
  };
  try {
    if (o.oneByOne) for (let i = 0; i < n; i++) await startOne(i);
    else await Promise.all(Array.from({ length: n }, (_, i) => startOne(i)));
  } catch (e) {
    await Promise.all(workers.map((w) => w.terminate()));
    throw e;
  }
  return {
    size: n,
    run: (i, message) =>
      new Promise<unknown>((resolve, reject) => {
        waiting[i].push({ resolve, reject });
        workers[i].postMessage(message);
      }),
    close: async () => {
      await Promise.all(workers.map((w) => w.terminate()));
    },
  };
}
