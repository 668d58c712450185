// Data → token shards for one run: prepareConversationPlan (src/data) → buildSamples with the model's own
// template (src/template) → tokenize + mask → SplitWriter (src/pack) → manifest.json + data-report.json.
//
// Memory does not grow with the data: conversations are tokenized as they are kept (on worker threads) into a
// spill file beside the shards (src/jobs/data/stream.ts), the split and the mix are computed over ordinals, and
// the shard writer reads each conversation's samples back in the mix's order. `inMemory` runs the plain path
// instead (every conversation held, tokenized in this thread after the mix): the reference the streaming path is
// tested against (test/prepare-stream.test.ts).
//
// A conversation the template cannot render or mask exactly is skipped and counted by reason with its
// `file:line` (or fails the run with --strict); nothing is dropped silently.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { RunConfig } from "../../config/schema.ts";
import { JsonlWriter } from "../../data/jsonl-writer.ts";
import { prepareConversationPlan, prepareConversations } from "../../data/prepare.ts";
import type { DataReport } from "../../data/report.ts";
import { TunaError } from "../../errors.ts";
import { type Manifest, SplitWriter, writeManifest } from "../../pack/shards.ts";
import type { LossPolicy } from "../../template/index.ts";
import { tokenizerFromJson } from "../../tokenizer/index.ts";
import type { Tokenizer } from "../../tokenizer/types.ts";
import { collectGarbage } from "../data/gc.ts";
import { defaultWorkers, tokenizeConversations } from "../data/parallel.ts";
import {
  loadSampleContext,
  lossPolicy,
  newRejections,
  type SampleContext,
  tokenCounter,
} from "../data/samples.ts";
import { AheadTokenizer } from "../data/stream.ts";

export interface PrepareArgs {
  config: RunConfig;
  modelDir: string;
  dataDir: string;
  strict?: boolean;
  say?: (s: string) => void;
  /** Worker threads for render + tokenize + mask; default: auto (src/jobs/data/parallel.ts); 0 = this thread. */
  workers?: number;
  /** Hold every conversation and tokenize after the mix, in this thread (the reference path, for tests). */
  inMemory?: boolean;
}

