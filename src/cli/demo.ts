// `tuna demo` (what `npm run demo` runs): the main job on the embedded default, offline, on CPU.
//   1. a tiny random-initialised Qwen3-architecture model with the real Qwen3 tokenizer and chat template
//   2. `tuna train` on examples/payment-support/ (demo.yaml)
//   3. the loss before and after, and one answer generated with the adapter
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Command } from "commander";
import { parseConfig, readYaml } from "../config/load.ts";
import { RunConfig } from "../config/schema.ts";
import { chatOnce, loadChatModel, startGenerator } from "../engine/generate.ts";
import { REPO_ROOT } from "../engine/runner.ts";
import { TunaError } from "../errors.ts";
import { train } from "../jobs/train/run.ts";
import { initModel } from "../model/init.ts";

const DEMO_CONFIG = join(REPO_ROOT, "examples/payment-support/demo.yaml");
const QUESTION = "I was charged twice for the same order yesterday. What should I do?";

export function register(program: Command): void {
  program
    .command("demo")
    .description(
      "Fine-tune a tiny random-initialised Qwen3-architecture model on the payment-support sample (CPU, offline)",
    )
    .option("--out <dir>", "where the demo model and run go", "runs")
    .option("--max-steps <n>", "stop after N optimizer steps")
    .action(async (o: { out: string; maxSteps?: string }) => {
      const t0 = Date.now();
      const say = (s: string) => process.stdout.write(`${s}\n`);
      say("Tuna demo — the whole pipeline on a tiny model, on this machine's CPU, offline.\n");
      say(
        "NOTE: the model is RANDOM-INITIALISED (no weights can be downloaded here). Its loss falls as it learns",
      );
      say(
        "      the data's tokens, but its answers are not meaningful text. The pipeline is the real one.\n",
      );

      const modelDir = join(o.out, "demo-model");
      if (!existsSync(join(modelDir, "config.json"))) {
        const r = initModel(modelDir, { preset: "tiny", seed: 0, force: true });
        say(
          `[1/3] model: ${modelDir} — tiny Qwen3 architecture, ${(r.params / 1e6).toFixed(1)}M parameters, real Qwen3 tokenizer and chat template`,
        );
      } else {
        say(`[1/3] model: ${modelDir} (made earlier)`);
      }

      const config = parseConfig(RunConfig, readYaml(DEMO_CONFIG), DEMO_CONFIG);
      config.model = modelDir;
      config.output_dir = o.out;
      if (o.maxSteps) {
        const n = Number(o.maxSteps);
        if (!Number.isInteger(n) || n <= 0)
          throw new TunaError("BAD_OPTION", `--max-steps "${o.maxSteps}" is not a positive integer`);
        config.train.max_steps = n;
      }
      say(`[2/3] fine-tuning with ${DEMO_CONFIG} (LoRA r=${config.method.r} on all linear projections)`);
      const summary = await train({ config, configPath: DEMO_CONFIG });
      if (summary.status !== "done") {
        throw new TunaError(
          summary.error?.code ?? "TRAIN_FAILED",
          `the demo run ${summary.status}: ${summary.error?.message ?? ""}`,
          {
            hint: `everything it wrote is in ${summary.run_dir}`,
          },
        );
      }
      say(
        `\nloss before: ${summary.first_loss?.toFixed(4)} (first step)   after: ${summary.final_loss?.toFixed(4)} (last step)` +
          (summary.val_loss !== null ? `   validation: ${summary.val_loss.toFixed(4)}` : ""),
      );

      say(`\n[3/3] one answer from the fine-tuned model (greedy, 48 tokens at most, thinking off):`);
      say(`  user: ${QUESTION}`);
      const model = await loadChatModel(modelDir);
      const gen = await startGenerator({
        modelDir,
        adapters: { tuned: summary.adapter_dir! },
        device: "cpu",
        maxBatchSize: 1,
      });
      try {
        const answer = await chatOnce({
          gen,
          model,
          messages: [{ role: "user", content: QUESTION }],
          thinking: false,
          adapter: "tuned",
          sampling: { maxNewTokens: 48, temperature: 0 },
        });
        // As a JSON string: a random model's output is often whitespace and control characters.
        say(`  assistant: ${JSON.stringify(answer.text)}`);
        say(
          `  (${answer.generatedTokens} tokens, stopped by ${answer.reason === "stop" ? "<|im_end|>" : "the length limit"})`,
        );
      } finally {
        await gen.close();
      }

      say(`\ndone in ${((Date.now() - t0) / 1000).toFixed(0)}s. The run directory: ${summary.run_dir}`);
      say("\nA real fine-tune on a GPU (a downloaded Hugging Face model directory, e.g. Qwen/Qwen3-8B):");
      say("  npx tuna train examples/payment-support/qwen3-8b.yaml");
      say("  npx tuna chat models/Qwen3-8B --adapter runs/<id>/adapter");
    });
}
