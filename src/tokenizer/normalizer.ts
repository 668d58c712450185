// Normalizers: NFC/NFD/NFKC/NFKD (and a Sequence of them), with an alignment back to the original text so
// token offsets point into the caller's string. Built from the `normalizer` block of tokenizer.json.
import { TunaError } from "../errors.ts";

export type NormForm = "NFC" | "NFD" | "NFKC" | "NFKD";

export interface Normalized {
  text: string;
  /** For each UTF-16 unit of `text`, the [start, end) it came from in the input; null when text === input. */
  align: Uint32Array | null;
}

export interface Normalizer {
  /** True when `normalize` would return the input unchanged (cheap check first). */
  normalize(s: string): Normalized;
}

const MARK_RE = /\p{M}/u;

/** A code point is "stable" when it is unchanged by the form, is a starter, and never composes with what precedes
 * it; text made only of stable code points is already normalized, and a stable code point starts a segment that
 * normalizes independently of the text before it. */
function makeStability(form: NormForm): (cp: number) => boolean {
  const bmp = new Int8Array(0x10000); // 0 unknown, 1 stable, 2 not
  const astral = new Map<number, boolean>();
  const compute = (cp: number): boolean => {
    const ch = String.fromCodePoint(cp);
    if (ch.normalize(form) !== ch || MARK_RE.test(ch)) return false;
    // Hangul vowel and trailing jamo compose with the syllable before them.
    if (cp >= 0x1160 && cp <= 0x11ff) return false;
    return true;
  };
  // Below U+0300 only compatibility forms change anything (NFKC maps e.g. U+00A0, U+00B2).
  const asciiSafe = form === "NFC" || form === "NFD";
  return (cp) => {
    if (cp < 0x300 && asciiSafe) return true;
    if (cp < 0x10000) {
      let v = bmp[cp];
      if (v === 0) {
        v = compute(cp) ? 1 : 2;
        bmp[cp] = v;
      }
      return v === 1;
    }
    let v = astral.get(cp);
    if (v === undefined) {
      v = compute(cp);
      astral.set(cp, v);
    }
    return v;
  };
}

class UnicodeNormalizer implements Normalizer {
  private readonly stable: (cp: number) => boolean;
  constructor(private readonly form: NormForm) {
    this.stable = makeStability(form);
  }

  normalize(s: string): Normalized {
    const n = s.length;
    let i = 0;
    for (; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c < 0x300) continue;
      const cp = s.codePointAt(i)!;
      if (!this.stable(cp)) break;
      if (cp > 0xffff) i++;
    }
    if (i === n) return { text: s, align: null };
    const text = s.normalize(this.form);
    if (text === s) return { text: s, align: null };
    return { text, align: this.alignment(s, text) };
  }

  // Normalize segment by segment (a segment starts at each stable code point) to know which input span every
  // output unit came from. If the segments do not concatenate to the whole-string result (they should), fall
  // back to mapping every output unit to the whole input.
  private alignment(s: string, whole: string): Uint32Array {
    const align = new Uint32Array(whole.length * 2);
    let out = 0;
    let segStart = 0;
    const flush = (segEnd: number): boolean => {
      if (segEnd === segStart) return true;
      const seg = s.slice(segStart, segEnd);
      const norm = seg.normalize(this.form);
      if (whole.slice(out, out + norm.length) !== norm) return false;
      if (norm === seg) {
        for (let k = 0; k < norm.length; k++) {
          // Map a surrogate pair's units to the whole pair.
          const a = segStart + k;
          const c = s.charCodeAt(a);
          let st = a;
          let en = a + 1;
          if (c >= 0xd800 && c < 0xdc00 && a + 1 < segEnd) en = a + 2;
          else if (c >= 0xdc00 && c < 0xe000 && a > segStart) st = a - 1;
          align[(out + k) * 2] = st;
          align[(out + k) * 2 + 1] = en;
        }
      } else {
        for (let k = 0; k < norm.length; k++) {
          align[(out + k) * 2] = segStart;
          align[(out + k) * 2 + 1] = segEnd;
        }
      }
      out += norm.length;
      segStart = segEnd;
      return true;
    };
    for (let i = 0; i < s.length; ) {
      const cp = s.codePointAt(i)!;
      const w = cp > 0xffff ? 2 : 1;
      if (i > segStart && this.stable(cp)) {
        if (!flush(i)) return coarse(whole.length, s.length);
      }
      i += w;
    }
    if (!flush(s.length) || out !== whole.length) return coarse(whole.length, s.length);
    return align;
  }
}

function coarse(n: number, len: number): Uint32Array {
  const a = new Uint32Array(n * 2);
  for (let k = 0; k < n; k++) a[k * 2 + 1] = len;
  return a;
}

class SequenceNormalizer implements Normalizer {
  constructor(private readonly steps: Normalizer[]) {}
  normalize(s: string): Normalized {
    let cur: Normalized = { text: s, align: null };
    for (const step of this.steps) {
      const next = step.normalize(cur.text);
      if (next.align === null) continue;
      if (cur.align === null) cur = next;
      else {
        const prev = cur.align;
        const a = new Uint32Array(next.align.length);
        for (let k = 0; k < next.text.length; k++) {
          const st = next.align[k * 2];
          const en = next.align[k * 2 + 1];
          a[k * 2] = prev[st * 2];
          a[k * 2 + 1] = en > st ? prev[(en - 1) * 2 + 1] : prev[st * 2];
        }
        cur = { text: next.text, align: a };
      }
    }
    return cur;
  }
}

// biome-ignore lint/suspicious/noExplicitAny: raw JSON, checked field by field here
export function buildNormalizer(cfg: any, where: string): Normalizer | null {
  if (cfg === null || cfg === undefined) return null;
  switch (cfg.type) {
    case "NFC":
    case "NFD":
    case "NFKC":
    case "NFKD":
      return new UnicodeNormalizer(cfg.type);
    case "Sequence": {
      const steps = (cfg.normalizers ?? []).map((c: unknown, i: number) =>
        buildNormalizer(c, `${where}.normalizers[${i}]`),
      );
      return new SequenceNormalizer(steps.filter((x: Normalizer | null): x is Normalizer => x !== null));
    }
    default:
      throw new TunaError("tokenizer.unsupported", `unsupported normalizer type ${JSON.stringify(cfg.type)}`, {
        where,
        hint: "supported normalizer types: NFC, NFD, NFKC, NFKD, Sequence",
      });
  }
}
