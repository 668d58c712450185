// Near-duplicate state with bounded memory: the MinHash signatures and the LSH bucket entries that the Deduplicator
// (clean.ts) consults live in files, and memory holds about 40 bytes a kept conversation (was ~1.6 KB: every
// 128-value signature plus 16 JS Map entries and arrays): 420k conversations → ~17 MB.
//
// Decisions are exactly those of the all-in-memory algorithm (test/data-dedup-near.test.ts): a conversation is a
// near duplicate when some earlier signature that shares one of its 16 LSH buckets (band key equal) has an estimated
// Jaccard ≥ threshold; each bucket holds its first `maxBucket` signatures. What changed is only where things are:
//
// - Signatures: 4 bytes a value, appended to a file (512 bytes a signature), read back with one positioned read for
//   a candidate. In memory, 1 bit of each value (16 bytes a signature) prefilters candidates: values that are equal
//   have equal bits, so bit agreement ≥ value agreement, and a candidate whose bit agreement is below the threshold
//   cannot reach it with its full values (b-bit minwise hashing, Li & König 2010, used as a bound, not an estimate).
// - LSH entries (band, 32-bit band key, signature id): a small in-memory table of the newest entries (typed arrays),
//   flushed when full into a sorted run file; runs of equal size are merged (binary-counter LSM tree, so there are
//   about log2(entries / table size) of them). Each run keeps in memory a Bloom filter (10 bits an entry, ≈ 1% false
//   positives) and the first key of each 3 KB page; a bucket lookup reads a page only from runs whose filter may
//   hold the key, and compares full keys there, so the ids it returns are exactly the bucket's.
//
// Files are unlinked as soon as they are opened (kept alive by their descriptors): nothing is left behind by a
// crash. close() releases them.
import { closeSync, openSync, readSync, unlinkSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TunaError } from "../errors.ts";

export interface NearIndexOptions {
  bands: number;
  rows: number;
  threshold: number;
  maxBucket: number;
  /** Directory for the index's files (unlinked at once). Default: the OS temporary directory. */
  dir?: string;
  /** LSH entries held in memory before a flush to a run (tests make it tiny). */
  memEntries?: number;
}

let fileSeq = 0;

/** A scratch file, unlinked right away where the OS allows it (else on close). */
class ScratchFile {
  readonly fd: number;
  private path: string | null;

  constructor(dir: string, name: string) {
    this.path = join(dir, `.tuna-near-${process.pid}-${Date.now().toString(36)}-${fileSeq++}-${name}`);
    this.fd = openSync(this.path, "w+");
    try {
      unlinkSync(this.path);
      this.path = null;
    } catch {
      // Windows: an open file cannot be unlinked; removed on close.
    }
  }

  write(bytes: Uint8Array, at: number): void {
    let done = 0;
    while (done < bytes.length) done += writeSync(this.fd, bytes, done, bytes.length - done, at + done);
  }

  read(into: Uint8Array, at: number): void {
    let done = 0;
    while (done < into.length) {
      const n = readSync(this.fd, into, done, into.length - done, at + done);
      if (n === 0) throw new TunaError("INTERNAL", `near-dedup index: short read at ${at + done}`);
      done += n;
    }
  }

  close(): void {
    closeSync(this.fd);
    if (this.path) unlinkSync(this.path);
  }
}

