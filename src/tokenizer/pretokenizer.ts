// Pre-tokenizers: split normalized text into words that BPE encodes independently. Built from the
// `pre_tokenizer` block of tokenizer.json. The regexes of the Qwen2/Qwen3, Llama 3 and GPT-2 families run on a
// hand-written scanner (the same splits as the regex, checked against it on a large corpus in
// test/tokenizer.test.ts) because a Unicode-property regex in V8 is several times slower; any other `Split`
// pattern runs as a translated JavaScript RegExp.
import { TunaError } from "../errors.ts";
import { BMP_CLASS, classOfAstral, LETTER, NEWLINE, NUMBER, OTHER, SPACE } from "./unicode.ts";

/** Returns the end (exclusive) of the pre-token that starts at `i` (< end) in `s`. */
export type NextWord = (s: string, i: number, end: number) => number;

export const QWEN2_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
export const LLAMA3_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/** What `ByteLevel` with `use_regex: true` splits with (openai/gpt-2 encoder.py). */
export const GPT2_PATTERN =
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// Class and width (1 or 2 UTF-16 units) of the code point at i; a lone surrogate is OTHER.
function clsAt(s: string, i: number, end: number): number {
  const c = s.charCodeAt(i);
  if (c >= 0xd800 && c < 0xdc00 && i + 1 < end) {
    const d = s.charCodeAt(i + 1);
    if (d >= 0xdc00 && d < 0xe000) return classOfAstral(0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00)) | 8;
  }
  return BMP_CLASS[c];
}

/** End of the run of `cls` code points starting at i. */
function runOf(s: string, i: number, end: number, cls: number): number {
  while (i < end) {
    const c = s.charCodeAt(i);
    if (c < 0xd800 || c >= 0xe000) {
      if (BMP_CLASS[c] !== cls) return i;
      i++;
    } else {
      const k = clsAt(s, i, end);
      if ((k & 7) !== cls) return i;
      i += k & 8 ? 2 : 1;
    }
  }
  return i;
}

function isLowerOrUpper(c: number, lower: number): boolean {
  return c === lower || c === lower - 32;
}

/** Length (2 or 3) of a case-insensitive English contraction `'s|'t|'re|'ve|'m|'ll|'d` at i (s[i] is `'`), or 0. */
function contraction(s: string, i: number, end: number, ignoreCase: boolean): number {
  if (i + 1 >= end) return 0;
  const a = s.charCodeAt(i + 1);
  const b = i + 2 < end ? s.charCodeAt(i + 2) : 0;
  if (!ignoreCase) {
    if (a === 0x73 || a === 0x74 || a === 0x6d || a === 0x64) return 2; // s t m d
    if ((a === 0x72 || a === 0x76) && b === 0x65) return 3; // re ve
    if (a === 0x6c && b === 0x6c) return 3; // ll
    return 0;
  }
  // Rust's (?i) uses Unicode simple case folding: `s` also matches U+017F LATIN SMALL LETTER LONG S.
  if (isLowerOrUpper(a, 0x73) || a === 0x17f || isLowerOrUpper(a, 0x74)) return 2;
  if ((isLowerOrUpper(a, 0x72) || isLowerOrUpper(a, 0x76)) && isLowerOrUpper(b, 0x65)) return 3;
  if (isLowerOrUpper(a, 0x6d)) return 2;
  if (isLowerOrUpper(a, 0x6c) && isLowerOrUpper(b, 0x6c)) return 3;
  if (isLowerOrUpper(a, 0x64)) return 2;
  return 0;
}

/** Whitespace handling shared by both families: `\s*[\r\n]+|\s+(?!\S)|\s+` (Qwen/Llama) or `\s+(?!\S)|\s+`. */
function whitespace(s: string, i: number, end: number, newlineRule: boolean): number {
  let j = i;
  let lastNl = -1;
  while (j < end) {
    const c = s.charCodeAt(j);
    const k = BMP_CLASS[c]; // every White_Space code point is in the BMP
    if (k === NEWLINE) lastNl = j;
    else if (k !== SPACE) break;
    j++;
  }
  if (newlineRule && lastNl >= 0) return lastNl + 1;
  if (j === end) return j;
  return j - 1 > i ? j - 1 : j;
}

