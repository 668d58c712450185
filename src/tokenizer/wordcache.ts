// The tokenizer's word cache: word (a range of a string) → its BPE ids, looked up by the word's UTF-16 units in
// place, without cutting the word out as a string. A Map<string, number> needed `s.slice(i, j)` for every word
// (one new string a token or so: ~1M short strings a MB of text) and hashed and compared it generically.
//
// Open addressing over `slots` (entry index or -1); an entry's units live in one Uint16Array, its value is the
// tokenizer's encoding (an id ≥ 0, or -(1 + offset * 64 + length) into the tokenizer's id arena).

/** What `get` returns for a word not in the cache (not a value the tokenizer stores). */
export const MISS = 0x7fffffff;

export class WordCache {
  private slots: Int32Array;
  private mask: number;
  private start: Int32Array;
  private len: Uint8Array;
  private hash: Int32Array;
  private value: Int32Array;
  private units: Uint16Array;
  private unitsEnd = 0;
  size = 0;
  /** Slot and hash of the last `get` that missed, for the `set` that follows it. */
  private missSlot = 0;
  private missHash = 0;

  /** At most `limit` entries of at most `maxLen` units each; the tables start small and double as entries come
   * (a full Qwen3 cache of 250k entries takes ~11 MB). */
  constructor(
    readonly limit: number,
    readonly maxLen: number,
  ) {
    const cap = Math.min(limit, 4096);
    this.slots = new Int32Array(tableSize(cap)).fill(-1);
    this.mask = this.slots.length - 1;
    this.start = new Int32Array(cap);
    this.len = new Uint8Array(cap);
    this.hash = new Int32Array(cap);
    this.value = new Int32Array(cap);
    this.units = new Uint16Array(cap * maxLen);
  }

  /** Twice the entries (at most `limit`), everything rehashed into a table twice as large. */
  private grow(): void {
    const cap = Math.min(this.limit, this.start.length * 2);
    const more = <A extends Int32Array | Uint8Array | Uint16Array>(a: A, n: number): A => {
      const b = new (a.constructor as new (n: number) => A)(n);
      b.set(a);
      return b;
    };
    this.start = more(this.start, cap);
    this.len = more(this.len, cap);
    this.hash = more(this.hash, cap);
    this.value = more(this.value, cap);
    this.units = more(this.units, cap * this.maxLen);
    this.slots = new Int32Array(tableSize(cap)).fill(-1);
    this.mask = this.slots.length - 1;
    for (let e = 0; e < this.size; e++) {
      let slot = this.hash[e] & this.mask;
      while (this.slots[slot] >= 0) slot = (slot + 1) & this.mask;
      this.slots[slot] = e;
    }
  }

  /** The value stored for s[i, j), or MISS. */
  get(s: string, i: number, j: number): number {
    let h = 0x811c9dc5;
    for (let k = i; k < j; k++) h = Math.imul(h ^ s.charCodeAt(k), 0x01000193);
    h ^= h >>> 15;
    const n = j - i;
    const slots = this.slots;
    const mask = this.mask;
    let slot = h & mask;
    for (;;) {
      const e = slots[slot];
      if (e < 0) break;
      if (this.hash[e] === h && this.len[e] === n) {
        const units = this.units;
        let a = this.start[e];
        let k = i;
        while (k < j && units[a] === s.charCodeAt(k)) {
          a++;
          k++;
        }
        if (k === j) return this.value[e];
      }
      slot = (slot + 1) & mask;
    }
    this.missSlot = slot;
    this.missHash = h;
    return MISS;
  }

  /** Store s[i, j) → value, right after the `get(s, i, j)` that missed. The caller empties a full cache first
   * (clear, then get again): its id arena is emptied with it. */
  set(s: string, i: number, j: number, value: number): void {
    if (this.size === this.start.length) {
      this.grow();
      this.get(s, i, j);
    }
    const e = this.size++;
    const at = this.unitsEnd;
    for (let k = i; k < j; k++) this.units[at + k - i] = s.charCodeAt(k);
    this.unitsEnd = at + (j - i);
    this.start[e] = at;
    this.len[e] = j - i;
    this.hash[e] = this.missHash;
    this.value[e] = value;
    this.slots[this.missSlot] = e;
  }

  clear(): void {
    this.slots.fill(-1);
    this.size = 0;
    this.unitsEnd = 0;
  }
}

/** Slots for `entries`: a power of two at least twice as many (probes stay short). */
function tableSize(entries: number): number {
  let n = 1024;
  while (n < entries * 2) n <<= 1;
  return n;
}
