// Character classes the pre-tokenizer regexes of the GPT/Qwen/Llama family test: \p{L}, \p{N} and Rust's \s
// (Unicode White_Space, which, unlike JavaScript's \s, excludes U+FEFF). A table covers the BMP; astral code
// points are classified on first sight and remembered.

export const OTHER = 0;
export const LETTER = 1;
export const NUMBER = 2;
/** White_Space other than \r and \n. */
export const SPACE = 3;
/** \r or \n. */
export const NEWLINE = 4;

const L_RE = /\p{L}/u;
const N_RE = /\p{N}/u;
const WS_RE = /\p{White_Space}/u;

function classify(ch: string): number {
  if (L_RE.test(ch)) return LETTER;
  if (N_RE.test(ch)) return NUMBER;
  if (WS_RE.test(ch)) return ch === "\r" || ch === "\n" ? NEWLINE : SPACE;
  return OTHER;
}

/** Class of every BMP code unit (surrogates are OTHER; pairs are classified as a whole by `classOfAstral`). */
export const BMP_CLASS: Uint8Array = (() => {
  const t = new Uint8Array(0x10000);
  // One regex pass per class over a string of all BMP characters is much faster than 65536 `test` calls.
  let all = "";
  const parts: string[] = [];
  for (let c = 0; c < 0x10000; c += 0x1000) {
    const chunk: number[] = [];
    for (let d = c; d < c + 0x1000; d++) chunk.push(d >= 0xd800 && d <= 0xdfff ? 0x20 : d);
    parts.push(String.fromCharCode(...chunk));
  }
  all = parts.join("");
  const mark = (re: RegExp, cls: number) => {
    for (const m of all.matchAll(re)) {
      const s = m.index;
      for (let i = 0; i < m[0].length; i++) t[s + i] = cls;
    }
  };
  mark(/\p{L}+/gu, LETTER);
  mark(/\p{N}+/gu, NUMBER);
  mark(/\p{White_Space}+/gu, SPACE);
  for (let d = 0xd800; d <= 0xdfff; d++) t[d] = OTHER;
  t[0x0a] = NEWLINE;
  t[0x0d] = NEWLINE;
  return t;
})();

const astral = new Map<number, number>();

/** Class of a code point >= 0x10000. */
export function classOfAstral(cp: number): number {
  let c = astral.get(cp);
  if (c === undefined) {
    c = classify(String.fromCodePoint(cp));
    astral.set(cp, c);
  }
  return c;
}

/** Class of any code point. */
export function classOf(cp: number): number {
  return cp < 0x10000 ? BMP_CLASS[cp] : classOfAstral(cp);
}
