// Added tokens (`added_tokens` in tokenizer.json) are cut out of the text before anything else, like Hugging
// Face's AddedVocabulary: leftmost-longest, non-overlapping matches; `single_word` discards a match glued to a
// word character, `lstrip`/`rstrip` make the token swallow the whitespace beside it, and in split-special mode
// matches of special tokens are discarded (their text is then encoded as ordinary text).

export interface AddedToken {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

// Rust regex \w (Unicode): Alphabetic, marks, decimal digits, connector punctuation, joiners.
const WORD_RE = /[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\u200c\u200d]/u;
const WS_RE = /\p{White_Space}/u;

function lastCodePoint(s: string, end: number): string {
  if (end >= 2) {
    const c = s.charCodeAt(end - 1);
    if (c >= 0xdc00 && c < 0xe000) return s.slice(end - 2, end);
  }
  return s.slice(end - 1, end);
}

function firstCodePoint(s: string, at: number): string {
  return String.fromCodePoint(s.codePointAt(at)!);
}

export class AddedMatcher {
  private readonly first = new Uint8Array(0x10000);
  private readonly byFirst = new Map<number, AddedToken[]>();

  constructor(readonly tokens: AddedToken[]) {
    for (const t of tokens) {
      if (t.content.length === 0) continue;
      const c = t.content.charCodeAt(0);
      this.first[c] = 1;
      const list = this.byFirst.get(c) ?? [];
      this.byFirst.set(c, list);
      list.push(t);
    }
    // Longest first, so the first hit at a position is the longest one there.
    for (const list of this.byFirst.values()) list.sort((a, b) => b.content.length - a.content.length);
  }

  /** Splits s[from, end) into [id, start, stop] triples: id -1 is text to encode, otherwise an added token. */
  split(s: string, from: number, end: number, splitSpecial: boolean): number[] {
    const out: number[] = [];
    let startOffset = from;
    let i = from;
    const first = this.first;
    while (i < end) {
      if (!first[s.charCodeAt(i)]) {
        i++;
        continue;
      }
      let hit: AddedToken | undefined;
      for (const t of this.byFirst.get(s.charCodeAt(i))!) {
        if (i + t.content.length <= end && s.startsWith(t.content, i)) {
          hit = t;
          break;
        }
      }
      if (!hit) {
        i++;
        continue;
      }
      let start = i;
      let stop = i + hit.content.length;
      i = stop;
      if (splitSpecial && hit.special) continue;
      if (hit.single_word) {
        const startSpace = start === 0 || !WORD_RE.test(lastCodePoint(s, start));
        const stopSpace = stop === s.length || stop >= end || !WORD_RE.test(firstCodePoint(s, stop));
        if (!startSpace || !stopSpace) continue;
      }
      if (hit.lstrip) {
        let k = start;
        while (k > startOffset && WS_RE.test(s[k - 1])) k--;
        start = k;
      }
      if (hit.rstrip) {
        while (stop < end && WS_RE.test(s[stop])) stop++;
        i = stop;
      }
      if (start > startOffset) out.push(-1, startOffset, start);
      out.push(hit.id, start, stop);
      startOffset = stop;
    }
    if (end > startOffset) out.push(-1, startOffset, end);
    return out;
  }
}
