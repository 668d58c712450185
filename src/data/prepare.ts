// Sources are read and checked (streaming), then per source: PII redaction → de-duplication (across all sources,
// first seen wins) → filters → validation split; then the training parts are mixed to their ratios. Everything is
// counted in the report.
//
// prepareConversationPlan (what the training command runs) holds no conversation: each kept one goes to the
// caller's onKept with its ordinal, and the split and the mix are computed over ordinals (plus a token count each
// when mixing by tokens), so memory does not grow with the text. prepareConversations (stats, preview, tests)
// is the same plan with the conversations kept and looked up.
import { TunaError } from "../errors.ts";
import { Deduplicator, filterReason } from "./clean.ts";
import { DataConfig, type DataConfigInput, type SourceConfig } from "./config.ts";
import type { Conversation, PlainText, PreferencePair } from "./conversation.ts";
import { mixSources, splitItems } from "./mix.ts";
import { type PiiCounts, redactConversation, zeroCounts } from "./pii.ts";
import { DataReport } from "./report.ts";
import { validRecords } from "./validate.ts";

export interface PrepareOptions {
  /** Token counter (from src/tokenizer + src/template); needed for token filters and mixing by tokens. */
  countTokens?: (conv: Conversation) => number;
  /**
   * Called with each conversation kept (after PII redaction, dedup and filters, before the split and the mix), in
   * reading order, so a caller can start work on it while reading goes on (the training command tokenizes
   * ahead). A returned promise is awaited before the next record: backpressure. The same objects come back in
   * `train` and `validation`.
   */
  onKept?: (conv: Conversation) => void | Promise<void>;
}

/** A record that is not a conversation: handed to PlanOptions.onRecord as it is read. */
export type OtherRecord = { kind: "preference"; value: PreferencePair } | { kind: "text"; value: PlainText };

export interface PlanOptions {
  countTokens?: (conv: Conversation) => number;
  /**
   * Called with each preference pair and plain text, in reading order (a returned promise is awaited: backpressure).
   * The plan keeps none of them, only their counts; without onRecord they are counted and dropped.
   */
  onRecord?: (r: OtherRecord) => void | Promise<void>;
  /** Directory for the near-dedup index's files (default: the OS temporary directory). */
  spillDir?: string;
  /**
   * Called with each conversation kept (after PII redaction, dedup and filters, before the split and the mix) and
   * its ordinal (0, 1, 2, … in reading order across sources). A returned promise is awaited before the next
   * record: backpressure. The plan's `train` and `validation` are these ordinals.
   */
  onKept: (conv: Conversation, ordinal: number) => void | Promise<void>;
}

/** The split and the mix as ordinals of kept conversations (see PlanOptions.onKept). */
export interface PreparedPlan {
  train: number[];
  validation: number[];
  /** Conversations kept (ordinals run from 0 to kept - 1). */
  kept: number;
  /** Preference pairs and plain texts read (each went to onRecord). */
  records: { preference: number; text: number };
  report: DataReport;
  config: DataConfig;
}

export interface Prepared {
  train: Conversation[];
  validation: Conversation[];
  /** Preference pairs and plain texts, kept for the training methods that use them (not mixed). */
  preference: PreferencePair[];
  text: PlainText[];
  report: DataReport;
  config: DataConfig;
}

/** Parse a data config, reporting every problem at once with its path. */
export function parseDataConfig(input: unknown, where = "data"): DataConfig {
  const r = DataConfig.safeParse(input);
  if (!r.success) {
    const lines = r.error.issues.map((i) => `${[where, ...i.path.map(String)].join(".")}: ${i.message}`);
    throw new TunaError("CONFIG_INVALID", `invalid data config:\n  ${lines.join("\n  ")}`, {
      hint: "see docs/data.md for every field",
    });
  }
  return r.data;
}

export function sourceName(s: SourceConfig, i: number): string {
  return s.name ?? (Array.isArray(s.path) ? s.path.join("+") : s.path) ?? `source${i}`;
}

/** Read, check, clean, split and mix, keeping every conversation in memory (stats, preview, small data). */
export async function prepareConversations(
  input: DataConfigInput | DataConfig,
  opts: PrepareOptions = {},
): Promise<Prepared> {
  const kept: Conversation[] = [];
  const preference: PreferencePair[] = [];
  const text: PlainText[] = [];
  const plan = await prepareConversationPlan(input, {
    countTokens: opts.countTokens,
    onKept: (conv) => {
      kept.push(conv);
      return opts.onKept?.(conv);
    },
    onRecord: (r) => {
      if (r.kind === "preference") preference.push(r.value);
      else text.push(r.value);
    },
  });
  return {
    train: plan.train.map((i) => kept[i]),
    validation: plan.validation.map((i) => kept[i]),
    preference,
    text,
    report: plan.report,
    config: plan.config,
  };
}

