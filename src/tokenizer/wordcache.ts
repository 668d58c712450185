// The tokenizer's word cache: word (a range of a string) → its BPE ids, looked up by the word's UTF-16 units in
// place, without cutting the word out as a string. A Map<string, number> needed `s.slice(i, j)` for every word
// (one new string a token or so: ~1M short strings a MB of text) and hashed and compared it generically.
//
// Open addressing over `slots` (entry index or -1); an entry's units live in one Uint16Array, its value is the
// tokenizer's encoding (an id ≥ 0, or -(1 + offset * 64 + length) into the tokenizer's id arena).

/** What `get` returns for a word not in the cache (not a value the tokenizer stores). */
export const MISS = 0x7fffffff;

/** Int32 words an entry takes in `rec`: its hash, its units' start, its length, its value (one 16-byte record, so a
 * hit reads one cache line of entry data instead of one from each of four parallel arrays). */
const REC = 4;

export class WordCache {
  private slots: Int32Array;
  private mask: number;
  /** Entry e: rec[4e] hash, rec[4e + 1] start in `units`, rec[4e + 2] length, rec[4e + 3] value. */
  private rec: Int32Array;
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
    this.rec = new Int32Array(cap * REC);
    this.units = new Uint16Array(cap * maxLen);
  }

  /** Entries the tables hold before they grow. */
  private get capacity(): number {
    return this.rec.length / REC;
  }

  /** Twice the entries (at most `limit`), everything rehashed into a table twice as large. */
  private grow(): void {
    const cap = Math.min(this.limit, this.capacity * 2);
    const rec = new Int32Array(cap * REC);
    rec.set(this.rec);
    this.rec = rec;
    const units = new Uint16Array(cap * this.maxLen);
    units.set(this.units);
    this.units = units;
    this.slots = new Int32Array(tableSize(cap)).fill(-1);
    this.mask = this.slots.length - 1;
    for (let e = 0; e < this.size; e++) {
      let slot = rec[e * REC] & this.mask;
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
    const rec = this.rec;
    const mask = this.mask;
    let slot = h & mask;
    for (;;) {
      const e = slots[slot];
      if (e < 0) break;
      const r = e * REC;
      if (rec[r] === h && rec[r + 2] === n) {
        const units = this.units;
        let a = rec[r + 1];
        let k = i;
        while (k < j && units[a] === s.charCodeAt(k)) {
          a++;
          k++;
        }
        if (k === j) return rec[r + 3];
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
    if (this.size === this.capacity) {
      this.grow();
      this.get(s, i, j);
    }
    const e = this.size++;
    const at = this.unitsEnd;
    for (let k = i; k < j; k++) this.units[at + k - i] = s.charCodeAt(k);
    this.unitsEnd = at + (j - i);
    const r = e * REC;
    this.rec[r] = this.missHash;
    this.rec[r + 1] = at;
    this.rec[r + 2] = j - i;
    this.rec[r + 3] = value;
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
