// Tokenize while reading: conversations go to the sample workers as prepareConversationPlan keeps them (its
// onKept hook, with the conversation's ordinal), in reading order, while the main thread goes on reading; the
// split and the mix then pick and order ordinals. Each conversation's samples become one record in a spill file
// beside the shards (records.ts), and are read back in the order the caller asks for. No conversation is held
// once it is tokenized: memory holds 8 bytes a conversation (where its record is), not its text.
//
// The output is the in-thread path's, exactly: samples per conversation are the same (a conversation is rendered
// and tokenized on its own), the caller replays them in its order (a conversation the mix took twice is read
// twice), and a conversation's TunaError is kept and replayed at its place in that order: counted as a
// rejection, or thrown when strict, as tokenizeConversation does.
//
// With workers = 0, or below MIN_PARALLEL conversations (the workers' start-up would cost more than they save),
// conversations are tokenized in this thread, in batches, into the same spill.
import { closeSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import type { Conversation } from "../../data/conversation.ts";
import { TunaError } from "../../errors.ts";
import { startWorkers, type WorkerPool } from "./parallel.ts";
import { decodeRecord, type EncodedBatch, encodeBatch } from "./records.ts";
import {
  type ErrorData,
  errorFromData,
  type Rejections,
  reject,
  type SampleContext,
  type TokenizedConvSample,
} from "./samples.ts";

/** Conversations buffered before the workers start: below this the in-thread path is cheaper. */
const MIN_PARALLEL = 2000;
const BATCH_CHARS = 256 * 1024;
const IN_FLIGHT_PER_WORKER = 3;
/** Characters queued while the workers start before reading waits for them (a slow start must not fill memory). */
const START_QUEUE_CHARS = 16 * 1024 * 1024;

const convChars = (c: Conversation) =>
  c.messages.reduce((a, m) => a + m.content.length + (m.reasoning?.length ?? 0), 0);

type BatchResult = EncodedBatch | { error: ErrorData };

/** A Float64Array that grows (set at any index; unset entries read as -1). */
class Slots {
  private a = new Float64Array(1024).fill(-1);
  get(i: number): number {
    return i < this.a.length ? this.a[i] : -1;
  }
  set(i: number, v: number): void {
    if (i >= this.a.length) {
      const b = new Float64Array(Math.max(2 * this.a.length, i + 1)).fill(-1);
      b.set(this.a);
      this.a = b;
    }
    this.a[i] = v;
  }
}

export class AheadTokenizer {
  // Conversations pushed but not yet tokenized; queue[0] has ordinal `queued`.
  private queue: Conversation[] = [];
  private queueChars = 0;
  private queued = 0;
  private pushed = 0;
  // Per ordinal: where its record starts in the spill and its size (-1: not tokenized yet).
  private readonly at = new Slots();
  private readonly size = new Slots();
  private readonly errors = new Map<number, { error: ErrorData; source: string }>();
  private readonly spill: number;
  private spillEnd = 0;
  private pool: WorkerPool | null = null;
  private starting: Promise<void> | null = null;
  private nextWorker = 0;
  private readonly inFlight = new Set<Promise<void>>();
  private failure: unknown = null;

  constructor(
    private readonly ctx: SampleContext,
    private readonly o: { workers: number; spillPath: string },
  ) {
    this.spill = openSync(o.spillPath, "w+");
  }

  /** prepareConversationPlan's onKept: queue the conversation, send full batches; waits when enough are in flight. */
  push = (conv: Conversation, ordinal: number): Promise<void> | undefined => {
    if (this.failure) throw this.failure;
    if (ordinal !== this.pushed) {
      throw new TunaError("INTERNAL", `conversation ordinal ${ordinal} pushed, expected ${this.pushed}`);
    }
    this.pushed++;
    this.queue.push(conv);
    this.queueChars += convChars(conv);
    if (this.o.workers === 0) {
      if (this.queueChars >= BATCH_CHARS) this.inThread();
      return undefined;
    }
    if (!this.pool) {
      // Workers start (about a second each) while reading goes on; the backlog goes out once they are ready.
      if (this.pushed >= MIN_PARALLEL) this.starting ??= this.start();
      if (this.starting && this.queueChars >= START_QUEUE_CHARS) {
        return this.starting.then(() => (this.pool ? this.dispatch(false) : undefined));
      }
      return undefined;
    }
    return this.dispatch(false);
  };

  private async start(): Promise<void> {
    try {
      // One after the other: each parses tokenizer.json (~60 MB of garbage until collected), not both at once.
      this.pool = await startWorkers(this.ctx, this.o.workers, { oneByOne: true });
    } catch (e) {
      this.failure ??= e;
    }
  }

  /** Tokenize everything queued in this thread. */
  private inThread(): void {
    const first = this.queued;
    const batch = this.queue;
    this.queue = [];
    this.queueChars = 0;
    this.queued += batch.length;
    this.store(first, batch, encodeBatch(batch, this.ctx));
  }

  /** Send batches of queued conversations (a partial one only when `all`); resolve once the pipe has room. */
  private async dispatch(all: boolean): Promise<void> {
    const pool = this.pool as WorkerPool;
    for (;;) {
      while (this.inFlight.size >= pool.size * IN_FLIGHT_PER_WORKER) await Promise.race(this.inFlight);
      if (this.failure) throw this.failure;
      if (this.queue.length === 0 || (this.queueChars < BATCH_CHARS && !all)) return;
      let end = 0;
      let chars = 0;
      while (end < this.queue.length && chars < BATCH_CHARS) chars += convChars(this.queue[end++]);
      const first = this.queued;
      const batch = this.queue.splice(0, end);
      this.queued += end;
      this.queueChars -= chars;
      // postMessage copies the batch at once; after this line nothing here refers to its text. Only the sources are
      // kept until the answer comes, for the errors.
      const sent = pool.run(this.nextWorker++ % pool.size, {
        convs: batch,
        strict: true,
        records: true,
      }) as Promise<BatchResult>;
      const sources = batch.map((c) => c.source);
      const p = sent.then(
        (r) => {
          if ("error" in r) this.failure ??= errorFromData(r.error);
          else this.store(first, sources, r);
        },
        (e) => {
          this.failure ??= e;
        },
      );
      const tracked = p.finally(() => this.inFlight.delete(tracked));
      this.inFlight.add(tracked);
    }
  }

  private store(first: number, convs: readonly (Conversation | string)[], r: EncodedBatch): void {
    writeSync(this.spill, r.bytes, 0, r.bytes.length, this.spillEnd);
    let at = this.spillEnd;
    for (let k = 0; k < r.sizes.length; k++) {
      const error = r.errors[k];
      if (error) {
        const c = convs[k];
        this.errors.set(first + k, { error, source: typeof c === "string" ? c : c.source });
      }
      this.at.set(first + k, at);
      this.size.set(first + k, r.sizes[k]);
      at += r.sizes[k];
    }
    this.spillEnd = at;
  }

  /**
   * After reading: tokenize or send what is left, wait for every batch, and stop the workers (replay reads only
   * the spill; each worker holds its tokenizer, word cache and heap, about 60–100 MB).
   */
  async finish(): Promise<void> {
    if (this.starting) await this.starting;
    if (this.failure) throw this.failure;
    if (this.pool) {
      await this.dispatch(true);
      while (this.inFlight.size) await Promise.race(this.inFlight);
      await this.pool.close();
      this.pool = null;
    } else if (this.queue.length) this.inThread();
    if (this.failure) throw this.failure;
  }

  /**
   * The tokenized samples of conversation `ordinal` (an empty list for a rejected one, counted in `rejections`;
   * thrown when strict), as tokenizeConversation gives them.
   */
  samplesOf(
    ordinal: number,
    strict: boolean,
    rejections: Rejections,
  ): (TokenizedConvSample & { spilled: { fd: number; ids: number; weights: number } })[] {
    const e = this.errors.get(ordinal);
    if (e) {
      if (strict) throw errorFromData(e.error);
      reject(rejections, e.error.code, e.source, e.error.message);
      return [];
    }
    const at = this.at.get(ordinal);
    const n = this.size.get(ordinal);
    if (at < 0 || n < 0) throw new TunaError("INTERNAL", `conversation ${ordinal} was never tokenized`);
    const record = new Uint8Array(n);
    if (readSync(this.spill, record, 0, n, at) !== n) {
      throw new TunaError("INTERNAL", `token spill ${this.o.spillPath}: short read at ${at}`);
    }
    // Each sample says where its ids and weights lie in the spill (the record is its own buffer, so a view's byte
    // offset is its offset in the record): the shard writer reads them from there, not from a copy of its own.
    // The spill stays open until close().
    return decodeRecord(record).map((s) => ({
      ...s,
      spilled: { fd: this.spill, ids: at + s.ids.byteOffset, weights: at + s.lossWeight.byteOffset },
    }));
  }

  async close(): Promise<void> {
    await this.starting;
    await this.pool?.close();
    closeSync(this.spill);
    rmSync(this.o.spillPath, { force: true });
  }
}
