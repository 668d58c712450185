// A batch of texts laid out in one SharedArrayBuffer for a TokenizerPool, and the work-stealing job ranges the
// threads take their jobs from. Every thread sees every text (no per-job postMessage, no structured clone of
// strings), so a thread that runs out of its own jobs takes the last job of another's range instead of idling:
// on a shared 2-vCPU guest the two threads' speeds differ from second to second, and a fixed split waits for the
// slower one.
//
// Layout (Int32 words, then UTF-16 units, little-endian as Buffer's utf16le writes them):
//   ctl[w]            thread w's remaining jobs [lo, hi), packed lo | hi << 16 (one word, so one compareExchange
//                     takes a job either from its front, by the owner, or from its back, by a thief)
//   ready             1 once every text is in the character area (the calling thread, when it is one of the
//                     threads, posts the batch before it writes its own range; a thief waits for this first)
//   jobStart[J + 1]   job j covers texts [jobStart[j], jobStart[j + 1])
//   textStart[T + 1]  text i is units [textStart[i], textStart[i + 1]) of the character area
//   chars[total]      the texts, back to back
import { readFileSync } from "node:fs";
import { isTunaError, TunaError } from "../errors.ts";
import { ByteLevelBpeTokenizer, IdSink } from "./tokenizer.ts";
import type { Tokenizer } from "./types.ts";

/** What a thread needs to find its jobs and texts: the buffer and the sizes that place each area in it. */
export interface SharedBatch {
  sab: SharedArrayBuffer;
  threads: number;
  jobs: number;
  texts: number;
}

/** Jobs are ranges of whole texts of about total / (threads × JOBS_PER_THREAD) characters: small enough that the
 * last job a thread runs ends within ~1% of the pass of the others' last, large enough that taking one (an atomic
 * compare-and-swap) costs nothing against encoding it. */
const JOBS_PER_THREAD = 128;
/** ctl packs a job index in 16 bits. */
const MAX_JOBS = 0xffff;

const views = (b: SharedBatch) => {
  const i32 = new Int32Array(b.sab, 0, b.threads + 1 + b.jobs + 1 + b.texts + 1);
  const t = b.threads;
  return {
    ctl: i32.subarray(0, t),
    ready: i32.subarray(t, t + 1),
    jobStart: i32.subarray(t + 1, t + 1 + b.jobs + 1),
    textStart: i32.subarray(t + 1 + b.jobs + 1),
    charsAt: i32.byteLength,
  };
};

/** Lays `texts` out in a new SharedArrayBuffer, cuts them into jobs and gives thread w an equal share of the
 * characters as its initial range of jobs (the same texts land on the same thread every call while no stealing
 * happens, which keeps its word cache warm for them). Copies every text except those of thread `later`'s range,
 * which `writeLater` copies (so the caller can post the batch first). `reuse`: a buffer from an earlier batch that
 * no thread reads any more; taken when large enough (a fresh buffer of the bench corpus is 8 MB of zero pages that
 * fault in on the calling thread while the workers wait for their message). */
