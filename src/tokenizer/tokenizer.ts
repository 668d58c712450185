// A byte-level BPE tokenizer built from a Hugging Face tokenizer.json, as a pipeline of small stages:
//   split added tokens → normalizer → pre-tokenizer (Split regex + ByteLevel) → BPE model → ids
// and back: ids → tokens → byte-level decoder → text. Each stage is built from its JSON block by a switch that
// throws a TunaError naming any `type` it does not know. Ids are identical to Hugging Face `tokenizers`
// `encode(text, add_special_tokens=False)` (test/tokenizer.test.ts checks this on a large mixed corpus).
import { createHash } from "node:crypto";
import { z } from "zod";
import { TunaError } from "../errors.ts";
import { AddedMatcher, type AddedToken } from "./added.ts";
import { BytePairModel, MergeTable } from "./bpe.ts";
import { BYTE_TO_CHAR, CHAR_TO_BYTE } from "./bytelevel.ts";
import { buildNormalizer, type Normalizer } from "./normalizer.ts";
import { GPT2_PATTERN, type NextWord, splitterFor } from "./pretokenizer.ts";
import type { EncodeOptions, Encoding, PositionedEncoding, Tokenizer } from "./types.ts";
import { MISS, WordCache } from "./wordcache.ts";

const AddedTokenSchema = z.object({
  id: z.number().int().nonnegative(),
  content: z.string().min(1),
  single_word: z.boolean().default(false),
  lstrip: z.boolean().default(false),
  rstrip: z.boolean().default(false),
  normalized: z.boolean().optional(),
  special: z.boolean().default(false),
});

const isPlainObject = (v: unknown) => typeof v === "object" && v !== null && !Array.isArray(v);

// The vocab (150k entries) and merges are checked entry by entry while they are read, not by zod, to keep loading
// fast; everything else is checked here.
const TokenizerJsonSchema = z.object({
  added_tokens: z.array(AddedTokenSchema).nullish(),
  normalizer: z.looseObject({ type: z.string() }).nullish(),
  pre_tokenizer: z.looseObject({ type: z.string() }).nullish(),
  post_processor: z.looseObject({ type: z.string() }).nullish(),
  decoder: z.looseObject({ type: z.string() }).nullish(),
  model: z.looseObject({
    type: z.string().optional(),
    vocab: z.custom<Record<string, number>>(isPlainObject, "expected an object of token → id"),
    merges: z.custom<unknown[]>(Array.isArray, "expected an array of merges"),
    dropout: z.number().nullish(),
    unk_token: z.string().nullish(),
    continuing_subword_prefix: z.string().nullish(),
    end_of_word_suffix: z.string().nullish(),
    fuse_unk: z.boolean().nullish(),
    byte_fallback: z.boolean().nullish(),
    ignore_merges: z.boolean().nullish(),
  }),
});

type TokenizerJson = z.infer<typeof TokenizerJsonSchema>;

function unsupported(what: string, type: unknown, where: string, supported: string): TunaError {
  return new TunaError("TOKENIZER_UNSUPPORTED", `unsupported ${what} type ${JSON.stringify(type)}`, {
    where,
    hint: `Tuna implements byte-level BPE tokenizers (Qwen2/Qwen3, Llama 3, GPT-2 family); supported ${what} types: ${supported}`,
  });
}

// biome-ignore lint/suspicious/noExplicitAny: raw JSON blocks, checked by the switches
type Json = any;

