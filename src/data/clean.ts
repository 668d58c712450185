// Cleaning stages over Conversations: exact and near-duplicate removal (MinHash + LSH over normalised text),
// and filters by turn count, script-detected language, and token length (through a caller's counter).
import { createHash } from "node:crypto";
import type { Conversation } from "./conversation.ts";

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

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

function fmix32(x: number): number {
  let h = x;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
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
}

/** MinHash signature of a text's character shingles. */
export function minhash(text: string, numPerm: number, k = 5): Uint32Array {
  const sig = new Uint32Array(numPerm).fill(0xffffffff);
  const seeds = seedsFor(numPerm);
  const shingles = new Set<number>();
  if (text.length <= k) shingles.add(fnv1a(text));
  else for (let i = 0; i + k <= text.length; i++) shingles.add(fnv1a(text.slice(i, i + k)));
  for (const x of shingles) {
    for (let p = 0; p < numPerm; p++) {
      const h = fmix32(x ^ seeds[p]);
      if (h < sig[p]) sig[p] = h;
    }
  }
  return sig;
}

const seedCache = new Map<number, Uint32Array>();
function seedsFor(n: number): Uint32Array {
  let s = seedCache.get(n);
  if (!s) {
    s = new Uint32Array(n);
    for (let i = 0; i < n; i++) s[i] = fmix32(0x9e3779b9 + i * 0x632be5ab);
    seedCache.set(n, s);
  }
  return s;
}

export function estimatedJaccard(a: Uint32Array, b: Uint32Array): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

/**
 * Streaming de-duplicator: `check(conv)` says whether a conversation is new, an exact duplicate, or a near
 * duplicate of one seen before (first one wins, so the result depends only on input order).
 */
export class Deduplicator {
  private readonly exactSeen = new Set<string>();
  private readonly buckets = new Map<string, number[]>();
  private readonly sigs: Uint32Array[] = [];
  private readonly o: Required<DedupOptions>;

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
      const h = createHash("sha1").update(norm).digest("base64");
      if (this.exactSeen.has(h)) return "exact";
      this.exactSeen.add(h);
    }
    if (!this.o.near) return "new";
    const { bands, rows, threshold, maxBucket } = this.o;
    const sig = minhash(norm, bands * rows, this.o.shingle);
    const keys: string[] = [];
    const compared = new Set<number>();
    for (let b = 0; b < bands; b++) {
      const key = `${b}:${Array.from(sig.subarray(b * rows, (b + 1) * rows)).join(",")}`;
      keys.push(key);
      for (const c of this.buckets.get(key) ?? []) {
        if (compared.has(c)) continue;
        compared.add(c);
        if (estimatedJaccard(sig, this.sigs[c]) >= threshold) return "near";
      }
    }
    const id = this.sigs.length;
    this.sigs.push(sig);
    for (const key of keys) {
      const list = this.buckets.get(key);
      if (!list) this.buckets.set(key, [id]);
      else if (list.length < maxBucket) list.push(id);
    }
    return "new";
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