export async function prepareShards(args: PrepareArgs): Promise<Manifest> {
  const { config, modelDir, dataDir } = args;
  const say = args.say ?? (() => {});
  mkdirSync(dataDir, { recursive: true });
  const strict = args.strict ?? config.data.validation.strict;
  const workers = args.workers ?? defaultWorkers(Number.POSITIVE_INFINITY);
  const f = config.data.clean.filters;
  const countsTokens =
    config.data.mix.by === "tokens" || f.minTokens !== undefined || f.maxTokens !== undefined;
  const { ctx, tokenizerHash } = await mainThreadContext(
    modelDir,
    lossPolicy(config),
    workers === 0 || args.inMemory === true || countsTokens,
  );
  const { template } = ctx;
  collectGarbage();
  const t0 = Date.now();
  const dataConfig = { ...config.data, validation: { ...config.data.validation, strict } };
  const countTokens = tokenCounter(ctx);
  const rejections = newRejections();
  const splits: Manifest["splits"] = {};
  const writer = (split: string) =>
    new SplitWriter({
      dir: dataDir,
      split,
      maxLength: config.pack.max_length,
      overLength: config.pack.over_length,
    });

  // Preference pairs and plain text are not conversations: written beside the shards as they are read (never held),
  // listed in the manifest, for the training methods that use them (DPO-style preference tuning, continued
  // pre-training).
  const recordFiles = {
    preference: new JsonlWriter(join(dataDir, "preference.jsonl")),
    text: new JsonlWriter(join(dataDir, "text.jsonl")),
  };
  let report: DataReport;
  try {
    report = await prepare();
  } catch (e) {
    recordFiles.preference.abort();
    recordFiles.text.abort();
    throw e;
  }
  return finishShards(report);

  async function prepare(): Promise<DataReport> {
    if (args.inMemory) {
      const p = await prepareConversations(dataConfig, { countTokens });
      for (const r of p.preference) recordFiles.preference.write(r);
      for (const r of p.text) recordFiles.text.write(r);
      say(p.report.format());
      for (const [split, convs] of [
        ["train", p.train],
        ["validation", p.validation],
      ] as const) {
        if (convs.length === 0) continue;
        const w = writer(split);
        for await (const samples of tokenizeConversations(convs, ctx, { strict, rejections, workers: 0 })) {
          for (const s of samples) w.add(s);
        }
        splits[split] = w.finish();
      }
      return p.report;
    }
    // Render + tokenize + mask while the main thread reads (on worker threads unless workers is 0).
    const ahead = new AheadTokenizer(ctx, { workers, spillPath: join(dataDir, ".tokens.spill") });
    try {
      const plan = await prepareConversationPlan(dataConfig, {
        countTokens,
        onKept: ahead.push,
        onRecord: (r) => recordFiles[r.kind].write(r.value),
        spillDir: dataDir,
      });
      await ahead.finish();
      say(plan.report.format());
      for (const [split, ordinals] of [
        ["train", plan.train],
        ["validation", plan.validation],
      ] as const) {
        if (ordinals.length === 0) continue;
        const w = writer(split);
        for (const i of ordinals) for (const s of ahead.samplesOf(i, strict, rejections)) w.add(s);
        splits[split] = w.finish();
      }
      return plan.report;
    } finally {
      await ahead.close();
    }
  }

  function finishShards(report: DataReport): Manifest {
    const records: NonNullable<Manifest["records"]> = {};
    for (const kind of ["preference", "text"] as const) {
      const count = recordFiles[kind].finish();
      if (count) records[kind] = { count, file: `${kind}.jsonl` };
    }
    if (!splits.train || splits.train.packs === 0) {
      const other = Object.entries(records).map(([k, r]) => `${r.count} ${k} records`);
      throw new TunaError("NO_TRAINING_DATA", "no training sample survived preparation", {
        hint: other.length
          ? `the data holds ${other.join(" and ")}, which supervised fine-tuning does not train on (no preference or pre-training method yet); conversations are needed`
          : `see ${join(dataDir, "data-report.json")} for what was skipped and why`,
      });
    }
    writeFileSync(
      join(dataDir, "data-report.json"),
      `${JSON.stringify({ data: report.toJSON(), rejected: rejections }, null, 2)}\n`,
    );
    const manifest = writeManifest(dataDir, {
      tokenizer_hash: tokenizerHash,
      template_hash: template.hash,
      max_length: config.pack.max_length,
      splits,
      rejected: rejections.counts,
      ...(Object.keys(records).length ? { records } : {}),
      config: { data: config.data, template: config.template, pack: config.pack },
    });
    const tr = splits.train;
    say(
      `shards: ${tr.samples} train samples in ${tr.packs} packs of ≤${config.pack.max_length} tokens (${(100 * tr.pack_efficiency).toFixed(1)}% full), ${tr.trained_tokens} of ${tr.tokens} tokens trained${splits.validation ? `; ${splits.validation.samples} validation samples` : ""}; ${((Date.now() - t0) / 1000).toFixed(1)}s`,
    );
    const dropped = tr.dropped_too_long + (splits.validation?.dropped_too_long ?? 0);
    if (dropped)
      say(
        `  ${dropped} samples longer than pack.max_length ${config.pack.max_length} dropped (pack.over_length: truncate keeps them cut)`,
      );
    for (const [code, n] of Object.entries(rejections.counts)) {
      const ex = rejections.examples.find((e) => e.code === code);
      say(`  ${n} conversations skipped [${code}], e.g. ${ex?.source}: ${ex?.message.split("\n")[0]}`);
    }
    return manifest;
  }
}

/**
 * This thread's sample context. Loading it checks tokenizer.json up front; when sample workers will do the
 * tokenizing (and no token filter or mixing by tokens needs a count here), the parsed tokenizer is then let go and
 * built again only if this thread tokenizes after all (fewer than 2,000 conversations: stream.ts keeps them here).
 * A parsed Qwen3 tokenizer holds ~60 MB for the whole preparation, an eighth of the 2 GB run's peak RSS. (A separate
 * function, so that nothing in prepareShards' long-lived frame refers to the first tokenizer.)
 */
async function mainThreadContext(
  modelDir: string,
  policy: LossPolicy,
  keep: boolean,
): Promise<{ ctx: SampleContext; tokenizerHash: string }> {
  const loaded = await loadSampleContext(modelDir, policy);
  const tokenizerHash = loaded.tokenizer.hash;
  if (keep) return { ctx: loaded, tokenizerHash };
  let tokenizer: Tokenizer | null = null;
  const ctx: SampleContext = {
    modelDir,
    template: loaded.template,
    policy,
    get tokenizer(): Tokenizer {
      const path = join(modelDir, "tokenizer.json");
      tokenizer ??= tokenizerFromJson(readFileSync(path), path);
      return tokenizer;
    },
  };
  return { ctx, tokenizerHash };
}