/** The pre-token splitter, from `pre_tokenizer`. Byte-level mapping must be one of the stages. */
function buildPreTokenizer(cfg: Json, where: string): NextWord {
  const steps: Json[] = cfg?.type === "Sequence" ? (cfg.pretokenizers ?? []) : cfg ? [cfg] : [];
  let splitter: NextWord | null = null;
  let byteLevel = false;
  steps.forEach((step, i) => {
    const w = cfg?.type === "Sequence" ? `${where}.pretokenizers[${i}]` : where;
    const setSplitter = (s: NextWord) => {
      if (splitter) {
        throw new TunaError("TOKENIZER_UNSUPPORTED", "more than one regex-splitting pre-tokenizer stage", {
          where: w,
        });
      }
      splitter = s;
    };
    switch (step?.type) {
      case "Split": {
        const pattern = step.pattern?.Regex ?? step.pattern?.String;
        if (typeof pattern !== "string") {
          throw new TunaError(
            "TOKENIZER_INVALID",
            "Split pre-tokenizer has no pattern.Regex or pattern.String",
            {
              where: w,
            },
          );
        }
        if (step.behavior !== "Isolated" || step.invert) {
          throw new TunaError(
            "TOKENIZER_UNSUPPORTED",
            `Split behavior ${JSON.stringify(step.behavior)} with invert=${step.invert} is not supported`,
            { where: w, hint: "supported: behavior Isolated, invert false" },
          );
        }
        const re =
          step.pattern.Regex !== undefined ? pattern : pattern.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
        setSplitter(splitterFor(re, w));
        break;
      }
      case "ByteLevel":
        if (step.add_prefix_space) {
          throw new TunaError("TOKENIZER_UNSUPPORTED", "ByteLevel add_prefix_space=true is not supported", {
            where: w,
          });
        }
        if (step.use_regex !== false) setSplitter(splitterFor(GPT2_PATTERN, w));
        byteLevel = true;
        break;
      default:
        throw unsupported("pre_tokenizer", step?.type, w, "Sequence, Split, ByteLevel");
    }
  });
  if (!byteLevel) {
    throw new TunaError("TOKENIZER_UNSUPPORTED", "the pre_tokenizer has no ByteLevel stage", {
      where,
      hint: "only byte-level BPE tokenizers (Qwen, Llama 3, GPT-2 family) are supported",
    });
  }
  // A lone ByteLevel with use_regex false keeps the whole text as one word.
  return splitter ?? ((_s, _i, end) => end);
}

/** Growable Int32Array for ids (and Uint32Array pairs for offsets), and the state of `encodeAt`'s position
 * lookup: positions are resolved in order as tokens are appended, each to the first token starting at or after
 * it, so only words that straddle a position need their per-token offsets. */
/** Ids appended one text after another: `ids[0, n)`. encodeAppend writes into one (the pool's per-thread output). */
export class IdSink {
  ids: Int32Array;
  n = 0;
  offsets: Uint32Array | null;
  /** Ascending character positions to resolve (encodeAt), else null. */
  pos: ArrayLike<number> | null = null;
  /** Next unresolved position. */
  pk = 0;
  /** at[k]: index of the first token starting at or after pos[k], or -1 when the token before it ends after it. */
  at: Int32Array | null = null;
  /** End (in the caller's string) of the last token appended. */
  prevEnd = 0;
  constructor(cap: number, withOffsets: boolean) {
    this.ids = new Int32Array(Math.max(16, cap));
    this.offsets = withOffsets ? new Uint32Array(this.ids.length * 2) : null;
  }
  reserve(extra: number): void {
    if (this.n + extra <= this.ids.length) return;
    let cap = this.ids.length * 2;
    while (cap < this.n + extra) cap *= 2;
    const ids = new Int32Array(cap);
    ids.set(this.ids.subarray(0, this.n));
    this.ids = ids;
    if (this.offsets) {
      const o = new Uint32Array(cap * 2);
      o.set(this.offsets.subarray(0, this.n * 2));
      this.offsets = o;
    }
  }
  /** Token `index` covers [start, end): resolve the positions at or before its start. */
  resolve(start: number, end: number, index: number): void {
    const pos = this.pos!;
    const at = this.at!;
    while (this.pk < pos.length && pos[this.pk] <= start) {
      at[this.pk] = this.prevEnd > pos[this.pk] ? -1 : index;
      this.pk++;
    }
    this.prevEnd = end;
  }
  /** After the last token: positions left point past it. */
  finish(): void {
    const pos = this.pos!;
    const at = this.at!;
    for (; this.pk < pos.length; this.pk++) at[this.pk] = this.prevEnd > pos[this.pk] ? -1 : this.n;
  }
}

