// Encode many texts on several worker threads, each with its own tokenizer loaded from the same model directory.
// Texts are cut into contiguous chunks of similar total length (more chunks than workers, handed out as workers
// come free) and the ids come back as transferred Int32Arrays, in input order.
import { Worker } from "node:worker_threads";
import { TunaError } from "../errors.ts";
import type { EncodeOptions } from "./types.ts";

export interface TokenizerPool {
  readonly size: number;
  encodeBatch(texts: readonly string[], opts?: EncodeOptions): Promise<Int32Array[]>;
  /** Where the last encodeBatch spent its time (with `stats: true` at creation; null otherwise). */
  lastStats(): PoolStats | null;
  close(): Promise<void>;
}

/** One encodeBatch call: per worker, the jobs it ran and their encode time; the main thread's send time. */
export interface PoolStats {
  wallMs: number;
  /** Time in postMessage on the main thread (the structured clone of the texts). */
  postMs: number;
  workers: { jobs: number; texts: number; chars: number; tokens: number; busyMs: number; cpuMs: number }[];
}

interface Job {
  texts: string[];
  first: number;
}

const WORKER_URL = new URL("./worker.mjs", import.meta.url);

/** Starts `n` workers that each load `<modelDir>/tokenizer.json`; resolves when all are ready. */
export async function createTokenizerPool(
  modelDir: string,
  n: number,
  o: { stats?: boolean } = {},
): Promise<TokenizerPool> {
  if (!Number.isInteger(n) || n < 1) {
    throw new TunaError("TOKENIZER_POOL", `pool size ${n} is not a positive integer`, {
      hint: "pass n >= 1",
    });
  }
  // Workers run TypeScript through tsx, like the CLI does.
  const workers = Array.from({ length: n }, () => new Worker(WORKER_URL, { workerData: { modelDir } }));
  await Promise.all(
    workers.map(
      (w) =>
        new Promise<void>((resolve, reject) => {
          w.once(
            "message",
            (m: { ready?: boolean; error?: { code: string; message: string; hint?: string } }) => {
              if (m.ready) resolve();
              else
                reject(
                  new TunaError(m.error?.code ?? "TOKENIZER_POOL", m.error?.message ?? "worker failed", {
                    hint: m.error?.hint,
                  }),
                );
            },
          );
          w.once("error", reject);
        }),
    ),
  ).catch(async (e) => {
    await Promise.all(workers.map((w) => w.terminate()));
    throw e;
  });

  let busy = false;
  let last: PoolStats | null = null;
  return {
    size: n,
    lastStats: () => last,
    async encodeBatch(texts, opts) {
      if (busy) throw new TunaError("TOKENIZER_POOL", "encodeBatch called while another batch is running");
      busy = true;
      const t0 = performance.now();
      const stats: PoolStats = {
        wallMs: 0,
        postMs: 0,
        workers: workers.map(() => ({ jobs: 0, texts: 0, chars: 0, tokens: 0, busyMs: 0, cpuMs: 0 })),
      };
      try {
        const results: Int32Array[] = new Array(texts.length);
        let total = 0;
        for (const t of texts) total += t.length;
        const target = Math.max(1, Math.ceil(total / (n * 8)));
        const jobs: Job[] = [];
        let cur: Job = { texts: [], first: 0 };
        let len = 0;
        texts.forEach((t, i) => {
          if (cur.texts.length && len >= target) {
            jobs.push(cur);
            cur = { texts: [], first: i };
            len = 0;
          }
          cur.texts.push(t);
          len += t.length;
        });
        if (cur.texts.length) jobs.push(cur);
        const splitSpecial = opts?.splitSpecial ?? false;
        // Job j goes to worker j mod n, not to whichever is free: the same texts then reach the same worker on
        // every call, whose word cache already holds their words (dynamic hand-out measured 1.52x on 2 cores with
        // caches half cold, this 1.8x+; chunks are of similar length, so the load stays balanced).
        await Promise.all(
          workers.map(async (w, wi) => {
            for (let j = wi; j < jobs.length; j += n) {
              const job = jobs[j];
              const ids = await new Promise<Int32Array[]>((resolve, reject) => {
                const onMsg = (m: {
                  ids?: Int32Array[];
                  busyMs?: number;
                  cpuMs?: number;
                  error?: { code: string; message: string };
                }) => {
                  w.off("error", onErr);
                  const st = stats.workers[wi];
                  st.jobs++;
                  st.busyMs += m.busyMs ?? 0;
                  st.cpuMs += m.cpuMs ?? 0;
                  if (m.ids) resolve(m.ids);
                  else
                    reject(
                      new TunaError(m.error?.code ?? "TOKENIZER_POOL", m.error?.message ?? "worker failed"),
                    );
                };
                const onErr = (e: Error) => {
                  w.off("message", onMsg);
                  reject(e);
                };
                w.once("message", onMsg);
                w.once("error", onErr);
                const p0 = performance.now();
                w.postMessage({ texts: job.texts, splitSpecial, stats: o.stats === true });
                stats.postMs += performance.now() - p0;
              });
              const st = stats.workers[wi];
              st.texts += job.texts.length;
              for (let k = 0; k < ids.length; k++) {
                results[job.first + k] = ids[k];
                st.chars += job.texts[k].length;
                st.tokens += ids[k].length;
              }
            }
          }),
        );
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
