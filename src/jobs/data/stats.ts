// `tuna data stats`: what a run config's data turns into, before training — the same path as `tuna train`
// (prepareConversations → buildSamples → tokenize + mask), counted instead of written: records per source and
// format, messages per role, samples per thinking mode, trained-token share, the sample-length histogram, pack
// efficiency at pack.max_length, and every reason something was skipped or dropped, with examples.
import type { RunConfig } from "../../config/schema.ts";
import type { Conversation } from "../../data/conversation.ts";
import { detectFormat } from "../../data/formats.ts";
import { prepareConversations, sourceName } from "../../data/prepare.ts";
import { expandPaths, readAll } from "../../data/readers.ts";
import { type DataReportJSON, formatIssue } from "../../data/report.ts";
import { packFirstFitDecreasing } from "../../pack/pack.ts";
import { tokenizeConversations } from "./parallel.ts";
import { newRejections, type Rejections, type SampleContext, tokenCounter } from "./samples.ts";

export interface SourceStats {
  name: string;
  files: number;
  /** Records read from the source's files, by format (the source's `format`, else detected per record). */
  formats: Record<string, number>;
  kept: number;
  validation: number;
  /** Conversations the mix took for training. */
  taken: number;
  samples: number;
  tokens: number;
  trained_tokens: number;
}

export interface DataStats {
  max_length: number;
  sources: SourceStats[];
  /** Records read, by format, over all sources. */
  formats: Record<string, number>;
  /** Messages by role over the conversations that reach training (train + validation). */
  roles: Record<string, number>;
  tool_calls: number;
  conversations: { train: number; validation: number };
  /** Samples (train + validation) per thinking mode. */
  thinking: { on: number; off: number };
  samples: number;
  tokens: number;
  /** Tokens with loss weight 1 (the first token of a sample never counts: nothing predicts it). */
  trained_tokens: number;
  trained_share: number;
  /** Sample lengths in tokens (train + validation): bucket upper bounds (inclusive) → counts; sums to `samples`. */
  length_histogram: { upper: number; count: number }[];
  length: { min: number; mean: number; median: number; p95: number; max: number };
  /** The training split packed at pack.max_length with pack.over_length, as `tuna train` would. */
  pack: {
    over_length: "drop" | "truncate";
    packs: number;
    efficiency: number;
    padding_tokens: number;
    too_long: number;
    too_long_examples: string[];
    no_trained_tokens: number;
  };
  /** Records skipped while reading and checking, with examples; and later-stage counts (dedup, filters, mix). */
  report: DataReportJSON;
  /** Conversations the template could not render or mask exactly. */
  rejected: Rejections;
}

/** Power-of-two buckets from 64 up to max_length, then one for longer than max_length. */
export function lengthBuckets(maxLength: number): number[] {
  const b: number[] = [];
  for (let x = 64; x < maxLength; x *= 2) b.push(x);
  b.push(maxLength, Number.POSITIVE_INFINITY);
  return b;
}