/** Read, check, clean, split and mix without holding conversations: see PlanOptions. */
export async function prepareConversationPlan(
  input: DataConfigInput | DataConfig,
  opts: PlanOptions,
): Promise<PreparedPlan> {
  const config = parseDataConfig(input);
  const f = config.clean.filters;
  if (
    (f.minTokens !== undefined || f.maxTokens !== undefined || config.mix.by === "tokens") &&
    !opts.countTokens
  ) {
    throw new TunaError("CONFIG_INVALID", "token filters and mixing by tokens need a token counter", {
      where: "data.clean.filters / data.mix.by",
      hint: "the training command passes countTokens; in other callers drop minTokens/maxTokens or mix by samples",
    });
  }
  const report = new DataReport({
    strict: config.validation.strict,
    maxExamples: config.validation.maxExamples,
  });
  const dedup =
    config.clean.dedup.exact || config.clean.dedup.near
      ? new Deduplicator({
          exact: config.clean.dedup.exact,
          near: config.clean.dedup.near,
          threshold: config.clean.dedup.threshold,
          dir: opts.spillDir,
        })
      : null;
  const pii: PiiCounts = zeroCounts();
  const names = config.sources.map(sourceName);
  if (new Set(names).size !== names.length) {
    throw new TunaError("CONFIG_INVALID", `two sources have the same name (${names.join(", ")})`, {
      where: "data.sources",
      hint: "give each source a distinct name",
    });
  }
  const perSource: number[][] = [];
  // Mixing by tokens: each kept conversation's token count, by ordinal (counted once, here).
  const byTokens = config.mix.by === "tokens";
  const tokens: number[] = [];
  let ordinal = 0;
  const records = { preference: 0, text: 0 };

  // The near-dedup index (files + ~40 bytes a conversation) is released once reading ends, or fails.
  try {
    for (const [i, src] of config.sources.entries()) {
      const name = names[i];
      const kept: number[] = [];
      const read = validRecords(
        Array.isArray(src.path) ? src.path : [src.path],
        {
          format: src.format,
          columns: src.columns,
          thinking: src.thinking,
          field: src.field,
          maxRecordBytes: config.validation.maxRecordBytes,
        },
        report,
      );
      for await (const r of read) {
        if (r.kind === "preference" || r.kind === "text") {
          records[r.kind]++;
          const wait = opts.onRecord?.(r);
          if (wait) await wait;
          continue;
        }
        let conv = r.value;
        if (config.clean.pii.enabled) conv = redactConversation(conv, { types: config.clean.pii.types }, pii);
        if (dedup) {
          const d = dedup.check(conv);
          if (d !== "new") {
            report.drop("dedup", d);
            continue;
          }
        }
        const why = filterReason(conv, f, opts.countTokens);
        if (why) {
          report.drop("filter", why);
          continue;
        }
        if (byTokens) tokens.push((opts.countTokens as (c: Conversation) => number)(conv));
        kept.push(ordinal);
        const wait = opts.onKept(conv, ordinal++);
        if (wait) await wait;
        if (src.limit !== undefined && kept.length >= src.limit) {
          await read.return(undefined);
          break;
        }
      }
      report.count("sources", `${name}.kept`, kept.length);
      perSource.push(kept);
    }
  } finally {
    dedup?.close();
  }
  for (const [k, v] of Object.entries(pii)) if (v) report.count("pii", k, v);

  const seed = String(config.seed);
  const trainParts: { name: string; items: number[]; ratio?: number }[] = [];
  const validation: number[] = [];
  config.sources.forEach((src, i) => {
    const { train, validation: val } = splitItems(
      perSource[i],
      src.validation ?? config.split,
      `${seed}:split:${names[i]}`,
    );
    validation.push(...val);
    report.count("split", `${names[i]}.validation`, val.length);
    trainParts.push({ name: names[i], items: train, ratio: src.ratio ?? src.weight });
  });
  let train: number[] = [];
  if (trainParts.some((p) => p.items.length > 0)) {
    const mixed = mixSources(trainParts, {
      seed,
      by: config.mix.by,
      total: config.mix.total,
      upsample: config.mix.upsample,
      size: byTokens ? (i) => tokens[i] : undefined,
    });
    train = mixed.items;
    for (const [name, s] of Object.entries(mixed.perSource)) {
      report.count("mix", `${name}.taken`, s.taken);
      if (config.mix.by === "tokens") report.count("mix", `${name}.tokens`, s.units);
    }
  }
  return { train, validation, kept: ordinal, records, report, config };
}