const CACHE_LIMIT = 250_000;
/** encode's kept sink buffer is dropped after a call that grew it past this many ids (4 MB). */
const SINK_KEEP = 1 << 20;
/** Longer words are encoded each time, not cached: they are mostly unique (a Chinese clause is one pre-token), and
 * caching them only churns the cache (about 30 new entries a conversation on FineTome-like data). */
const CACHE_MAX_WORD = 12;

export class ByteLevelBpeTokenizer implements Tokenizer {
  readonly vocabSize: number;
  private readonly idToTok: (string | undefined)[];
  private readonly vocab: Map<string, number>;
  private readonly addedIds: Map<string, number>;
  private readonly specialIds: Set<number>;
  private readonly rawAdded: AddedMatcher | null;
  private readonly normAdded: AddedMatcher | null;
  private readonly normalizer: Normalizer | null;
  private readonly nextWord: NextWord;
  private readonly model: BytePairModel;
  /** Bytes per vocab token (each byte-level char is one byte), for offsets. */
  private readonly tokenBytes: Int32Array;
  // Word cache: word → its id (≥ 0) when it is one token, else -(1 + offset * 64 + length) with the ids at
  // arena[offset, offset + length) (a word of ≤ CACHE_MAX_WORD UTF-16 units has ≤ 36 bytes, so < 64 tokens). One
  // Int32Array for all entries instead of one each: about 90 bytes an entry instead of 285 (a full cache of
  // 250k entries held about 70 MB in each sample worker).
  private cache = new WordCache(CACHE_LIMIT, CACHE_MAX_WORD);
  private arena = new Int32Array(1 << 16);
  private arenaEnd = 0;
  /** Entries before the cache is emptied (settable so that a test can make it small). */
  get cacheLimit(): number {
    return this.cache.limit;
  }
  set cacheLimit(n: number) {
    this.cache = new WordCache(n, CACHE_MAX_WORD);
    this.arenaEnd = 0;
  }
  private decodeBytes: (Uint8Array | undefined)[] = [];
  private scratch = new Uint32Array(64);

