// Byte-level BPE model: vocab, merges by rank on integer pairs, and the merge loop. A word's UTF-8 bytes start as
// one symbol each; the adjacent pair with the lowest merge rank (leftmost on ties) is merged until none is left
// (the same result as Hugging Face's heap over (rank, position)).
import { BYTE_TO_CHAR, utf8Encode } from "./bytelevel.ts";

/** Hash map from an id pair (a, b) to its merge rank, and rank → merged id. Laid out for the cache: the open-addressing
 * slots are one Int32Array holding rank + 1 (0 = empty) with a fingerprint of the pair's hash in the high bits, and
 * the pairs live in one rank-indexed Int32Array of [a, b, merged] triples. A lookup reads one slot (a 2 MB table for
 * Qwen3's 151k merges) and, when the fingerprint matches, one triple; frequent merges have low ranks, so their
 * triples share cache lines. Against four parallel 2 MB arrays indexed by slot (8 MB, four cache lines a lookup): about
 * 5% less CPU a pass over the bench corpus, single thread and pool alike (docs/tokenizer.md). */
export class MergeTable {
  private readonly mask: number;
  private readonly slots: Int32Array;
  /** [a, b, merged] of rank r at 3r. */
  private readonly pairs: Int32Array;
  /** Bits of a slot below the fingerprint (rank + 1 fits in them). */
  private readonly rankBits: number;
  private readonly rankMask: number;

  constructor(capacityHint: number) {
    let cap = 1024;
    while (cap < capacityHint * 3) cap <<= 1;
    this.mask = cap - 1;
    this.slots = new Int32Array(cap);
    this.pairs = new Int32Array(Math.max(1, capacityHint) * 3);
    let bits = 1;
    while (2 ** bits <= capacityHint + 1) bits++;
    this.rankBits = bits;
    this.rankMask = 2 ** bits - 1;
  }

  private static hash(a: number, b: number): number {
    const h = Math.imul(a, 0x9e3779b1) ^ Math.imul(b + 0x7f4a7c15, 0x85ebca77);
    return h ^ (h >>> 15);
  }

  /** First insertion of a pair wins (HF keeps the first rank when merges repeat). `rank` is the merge's index,
   * below the constructor's capacityHint. */
  set(a: number, b: number, rank: number, merged: number): void {
    if (this.find(a, b) >= 0) return;
    const h = MergeTable.hash(a, b);
    const fp = (h >>> this.rankBits) & (0x7fffffff >>> this.rankBits);
    let i = h & this.mask;
    while (this.slots[i] !== 0) i = (i + 1) & this.mask;
    this.slots[i] = (fp << this.rankBits) | (rank + 1);
    this.pairs[3 * rank] = a;
    this.pairs[3 * rank + 1] = b;
    this.pairs[3 * rank + 2] = merged;
  }

  /** Rank of the merge of (a, b), or -1. */
  find(a: number, b: number): number {
    const h = MergeTable.hash(a, b);
    const bits = this.rankBits;
    const fp = (h >>> bits) & (0x7fffffff >>> bits);
    const slots = this.slots;
    const pairs = this.pairs;
    const mask = this.mask;
    const rm = this.rankMask;
    let i = h & mask;
    for (;;) {
      const v = slots[i];
      if (v === 0) return -1;
      if (v >>> bits === fp) {
        const r = (v & rm) - 1;
        if (pairs[3 * r] === a && pairs[3 * r + 1] === b) return r;
      }
      i = (i + 1) & mask;
    }
  }

  /** Whether the merge of rank r (a rank find returned) is of the pair (a, b): find(a, b) === r without hashing. */
  isPair(rank: number, a: number, b: number): boolean {
    return this.pairs[3 * rank] === a && this.pairs[3 * rank + 1] === b;
  }

  /** Merged id of the merge of rank r (a rank find returned). */
  mergedOf(rank: number): number {
    return this.pairs[3 * rank + 2];
  }
}

const NO_MERGE = 0x7fffffff;
/** Words of more symbols than this merge through a heap (O(n log n)); shorter ones scan (faster when small). Long
 * words are common in Chinese, where a whole clause is one pre-token. */
const HEAP_FROM = 24;

export class BytePairModel {
  /** Vocab id of each byte's symbol. */
  readonly byteIds = new Int32Array(256);
  private bytes = new Uint8Array(1024);
  private syms = new Int32Array(1024);
  private ranks = new Int32Array(1024);
  private merged = new Int32Array(1024);

  constructor(
    readonly vocab: Map<string, number>,
    readonly merges: MergeTable,
    readonly ignoreMerges: boolean,
  ) {
    for (let b = 0; b < 256; b++) {
      const id = vocab.get(BYTE_TO_CHAR[b]);
      this.byteIds[b] = id === undefined ? -1 : id;
    }
  }

  // The heap path's state: a doubly linked list over symbol positions and a binary heap of (rank, position).
  private next = new Int32Array(1024);
  private prev = new Int32Array(1024);
  private heapRank = new Int32Array(3072);
  private heapPos = new Int32Array(3072);
  private heapSize = 0;

  private grow(n: number): void {
    let cap = this.bytes.length;
    while (cap < n) cap *= 2;
    this.bytes = new Uint8Array(cap);
    this.syms = new Int32Array(cap);
    this.ranks = new Int32Array(cap);
    this.merged = new Int32Array(cap);
    this.next = new Int32Array(cap);
    this.prev = new Int32Array(cap);
    this.heapRank = new Int32Array(cap * 3);
    this.heapPos = new Int32Array(cap * 3);
  }

