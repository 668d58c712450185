// Cleaning stages over Conversations: exact and near-duplicate removal (MinHash + LSH over normalised text),
// and filters by turn count, script-detected language, and token length (through a caller's counter).
import { createHash } from "node:crypto";
import type { Conversation } from "./conversation.ts";
import { fmix32, NearIndex } from "./near-index.ts";

/** Text of a conversation for duplicate detection: roles, content, reasoning and tool calls. */
export function conversationText(conv: Conversation): string {
  return conv.messages
    .map((m) => {
      let s = `${m.role}: ${m.content}`;
      if (m.reasoning) s += ` ${m.reasoning}`;
      if (m.tool_calls) s += ` ${JSON.stringify(m.tool_calls.map((c) => [c.name, c.arguments]))}`;
      return s;
    })
    .join("\n");
}

/** NFKC, lower case, punctuation removed, whitespace collapsed: "Hello,  World!" ≡ "hello world". */
export function normalizeText(s: string): string {
  const t = s.normalize("NFKC").toLowerCase();
  // Same result, faster: in ASCII text \p{P} and \p{S} are exactly the 32 printable non-alphanumerics, and
  // replacing a single " " with " " is a no-op, so only runs of 2+ whitespace and other whitespace are replaced.
  const ascii = !/[\u0080-\uffff]/.test(t);
  return t
    .replace(ascii ? /[!-/:-@[-`{-~]+/g : /[\p{P}\p{S}]+/gu, " ")
    .replace(/\s{2,}|[^\S ]/g, " ")
    .trim();
}

/**
 * A set of SHA-1 digests kept as their first 96 bits in one open-addressing table (13 bytes a slot, at most half
 * full: ≤ 26 bytes an entry at the largest) instead of a Set of base64 strings (about 70 bytes an entry, 30 MB for
 * 420k conversations). Two different texts are taken for one only if their SHA-1s share 96 bits (p ≈ n²/2^97).
 */
class DigestSet {
  private keys = new Uint32Array(3 * 1024);
  private used = new Uint8Array(1024);
  private count = 0;

  /** Adds the digest; false when it was already there. */
  add(d: Buffer): boolean {
    if (2 * (this.count + 1) > this.used.length) this.grow();
    return this.put(d.readUInt32LE(0), d.readUInt32LE(4), d.readUInt32LE(8));
  }

  private put(a: number, b: number, c: number): boolean {
    const mask = this.used.length - 1;
    for (let i = a & mask; ; i = (i + 1) & mask) {
      if (!this.used[i]) {
        this.used[i] = 1;
        this.keys[3 * i] = a;
        this.keys[3 * i + 1] = b;
        this.keys[3 * i + 2] = c;
        this.count++;
        return true;
      }
      if (this.keys[3 * i] === a && this.keys[3 * i + 1] === b && this.keys[3 * i + 2] === c) return false;
    }
  }

  private grow(): void {
    const { keys, used } = this;
    this.keys = new Uint32Array(keys.length * 2);
    this.used = new Uint8Array(used.length * 2);
    this.count = 0;
    for (let i = 0; i < used.length; i++)
      if (used[i]) this.put(keys[3 * i], keys[3 * i + 1], keys[3 * i + 2]);
  }
}

export interface DedupOptions {
  exact?: boolean;
  near?: boolean;
  /** Estimated Jaccard similarity of character shingles at or above which two samples are near-duplicates. */
  threshold?: number;
  /** Characters per shingle (5 suits both Chinese and English). */
  shingle?: number;
  /** Permutations = bands × rows. 16 × 8 puts the LSH S-curve's midpoint near 0.7. */
  bands?: number;
  rows?: number;
  /**
   * Most signatures kept per LSH bucket. Text made from templates (many samples sharing long boilerplate) fills
   * a few buckets with thousands of entries, and comparing against all of them is quadratic; past this size a
   * bucket stops growing (its first members still match, and other bands still find later duplicates).
   */
  maxBucket?: number;
  /** Directory for the near-duplicate index's files (default: the OS temporary directory). */
  dir?: string;
  /** LSH entries held in memory before they go to a sorted run on disk (near-index.ts; tests make it tiny). */
  memEntries?: number;
}

/**
 * MinHash signature of a text's character shingles, by one-permutation hashing with optimal densification
 * (Shrivastava, "Optimal Densification for Fast and Accurate Minwise Hashing", ICML 2017): each shingle is hashed
 * once; the hash's top bits pick one of `numPerm` bins and the bin keeps the smallest value it sees. A bin no
 * shingle fell into borrows the value of a non-empty bin chosen by a hash of (bin, attempt), the same choice for
 * every text, so two texts' bins still agree with probability equal to their Jaccard similarity. Cost: one hash a
 * shingle, not one per permutation (128× fewer), with the same estimator (`estimatedJaccard`) and LSH banding.
 * `numPerm` must be a power of two.
 */
export function minhash(text: string, numPerm: number, k = 5): Uint32Array {
  const bits = Math.log2(numPerm);
  if (!Number.isInteger(bits) || bits < 1 || bits > 16) {
    throw new RangeError(`numPerm ${numPerm} is not a power of two between 2 and 65536`);
  }
  const shift = 32 - bits;
  const mask = 2 ** shift - 1;
  // Bin values keep the low 32 - bits bits of the shingle's hash; EMPTY is above any of them.
  const EMPTY = 0xffffffff;
  const sig = new Uint32Array(numPerm).fill(EMPTY);
  const last = text.length <= k ? 0 : text.length - k;
  const width = Math.min(k, text.length);
  for (let i = 0; i <= last; i++) {
    // fnv1a of text.slice(i, i + k), without the slice, then fmix32 to spread it over all 32 bits.
    let h = 0x811c9dc5;
    for (let j = i; j < i + width; j++) {
      h ^= text.charCodeAt(j);
      h = Math.imul(h, 0x01000193);
    }
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    const bin = h >>> shift;
    const v = (h & mask) >>> 0;
    if (v < sig[bin]) sig[bin] = v;
  }
  let empty = 0;
  for (let b = 0; b < numPerm; b++) if (sig[b] === EMPTY) empty++;
  if (empty === 0 || empty === numPerm) return sig;
  // Densify from a copy, so that a bin never borrows a borrowed value.
  const filled = sig.slice();
  for (let b = 0; b < numPerm; b++) {
    if (filled[b] !== EMPTY) continue;
    for (let attempt = 0; ; attempt++) {
      const donor = fmix32(Math.imul(b + 1, 0x9e3779b1) ^ Math.imul(attempt + 1, 0x85ebca77)) >>> shift;
      if (filled[donor] !== EMPTY) {
        sig[b] = filled[donor];
        break;
      }
    }
  }
  return sig;
}

export function estimatedJaccard(a: Uint32Array, b: Uint32Array): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

/**
 * Streaming de-duplicator: `check(conv)` says whether a conversation is new, an exact duplicate, or a near
 * duplicate of one seen before (first one wins, so the result depends only on input order). Near-duplicate state
 * (signatures, LSH buckets) lives in files with a small index in memory (near-index.ts); close() releases them.
 */
export class Deduplicator {
  private readonly exactSeen = new DigestSet();
  private near: NearIndex | null = null;
  private readonly o: Required<Omit<DedupOptions, "dir" | "memEntries">> &
    Pick<DedupOptions, "dir" | "memEntries">;

  constructor(opts: DedupOptions = {}) {
    this.o = {
      exact: true,
      near: true,
      threshold: 0.8,
      shingle: 5,
      bands: 16,
      rows: 8,
      maxBucket: 32,
      ...opts,
    };
  }

  check(conv: Conversation): "new" | "exact" | "near" {
    const norm = normalizeText(conversationText(conv));
    if (this.o.exact) {
      if (!this.exactSeen.add(createHash("sha1").update(norm).digest())) return "exact";
    }
    if (!this.o.near) return "new";
    const { bands, rows, threshold, maxBucket, dir, memEntries } = this.o;
    this.near ??= new NearIndex({ bands, rows, threshold, maxBucket, dir, memEntries });
    return this.near.check(minhash(norm, bands * rows, this.o.shingle));
  }

  /** Releases the near-duplicate index's files (they are unlinked already; this closes them). */
  close(): void {
    this.near?.close();
    this.near = null;
  }
}

// ---- language by script ----

export const LANGUAGES = [
  "zh",
  "ja",
  "ko",
  "latin",
  "cyrillic",
  "arabic",
  "thai",
  "devanagari",
  "hebrew",
  "greek",
] as const;
export type Language = (typeof LANGUAGES)[number];

const SCRIPTS: [Language, RegExp][] = [
  ["ja", /[\p{Script=Hiragana}\p{Script=Katakana}]/gu],
  ["zh", /\p{Script=Han}/gu],
  ["ko", /\p{Script=Hangul}/gu],
  ["latin", /\p{Script=Latin}/gu],
  ["cyrillic", /\p{Script=Cyrillic}/gu],
  ["arabic", /\p{Script=Arabic}/gu],
  ["thai", /\p{Script=Thai}/gu],
  ["devanagari", /\p{Script=Devanagari}/gu],
  ["hebrew", /\p{Script=Hebrew}/gu],
  ["greek", /\p{Script=Greek}/gu],
];

/**
 * The dominant script of a text, as a language label. Han characters count double (one carries about a
 * word). Kana anywhere in a Han-heavy text means Japanese. Null when there are no letters at all.
 */
export function detectLanguage(text: string): Language | null {
  const counts = new Map<Language, number>();
  for (const [lang, re] of SCRIPTS) {
    const n = text.match(re)?.length ?? 0;
    if (n) counts.set(lang, lang === "zh" ? n * 2 : n);
  }
  if (counts.size === 0) return null;
  const ja = counts.get("ja") ?? 0;
  if (ja > 0 && (counts.get("zh") ?? 0) > 0) counts.set("ja", ja + (counts.get("zh") ?? 0));
  let best: Language | null = null;
  let bestN = 0;
  for (const [lang, n] of counts) {
    if (n > bestN) {
      best = lang;
      bestN = n;
    }
  }
  return best;
}

/** User and assistant text of a conversation (what the language filter looks at). */
export function dialogueText(conv: Conversation): string {
  return conv.messages
    .filter((m) => m.role === "user" || m.role === "assistant")
    .map((m) => m.content)
    .join("\n");
}

/** Turns = user messages (one user message and what answers it). */
export function turnCount(conv: Conversation): number {
  return conv.messages.filter((m) => m.role === "user").length;
}

export interface FilterOptions {
  minTurns?: number;
  maxTurns?: number;
  languages?: Language[];
  minTokens?: number;
  maxTokens?: number;
}

/** Why a conversation is filtered out, or null to keep it. `countTokens` is needed only for token bounds. */
export function filterReason(
  conv: Conversation,
  f: FilterOptions,
  countTokens?: (conv: Conversation) => number,
): string | null {
  const turns = turnCount(conv);
  if (f.minTurns !== undefined && turns < f.minTurns) return "too_few_turns";
  if (f.maxTurns !== undefined && turns > f.maxTurns) return "too_many_turns";
  if (f.languages?.length) {
    const lang = detectLanguage(dialogueText(conv));
    if (lang === null || !f.languages.includes(lang)) return "language";
  }
  if (f.minTokens !== undefined || f.maxTokens !== undefined) {
    if (!countTokens) return null;
    const n = countTokens(conv);
    if (f.minTokens !== undefined && n < f.minTokens) return "too_few_tokens";
    if (f.maxTokens !== undefined && n > f.maxTokens) return "too_many_tokens";
  }
  return null;
}
