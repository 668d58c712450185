// Data → token shards for one run: prepareConversations (src/data) → buildSamples with the model's own
// template (src/template) → tokenize + mask → SplitWriter (src/pack) → manifest.json + data-report.json.
//
// A conversation the template cannot render or mask exactly is skipped and counted by reason with its
// `file:line` (or fails the run with --strict); nothing is dropped silently.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { RunConfig } from "../../config/schema.ts";
import { prepareConversations } from "../../data/prepare.ts";
import { TunaError } from "../../errors.ts";
import { type Manifest, SplitWriter, writeManifest } from "../../pack/shards.ts";
import { defaultWorkers, tokenizeConversations } from "../data/parallel.ts";
import { loadSampleContext, lossPolicy, newRejections, tokenCounter } from "../data/samples.ts";
import { AheadTokenizer } from "../data/stream.ts";

export interface PrepareArgs {
  config: RunConfig;
  modelDir: string;
  dataDir: string;
  strict?: boolean;
  say?: (s: string) => void;
  /** Worker threads for render + tokenize + mask; default: auto (src/jobs/data/parallel.ts). */
  workers?: number;
}

export async function prepareShards(args: PrepareArgs): Promise<Manifest> {
  const { config, modelDir, dataDir } = args;
  const say = args.say ?? (() => {});
  mkdirSync(dataDir, { recursive: true });
  const ctx = await loadSampleContext(modelDir, lossPolicy(config));
  const { template, tokenizer } = ctx;
  const strict = args.strict ?? config.data.validation.strict;

  const t0 = Date.now();
  // Render + tokenize + mask on worker threads while the main thread reads (stream.ts), unless workers is 0.
  const workers = args.workers ?? defaultWorkers(Number.POSITIVE_INFINITY);
  const ahead =
    workers > 0
      ? new AheadTokenizer(ctx, {
          workers,
          spillPath: join(dataDir, ".tokens.spill"),
          // After reading, only mixing by tokens reads a conversation's text again (token filters run before).
          releaseText: config.data.mix.by !== "tokens",
        })
      : null;
  try {
    return await writeShards();
  } finally {
    await ahead?.close();
  }

  async function writeShards(): Promise<Manifest> {
    const prepared = await prepareConversations(
      { ...config.data, validation: { ...config.data.validation, strict } },
      { countTokens: tokenCounter(ctx), onKept: ahead?.push },
    );
    await ahead?.finish();
    say(prepared.report.format());

    const rejections = newRejections();
    const splits: Manifest["splits"] = {};
    for (const [split, convs] of [
      ["train", prepared.train],
      ["validation", prepared.validation],
    ] as const) {
      if (convs.length === 0) continue;
      const writer = new SplitWriter({
        dir: dataDir,
        split,
        maxLength: config.pack.max_length,
        overLength: config.pack.over_length,
      });
      if (ahead) {
        for (const conv of convs) for (const s of ahead.samplesOf(conv, strict, rejections)) writer.add(s);
      } else {
        for await (const samples of tokenizeConversations(convs, ctx, { strict, rejections, workers: 0 })) {
          for (const s of samples) writer.add(s);
        }
      }
      splits[split] = writer.finish();
    }
    // Preference pairs and plain text are not conversations: kept beside the shards, listed in the manifest, for
    // the training methods that use them (DPO-style preference tuning, continued pre-training).
    const records: NonNullable<Manifest["records"]> = {};
    for (const [kind, items] of [
      ["preference", prepared.preference],
      ["text", prepared.text],
    ] as const) {
      if (items.length === 0) continue;
      const file = `${kind}.jsonl`;
      writeFileSync(join(dataDir, file), items.map((r) => `${JSON.stringify(r)}\n`).join(""));
      records[kind] = { count: items.length, file };
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
      `${JSON.stringify({ data: prepared.report.toJSON(), rejected: rejections }, null, 2)}\n`,
    );
    const manifest = writeManifest(dataDir, {
      tokenizer_hash: tokenizer.hash,
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
