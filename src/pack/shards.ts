// Token shards (docs/formats.md): tokenized samples in, packed safetensors shards + manifest.json out.
//
// Memory stays flat in the number of samples' tokens: samples are spilled to a temporary file as they arrive
// (8 bytes a token), only their lengths stay in memory for packing, and each shard is assembled from the
// spill with positioned reads. Writes go through a 1 MB staging buffer both ways (into the spill, into the shards);
// a sample's part is read straight into that buffer. A 100k-conversation run has ~145k samples: two writes a sample
// in and two writes out were ~0.6 million small system calls. 1 MB, not 8: larger writes cost more kernel time here.
import { closeSync, mkdirSync, openSync, readSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { TunaError } from "../errors.ts";
import { bytesOf, SafetensorsWriter } from "../util/safetensors.ts";
import { packFirstFitDecreasing } from "./pack.ts";

export interface TokenizedSample {
  ids: Int32Array;
  /** Weight of token t as a prediction target (docs/formats.md); lossWeight[0] is ignored and written as 0. */
  lossWeight: Float32Array;
  source: string;
  /**
   * Where these ids and weights already lie in a file (the tokenizing spill, src/jobs/data/stream.ts): byte offsets
   * of `ids` and of `lossWeight` in `fd`. The writer then reads them from there when it writes shards instead of
   * copying them into its own spill; `fd` must stay open until `finish` returns.
   */
  spilled?: { fd: number; ids: number; weights: number };
}

export interface ShardSplitStats {
  samples: number;
  packs: number;
  tokens: number;
  trained_tokens: number;
  padding_tokens: number;
  /** usedTokens / (packs * maxLength). */
  pack_efficiency: number;
  dropped_too_long: number;
  truncated: number;
  dropped_no_trained_tokens: number;
  shards: string[];
  /** Histogram of sample lengths, bucket upper bounds → counts. */
  length_histogram: { upper: number; count: number }[];
}

export interface SplitWriterOptions {
  dir: string;
  split: string;
  maxLength: number;
  /** Over-long samples: drop (default, counted) or keep their first maxLength tokens. */
  overLength: "drop" | "truncate";
  /** Tokens per shard file (packs are never split across files). */
  shardTokens?: number;
  /** Bytes of the staging buffer for spill and shard writes (default 1 MB; tests make it small). */
  stageBytes?: number;
}

/** Numbers appended to a typed array that doubles when full (8 or 4 bytes an entry, not a JS array's 8–24). */
class Column<A extends Float64Array | Int32Array> {
  length = 0;
  constructor(public a: A) {}
  push(v: number): void {
    if (this.length === this.a.length) {
      const b = new (this.a.constructor as new (n: number) => A)(2 * this.a.length);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.length++] = v;
  }
  get values(): A {
    return this.a.subarray(0, this.length) as A;
  }
}

/** Collects one split's samples, then packs and writes them. */
export class SplitWriter {
  private readonly spillPath: string;
  private readonly spill: number;
  private spillOffset = 0;
  /** Spill bytes not yet written: they go to the spill at `spillOffset - staged`. */
  private readonly stage: Buffer;
  private staged = 0;
  // Per kept sample: the file its ids and weights are in (this writer's spill or the sample's `spilled` file), their
  // offsets there (past 2^31 on large data), length, trained tokens (a sum of float weights).
  private readonly files = new Column(new Int32Array(1024));
  private readonly offsets = new Column(new Float64Array(1024));
  private readonly weightOffsets = new Column(new Float64Array(1024));
  private readonly lengthCol = new Column(new Int32Array(1024));
  private readonly trained = new Column(new Float64Array(1024));
  private droppedTooLong = 0;
  private truncated = 0;
  private droppedNoTrained = 0;
  // Every sample's length, dropped ones included (the histogram).
  private readonly lengthsAll = new Column(new Int32Array(1024));

  constructor(private readonly opts: SplitWriterOptions) {
    mkdirSync(opts.dir, { recursive: true });
    this.stage = Buffer.allocUnsafe(opts.stageBytes ?? STAGE_BYTES);
    this.spillPath = join(opts.dir, `.${opts.split}.spill`);
    this.spill = openSync(this.spillPath, "w+");
  }

  add(sample: TokenizedSample): "kept" | "dropped_too_long" | "dropped_no_trained_tokens" {
    let { ids, lossWeight } = sample;
    if (ids.length !== lossWeight.length) {
      throw new TunaError(
        "PACK_MISMATCH",
        `${sample.source}: ${ids.length} tokens but ${lossWeight.length} loss weights`,
      );
    }
    this.lengthsAll.push(ids.length);
    if (ids.length > this.opts.maxLength) {
      if (this.opts.overLength === "drop") {
        this.droppedTooLong++;
        return "dropped_too_long";
      }
      ids = ids.subarray(0, this.opts.maxLength);
      lossWeight = lossWeight.subarray(0, this.opts.maxLength);
      this.truncated++;
    }
    // Weight 0 is never a target (written as 0); the trained count sums the rest in float32, as before.
    let trained = 0;
    for (let i = 1; i < lossWeight.length; i++) trained += lossWeight[i];
    if (trained === 0) {
      this.droppedNoTrained++;
      return "dropped_no_trained_tokens";
    }
    if (sample.spilled) {
      // Already in a file: only where (shards get weight 0 written over the first weight, see writeShard).
      this.files.push(sample.spilled.fd);
      this.offsets.push(sample.spilled.ids);
      this.weightOffsets.push(sample.spilled.weights);
      this.lengthCol.push(ids.length);
      this.trained.push(trained);
      return "kept";
    }
    const ib = bytesOf(ids);
    const wb = bytesOf(lossWeight);
    if (this.staged + ib.length + wb.length > this.stage.length) this.flush();
    if (ib.length + wb.length > this.stage.length) {
      // Larger than the staging buffer (over 128k tokens): written as it is.
      const w = new Float32Array(lossWeight);
      w[0] = 0;
      writeSync(this.spill, ib, 0, ib.length, this.spillOffset);
      writeSync(this.spill, bytesOf(w), 0, wb.length, this.spillOffset + ib.length);
    } else {
      this.stage.set(ib, this.staged);
      this.stage.set(wb, this.staged + ib.length);
      if (wb.length) this.stage.writeFloatLE(0, this.staged + ib.length);
      this.staged += ib.length + wb.length;
    }
    this.files.push(this.spill);
    this.offsets.push(this.spillOffset);
    this.weightOffsets.push(this.spillOffset + ib.length);
    this.lengthCol.push(ids.length);
    this.trained.push(trained);
    this.spillOffset += ib.length + wb.length;
    return "kept";
  }

  /** Write the staged spill bytes. */
  private flush(): void {
    let off = 0;
    const at = this.spillOffset - this.staged;
    while (off < this.staged) off += writeSync(this.spill, this.stage, off, this.staged - off, at + off);
    this.staged = 0;
  }

  get count(): number {
    return this.lengthCol.length;
  }

  private get lengths(): Int32Array {
    return this.lengthCol.values;
  }

  /** Packs and writes `<split>-00000.safetensors`, ...; removes the spill file. */
  finish(): ShardSplitStats {
    const { maxLength, dir, split } = this.opts;
    const shardTokens = this.opts.shardTokens ?? 32 * 1024 * 1024;
    const lengths = this.lengths;
    this.flush();
    const { packs, paddingTokens, usedTokens } = packFirstFitDecreasing(lengths, maxLength);
    const shards: string[] = [];
    let start = 0;
    while (start < packs.length) {
      let end = start;
      let tokens = 0;
      while (
        end < packs.length &&
        (end === start || tokens + packTokens(packs[end], lengths) <= shardTokens)
      ) {
        tokens += packTokens(packs[end], lengths);
        end++;
      }
      const name = `${split}-${String(shards.length).padStart(5, "0")}.safetensors`;
      this.writeShard(join(dir, name), packs.slice(start, end), tokens);
      shards.push(name);
      start = end;
    }
    closeSync(this.spill);
    rmSync(this.spillPath, { force: true });
    return {
      samples: lengths.length,
      packs: packs.length,
      tokens: usedTokens,
      trained_tokens: this.trained.values.reduce((a, b) => a + b, 0),
      padding_tokens: paddingTokens,
      pack_efficiency: packs.length ? usedTokens / (packs.length * maxLength) : 0,
      dropped_too_long: this.droppedTooLong,
      truncated: this.truncated,
      dropped_no_trained_tokens: this.droppedNoTrained,
      shards,
      length_histogram: histogram(this.lengthsAll.values, maxLength),
    };
  }

  private writeShard(path: string, packs: number[][], tokens: number): void {
    const lengths = this.lengths;
    const files = this.files.values;
    const nSeq = packs.reduce((a, p) => a + p.length, 0);
    const seqOffsets = new BigInt64Array(nSeq + 1);
    const packOffsets = new BigInt64Array(packs.length + 1);
    let s = 0;
    let t = 0;
    for (let p = 0; p < packs.length; p++) {
      for (const i of packs[p]) {
        seqOffsets[s] = BigInt(t);
        t += lengths[i];
        s++;
      }
      packOffsets[p + 1] = BigInt(s);
    }
    seqOffsets[nSeq] = BigInt(t);
    const w = new SafetensorsWriter(
      path,
      [
        ["tokens", { dtype: "I32", shape: [tokens], byteLength: tokens * 4 }],
        ["loss_weight", { dtype: "F32", shape: [tokens], byteLength: tokens * 4 }],
        ["seq_offsets", { dtype: "I64", shape: [nSeq + 1], byteLength: (nSeq + 1) * 8 }],
        ["pack_offsets", { dtype: "I64", shape: [packs.length + 1], byteLength: (packs.length + 1) * 8 }],
      ],
      { format: "tuna-shard", version: "1", max_length: String(this.opts.maxLength) },
    );
    // Two passes over the spill (ids, then weights) so the file is written strictly in header order; each sample's
    // part is read straight into the staging buffer, written out when full (and at the end of each tensor).
    // A sequence's first weight is written as 0 (docs/formats.md), whatever its source holds there.
    const buf = this.stage;
    for (const part of [0, 1] as const) {
      const at = part === 0 ? this.offsets.values : this.weightOffsets.values;
      let used = 0;
      for (const pack of packs) {
        for (const i of pack) {
          const n = lengths[i] * 4;
          if (used + n > buf.length) {
            w.write(buf.subarray(0, used));
            used = 0;
          }
          if (n > buf.length) {
            const big = Buffer.allocUnsafe(n);
            readFully(files[i], big, 0, n, at[i]);
            if (part === 1) big.writeFloatLE(0, 0);
            w.write(big);
          } else {
            readFully(files[i], buf, used, n, at[i]);
            if (part === 1 && n) buf.writeFloatLE(0, used);
            used += n;
          }
        }
      }
      if (used) w.write(buf.subarray(0, used));
    }
    w.write(bytesOf(seqOffsets));
    w.write(bytesOf(packOffsets));
    w.close();
  }
}

const STAGE_BYTES = 1024 * 1024;

function readFully(fd: number, buf: Uint8Array, at: number, n: number, position: number): void {
  let got = 0;
  while (got < n) {
    const r = readSync(fd, buf, at + got, n - got, position + got);
    if (r === 0) throw new TunaError("INTERNAL", `shard spill: short read at ${position + got}`);
    got += r;
  }
}

function packTokens(pack: number[], lengths: Int32Array): number {
  let t = 0;
  for (const i of pack) t += lengths[i];
  return t;
}

function histogram(lengths: Int32Array, maxLength: number): { upper: number; count: number }[] {
  const buckets: number[] = [];
  for (let b = 64; b < maxLength; b *= 2) buckets.push(b);
  buckets.push(maxLength, Number.POSITIVE_INFINITY);
  const counts = new Array(buckets.length).fill(0);
  for (const l of lengths) counts[buckets.findIndex((b) => l <= b)]++;
  return buckets.map((upper, i) => ({ upper, count: counts[i] }));
}

export interface Manifest {
  format: "tuna-shards";
  version: 1;
  created: string;
  tokenizer_hash: string;
  template_hash: string;
  max_length: number;
  splits: Record<string, ShardSplitStats>;
  /** Samples that could not be rendered or masked, by reason (examples kept in the data report). */
  rejected: Record<string, number>;
  /** Records that are not conversations (preference pairs, plain text), stored as JSONL beside the shards. */
  records?: Partial<Record<"preference" | "text", { count: number; file: string }>>;
  /** The resolved data/template/pack config that made these shards. */
  config: unknown;
}

export function writeManifest(
  dir: string,
  manifest: Omit<Manifest, "format" | "version" | "created">,
): Manifest {
  const full: Manifest = {
    format: "tuna-shards",
    version: 1,
    created: new Date().toISOString(),
    ...manifest,
  };
  writeFileSync(join(dir, "manifest.json"), `${JSON.stringify(full, null, 2)}\n`);
  return full;
}
