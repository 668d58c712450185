// Normalizers: NFC/NFD/NFKC/NFKD (and a Sequence of them), with an alignment back to the original text so
// token offsets point into the caller's string. Built from the `normalizer` block of tokenizer.json.
import { TunaError } from "../errors.ts";

export type NormForm = "NFC" | "NFD" | "NFKC" | "NFKD";

export interface Normalized {
  text: string;
  /** For each UTF-16 unit of `text`, the [start, end) it came from in the input; null when text === input, and
   * always null when the caller asked for no alignment. */
  align: Uint32Array | null;
}

export interface Normalizer {
  /** The normalized text (the input itself when it is already normalized: cheap check first), and with `aligned`
   * (the default) its alignment to the input. Without offsets nothing reads the alignment, and building it was
   * three quarters of what `encode` allocated on the bench corpus (47 of 63 MB a pass). */
  normalize(s: string, aligned?: boolean): Normalized;
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
  // Below U+0300 NFC changes nothing; NFD decomposes e.g. U+00C0 and NFKC maps e.g. U+00A0, U+00B2.
  const asciiSafe = form === "NFC";
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
  /** Code points below this are all stable, so the quick check skips them unlooked: U+0300 for NFC, but U+00A0
   * (no-break space → space) for NFKC/NFKD and U+00C0 (À → A + U+0300) for NFD. */
  private readonly firstUnstable: number;
  constructor(private readonly form: NormForm) {
    this.stable = makeStability(form);
    let cp = 0;
    while (this.stable(cp)) cp++;
    this.firstUnstable = cp;
  }

  normalize(s: string, aligned = true): Normalized {
    const n = s.length;
    let i = 0;
    for (; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c < this.firstUnstable) continue;
      const cp = s.codePointAt(i)!;
      if (!this.stable(cp)) break;
      if (cp > 0xffff) i++;
    }
    if (i === n) return { text: s, align: null };
    const text = s.normalize(this.form);
    if (text === s || !aligned) return { text, align: null };
    return { text, align: this.alignment(s, text) };
  }

  // Alignment as Hugging Face computes it (the unicode-normalization-alignments crate): every character decomposes
  // into its first char (change 0) and inserted ones (+1); canonical reordering moves chars with their changes;
  // composition gives the composite the sum of its parts' changes minus the parts absorbed. Then, in output order,
  // a char with change <= 0 takes the span of the next input char and skips -change more; an inserted one takes
  // the previous span. Work goes segment by segment (a segment starts at each stable code point).
  private alignment(s: string, whole: string): Uint32Array {
    const align = new Uint32Array(whole.length * 2);
    let out = 0;
    let segStart = 0;
    const flush = (segEnd: number): boolean => {
      if (segEnd === segStart) return true;
      const seg = s.slice(segStart, segEnd);
      const norm = seg.normalize(this.form);
      if (whole.slice(out, out + norm.length) !== norm) return false;
      const spans =
        norm === seg ? identitySpans(s, segStart, segEnd) : this.segmentSpans(s, segStart, segEnd, norm);
      if (!spans) return false;
      align.set(spans, out * 2);
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

  private segmentSpans(s: string, a: number, b: number, norm: string): Uint32Array | null {
    const compat = this.form === "NFKC" || this.form === "NFKD";
    const decompForm = compat ? "NFKD" : "NFD";
    // Decompose each input char, remembering changes.
    const spans: number[] = [];
    const dChars: string[] = [];
    const dChange: number[] = [];
    for (let i = a; i < b; ) {
      const cp = s.codePointAt(i)!;
      const w = cp > 0xffff ? 2 : 1;
      spans.push(i, i + w);
      let first = true;
      for (const d of String.fromCodePoint(cp).normalize(decompForm)) {
        dChars.push(d);
        dChange.push(first ? 0 : 1);
        first = false;
      }
      i += w;
    }
    // Canonical order: the k-th occurrence of a char in the reordered text is its k-th occurrence before.
    const queues = new Map<string, number[]>();
    dChars.forEach((d, k) => {
      const q = queues.get(d) ?? [];
      queues.set(d, q);
      q.push(k);
    });
    const order: number[] = [];
    for (const d of s.slice(a, b).normalize(decompForm)) {
      const k = queues.get(d)?.shift();
      if (k === undefined) return null;
      order.push(k);
    }
    const chars = order.map((k) => dChars[k]);
    const changes = order.map((k) => dChange[k]);
    let outChars: string[];
    let outChanges: number[];
    if (this.form === "NFD" || this.form === "NFKD") {
      outChars = chars;
      outChanges = changes;
    } else {
      outChars = [];
      outChanges = [];
      const used = new Uint8Array(chars.length);
      let q = 0;
      for (const o of norm) {
        while (q < chars.length && used[q]) q++;
        if (q >= chars.length) return null;
        used[q] = 1;
        if (o === chars[q]) {
          outChars.push(o);
          outChanges.push(changes[q]);
          continue;
        }
        const parts = [...o.normalize("NFD")];
        if (parts[0] !== chars[q]) return null;
        let change = changes[q];
        for (let p = 1; p < parts.length; p++) {
          let k = q + 1;
          while (k < chars.length && (used[k] || chars[k] !== parts[p])) k++;
          if (k >= chars.length) return null;
          used[k] = 1;
          change += changes[k] - 1;
        }
        outChars.push(o);
        outChanges.push(change);
      }
    }
    const res = new Uint32Array(norm.length * 2);
    let u = 0;
    let p = 0; // next input char
    let prevSt = a;
    let prevEn = a;
    for (let k = 0; k < outChars.length; k++) {
      const ch = outChanges[k];
      let st = prevSt;
      let en = prevEn;
      if (ch <= 0) {
        if (p >= spans.length / 2) return null;
        st = spans[p * 2];
        en = spans[p * 2 + 1];
        p += 1 - ch;
      }
      for (let r = 0; r < outChars[k].length; r++) {
        res[u * 2] = st;
        res[u * 2 + 1] = en;
        u++;
      }
      prevSt = st;
      prevEn = en;
    }
    return u === norm.length ? res : null;
  }
}

/** Spans of an unchanged stretch: each unit maps to its own character (a surrogate pair to the pair). */
function identitySpans(s: string, a: number, b: number): Uint32Array {
  const res = new Uint32Array((b - a) * 2);
  for (let i = a; i < b; i++) {
    const c = s.charCodeAt(i);
    let st = i;
    let en = i + 1;
    if (c >= 0xd800 && c < 0xdc00 && i + 1 < b) en = i + 2;
    else if (c >= 0xdc00 && c < 0xe000 && i > a) st = i - 1;
    res[(i - a) * 2] = st;
    res[(i - a) * 2 + 1] = en;
  }
  return res;
}

function coarse(n: number, len: number): Uint32Array {
  const a = new Uint32Array(n * 2);
  for (let k = 0; k < n; k++) a[k * 2 + 1] = len;
  return a;
}

class SequenceNormalizer implements Normalizer {
  constructor(private readonly steps: Normalizer[]) {}
  normalize(s: string, aligned = true): Normalized {
    let cur: Normalized = { text: s, align: null };
    for (const step of this.steps) {
      const next = step.normalize(cur.text, aligned);
      if (!aligned) {
        cur = next;
        continue;
      }
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
      throw new TunaError(
        "TOKENIZER_UNSUPPORTED",
        `unsupported normalizer type ${JSON.stringify(cfg.type)}`,
        {
          where,
          hint: "supported normalizer types: NFC, NFD, NFKC, NFKD, Sequence",
        },
      );
  }
}