  /** (rank, position) order: lowest rank first, leftmost first among equal ranks (positions keep their order). */
  private heapPush(rank: number, pos: number): void {
    const hr = this.heapRank;
    const hp = this.heapPos;
    let k = this.heapSize++;
    while (k > 0) {
      const up = (k - 1) >> 1;
      if (hr[up] < rank || (hr[up] === rank && hp[up] < pos)) break;
      hr[k] = hr[up];
      hp[k] = hp[up];
      k = up;
    }
    hr[k] = rank;
    hp[k] = pos;
  }

  /** Removes the top; the caller has read it. */
  private heapPop(): void {
    const hr = this.heapRank;
    const hp = this.heapPos;
    const n = --this.heapSize;
    const rank = hr[n];
    const pos = hp[n];
    let k = 0;
    for (;;) {
      let c = 2 * k + 1;
      if (c >= n) break;
      if (c + 1 < n && (hr[c + 1] < hr[c] || (hr[c + 1] === hr[c] && hp[c + 1] < hp[c]))) c++;
      if (rank < hr[c] || (rank === hr[c] && pos < hp[c])) break;
      hr[k] = hr[c];
      hp[k] = hp[c];
      k = c;
    }
    hr[k] = rank;
    hp[k] = pos;
  }

  /** Same merges as the scanning loop, for the n symbols in `syms`: pop the lowest (rank, position); an entry
   * whose pair has changed since it was pushed is stale (a rank names one pair) and skipped. */
  private mergeWithHeap(n: number): number {
    const syms = this.syms;
    const next = this.next;
    const prev = this.prev;
    const merges = this.merges;
    for (let p = 0; p < n; p++) {
      next[p] = p + 1 < n ? p + 1 : -1;
      prev[p] = p - 1;
    }
    this.heapSize = 0;
    for (let p = 0; p < n - 1; p++) {
      const rank = merges.find(syms[p], syms[p + 1]);
      if (rank >= 0) this.heapPush(rank, p);
    }
    let left = n;
    while (this.heapSize > 0) {
      const rank = this.heapRank[0];
      const p = this.heapPos[0];
      this.heapPop();
      const q = next[p];
      if (q < 0 || prev[p] === -2) continue; // p merged away, or last
      // Stale unless the pair there is still the one this rank merges (ranks come from find: each pair's first).
      if (!merges.isPair(rank, syms[p], syms[q])) continue;
      syms[p] = merges.mergedOf(rank);
      const r = next[q];
      next[p] = r;
      if (r >= 0) prev[r] = p;
      prev[q] = -2; // dead
      left--;
      const a = prev[p];
      if (a >= 0) {
        const r1 = merges.find(syms[a], syms[p]);
        if (r1 >= 0) this.heapPush(r1, a);
      }
      if (r >= 0) {
        const r2 = merges.find(syms[p], syms[r]);
        if (r2 >= 0) this.heapPush(r2, p);
      }
    }
    if (left === 1) return syms[0];
    // Compacted in place (k ≤ p all along): the ids end up in syms[0, left), like the scan's.
    for (let p = 0, k = 0; p >= 0; p = next[p]) syms[k++] = syms[p];
    return -left;
  }

  private pairAt(p: number): void {
    const rank = this.merges.find(this.syms[p], this.syms[p + 1]);
    if (rank < 0) {
      this.ranks[p] = NO_MERGE;
    } else {
      this.ranks[p] = rank;
      this.merged[p] = this.merges.mergedOf(rank);
    }
  }

  /** Where encodeWord leaves a word's ids when there are several: ids()[0, n). Valid until the next call. */
  ids(): Int32Array {
    return this.syms;
  }

  /** Ids of word s[start, end): its one id (≥ 0), or -n for n ≥ 2 ids left in ids()[0, n) until the next call (the
   * tokenizer copies them out at once; an Int32Array per word was, with encode's id buffer per call, most of what
   * encoding allocated off the V8 heap). */
  encodeWord(s: string, start: number, end: number, byteLevelKey: string | null): number {
    if (this.ignoreMerges && byteLevelKey !== null) {
      const id = this.vocab.get(byteLevelKey);
      if (id !== undefined) return id;
    }
    if ((end - start) * 3 > this.bytes.length) this.grow((end - start) * 3);
    const bytes = this.bytes;
    const syms = this.syms;
    const ranks = this.ranks;
    let n = utf8Encode(s, start, end, bytes, 0);
    const byteIds = this.byteIds;
    let m = 0;
    for (let k = 0; k < n; k++) {
      const id = byteIds[bytes[k]];
      if (id >= 0) syms[m++] = id; // a byte missing from the vocab (no unk in byte-level BPE) is dropped, as in HF
    }
    n = m;
    if (n === 1) return syms[0];
    if (n > HEAP_FROM) return this.mergeWithHeap(n);
    for (let p = 0; p < n - 1; p++) this.pairAt(p);
    while (n > 1) {
      let best = NO_MERGE;
      let at = -1;
      for (let p = 0; p < n - 1; p++) {
        if (ranks[p] < best) {
          best = ranks[p];
          at = p;
        }
      }
      if (at < 0) break;
      syms[at] = this.merged[at];
      syms.copyWithin(at + 1, at + 2, n);
      ranks.copyWithin(at + 1, at + 2, n - 1);
      this.merged.copyWithin(at + 1, at + 2, n - 1);
      n--;
      if (at > 0) this.pairAt(at - 1);
      if (at < n - 1) this.pairAt(at);
    }
    if (n === 1) return syms[0];
    return -n;
  }
}
