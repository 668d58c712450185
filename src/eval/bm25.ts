// BM25 retrieval over a folder of knowledge documents, for the "base + RAG" and "tuned + RAG" comparisons.
//
// Passages: each .md/.txt file (walked in sorted order) is cut at Markdown headings and blank lines; a
// paragraph longer than `maxChars` is cut at sentence ends (. ! ? 。！？；) and, failing that, hard.
// Consecutive short paragraphs under one heading are joined up to `maxChars`. Each passage remembers its
// file, heading and line.
// Tokens: Latin words and numbers (NFKC, lowercased), plus bigrams of each run of CJK characters (a single
// CJK character alone is a unigram): the standard choice for Chinese without a word segmenter.
// Scoring: Okapi BM25 with Lucene's idf, ln(1 + (N − df + 0.5)/(df + 0.5)); k1 = 1.2, b = 0.75 by default.
// Ties break on passage order, so results are deterministic.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { TunaError } from "../errors.ts";

const CJK_RUN = /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}]+/gu;

export function retrievalTokens(text: string): string[] {
  const norm = text.normalize("NFKC").toLowerCase();
  const out: string[] = [];
  const latin = norm.replace(CJK_RUN, " ");
  for (const m of latin.matchAll(/[\p{L}\p{N}]+(?:[.'][\p{L}\p{N}]+)*/gu)) out.push(m[0]);
  for (const m of norm.matchAll(CJK_RUN)) {
    const chars = [...m[0]];
    if (chars.length === 1) out.push(chars[0]);
    for (let i = 0; i + 1 < chars.length; i++) out.push(chars[i] + chars[i + 1]);
  }
  return out;
}

export interface Passage {
  /** `file#n`, n counting from 0 within the file. */
  id: string;
  /** Path relative to the folder, with "/" separators. */
  file: string;
  /** The nearest Markdown heading above the passage (empty when none). */
  heading: string;
  /** 1-based line where the passage starts. */
  line: number;
  text: string;
}

const SENTENCE_END = /(?<=[.!?。！？；])\s*/u;

function splitLong(text: string, maxChars: number): string[] {
  if (text.length <= maxChars) return [text];
  const out: string[] = [];
  let cur = "";
  for (const s of text.split(SENTENCE_END).filter((x) => x !== "")) {
    if (cur && cur.length + 1 + s.length > maxChars) {
      out.push(cur);
      cur = "";
    }
    cur = cur ? cur + (/[\p{Script=Han}。！？；]$/u.test(cur) ? "" : " ") + s : s;
  }
  if (cur) out.push(cur);
  // A sentence longer than the limit on its own is cut hard.
  return out.flatMap((p) => {
    const pieces: string[] = [];
    for (let i = 0; i < p.length; i += maxChars) pieces.push(p.slice(i, i + maxChars));
    return pieces;
  });
}

/** Passages of one document's text. */
export function splitPassages(file: string, text: string, maxChars = 800): Passage[] {
  if (!(maxChars >= 20)) throw new RangeError(`maxChars must be at least 20, got ${maxChars}`);
  const out: Passage[] = [];
  let heading = "";
  let para: string[] = [];
  let paraLine = 0;
  let pending: { text: string; line: number } | undefined;
  const push = (t: string, line: number) => {
    out.push({ id: `${file}#${out.length}`, file, heading, line, text: t });
  };
  const flushPending = () => {
    if (pending) push(pending.text, pending.line);
    pending = undefined;
  };
  const endParagraph = () => {
    if (para.length === 0) return;
    const joined = para.join("\n").trim();
    para = [];
    if (!joined) return;
    for (const piece of splitLong(joined, maxChars)) {
      if (pending && pending.text.length + 1 + piece.length <= maxChars) pending.text += `\n${piece}`;
      else {
        flushPending();
        pending = { text: piece, line: paraLine };
      }
    }
  };
  for (const [i, line] of text.split(/\r?\n/).entries()) {
    const h = /^#{1,6}\s+(.*)$/.exec(line);
    if (h) {
      endParagraph();
      flushPending();
      heading = h[1].trim();
      continue;
    }
    if (line.trim() === "") {
      endParagraph();
      continue;
    }
    if (para.length === 0) paraLine = i + 1;
    para.push(line);
  }
  endParagraph();
  flushPending();
  return out;
}

/** Every .md/.txt under `dir` (recursively, sorted), cut into passages. */
export function loadPassages(dir: string, maxChars = 800): Passage[] {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(dir);
  } catch (e) {
    throw new TunaError("EVAL_KNOWLEDGE_DIR", `knowledge folder ${dir} cannot be read`, {
      hint: "point it at a folder of .md or .txt files",
      cause: e,
    });
  }
  if (!st.isDirectory()) {
    throw new TunaError("EVAL_KNOWLEDGE_DIR", `${dir} is not a folder`, {
      hint: "point it at a folder of .md or .txt files",
    });
  }
  const files: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else if (/\.(md|txt)$/i.test(name)) files.push(p);
    }
  };
  walk(dir);
  if (files.length === 0) {
    throw new TunaError("EVAL_KNOWLEDGE_DIR", `no .md or .txt files in ${dir}`, {
      hint: "add the knowledge documents",
    });
  }
  return files.flatMap((f) =>
    splitPassages(relative(dir, f).split("\\").join("/"), readFileSync(f, "utf8"), maxChars),
  );
}

export interface Hit {
  passage: Passage;
  score: number;
}

export class Bm25Index {
  readonly passages: readonly Passage[];
  private readonly k1: number;
  private readonly b: number;
  private readonly tf: Map<string, number>[];
  private readonly lengths: number[];
  private readonly df = new Map<string, number>();
  private readonly avgLength: number;

  constructor(passages: readonly Passage[], opts: { k1?: number; b?: number } = {}) {
    this.passages = passages;
    this.k1 = opts.k1 ?? 1.2;
    this.b = opts.b ?? 0.75;
    this.tf = passages.map((p) => {
      const m = new Map<string, number>();
      for (const t of retrievalTokens(p.text)) m.set(t, (m.get(t) ?? 0) + 1);
      return m;
    });
    this.lengths = this.tf.map((m) => [...m.values()].reduce((a, b) => a + b, 0));
    for (const m of this.tf) for (const t of m.keys()) this.df.set(t, (this.df.get(t) ?? 0) + 1);
    this.avgLength = this.lengths.reduce((a, b) => a + b, 0) / (passages.length || 1);
  }

  static fromFolder(dir: string, opts: { maxChars?: number; k1?: number; b?: number } = {}): Bm25Index {
    return new Bm25Index(loadPassages(dir, opts.maxChars), opts);
  }

  idf(term: string): number {
    const n = this.passages.length;
    const df = this.df.get(term) ?? 0;
    return Math.log(1 + (n - df + 0.5) / (df + 0.5));
  }

  /** BM25 score of passage `i` for the query; a query term repeated counts once per repeat (as Lucene). */
  score(query: string, i: number): number {
    const tf = this.tf[i];
    const norm = this.k1 * (1 - this.b + (this.b * this.lengths[i]) / (this.avgLength || 1));
    let s = 0;
    for (const t of retrievalTokens(query)) {
      const f = tf.get(t);
      if (!f) continue;
      s += (this.idf(t) * f * (this.k1 + 1)) / (f + norm);
    }
    return s;
  }

  /** The k best passages with a positive score, best first; equal scores keep passage order. */
  search(query: string, k = 5): Hit[] {
    const scored: { i: number; score: number }[] = [];
    for (let i = 0; i < this.passages.length; i++) {
      const score = this.score(query, i);
      if (score > 0) scored.push({ i, score });
    }
    scored.sort((a, b) => b.score - a.score || a.i - b.i);
    return scored.slice(0, k).map(({ i, score }) => ({ passage: this.passages[i], score }));
  }
}