const fileOf = (source: string) => source.replace(/(:\d+|#\d+)$/, "");

export async function dataStats(
  config: RunConfig,
  ctx: SampleContext,
  o: { workers?: number } = {},
): Promise<DataStats> {
  const strict = config.data.validation.strict;
  const prepared = await prepareConversations(config.data, { countTokens: tokenCounter(ctx) });
  const rep = prepared.report.toJSON();
  const maxLength = config.pack.max_length;

  // Which source each file belongs to (a file listed by two sources counts for the first).
  const names = config.data.sources.map(sourceName);
  const sourceOfFile = new Map<string, number>();
  const sources: SourceStats[] = [];
  const formats: Record<string, number> = {};
  for (const [i, src] of config.data.sources.entries()) {
    const paths = Array.isArray(src.path) ? src.path : [src.path];
    const files = await expandPaths(paths);
    for (const f of files) if (!sourceOfFile.has(f)) sourceOfFile.set(f, i);
    const f: Record<string, number> = {};
    for await (const item of readAll(paths, {
      field: src.field,
      maxRecordBytes: config.data.validation.maxRecordBytes,
    })) {
      if (item.kind !== "record") continue;
      const fmt = src.format ?? (src.columns ? "columns" : (detectFormat(item.record) ?? "unknown"));
      f[fmt] = (f[fmt] ?? 0) + 1;
      formats[fmt] = (formats[fmt] ?? 0) + 1;
    }
    sources.push({
      name: names[i],
      files: files.length,
      formats: f,
      kept: rep.stages.sources?.[`${names[i]}.kept`] ?? 0,
      validation: rep.stages.split?.[`${names[i]}.validation`] ?? 0,
      taken: rep.stages.mix?.[`${names[i]}.taken`] ?? 0,
      samples: 0,
      tokens: 0,
      trained_tokens: 0,
    });
  }

  const roles: Record<string, number> = {};
  let toolCalls = 0;
  const count = (convs: Conversation[]) => {
    for (const c of convs) {
      for (const m of c.messages) {
        roles[m.role] = (roles[m.role] ?? 0) + 1;
        toolCalls += m.tool_calls?.length ?? 0;
      }
    }
  };
  count(prepared.train);
  count(prepared.validation);

  const rejected = newRejections();
  const lengths: number[] = [];
  const trainLengths: number[] = [];
  const thinking = { on: 0, off: 0 };
  let tokens = 0;
  let trained = 0;
  let tooLong = 0;
  const tooLongExamples: string[] = [];
  let noTrained = 0;
  for (const [split, convs] of [
    ["train", prepared.train],
    ["validation", prepared.validation],
  ] as const) {
    for await (const samples of tokenizeConversations(convs, ctx, {
      strict,
      rejections: rejected,
      workers: o.workers,
    })) {
      for (const s of samples) {
        const n = s.ids.length;
        let t = 0;
        for (let k = 1; k < n; k++) t += s.lossWeight[k];
        lengths.push(n);
        tokens += n;
        trained += t;
        if (s.thinking) thinking.on++;
        else thinking.off++;
        const si = sources[sourceOfFile.get(fileOf(s.source)) ?? -1];
        if (si) {
          si.samples++;
          si.tokens += n;
          si.trained_tokens += t;
        }
        if (split !== "train") continue;
        // As SplitWriter does: over-long samples dropped or cut; samples with no trained token dropped.
        let len = n;
        let tt = t;
        if (n > maxLength) {
          tooLong++;
          if (tooLongExamples.length < 5) tooLongExamples.push(`${s.source} (${n} tokens)`);
          if (config.pack.over_length === "drop") continue;
          len = maxLength;
          tt = 0;
          for (let k = 1; k < maxLength; k++) tt += s.lossWeight[k];
        }
        if (tt === 0) {
          noTrained++;
          continue;
        }
        trainLengths.push(len);
      }
    }
  }

  const buckets = lengthBuckets(maxLength);
  const hist = buckets.map((upper) => ({ upper, count: 0 }));
  for (const l of lengths) hist[buckets.findIndex((b) => l <= b)].count++;
  const sorted = Float64Array.from(lengths).sort();
  const q = (p: number) =>
    sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : 0;
  const packed = packFirstFitDecreasing(trainLengths, maxLength);

  return {
    max_length: maxLength,
    sources,
    formats,
    roles,
    tool_calls: toolCalls,
    conversations: { train: prepared.train.length, validation: prepared.validation.length },
    thinking,
    samples: lengths.length,
    tokens,
    trained_tokens: trained,
    trained_share: tokens ? trained / tokens : 0,
    length_histogram: hist,
    length: {
      min: sorted[0] ?? 0,
      mean: lengths.length ? tokens / lengths.length : 0,
      median: q(0.5),
      p95: q(0.95),
      max: sorted.at(-1) ?? 0,
    },
    pack: {
      over_length: config.pack.over_length,
      packs: packed.packs.length,
      efficiency: packed.packs.length ? packed.usedTokens / (packed.packs.length * maxLength) : 0,
      padding_tokens: packed.paddingTokens,
      too_long: tooLong,
      too_long_examples: tooLongExamples,
      no_trained_tokens: noTrained,
    },
    report: rep,
    rejected,
  };
}

// ---- terminal rendering ----

const EIGHTHS = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];

/** A horizontal bar of `value / max` × `width` cells in unicode block eighths. */
export function bar(value: number, max: number, width = 40): string {
  if (max <= 0 || value <= 0) return "";
  const eighths = Math.max(1, Math.round((value / max) * width * 8));
  return "█".repeat(Math.floor(eighths / 8)) + EIGHTHS[eighths % 8];
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
const int = (x: number) => x.toLocaleString("en-US");
const table = (rows: Record<string, number>) =>
  Object.entries(rows)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${int(v)}`)
    .join(", ");

export function formatStats(s: DataStats): string {
  const L: string[] = [];
  const r = s.report;
  L.push(
    `records: ${int(r.total)} read, ${int(r.valid)} valid, ${int(r.skipped)} skipped → conversations: ${int(s.conversations.train)} train, ${int(s.conversations.validation)} validation`,
  );
  L.push("", "sources:");
  const w = Math.max(6, ...s.sources.map((x) => x.name.length));
  for (const x of s.sources) {
    L.push(
      `  ${x.name.padEnd(w)}  ${int(x.kept)} kept (${table(x.formats) || "no records"}), ${int(x.validation)} validation, ${int(x.taken)} in the mix → ${int(x.samples)} samples, ${int(x.tokens)} tokens, ${pct(x.tokens ? x.trained_tokens / x.tokens : 0)} trained`,
    );
  }
  L.push(`formats: ${table(s.formats) || "none"}`);
  L.push(`messages by role: ${table(s.roles)}${s.tool_calls ? `; tool calls ${int(s.tool_calls)}` : ""}`);
  L.push(`samples by thinking mode: on ${int(s.thinking.on)}, off ${int(s.thinking.off)}`);
  L.push(
    `samples: ${int(s.samples)}, ${int(s.tokens)} tokens, ${int(s.trained_tokens)} trained (${pct(s.trained_share)})`,
  );
  const l = s.length;
  L.push(
    "",
    `sample length (tokens): min ${int(l.min)}, median ${int(l.median)}, mean ${l.mean.toFixed(0)}, p95 ${int(l.p95)}, max ${int(l.max)}`,
  );
  const maxCount = Math.max(0, ...s.length_histogram.map((h) => h.count));
  let lo = 1;
  for (const h of s.length_histogram) {
    const label =
      h.upper === Number.POSITIVE_INFINITY ? `> ${int(s.max_length)}` : `${int(lo)}–${int(h.upper)}`;
    L.push(`  ${label.padStart(13)} │${bar(h.count, maxCount).padEnd(41)} ${int(h.count)}`);
    lo = h.upper + 1;
  }
  const p = s.pack;
  L.push(
    "",
    `packing at max_length ${int(s.max_length)}: ${int(p.packs)} packs, ${pct(p.efficiency)} full (${int(p.padding_tokens)} padding tokens)`,
  );
  if (p.too_long) {
    L.push(
      `  ${int(p.too_long)} train samples longer than ${int(s.max_length)} ${p.over_length === "drop" ? "dropped" : "truncated"} (pack.over_length: ${p.over_length}), e.g. ${p.too_long_examples.join(", ")}`,
    );
  }
  if (p.no_trained_tokens)
    L.push(`  ${int(p.no_trained_tokens)} samples dropped: no trained token left after truncation`);

  const reasons = Object.entries(r.skippedByReason).sort((a, b) => b[1].count - a[1].count);
  const rej = Object.entries(s.rejected.counts).sort((a, b) => b[1] - a[1]);
  const stages = Object.entries(r.stages).filter(([k]) => !["sources", "split", "mix"].includes(k));
  if (reasons.length || rej.length || stages.length) L.push("", "skipped and dropped:");
  for (const [reason, rc] of reasons) {
    L.push(`  [${reason}] ${int(rc.count)} records skipped while reading`);
    for (const ex of rc.examples) L.push(`      ${formatIssue(ex)}`);
  }
  for (const [stage, counts] of stages) L.push(`  ${stage}: ${table(counts)}`);
  for (const [code, n] of rej) {
    L.push(`  [${code}] ${int(n)} conversations the template could not render or mask`);
    for (const ex of s.rejected.examples.filter((e) => e.code === code)) {
      L.push(`      ${ex.source}: ${ex.message.split("\n")[0]}`);
    }
  }
  return L.join("\n");
}