export function shareBatch(
  texts: readonly string[],
  threads: number,
  later = -1,
  reuse: SharedArrayBuffer | null = null,
): SharedBatch {
  let total = 0;
  for (const t of texts) total += t.length;
  const target = Math.max(1, Math.ceil(total / (threads * JOBS_PER_THREAD)));
  const starts: number[] = [0];
  let len = 0;
  for (let i = 0; i < texts.length; i++) {
    len += texts[i].length;
    if (len >= target && i + 1 < texts.length) {
      starts.push(i + 1);
      len = 0;
    }
  }
  const jobs = texts.length === 0 ? 0 : starts.length;
  if (jobs > MAX_JOBS) {
    throw new TunaError(
      "TOKENIZER_POOL",
      `a batch of ${texts.length} texts makes ${jobs} jobs, over ${MAX_JOBS}`,
      { hint: "pass smaller batches to encodeBatch" },
    );
  }
  const words = threads + 1 + jobs + 1 + texts.length + 1;
  const bytes = words * 4 + total * 2;
  const b: SharedBatch = {
    sab: reuse && reuse.byteLength >= bytes ? reuse : new SharedArrayBuffer(bytes),
    threads,
    jobs,
    texts: texts.length,
  };
  const v = views(b);
  starts.push(texts.length);
  v.jobStart.set(starts.slice(0, jobs + 1));
  let at = 0;
  for (let i = 0; i < texts.length; i++) {
    v.textStart[i] = at;
    at += texts[i].length;
  }
  v.textStart[texts.length] = at;
  // Thread w's range ends at the job whose middle passes (w + 1)/threads of the characters.
  let job = 0;
  let before = 0;
  for (let w = 0; w < threads; w++) {
    const lo = job;
    const end = (total * (w + 1)) / threads;
    while (job < jobs && (w === threads - 1 || before + jobChars(v, job) / 2 <= end)) {
      before += jobChars(v, job);
      job++;
    }
    v.ctl[w] = lo | (job << 16);
  }
  const skip = later >= 0 ? textsOfRange(v, later) : [0, 0];
  write(b, texts, 0, skip[0]);
  write(b, texts, skip[1], texts.length);
  v.ready[0] = later < 0 ? 1 : 0;
  return b;
}

/** Copies the texts of thread `later`'s range (held back by shareBatch) and tells waiting thieves. Call it before
 * that thread takes its first job. */
export function writeLater(b: SharedBatch, texts: readonly string[], later: number): void {
  const v = views(b);
  const [first, end] = textsOfRange(v, later);
  write(b, texts, first, end);
  Atomics.store(v.ready, 0, 1);
  Atomics.notify(v.ready, 0);
}

function write(b: SharedBatch, texts: readonly string[], first: number, end: number): void {
  const v = views(b);
  const chars = Buffer.from(b.sab, v.charsAt);
  for (let i = first; i < end; i++) chars.write(texts[i], v.textStart[i] * 2, "utf16le");
}

/** Texts [first, end) of thread w's initial range (before any job is taken). */
function textsOfRange(v: ReturnType<typeof views>, w: number): [number, number] {
  const lo = v.ctl[w] & 0xffff;
  const hi = v.ctl[w] >>> 16;
  return lo < hi ? [v.jobStart[lo], v.jobStart[hi]] : [0, 0];
}

/** jobStart of a batch: job j covers texts [jobStarts(b)[j], jobStarts(b)[j + 1]). */
export function jobStarts(b: SharedBatch): Int32Array {
  return views(b).jobStart;
}

/** A thread's error as plain data for postMessage (a TunaError keeps its code and hint). */
export function errorOf(e: unknown): { code: string; message: string; hint?: string } {
  return isTunaError(e)
    ? { code: e.code, message: e.message, hint: e.hint }
    : { code: "TOKENIZER_POOL", message: String(e) };
}

function jobChars(v: ReturnType<typeof views>, j: number): number {
  return v.textStart[v.jobStart[j + 1]] - v.textStart[v.jobStart[j]];
}

/** One thread's side of a shared batch: take jobs (own first, then stolen), read texts. */
export class BatchReader {
  private readonly v: ReturnType<typeof views>;
  private readonly chars: Buffer;
  /** Jobs this reader took from another thread's range. */
  stolen = 0;

  constructor(
    private readonly b: SharedBatch,
    private readonly self: number,
  ) {
    this.v = views(b);
    this.chars = Buffer.from(b.sab, this.v.charsAt);
  }

  /** Characters left in this thread's own range (all of it before the first next()). */
  ownChars(): number {
    const [first, end] = textsOfRange(this.v, this.self);
    return this.v.textStart[end] - this.v.textStart[first];
  }

