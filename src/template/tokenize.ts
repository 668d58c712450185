// A sample's text → token ids and per-token loss weights (docs/formats.md: weight[t] is the weight of token t as
// a prediction target; the first token of a sample is never a target).
import { TunaError } from "../errors.ts";
import type { Tokenizer } from "../tokenizer/types.ts";
import type { Sample } from "./samples.ts";

export interface TokenizedSample {
  ids: Int32Array;
  lossWeight: Float32Array;
}

/**
 * Tokenize a sample and turn its trained character spans into token weights. Each span boundary must fall
 * between two tokens; a span that starts or ends inside a token is MASK_NOT_TOKEN_ALIGNED, never rounded.
 */
export function tokenizeSample(tokenizer: Tokenizer, sample: Sample): TokenizedSample {
  return tokenizeAtBoundaries(tokenizer, sample) ?? tokenizeWithOffsets(tokenizer, sample);
}

/**
 * The fast path: the tokenizer reports, for each span boundary, the first token at or after it (encodeAt), with no
 * per-token offsets. Returns null when the tokenizer has no encodeAt, the spans are not in order, or a boundary
 * falls inside a token: the offsets path then gives the same result or the detailed error.
 */
function tokenizeAtBoundaries(tokenizer: Tokenizer, sample: Sample): TokenizedSample | null {
  if (!tokenizer.encodeAt) return null;
  const spans = sample.trainedSpans;
  const positions: number[] = new Array(spans.length * 2);
  for (let k = 0; k < spans.length; k++) {
    positions[2 * k] = spans[k][0];
    positions[2 * k + 1] = spans[k][1];
    if (spans[k][1] < spans[k][0] || (k > 0 && spans[k][0] < spans[k - 1][1])) return null;
  }
  const { ids, at } = tokenizer.encodeAt(sample.text, positions);
  const lossWeight = new Float32Array(ids.length);
  for (let k = 0; k < spans.length; k++) {
    const a = at[2 * k];
    const b = at[2 * k + 1];
    // The checks of tokenizeWithOffsets, in its order: alignment first, then an empty span, then the first token.
    if (a < 0 || b < 0 || b <= a || a === 0) return null;
    lossWeight.fill(1, a, b);
  }
  return { ids, lossWeight };
}

function tokenizeWithOffsets(tokenizer: Tokenizer, sample: Sample): TokenizedSample {
  const { ids, offsets } = tokenizer.encodeWithOffsets(sample.text);
  const n = ids.length;
  const lossWeight = new Float32Array(n);

  /** Index of the first token starting at or after character p. */
  const firstAtOrAfter = (p: number): number => {
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (offsets[2 * mid] < p) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };

  for (const [start, end] of sample.trainedSpans) {
    const a = firstAtOrAfter(start);
    const b = firstAtOrAfter(end);
    for (const [p, t, what] of [
      [start, a, "starts"],
      [end, b, "ends"],
    ] as const) {
      // p is a token boundary iff the token before t ends at or before p.
      if (t > 0 && offsets[2 * (t - 1) + 1] > p) {
        const tok = sample.text.slice(offsets[2 * (t - 1)], offsets[2 * (t - 1) + 1]);
        throw new TunaError(
          "MASK_NOT_TOKEN_ALIGNED",
          `trained span [${start}, ${end}) ${what} at character ${p}, inside token ${t - 1} (id ${ids[t - 1]}, ${JSON.stringify(tok)}); text around it: ${JSON.stringify(sample.text.slice(Math.max(0, p - 20), p + 20))}`,
          {
            where: sample.source,
            hint: "the tokenizer merges text on both sides of the mask boundary into one token, so the turn cannot be masked exactly",
          },
        );
      }
    }
    if (b <= a) {
      throw new TunaError("MASK_NOT_TOKEN_ALIGNED", `trained span [${start}, ${end}) covers no token`, {
        where: sample.source,
      });
    }
    if (a === 0) {
      throw new TunaError(
        "MASK_NOT_TOKEN_ALIGNED",
        `trained span [${start}, ${end}) starts at the first token, which has nothing to be predicted from`,
        { where: sample.source },
      );
    }
    lossWeight.fill(1, a, b);
  }
  return { ids, lossWeight };
}