  constructor(
    json: TokenizerJson,
    readonly hash: string,
    where: string,
  ) {
    const m = json.model;
    if (m.type !== undefined && m.type !== "BPE") {
      throw unsupported("model", m.type, `${where}: model`, "BPE");
    }
    if (m.continuing_subword_prefix || m.end_of_word_suffix || m.byte_fallback || (m.dropout ?? 0) > 0) {
      throw new TunaError(
        "TOKENIZER_UNSUPPORTED",
        "BPE with continuing_subword_prefix, end_of_word_suffix, byte_fallback or dropout is not supported",
        { where: `${where}: model` },
      );
    }
    const vocab = new Map<string, number>();
    const idToTok: (string | undefined)[] = [];
    let maxId = -1;
    for (const tok in m.vocab) {
      const id = m.vocab[tok];
      if (!Number.isInteger(id) || id < 0) {
        throw new TunaError("TOKENIZER_INVALID", `vocab entry ${JSON.stringify(tok)} has id ${id}`, {
          where: `${where}: model.vocab`,
          hint: "expected a non-negative integer id",
        });
      }
      vocab.set(tok, id);
      idToTok[id] = tok;
      if (id > maxId) maxId = id;
    }
    const merges = new MergeTable(m.merges.length);
    let lastMerged = -2;
    for (let r = 0; r < m.merges.length; r++) {
      const e = m.merges[r] as unknown;
      let a: string;
      let b: string;
      if (typeof e === "string") {
        const sp = e.indexOf(" ", 1);
        a = e.slice(0, sp);
        b = e.slice(sp + 1);
        if (sp < 0) a = "";
      } else if (Array.isArray(e) && e.length === 2 && typeof e[0] === "string" && typeof e[1] === "string") {
        a = e[0];
        b = e[1];
      } else {
        throw new TunaError("TOKENIZER_INVALID", `merge ${r} is ${JSON.stringify(e)}`, {
          where: `${where}: model.merges[${r}]`,
          hint: 'expected "a b" or ["a", "b"]',
        });
      }
      const ia = vocab.get(a);
      const ib = vocab.get(b);
      // Merged tokens usually have consecutive ids (Qwen, GPT-2: 256 + rank): try the id after the last one by
      // comparing strings, which is cheaper than hashing the concatenation; the same answer as vocab.get(a + b).
      const guess = idToTok[lastMerged + 1];
      const im =
        guess !== undefined &&
        guess.length === a.length + b.length &&
        guess.startsWith(a) &&
        guess.endsWith(b)
          ? lastMerged + 1
          : vocab.get(a + b);
      if (im !== undefined) lastMerged = im;
      if (ia === undefined || ib === undefined || im === undefined) {
        throw new TunaError(
          "TOKENIZER_INVALID",
          `merge ${r} ${JSON.stringify(e)} uses a token missing from the vocab`,
          {
            where: `${where}: model.merges[${r}]`,
          },
        );
      }
      merges.set(ia, ib, r, im);
    }
    this.model = new BytePairModel(vocab, merges, m.ignore_merges ?? false);
    for (let b = 0; b < 256; b++) {
      if (this.model.byteIds[b] < 0) {
        throw new TunaError("TOKENIZER_UNSUPPORTED", `byte 0x${b.toString(16)} has no token in the vocab`, {
          where: `${where}: model.vocab`,
          hint: "byte-level BPE needs all 256 byte symbols",
        });
      }
    }

    const added: AddedToken[] = (json.added_tokens ?? []).map((t) => ({
      ...t,
      normalized: t.normalized ?? !t.special,
    }));
    // Token → id is the vocab with the added tokens over it; kept as two maps (no 150k-entry copy at load).
    this.vocab = vocab;
    this.addedIds = new Map();
    let extra = 0;
    for (const t of added) {
      if (!vocab.has(t.content) && !this.addedIds.has(t.content)) extra++;
      this.addedIds.set(t.content, t.id);
      if (t.id > maxId) maxId = t.id;
    }
    this.vocabSize = vocab.size + extra;
    // Bytes per vocab token, from the vocab (idToTok still holds vocab tokens only here).
    this.tokenBytes = new Int32Array(maxId + 1);
    for (let id = 0; id < idToTok.length; id++) {
      const tok = idToTok[id];
      if (tok !== undefined) this.tokenBytes[id] = tok.length;
    }
    idToTok.length = maxId + 1;
    for (const t of added) idToTok[t.id] = t.content;
    this.idToTok = idToTok;
    this.specialIds = new Set(added.filter((t) => t.special).map((t) => t.id));

    this.normalizer = buildNormalizer(json.normalizer, `${where}: normalizer`);
    const raw = added.filter((t) => !t.normalized || !this.normalizer);
    const norm = added.filter((t) => t.normalized && this.normalizer);
    this.rawAdded = raw.length ? new AddedMatcher(raw) : null;
    this.normAdded = norm.length
      ? new AddedMatcher(norm.map((t) => ({ ...t, content: this.normalizer!.normalize(t.content).text })))
      : null;
    this.nextWord = buildPreTokenizer(json.pre_tokenizer, `${where}: pre_tokenizer`);

    const pp = json.post_processor;
    // Post-processors only add special tokens (add_special_tokens=True), which `encode` never does.
    if (
      pp &&
      !["ByteLevel", "TemplateProcessing", "Sequence", "RobertaProcessing", "BertProcessing"].includes(
        pp.type,
      )
    ) {
      throw unsupported(
        "post_processor",
        pp.type,
        `${where}: post_processor`,
        "ByteLevel, TemplateProcessing, Sequence",
      );
    }
    if (pp?.type === "ByteLevel" && pp.trim_offsets) {
      throw new TunaError("TOKENIZER_UNSUPPORTED", "ByteLevel post_processor with trim_offsets=true", {
        where: `${where}: post_processor`,
      });
    }
    const dec = json.decoder;
    if (dec && dec.type !== "ByteLevel") {
      throw unsupported("decoder", dec.type, `${where}: decoder`, "ByteLevel");
    }
  }

