// Seeded, deterministic splitting and mixing. No Math.random: the same config gives the same output order.
import { TunaError } from "../errors.ts";

/** sfc32 seeded from a string through a 128-bit hash of it; `next()` is uniform in [0, 1). */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: string | number) {
    // cyrb128: four 32-bit words from the seed string.
    const str = String(seed);
    let h1 = 1779033703;
    let h2 = 3144134277;
    let h3 = 1013904242;
    let h4 = 2773480762;
    for (let i = 0; i < str.length; i++) {
      const k = str.charCodeAt(i);
      h1 = h2 ^ Math.imul(h1 ^ k, 597399067);
      h2 = h3 ^ Math.imul(h2 ^ k, 2869860233);
      h3 = h4 ^ Math.imul(h3 ^ k, 951274213);
      h4 = h1 ^ Math.imul(h4 ^ k, 2716044179);
    }
    h1 = Math.imul(h3 ^ (h1 >>> 18), 597399067);
    h2 = Math.imul(h4 ^ (h2 >>> 22), 2869860233);
    h3 = Math.imul(h1 ^ (h3 >>> 17), 951274213);
    h4 = Math.imul(h2 ^ (h4 >>> 19), 2716044179);
    this.a = (h1 ^ h2 ^ h3 ^ h4) >>> 0;
    this.b = (h2 ^ h1) >>> 0;
    this.c = (h3 ^ h1) >>> 0;
    this.d = (h4 ^ h1) >>> 0;
    for (let i = 0; i < 15; i++) this.next();
  }

  next(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return (t >>> 0) / 4294967296;
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Fisher–Yates, in place. */
  shuffle<T>(xs: T[]): T[] {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [xs[i], xs[j]] = [xs[j], xs[i]];
    }
    return xs;
  }
}

export interface SplitSpec {
  /** Fraction of the source held out, in [0, 1). */
  fraction?: number;
  /** Exact count held out (wins over fraction). */
  count?: number;
}

/** Seeded split into train and validation; validation size = count, or round(fraction × n). */
export function splitItems<T>(
  items: T[],
  spec: SplitSpec | undefined,
  seed: string,
): { train: T[]; validation: T[] } {
  const n = items.length;
  const k = spec?.count !== undefined ? Math.min(spec.count, n) : Math.round((spec?.fraction ?? 0) * n);
  if (k === 0) return { train: items.slice(), validation: [] };
  const idx = new Rng(seed).shuffle([...items.keys()]);
  const held = new Set(idx.slice(0, k));
  const train: T[] = [];
  const validation: T[] = [];
  // Keep the original order inside each part: shuffling is the mixer's job.
  items.forEach((x, i) => {
    (held.has(i) ? validation : train).push(x);
  });
  return { train, validation };
}

export interface MixSource<T> {
  name: string;
  items: T[];
  /** Share of the mix (normalised over sources); absent = proportional to the source's own size. */
  ratio?: number;
}

export interface MixOptions<T> {
  seed: string;
  by: "samples" | "tokens";
  /** Size of the mix in samples or tokens. Absent: the largest mix that needs no up-sampling. */
  total?: number;
  /** Allow repeating samples when a source is too small for its share (else it is an error). */
  upsample?: boolean;
  /** Needed for by = "tokens". */
  size?: (x: T) => number;
}

export interface MixResult<T> {
  items: T[];
  /** Per source: available, taken (samples), size units taken (samples or tokens), repeats. */
  perSource: Record<string, { available: number; taken: number; units: number; share: number }>;
}

/**
 * Mix sources to target shares, seeded. Each source is shuffled; items are taken in that order, going round
 * again (reshuffled) when up-sampling; the union is shuffled at the end.
 */
export function mixSources<T>(sources: MixSource<T>[], o: MixOptions<T>): MixResult<T> {
  if (o.by === "tokens" && !o.size) {
    throw new TunaError("DATA_MIX", "mixing by tokens needs a token counter", {
      hint: "pass countTokens to prepareConversations, or mix by samples",
    });
  }
  const unit = (x: T) => (o.by === "tokens" ? (o.size as (x: T) => number)(x) : 1);
  const sizes = sources.map((s) => s.items.reduce((acc, x) => acc + unit(x), 0));
  const anyRatio = sources.some((s) => s.ratio !== undefined);
  const raw = sources.map((s, i) => (anyRatio ? (s.ratio ?? 0) : sizes[i]));
  const sum = raw.reduce((a, b) => a + b, 0);
  if (!(sum > 0)) throw new TunaError("DATA_MIX", "the mix ratios add up to 0 (or every source is empty)");
  const shares = raw.map((r) => r / sum);
  // Largest total that needs no up-sampling.
  let total = o.total;
  if (total === undefined) {
    total = Math.min(...shares.map((sh, i) => (sh > 0 ? sizes[i] / sh : Number.POSITIVE_INFINITY)));
  }
  const result: T[] = [];
  const perSource: MixResult<T>["perSource"] = {};
  sources.forEach((s, i) => {
    const target = shares[i] * (total as number);
    if (target > sizes[i] + 1e-9 && !o.upsample) {
      throw new TunaError(
        "DATA_MIX",
        `source "${s.name}" has ${sizes[i]} ${o.by} but its share ${shares[i].toFixed(3)} of ${total} needs ${Math.ceil(target)}`,
        { hint: "lower mix.total, change the ratios, or set mix.upsample: true" },
      );
    }
    const rng = new Rng(`${o.seed}:mix:${s.name}:${i}`);
    let taken = 0;
    let units = 0;
    let order: number[] = [];
    let pos = 0;
    const wanted = o.by === "samples" ? Math.round(target) : target;
    while (s.items.length > 0 && (o.by === "samples" ? taken < wanted : units < wanted)) {
      if (pos >= order.length) {
        order = rng.shuffle([...s.items.keys()]);
        pos = 0;
      }
      const x = s.items[order[pos++]];
      const u = unit(x);
      // By tokens: stop before overshooting if that lands closer to the target.
      if (o.by === "tokens" && units + u > wanted && wanted - units < units + u - wanted) break;
      result.push(x);
      taken++;
      units += u;
    }
    perSource[s.name] = { available: s.items.length, taken, units, share: shares[i] };
  });
  new Rng(`${o.seed}:mix:final`).shuffle(result);
  return { items: result, perSource };
}