/** MurmurHash3's 32-bit finalizer: the mixing step every hash of near dedup goes through. */
export function fmix32(x: number): number {
  let h = x;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function popcount32(x: number): number {
  let v = x - ((x >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}

const ID_CHUNK = 1 << 16;

/** Signatures by id: full values in a file, their low bits in memory. */
class SignatureStore {
  private readonly file: ScratchFile;
  private readonly words: number;
  private readonly bits: Uint32Array[] = [];
  // Signatures not yet written (ids flushed … count - 1), back to back.
  private readonly pending: Uint32Array;
  private readonly pendingBytes: Uint8Array;
  private readonly pendingCap = 512;
  private flushed = 0;
  count = 0;
  private readonly scratch: Uint32Array;
  private readonly scratchBytes: Uint8Array;

  constructor(
    dir: string,
    private readonly numPerm: number,
  ) {
    this.file = new ScratchFile(dir, "signatures");
    this.words = Math.ceil(numPerm / 32);
    this.pending = new Uint32Array(this.pendingCap * numPerm);
    this.pendingBytes = new Uint8Array(this.pending.buffer);
    this.scratch = new Uint32Array(numPerm);
    this.scratchBytes = new Uint8Array(this.scratch.buffer);
  }

  /** The low bit of each value, packed 32 to a word. */
  lowBits(sig: Uint32Array, out: Uint32Array): void {
    out.fill(0);
    for (let i = 0; i < sig.length; i++) out[i >>> 5] |= (sig[i] & 1) << (i & 31);
  }

  append(sig: Uint32Array, bits: Uint32Array): number {
    const id = this.count++;
    const chunk = Math.floor(id / ID_CHUNK);
    if (chunk === this.bits.length) this.bits.push(new Uint32Array(ID_CHUNK * this.words));
    this.bits[chunk].set(bits, (id % ID_CHUNK) * this.words);
    this.pending.set(sig, (id - this.flushed) * this.numPerm);
    if (this.count - this.flushed === this.pendingCap) this.flush();
    return id;
  }

  private flush(): void {
    const n = this.count - this.flushed;
    this.file.write(this.pendingBytes.subarray(0, n * this.numPerm * 4), this.flushed * this.numPerm * 4);
    this.flushed = this.count;
  }

  /**
   * Whether signature `id` has estimated Jaccard ≥ threshold with `sig` (`same / numPerm >= threshold`, as
   * estimatedJaccard computes it), reading its values only when its bits allow it.
   */
  near(sig: Uint32Array, bits: Uint32Array, id: number, threshold: number): boolean {
    const n = this.numPerm;
    const mine = this.bits[Math.floor(id / ID_CHUNK)];
    const at = (id % ID_CHUNK) * this.words;
    let differ = 0;
    for (let w = 0; w < this.words; w++) differ += popcount32(mine[at + w] ^ bits[w]);
    // Equal values have equal bits: agreement in values ≤ agreement in bits.
    if ((n - differ) / n < threshold) return false;
    let other: Uint32Array;
    if (id >= this.flushed)
      other = this.pending.subarray((id - this.flushed) * n, (id - this.flushed + 1) * n);
    else {
      this.file.read(this.scratchBytes, id * n * 4);
      other = this.scratch;
    }
    let same = 0;
    for (let i = 0; i < n; i++) if (sig[i] === other[i]) same++;
    return same / n >= threshold;
  }

  close(): void {
    this.file.close();
  }
}

const PAGE = 256; // entries a page: 3 KB
const ENTRY_BYTES = 12; // u32 key, u32 band, u32 id
const BLOOM_BITS = 10;
const BLOOM_K = 7;

/** A sorted run of LSH entries in a file, with its Bloom filter and the first key of each page in memory. */
interface Run {
  file: ScratchFile;
  count: number;
  level: number;
  bloom: Uint32Array;
  bloomBits: number;
  /** band × 2^32 + key of each page's first entry. */
  pageFirst: Float64Array;
}

function bloomHashes(band: number, key: number): [number, number] {
  const h1 = fmix32(key ^ Math.imul(band + 1, 0x9e3779b1));
  const h2 = (fmix32(h1 ^ 0x5bd1e995) | 1) >>> 0;
  return [h1, h2];
}

function bloomAdd(bloom: Uint32Array, m: number, band: number, key: number): void {
  const [h1, h2] = bloomHashes(band, key);
  for (let i = 0; i < BLOOM_K; i++) {
    const bit = ((h1 + Math.imul(i, h2)) >>> 0) % m;
    bloom[bit >>> 5] |= 1 << (bit & 31);
  }
}

function bloomHas(bloom: Uint32Array, m: number, h1: number, h2: number): boolean {
  for (let i = 0; i < BLOOM_K; i++) {
    const bit = ((h1 + Math.imul(i, h2)) >>> 0) % m;
    if (!(bloom[bit >>> 5] & (1 << (bit & 31)))) return false;
  }
  return true;
}

/** Builds a run from entries given in sorted order. */
class RunWriter {
  private readonly file: ScratchFile;
  private readonly bloom: Uint32Array;
  private readonly bloomBits: number;
  private readonly pageFirst: Float64Array;
  private readonly buf = new Uint32Array(3 * 8192);
  private inBuf = 0;
  private written = 0;

  constructor(
    dir: string,
    private readonly count: number,
    private readonly level: number,
  ) {
    this.file = new ScratchFile(dir, "run");
    this.bloomBits = Math.max(64, Math.ceil((count * BLOOM_BITS) / 32) * 32);
    this.bloom = new Uint32Array(this.bloomBits / 32);
    this.pageFirst = new Float64Array(Math.ceil(count / PAGE));
  }

  add(key: number, band: number, id: number): void {
    const i = this.written + this.inBuf;
    if (i % PAGE === 0) this.pageFirst[i / PAGE] = band * 2 ** 32 + key;
    bloomAdd(this.bloom, this.bloomBits, band, key);
    const o = 3 * this.inBuf++;
    this.buf[o] = key;
    this.buf[o + 1] = band;
    this.buf[o + 2] = id;
    if (this.inBuf === this.buf.length / 3) this.flush();
  }

  private flush(): void {
    const bytes = new Uint8Array(this.buf.buffer, 0, this.inBuf * ENTRY_BYTES);
    this.file.write(bytes, this.written * ENTRY_BYTES);
    this.written += this.inBuf;
    this.inBuf = 0;
  }

  finish(): Run {
    this.flush();
    if (this.written !== this.count) {
      throw new TunaError(
        "INTERNAL",
        `near-dedup run: ${this.written} entries written, ${this.count} expected`,
      );
    }
    return {
      file: this.file,
      count: this.count,
      level: this.level,
      bloom: this.bloom,
      bloomBits: this.bloomBits,
      pageFirst: this.pageFirst,
    };
  }
}

/** Reads a run's entries in order, a chunk at a time (for merging). */
class RunReader {
  private readonly buf = new Uint32Array(3 * 8192);
  private inBuf = 0;
  private at = 0;
  private next = 0;
  key = 0;
  band = 0;
  id = 0;
  comp = Number.POSITIVE_INFINITY;

  constructor(private readonly run: Run) {
    this.advance();
  }

  advance(): void {
    if (this.at === this.inBuf) {
      const n = Math.min(this.buf.length / 3, this.run.count - this.next);
      if (n === 0) {
        this.comp = Number.POSITIVE_INFINITY;
        return;
      }
      this.run.file.read(new Uint8Array(this.buf.buffer, 0, n * ENTRY_BYTES), this.next * ENTRY_BYTES);
      this.next += n;
      this.inBuf = n;
      this.at = 0;
    }
    const o = 3 * this.at++;
    this.key = this.buf[o];
    this.band = this.buf[o + 1];
    this.id = this.buf[o + 2];
    this.comp = this.band * 2 ** 32 + this.key;
  }
}

/** LSH bucket entries (band, key) → signature ids: newest in memory, older in sorted runs on disk. */
class BucketIndex {
  private readonly cap: number;
  private readonly memKey: Uint32Array;
  private readonly memBand: Uint8Array;
  private readonly memId: Int32Array;
  private readonly memNext: Int32Array;
  private readonly heads: Int32Array;
  private memCount = 0;
  private readonly runs: Run[] = [];
  private readonly page = new Uint32Array(3 * PAGE);
  private readonly pageBytes = new Uint8Array(this.page.buffer);
  /** Bits of an entry's position in the in-memory table, in the sort key (band × 2^32 + key) × 2^entryBits + position. */
  private readonly entryBits: number;

  constructor(
    private readonly dir: string,
    bands: number,
    memEntries: number,
  ) {
    if (bands > 256) throw new RangeError(`near dedup: ${bands} bands, at most 256`);
    const bandBits = Math.max(1, Math.ceil(Math.log2(bands)));
    this.entryBits = 53 - 32 - bandBits;
    this.cap = Math.min(memEntries, 2 ** this.entryBits);
    this.memKey = new Uint32Array(this.cap);
    this.memBand = new Uint8Array(this.cap);
    this.memId = new Int32Array(this.cap);
    this.memNext = new Int32Array(this.cap);
    let slots = 1;
    while (slots < 2 * this.cap) slots *= 2;
    this.heads = new Int32Array(slots).fill(-1);
  }

  private slot(band: number, key: number): number {
    return fmix32(key ^ Math.imul(band + 1, 0x85ebca77)) & (this.heads.length - 1);
  }

  /** Appends the ids of bucket (band, key) to `out`. */
  lookup(band: number, key: number, out: number[]): void {
    for (let e = this.heads[this.slot(band, key)]; e >= 0; e = this.memNext[e]) {
      if (this.memKey[e] === key && this.memBand[e] === band) out.push(this.memId[e]);
    }
    if (this.runs.length === 0) return;
    const [h1, h2] = bloomHashes(band, key);
    const comp = band * 2 ** 32 + key;
    for (const run of this.runs) {
      if (bloomHas(run.bloom, run.bloomBits, h1, h2)) this.lookupRun(run, comp, key, band, out);
    }
  }

  private lookupRun(run: Run, comp: number, key: number, band: number, out: number[]): void {
    const firsts = run.pageFirst;
    // p = first page whose first key is ≥ comp.
    let lo = 0;
    let hi = firsts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (firsts[mid] < comp) lo = mid + 1;
      else hi = mid;
    }
    // The bucket starts in page p - 1 (its first key is below comp) unless page p starts with it and p is 0.
    let p = lo === 0 ? 0 : lo - 1;
    if (lo === 0 && (firsts.length === 0 || firsts[0] !== comp)) return;
    for (; p < firsts.length; p++) {
      const n = Math.min(PAGE, run.count - p * PAGE);
      run.file.read(this.pageBytes.subarray(0, n * ENTRY_BYTES), p * PAGE * ENTRY_BYTES);
      const pg = this.page;
      for (let i = 0; i < n; i++) {
        const b = pg[3 * i + 1];
        const k = pg[3 * i];
        if (b === band && k === key) out.push(pg[3 * i + 2]);
        else if (b * 2 ** 32 + k > comp) return;
      }
    }
  }

  add(band: number, key: number, id: number): void {
    if (this.memCount === this.cap) this.flush();
    const e = this.memCount++;
    this.memKey[e] = key;
    this.memBand[e] = band;
    this.memId[e] = id;
    const s = this.slot(band, key);
    this.memNext[e] = this.heads[s];
    this.heads[s] = e;
  }

  /** The in-memory entries → a sorted run; then runs of equal level merge. */
  private flush(): void {
    const n = this.memCount;
    const order = new Float64Array(n);
    const scale = 2 ** this.entryBits;
    for (let e = 0; e < n; e++) order[e] = (this.memBand[e] * 2 ** 32 + this.memKey[e]) * scale + e;
    order.sort();
    const w = new RunWriter(this.dir, n, 0);
    for (let i = 0; i < n; i++) {
      const e = order[i] % scale;
      w.add(this.memKey[e], this.memBand[e], this.memId[e]);
    }
    this.runs.push(w.finish());
    this.memCount = 0;
    this.heads.fill(-1);
    while (
      this.runs.length >= 2 &&
      this.runs[this.runs.length - 1].level === this.runs[this.runs.length - 2].level
    ) {
      const b = this.runs.pop() as Run;
      const a = this.runs.pop() as Run;
      this.runs.push(this.merge(a, b));
    }
  }

  private merge(a: Run, b: Run): Run {
    const w = new RunWriter(this.dir, a.count + b.count, a.level + 1);
    const ra = new RunReader(a);
    const rb = new RunReader(b);
    for (;;) {
      const r = ra.comp <= rb.comp ? ra : rb;
      if (r.comp === Number.POSITIVE_INFINITY) break;
      w.add(r.key, r.band, r.id);
      r.advance();
    }
    a.file.close();
    b.file.close();
    return w.finish();
  }

  close(): void {
    for (const r of this.runs) r.file.close();
    this.runs.length = 0;
  }
}

/** The near-duplicate part of the Deduplicator: see the top of this file. */
export class NearIndex {
  private readonly sigs: SignatureStore;
  private readonly index: BucketIndex;
  private readonly keys: Uint32Array;
  private readonly counts: Int32Array;
  private readonly bits: Uint32Array;
  private readonly ids: number[] = [];
  private readonly compared = new Set<number>();
  private closed = false;

  constructor(private readonly o: NearIndexOptions) {
    const numPerm = o.bands * o.rows;
    const dir = o.dir ?? tmpdir();
    this.sigs = new SignatureStore(dir, numPerm);
    this.index = new BucketIndex(dir, o.bands, o.memEntries ?? 1 << 16);
    this.keys = new Uint32Array(o.bands);
    this.counts = new Int32Array(o.bands);
    this.bits = new Uint32Array(Math.ceil(numPerm / 32));
  }

  /** "near" when an earlier kept signature sharing an LSH bucket is similar enough; else records it: "new". */
  check(sig: Uint32Array): "new" | "near" {
    if (this.closed) throw new TunaError("INTERNAL", "near-dedup index used after close()");
    const { bands, rows, threshold, maxBucket } = this.o;
    const { keys, counts, bits, ids, compared } = this;
    this.sigs.lowBits(sig, bits);
    compared.clear();
    for (let b = 0; b < bands; b++) {
      let key = b;
      for (let r = b * rows; r < (b + 1) * rows; r++) key = fmix32(Math.imul(key, 0x01000193) ^ sig[r]);
      keys[b] = key;
      ids.length = 0;
      this.index.lookup(b, key, ids);
      counts[b] = ids.length;
      for (const c of ids) {
        if (compared.has(c)) continue;
        compared.add(c);
        if (this.sigs.near(sig, bits, c, threshold)) return "near";
      }
    }
    const id = this.sigs.append(sig, bits);
    for (let b = 0; b < bands; b++) if (counts[b] < maxBucket) this.index.add(b, keys[b], id);
    return "new";
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.sigs.close();
    this.index.close();
  }
}