  /** The next job for this thread, or -1 when every range is empty. Own range from its front; then one job from
   * the back of the next non-empty range (the far end from where its owner works). */
  next(): number {
    const own = this.take(this.self, true);
    if (own >= 0) return own;
    if (Atomics.load(this.v.ready, 0) === 0) Atomics.wait(this.v.ready, 0, 0);
    for (let k = 1; k < this.b.threads; k++) {
      const j = this.take((this.self + k) % this.b.threads, false);
      if (j >= 0) {
        this.stolen++;
        return j;
      }
    }
    return -1;
  }

  private take(w: number, front: boolean): number {
    const ctl = this.v.ctl;
    for (;;) {
      const cur = Atomics.load(ctl, w);
      const lo = cur & 0xffff;
      const hi = cur >>> 16;
      if (lo >= hi) return -1;
      const next = front ? (lo + 1) | (hi << 16) : lo | ((hi - 1) << 16);
      if (Atomics.compareExchange(ctl, w, cur, next) === cur) return front ? lo : hi - 1;
    }
  }

  /** The texts of job j: [first, end) indices into the batch. */
  textsOf(j: number): [number, number] {
    return [this.v.jobStart[j], this.v.jobStart[j + 1]];
  }

  text(i: number): string {
    const ts = this.v.textStart;
    return this.chars.toString("utf16le", ts[i] * 2, ts[i + 1] * 2);
  }

  length(i: number): number {
    return this.v.textStart[i + 1] - this.v.textStart[i];
  }
}

/** This thread's CPU time in ms (Linux /proc, 10 ms ticks; NaN elsewhere): Node 20 has no per-thread counter. */
export function threadCpuMs(): number {
  try {
    const stat = readFileSync("/proc/thread-self/stat", "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) * 10; // utime + stime, in USER_HZ = 100 ticks a second
  } catch {
    return Number.NaN;
  }
}

/** What one thread made of a shared batch. */
export interface BatchPart {
  /** Jobs in the order this thread ran them. */
  jobs: Int32Array;
  /** Token count of each text of those jobs, in the same order. */
  lens: Int32Array;
  /** All ids, text after text. */
  ids: Int32Array;
  chars: number;
  stolen: number;
  busyMs: number;
  cpuMs: number;
}

/** Runs jobs of `batch` as thread `self` until there are none left. The calling thread, when it is one of the
 * threads, passes the batch's `texts` (it has them as strings already; workers decode theirs from shared memory). */
export function runShare(
  tok: Tokenizer,
  batch: SharedBatch,
  self: number,
  splitSpecial: boolean,
  stats: boolean,
  texts?: readonly string[],
): BatchPart {
  const t0 = performance.now();
  const c0 = stats ? threadCpuMs() : 0;
  const r = new BatchReader(batch, self);
  const jobs: number[] = [];
  const lens: number[] = [];
  // Half a token a character covers English and code (Qwen3: ~0.3), so the buffer rarely grows: each doubling was a
  // copy and fresh pages to fault in, on every call.
  const sink = new IdSink((r.ownChars() >> 1) + 4096, false);
  // Our tokenizer appends straight into the thread's buffer; another Tokenizer's arrays are copied in.
  const direct = tok instanceof ByteLevelBpeTokenizer ? tok : null;
  let chars = 0;
  for (let j = r.next(); j >= 0; j = r.next()) {
    jobs.push(j);
    const [first, end] = r.textsOf(j);
    for (let i = first; i < end; i++) {
      const text = texts ? texts[i] : r.text(i);
      const before = sink.n;
      if (direct) direct.encodeAppend(text, splitSpecial, sink);
      else {
        const out = tok.encode(text, { splitSpecial });
        sink.reserve(out.length);
        sink.ids.set(out, sink.n);
        sink.n += out.length;
      }
      chars += r.length(i);
      lens.push(sink.n - before);
    }
  }
  return {
    jobs: Int32Array.from(jobs),
    lens: Int32Array.from(lens),
    ids: sink.ids.subarray(0, sink.n),
    chars,
    stolen: r.stolen,
    busyMs: performance.now() - t0,
    cpuMs: stats ? threadCpuMs() - c0 : Number.NaN,
  };
}
