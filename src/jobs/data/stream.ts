// Tokenize while reading: conversations go to the sample workers as prepareConversations keeps them (its onKept
// hook), in reading order, while the main thread goes on reading; the split and the mix then pick and order
// them. Results are spilled to a file beside the shards (ids + loss weights, like the shard writer's own spill),
// so memory does not grow with the data, and are read back in the order the caller asks for.
//
// The output is the in-thread path's, exactly: samples per conversation are the same (a conversation is rendered
// and tokenized on its own), the caller replays them in its order (a conversation the mix took twice is read
// twice), and a conversation's TunaError is kept and replayed at its place in that order: counted as a
// rejection, or thrown when strict, as tokenizeConversation does.
//
// Below MIN_PARALLEL conversations no worker starts; what was buffered is tokenized in this thread when asked.
import { closeSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import type { Conversation } from "../../data/conversation.ts";
import { TunaError } from "../../errors.ts";
import { startWorkers, type WorkerPool } from "./parallel.ts";
import {
  type ErrorData,
  errorFromData,
  type Rejections,
  reject,
  type SampleContext,
  type TokenizedConvSample,
  tokenizeConversation,
} from "./samples.ts";

/** Conversations buffered before the workers start: below this the in-thread path is cheaper. */
const MIN_PARALLEL = 2000;
const BATCH_CHARS = 256 * 1024;
const IN_FLIGHT_PER_WORKER = 3;

const convChars = (c: Conversation) =>
  c.messages.reduce((a, m) => a + m.content.length + (m.reasoning?.length ?? 0), 0);

type BatchResult = { out: TokenizedConvSample[][]; errors: (ErrorData | null)[] } | { error: ErrorData };

interface Done {
  /** First sample in the `samples` index. */
  first: number;
  count: number;
  error: ErrorData | null;
}

export class AheadTokenizer {
  private readonly index = new Map<Conversation, number>();
  private readonly convs: Conversation[] = [];
  private readonly done: (Done | undefined)[] = [];
  // The spill index, one entry per sample.
  private readonly at: number[] = [];
  private readonly lengths: number[] = [];
  private readonly thinking: boolean[] = [];
  private spill: number | null = null;
  private spillEnd = 0;
  private pool: WorkerPool | null = null;
  private starting: Promise<void> | null = null;
  private sent = 0;
  private nextWorker = 0;
  private readonly inFlight = new Set<Promise<void>>();
  private failure: unknown = null;

  constructor(
    private readonly ctx: SampleContext,
    private readonly o: {
      workers: number;
      spillPath: string;
      /**
       * Empty the messages (and tools) of a conversation once it is sent to a worker, to save memory: the caller
       * then needs only its identity and `source` (true when nothing after reading reads the text: mixing by
       * samples, no token filters).
       */
      releaseText?: boolean;
    },
  ) {}

  /** prepareConversations' onKept: number the conversation, send full batches; waits when enough are in flight. */
  push = (conv: Conversation): Promise<void> | undefined => {
    if (this.failure) throw this.failure;
    if (this.index.has(conv)) return undefined;
    this.index.set(conv, this.convs.length);
    this.convs.push(conv);
    if (this.o.workers === 0) return undefined;
    if (!this.pool) {
      // Workers start (about a second) while reading goes on; the backlog goes out once they are ready.
      if (this.convs.length >= MIN_PARALLEL) this.starting ??= this.start();
      return undefined;
    }
    return this.dispatch(false);
  };

  private async start(): Promise<void> {
    try {
      const pool = await startWorkers(this.ctx, this.o.workers);
      this.spill = openSync(this.o.spillPath, "w+");
      this.pool = pool;
    } catch (e) {
      this.failure ??= e;
    }
  }

  /** Send batches of unsent conversations (a partial one only when `all`); resolve once the pipe has room. */
  private async dispatch(all: boolean): Promise<void> {
    const pool = this.pool as WorkerPool;
    for (;;) {
      while (this.inFlight.size >= pool.size * IN_FLIGHT_PER_WORKER) await Promise.race(this.inFlight);
      if (this.failure) throw this.failure;
      let end = this.sent;
      let chars = 0;
      while (end < this.convs.length && chars < BATCH_CHARS) chars += convChars(this.convs[end++]);
      if (end === this.sent || (chars < BATCH_CHARS && !all)) return;
      const first = this.sent;
      const batch = this.convs.slice(first, end);
      this.sent = end;
      const message = { convs: batch, strict: true, perConversation: true };
      // postMessage copies the batch at once, so the text can go right after.
      const sent = pool.run(this.nextWorker++ % pool.size, message) as Promise<BatchResult>;
      if (this.o.releaseText) {
        for (const c of batch) {
          c.messages = [];
          c.tools = undefined;
        }
      }
      const p = sent.then(
        (r) => this.store(first, r),
        (e) => {
          this.failure ??= e;
        },
      );
      const tracked = p.finally(() => this.inFlight.delete(tracked));
      this.inFlight.add(tracked);
    }
  }

  private store(first: number, r: BatchResult): void {
    if ("error" in r) {
      this.failure ??= errorFromData(r.error);
      return;
    }
    const fd = this.spill as number;
    r.out.forEach((samples, k) => {
      this.done[first + k] = { first: this.at.length, count: samples.length, error: r.errors[k] };
      for (const s of samples) {
        const ib = new Uint8Array(s.ids.buffer, s.ids.byteOffset, s.ids.byteLength);
        const wb = new Uint8Array(s.lossWeight.buffer, s.lossWeight.byteOffset, s.lossWeight.byteLength);
        writeSync(fd, ib, 0, ib.length, this.spillEnd);
        writeSync(fd, wb, 0, wb.length, this.spillEnd + ib.length);
        this.at.push(this.spillEnd);
        this.lengths.push(s.ids.length);
        this.thinking.push(s.thinking);
        this.spillEnd += ib.length + wb.length;
      }
    });
  }

  /** After reading: send what is left and wait for every batch. */
  async finish(): Promise<void> {
    if (this.starting) await this.starting;
    if (this.pool) {
      await this.dispatch(true);
      while (this.inFlight.size) await Promise.race(this.inFlight);
    }
    if (this.failure) throw this.failure;
  }

  /**
   * The tokenized samples of `conv` (an empty list for a rejected one, counted in `rejections`; thrown when
   * strict), as tokenizeConversation gives them. Conversations not seen by push are tokenized here.
   */
  samplesOf(conv: Conversation, strict: boolean, rejections: Rejections): TokenizedConvSample[] {
    const i = this.index.get(conv);
    const d = i === undefined ? undefined : this.done[i];
    if (d === undefined) return tokenizeConversation(conv, this.ctx, strict, rejections);
    if (d.error) {
      if (strict) throw errorFromData(d.error);
      reject(rejections, d.error.code, conv.source, d.error.message);
      return [];
    }
    const out: TokenizedConvSample[] = [];
    for (let k = d.first; k < d.first + d.count; k++) {
      const n = this.lengths[k];
      const ids = new Int32Array(n);
      const lossWeight = new Float32Array(n);
      const fd = this.spill as number;
      const got =
        readSync(fd, new Uint8Array(ids.buffer), 0, n * 4, this.at[k]) +
        readSync(fd, new Uint8Array(lossWeight.buffer), 0, n * 4, this.at[k] + n * 4);
      if (got !== n * 8) {
        throw new TunaError("INTERNAL", `token spill ${this.o.spillPath}: short read at ${this.at[k]}`);
      }
      out.push({ ids, lossWeight, source: conv.source, thinking: this.thinking[k] });
    }
    return out;
  }

  async close(): Promise<void> {
    await this.pool?.close();
    if (this.spill !== null) {
      closeSync(this.spill);
      rmSync(this.o.spillPath, { force: true });
    }
  }
}
