// Encode many texts on several worker threads, each with its own tokenizer loaded from the same model directory.
// One encodeBatch copies the texts once into a SharedArrayBuffer (share.ts) and sends each worker one message;
// each worker runs its own range of jobs, then takes jobs from the back of the others' ranges until none are left,
// and answers once with all its ids in one transferred buffer. Results come back in input order.
import { Worker } from "node:worker_threads";
import { TunaError } from "../errors.ts";
import { loadTokenizer } from "./load.ts";
import { type BatchPart, errorOf, jobStarts, runShare, shareBatch, writeLater } from "./share.ts";
import type { EncodeOptions } from "./types.ts";

export interface TokenizerPool {
  readonly size: number;
  /** Ids of each text, in input order. The arrays are views into one buffer per worker (`ids.buffer` is shared by
   * the texts that worker encoded): copy one before transferring its buffer elsewhere. */
  encodeBatch(texts: readonly string[], opts?: EncodeOptions): Promise<Int32Array[]>;
  /** Where the last encodeBatch spent its time (with `stats: true` at creation; null otherwise). */
  lastStats(): PoolStats | null;
  close(): Promise<void>;
}

/** One encodeBatch call: per thread (the calling thread first when it takes part), the jobs it ran and their encode
 * time; the calling thread's send time. */
export interface PoolStats {
  wallMs: number;
  /** Time on the calling thread to copy the texts into shared memory and post the batch. */
  postMs: number;
  workers: {
    jobs: number;
    /** The jobs' indices in the order the thread ran them (jobs are cut as shareBatch cuts them). */
    jobList: Int32Array;
    /** Jobs taken from the back of another worker's range. */
    stolen: number;
    texts: number;
    chars: number;
    tokens: number;
    busyMs: number;
    cpuMs: number;
  }[];
}

type Reply = { ready?: boolean; part?: BatchPart; error?: { code: string; message: string; hint?: string } };

const WORKER_URL = new URL("./worker.mjs", import.meta.url);

const failure = (m: Reply) =>
  new TunaError(m.error?.code ?? "TOKENIZER_POOL", m.error?.message ?? "worker failed", {
    hint: m.error?.hint,
  });

/** The next message (or error) from a worker. */
const reply = (w: Worker) =>
  new Promise<Reply>((resolve, reject) => {
    const onMsg = (m: Reply) => {
      w.off("error", onErr);
      resolve(m);
    };
    const onErr = (e: Error) => {
      w.off("message", onMsg);
      reject(e);
    };
    w.once("message", onMsg);
    w.once("error", onErr);
  });

/** Starts `n` threads that each load `<modelDir>/tokenizer.json`; resolves when all are ready. By default the
 * calling thread is one of the n (n - 1 workers): encodeBatch encodes a share itself, synchronously, instead of
 * waiting idle for the workers (on 2 cores, 2 threads of work rather than 2 workers and an idle main thread;
 * measured in docs/tokenizer.md). `caller: false` keeps the calling thread's event loop free (n workers). */
export async function createTokenizerPool(
  modelDir: string,
  n: number,
  o: { stats?: boolean; caller?: boolean } = {},
): Promise<TokenizerPool> {
  if (!Number.isInteger(n) || n < 1) {
    throw new TunaError("TOKENIZER_POOL", `pool size ${n} is not a positive integer`, {
      hint: "pass n >= 1",
    });
  }
  // Workers run TypeScript through tsx, like the CLI does.
  const caller = o.caller ?? true;
  const self0 = caller ? 1 : 0; // thread index of the first worker
  const workers = Array.from(
    { length: n - self0 },
    () => new Worker(WORKER_URL, { workerData: { modelDir } }),
  );
  const callerTok = caller ? await loadTokenizer(modelDir) : null;
  await Promise.all(
    workers.map(async (w) => {
      const m = await reply(w);
      if (!m.ready) throw failure(m);
    }),
  ).catch(async (e) => {
    await Promise.all(workers.map((w) => w.terminate()));
    throw e;
  });

  let busy = false;
  let last: PoolStats | null = null;
  /** The last batch's buffer, for the next call (null after a call that failed: a worker may still read it). */
  let spare: SharedArrayBuffer | null = null;
  return {
    size: n,
    lastStats: () => last,
    async encodeBatch(texts, opts) {
      if (busy) throw new TunaError("TOKENIZER_POOL", "encodeBatch called while another batch is running");
      busy = true;
      try {
        const t0 = performance.now();
        const splitSpecial = opts?.splitSpecial ?? false;
        const timed = o.stats === true;
        // The caller's own range (thread 0) is copied after the workers have their message.
        const batch = shareBatch(texts, n, callerTok ? 0 : -1, spare);
        spare = null;
        const replies = workers.map((w, wi) => {
          const r = reply(w);
          w.postMessage({ batch, self: wi + self0, splitSpecial, stats: timed });
          return r;
        });
        const postMs = performance.now() - t0;
        let mine: Reply = {};
        if (callerTok) {
          writeLater(batch, texts, 0);
          try {
            mine = { part: runShare(callerTok, batch, 0, splitSpecial, timed, texts) };
          } catch (e) {
            mine = { error: errorOf(e) }; // the workers take what is left of this thread's range
          }
        }
        // Wait for every worker (one failing leaves its jobs to the others) before throwing the first error.
        const got = [...(callerTok ? [mine] : []), ...(await Promise.all(replies))];
        const bad = got.find((m) => !m.part);
        if (bad) throw failure(bad);
        spare = batch.sab; // every thread has answered: none reads it any more
        const results: Int32Array[] = new Array(texts.length);
        const jobStart = jobStarts(batch);
        const stats: PoolStats = { wallMs: 0, postMs, workers: [] };
        for (const m of got) {
          const part = m.part as BatchPart;
          let text = 0;
          let at = 0;
          for (const j of part.jobs) {
            for (let i = jobStart[j]; i < jobStart[j + 1]; i++) {
              const len = part.lens[text++];
              results[i] = part.ids.subarray(at, at + len);
              at += len;
            }
          }
          stats.workers.push({
            jobs: part.jobs.length,
            jobList: part.jobs,
            stolen: part.stolen,
            texts: text,
            chars: part.chars,
            tokens: part.ids.length,
            busyMs: part.busyMs,
            cpuMs: part.cpuMs,
          });
        }
        stats.wallMs = performance.now() - t0;
        if (o.stats) last = stats;
        return results;
      } finally {
        busy = false;
      }
    },
    async close() {
      await Promise.all(workers.map((w) => w.terminate()));
    },
  };
}