  encode(text: string, opts?: EncodeOptions): Int32Array {
    // One sink kept for encode (it runs to completion, never re-entered): its buffer grows to the largest text's
    // need and stays, so a call allocates only its result instead of a zeroed buffer of half the text's length too.
    const sink = this.encodeSink;
    sink.n = 0;
    sink.reserve((text.length >> 1) + 16);
    this.run(text, opts?.splitSpecial ?? false, sink);
    const ids = sink.ids.slice(0, sink.n);
    if (sink.ids.length > SINK_KEEP) this.encodeSink = new IdSink(1024, false); // not 100 MB kept for one huge text
    return ids;
  }
  private encodeSink = new IdSink(1024, false);

  /** encode's ids appended to `sink` (grown as needed) instead of returned: the pool's threads gather all their ids
   * in one buffer, and an array per text was an allocation and a copy per text. */
  encodeAppend(text: string, splitSpecial: boolean, sink: IdSink): void {
    this.run(text, splitSpecial, sink);
  }

  encodeWithOffsets(text: string, opts?: EncodeOptions): Encoding {
    const sink = new IdSink((text.length >> 1) + 16, true);
    this.run(text, opts?.splitSpecial ?? false, sink);
    return { ids: sink.ids.slice(0, sink.n), offsets: sink.offsets!.slice(0, sink.n * 2) };
  }

  /**
   * Ids, and for each of `positions` (character offsets, ascending) the index of the first token that starts at or
   * after it, or -1 when the token before that one ends after it (the position falls inside a token). The same
   * answer as a binary search over encodeWithOffsets' offsets, at about the cost of `encode`: offsets are computed
   * only for the words a position falls strictly inside.
   */
  encodeAt(text: string, positions: ArrayLike<number>, opts?: EncodeOptions): PositionedEncoding {
    for (let k = 1; k < positions.length; k++) {
      if (!(positions[k] >= positions[k - 1])) {
        throw new TunaError(
          "BAD_ARGUMENT",
          `encodeAt positions must be ascending; got ${positions[k - 1]} then ${positions[k]} at index ${k}`,
        );
      }
    }
    const sink = new IdSink((text.length >> 1) + 16, false);
    sink.pos = positions;
    sink.at = new Int32Array(positions.length);
    this.run(text, opts?.splitSpecial ?? false, sink);
    sink.finish();
    return { ids: sink.ids.slice(0, sink.n), at: sink.at };
  }

  private run(text: string, splitSpecial: boolean, sink: IdSink): void {
    if (!this.rawAdded) {
      this.piece(text, 0, text.length, splitSpecial, sink);
      return;
    }
    const segs = this.rawAdded.split(text, 0, text.length, splitSpecial);
    for (let k = 0; k < segs.length; k += 3) {
      const id = segs[k];
      if (id < 0) this.piece(text, segs[k + 1], segs[k + 2], splitSpecial, sink);
      else {
        sink.reserve(1);
        if (sink.offsets) {
          sink.offsets[sink.n * 2] = segs[k + 1];
          sink.offsets[sink.n * 2 + 1] = segs[k + 2];
        }
        if (sink.pos) sink.resolve(segs[k + 1], segs[k + 2], sink.n);
        sink.ids[sink.n++] = id;
      }
    }
  }