/** The Qwen2 (maxDigits 1) and Llama 3 (maxDigits 3) pattern. */
function qwenScanner(maxDigits: number): NextWord {
  return (s, i, end) => {
    const c = s.charCodeAt(i);
    if (c === 0x27) {
      const n = contraction(s, i, end, true);
      if (n) return i + n;
    }
    const k = clsAt(s, i, end);
    const cls = k & 7;
    const w = k & 8 ? 2 : 1;
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (cls === LETTER) return runOf(s, i + w, end, LETTER);
    if ((cls === OTHER || cls === SPACE) && i + w < end && (clsAt(s, i + w, end) & 7) === LETTER) {
      return runOf(s, i + w, end, LETTER);
    }
    // \p{N} or \p{N}{1,3}
    if (cls === NUMBER) {
      let j = i + w;
      for (let d = 1; d < maxDigits && j < end; d++) {
        const kk = clsAt(s, j, end);
        if ((kk & 7) !== NUMBER) break;
        j += kk & 8 ? 2 : 1;
      }
      return j;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let j = -1;
    if (cls === OTHER) j = runOf(s, i + w, end, OTHER);
    else if (c === 0x20 && i + 1 < end && (clsAt(s, i + 1, end) & 7) === OTHER)
      j = runOf(s, i + 1, end, OTHER);
    if (j >= 0) return runOf(s, j, end, NEWLINE);
    return whitespace(s, i, end, true);
  };
}

/** The GPT-2 pattern (ByteLevel `use_regex: true`). */
function gpt2Scanner(): NextWord {
  return (s, i, end) => {
    const c = s.charCodeAt(i);
    if (c === 0x27) {
      const n = contraction(s, i, end, false);
      if (n) return i + n;
    }
    let start = i;
    if (c === 0x20 && i + 1 < end) {
      const nk = clsAt(s, i + 1, end) & 7;
      if (nk === LETTER || nk === NUMBER || nk === OTHER) start = i + 1;
    }
    const k = clsAt(s, start, end);
    const cls = k & 7;
    if (cls === LETTER || cls === NUMBER || cls === OTHER) return runOf(s, start + (k & 8 ? 2 : 1), end, cls);
    return whitespace(s, i, end, false);
  };
}

/** Rust regex syntax → an equivalent JavaScript RegExp (`u` flag). Throws for what cannot be translated. */
export function translateRegex(pattern: string, where: string): RegExp {
  let p = pattern.replace(
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)",
    "(?:'[sSſ]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])",
  );
  if (p.includes("(?i")) {
    throw new TunaError(
      "TOKENIZER_UNSUPPORTED",
      `pre_tokenizer Split pattern uses an inline flag group: ${pattern}`,
      {
        where,
        hint: "only the Qwen2/Qwen3, Llama 3 and GPT-2 family patterns and plain regexes are supported",
      },
    );
  }
  // Rust's \s is Unicode White_Space; JavaScript's \s also matches U+FEFF.
  p = p.replace(/\\s/g, "\\p{White_Space}").replace(/\\S/g, "\\P{White_Space}");
  try {
    return new RegExp(p, "gu");
  } catch (e) {
    throw new TunaError(
      "TOKENIZER_UNSUPPORTED",
      `pre_tokenizer Split pattern is not a valid regex here: ${pattern}`,
      {
        where,
        cause: e,
      },
    );
  }
}

/** A splitter from a RegExp with `Isolated` behaviour: matches and the gaps between them are both words. */
export function regexSplitter(re: RegExp): NextWord {
  return (s, i, end) => {
    re.lastIndex = i;
    const sub = end === s.length ? s : s.slice(0, end);
    const m = re.exec(sub);
    if (!m || m.index >= end) return end;
    if (m.index > i) return m.index;
    if (m[0].length === 0) return i + 1;
    return m.index + m[0].length;
  };
}

export function splitterFor(pattern: string, where: string): NextWord {
  if (pattern === QWEN2_PATTERN) return qwenScanner(1);
  if (pattern === LLAMA3_PATTERN) return qwenScanner(3);
  if (pattern === GPT2_PATTERN) return gpt2Scanner();
  return regexSplitter(translateRegex(pattern, where));
}

/** The plain-regex splitter of a known pattern, for testing the scanner against. */
export function referenceSplitter(pattern: string): NextWord {
  return regexSplitter(translateRegex(pattern, "test"));
}