  /** Text between raw added tokens: normalize, split normalized added tokens, pre-tokenize, BPE. */
  private piece(text: string, a: number, b: number, splitSpecial: boolean, sink: IdSink): void {
    const s = a === 0 && b === text.length ? text : text.slice(a, b);
    let ns = s;
    let align: Uint32Array | null = null;
    if (this.normalizer) {
      const n = this.normalizer.normalize(s, sink.offsets !== null || sink.pos !== null);
      ns = n.text;
      align = n.align;
    }
    if (!this.normAdded) {
      this.words(ns, 0, ns.length, sink, a, align);
      return;
    }
    const segs = this.normAdded.split(ns, 0, ns.length, splitSpecial);
    for (let k = 0; k < segs.length; k += 3) {
      const id = segs[k];
      const st = segs[k + 1];
      const en = segs[k + 2];
      if (id < 0) {
        // The pre-tokenizer sees each piece as a whole string (its lookaheads stop at the piece's end).
        if (st === 0 && en === ns.length) this.words(ns, 0, en, sink, a, align);
        else this.words(ns.slice(st, en), 0, en - st, sink, a, align, st);
      } else {
        sink.reserve(1);
        if (sink.offsets) this.mapSpan(sink, st, en, a, align);
        if (sink.pos) sink.resolve(mapStart(st, a, align), mapEnd(st, en, a, align), sink.n);
        sink.ids[sink.n++] = id;
      }
    }
  }

  private mapSpan(sink: IdSink, st: number, en: number, base: number, align: Uint32Array | null): void {
    const o = sink.offsets!;
    o[sink.n * 2] = mapStart(st, base, align);
    o[sink.n * 2 + 1] = mapEnd(st, en, base, align);
  }

  /** Pre-tokenize s[from, end) (s is a whole piece) and append the BPE ids of every word. */
  private words(
    s: string,
    from: number,
    end: number,
    sink: IdSink,
    base: number,
    align: Uint32Array | null,
    shift = 0,
  ) {
    const next = this.nextWord;
    const cache = this.cache;
    const model = this.model;
    let i = from;
    while (i < end) {
      const j = next(s, i, end);
      // One token: v ≥ 0. Several: ids[off, off + len).
      let v = -1;
      let ids: Int32Array = this.arena;
      let off = 0;
      let len = 0;
      if (j - i > CACHE_MAX_WORD) {
        const w = model.encodeWord(s, i, j, model.ignoreMerges ? toByteLevel(s.slice(i, j)) : null);
        if (w >= 0) v = w;
        else {
          ids = model.ids();
          len = -w;
        }
      } else {
        let c: number | undefined = cache.get(s, i, j);
        if (c === MISS) {
          const w = model.encodeWord(s, i, j, model.ignoreMerges ? toByteLevel(s.slice(i, j)) : null);
          if (cache.size >= cache.limit) {
            cache.clear();
            this.arenaEnd = 0;
            cache.get(s, i, j);
          }
          c = w >= 0 ? w : -w < 64 ? this.keep(model.ids(), -w) : undefined;
          if (c !== undefined) cache.set(s, i, j, c);
          else {
            ids = model.ids();
            len = -w;
          }
        }
        if (c === undefined) {
          // A word too long in tokens for the cache's encoding (not reachable with CACHE_MAX_WORD 12): ids as is.
        } else if (c >= 0) v = c;
        else {
          const x = -c - 1;
          ids = this.arena;
          off = Math.floor(x / 64);
          len = x & 63;
        }
      }
      if (v >= 0) {
        if (sink.n >= sink.ids.length) sink.reserve(1);
        if (sink.offsets) this.mapSpan(sink, shift + i, shift + j, base, align);
        else if (sink.pos) {
          sink.resolve(mapStart(shift + i, base, align), mapEnd(shift + i, shift + j, base, align), sink.n);
        }
        sink.ids[sink.n++] = v;
      } else {
        sink.reserve(len);
        if (sink.offsets) {
          this.wordOffsets(s, i, j, ids.subarray(off, off + len), sink.offsets, sink.n, base, align, shift);
        } else if (sink.pos) this.resolveWord(s, i, j, ids, off, len, sink, base, align, shift);
        const out = sink.ids;
        const n = sink.n;
        for (let k = 0; k < len; k++) out[n + k] = ids[off + k];
        sink.n += len;
      }
      i = j;
    }
  }

  /** Copy a word's ids into the cache arena; returns its cache value. */
  private keep(src: Int32Array, n: number): number {
    if (this.arenaEnd + n > this.arena.length) {
      const a = new Int32Array(this.arena.length * 2);
      a.set(this.arena.subarray(0, this.arenaEnd));
      this.arena = a;
    }
    const off = this.arenaEnd;
    for (let k = 0; k < n; k++) this.arena[off + k] = src[k];
    this.arenaEnd += n;
    return -(1 + off * 64 + n);
  }

  /** encodeAt's lookup for one word of several tokens: per-token offsets only when a position falls inside it. */
  private resolveWord(
    s: string,
    i: number,
    j: number,
    all: Int32Array,
    off: number,
    len: number,
    sink: IdSink,
    base: number,
    align: Uint32Array | null,
    shift: number,
  ): void {
    const ws = mapStart(shift + i, base, align);
    const we = mapEnd(shift + i, shift + j, base, align);
    const pos = sink.pos!;
    // Positions at or before the word's start resolve to its first token; one inside it needs the tokens' offsets.
    sink.resolve(ws, we, sink.n);
    if (sink.pk >= pos.length || pos[sink.pk] >= we) return;
    const ids = all.subarray(off, off + len);
    if (this.scratch.length < ids.length * 2) this.scratch = new Uint32Array(ids.length * 4);
    const o = this.scratch;
    this.wordOffsets(s, i, j, ids, o, 0, base, align, shift);
    for (let k = 1; k < ids.length; k++) {
      sink.prevEnd = o[2 * k - 1];
      sink.resolve(o[2 * k], o[2 * k + 1], sink.n + k);
    }
  }

  /** Offsets of the tokens of one word: each token's bytes, widened to the whole characters they touch; written
   * as pairs into `out` from pair index `at`. */
  private wordOffsets(
    s: string,
    i: number,
    j: number,
    ids: Int32Array,
    out: Uint32Array,
    at: number,
    base: number,
    align: Uint32Array | null,
    shift: number,
  ): void {
    let cu = i; // UTF-16 start of the current character
    let cb = 0; // its first byte
    let acc = 0;
    const charLen = (u: number): [number, number] => {
      const c = s.charCodeAt(u);
      if (c < 0x80) return [1, 1];
      if (c < 0x800) return [2, 1];
      if (c >= 0xd800 && c < 0xdc00 && u + 1 < j) {
        const d = s.charCodeAt(u + 1);
        if (d >= 0xdc00 && d < 0xe000) return [4, 2];
      }
      return [3, 1];
    };
    for (let k = 0; k < ids.length; k++) {
      const b0 = acc;
      const b1 = acc + this.tokenBytes[ids[k]];
      acc = b1;
      let [nb, nu] = charLen(cu);
      while (cb + nb <= b0) {
        cb += nb;
        cu += nu;
        [nb, nu] = charLen(cu);
      }
      const start = cu;
      let eb = cb;
      let eu = cu;
      let [mb, mu] = [nb, nu];
      while (eb + mb < b1) {
        eb += mb;
        eu += mu;
        [mb, mu] = charLen(eu);
      }
      out[(at + k) * 2] = mapStart(shift + start, base, align);
      out[(at + k) * 2 + 1] = mapEnd(shift + start, shift + eu + mu, base, align);
    }
  }

  decode(ids: ArrayLike<number>, opts?: { skipSpecialTokens?: boolean }): string {
    const skip = opts?.skipSpecialTokens ?? false;
    let buf = new Uint8Array(Math.max(64, ids.length * 4));
    let n = 0;
    for (let k = 0; k < ids.length; k++) {
      const id = ids[k];
      if (skip && this.specialIds.has(id)) continue;
      const bytes = this.tokenBytesOf(id);
      if (!bytes) continue;
      if (n + bytes.length > buf.length) {
        const nb = new Uint8Array((n + bytes.length) * 2);
        nb.set(buf.subarray(0, n));
        buf = nb;
      }
      buf.set(bytes, n);
      n += bytes.length;
    }
    return new TextDecoder("utf-8", { ignoreBOM: true }).decode(buf.subarray(0, n));
  }

  // The byte-level decoder maps each token char back to its byte; a char outside the byte alphabet (as in added
  // tokens like `<think>`'s neighbours in other vocabularies) stands for its own UTF-8 bytes.
  private tokenBytesOf(id: number): Uint8Array | undefined {
    let b = this.decodeBytes[id];
    if (b) return b;
    const tok = this.idToTok[id];
    if (tok === undefined) return undefined;
    const out: number[] = [];
    for (const ch of tok) {
      const c = ch.codePointAt(0)!;
      const byte = c < CHAR_TO_BYTE.length ? CHAR_TO_BYTE[c] : -1;
      if (byte >= 0) out.push(byte);
      else out.push(...new TextEncoder().encode(ch));
    }
    b = Uint8Array.from(out);
    this.decodeBytes[id] = b;
    return b;
  }

  tokenToId(token: string): number | undefined {
    return this.addedIds.get(token) ?? this.vocab.get(token);
  }

  idToToken(id: number): string | undefined {
    return this.idToTok[id];
  }
}

/** Start in the caller's string of normalized unit `st` of a piece that starts at `base` there. */
function mapStart(st: number, base: number, align: Uint32Array | null): number {
  return align === null ? base + st : base + align[st * 2];
}

/** End in the caller's string of the normalized units [st, en). */
function mapEnd(st: number, en: number, base: number, align: Uint32Array | null): number {
  if (align === null) return base + en;
  return base + (en > st ? align[(en - 1) * 2 + 1] : align[st * 2]);
}

function toByteLevel(word: string): string {
  const bytes = new TextEncoder().encode(word);
  let s = "";
  for (const b of bytes) s += BYTE_TO_CHAR[b];
  return s;
}

/** Builds a tokenizer from tokenizer.json contents (text or bytes; the hash is of those bytes) or a parsed object
 * (hashed as its JSON.stringify). `where` names the source in error messages. */
export function tokenizerFromJson(json: string | Uint8Array | object, where = "tokenizer.json"): Tokenizer {
  let obj: unknown = json;
  let hash: string;
  if (typeof json === "string" || json instanceof Uint8Array) {
    hash = createHash("sha256").update(json).digest("hex");
    const text = typeof json === "string" ? json : new TextDecoder().decode(json);
    try {
      obj = JSON.parse(text);
    } catch (e) {
      throw new TunaError("TOKENIZER_INVALID", `not valid JSON: ${(e as Error).message}`, {
        where,
        cause: e,
      });
    }
  } else {
    hash = createHash("sha256").update(JSON.stringify(json)).digest("hex");
  }
  const parsed = TokenizerJsonSchema.safeParse(obj);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new TunaError(
      "TOKENIZER_INVALID",
      `field ${issue.path.join(".") || "(root)"}: ${issue.message} (${parsed.error.issues.length} problem(s))`,
      { where, hint: "expected a Hugging Face tokenizers tokenizer.json" },
    );
  }
  return new ByteLevelBpeTokenizer(parsed.data, hash, where);
}
