// `tuna merge runs/<id> [--out dir]`: fold the run's adapter into its base model → a full Hugging Face model
// directory (sharded safetensors, config.json, the same tokenizer files and chat template).
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { MergePlan, PROTOCOL_VERSION, TrainPlan } from "../engine/protocol.ts";
import { startEngine } from "../engine/runner.ts";
import { TunaError } from "../errors.ts";

export function register(program: Command): void {
  program
    .command("merge <run-dir>")
    .description("Merge a run's LoRA adapter into its base model: a full Hugging Face model directory")
    .option("--out <dir>", "output directory (default: <run-dir>/merged)")
    .option(
      "--dtype <dtype>",
      "dtype of the written weights: float32, bfloat16, float16 (default: the run's)",
    )
    .option("--device <device>", "auto, cpu or cuda", "auto")
    .action(async (runDir: string, o: { out?: string; dtype?: string; device: string }) => {
      const planPath = join(runDir, "plan.json");
      if (!existsSync(planPath)) {
        throw new TunaError("RUN_NOT_FOUND", `${planPath} does not exist`, {
          hint: "pass a run directory made by `tuna train`",
        });
      }
      const train = TrainPlan.parse(JSON.parse(readFileSync(planPath, "utf8")));
      if (!existsSync(join(train.output.adapter_dir, "adapter_config.json"))) {
        throw new TunaError("ADAPTER_NOT_FOUND", `${train.output.adapter_dir} holds no adapter`, {
          hint: "the run has not finished; resume it with `tuna train --resume <run-dir>` first",
        });
      }
      const plan = MergePlan.safeParse({
        version: PROTOCOL_VERSION,
        command: "merge",
        model: { path: train.model.path, dtype: o.dtype ?? train.model.dtype },
        adapter_dir: train.output.adapter_dir,
        output_dir: resolve(o.out ?? join(runDir, "merged")),
        device: o.device,
      });
      if (!plan.success) {
        throw new TunaError(
          "BAD_OPTION",
          plan.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; "),
        );
      }
      const mergePlanPath = join(runDir, "merge_plan.json");
      writeFileSync(mergePlanPath, `${JSON.stringify(plan.data, null, 2)}\n`);
      const engine = startEngine({ command: "merge", planPath: mergePlanPath, forwardSignals: true });
      const r = await engine.done;
      if (r.code !== 0 || r.error) {
        const e = r.error;
        throw new TunaError(
          e?.code ?? "ENGINE_CRASHED",
          e?.message ?? `the engine exited with ${r.code ?? r.signal}:\n${r.stderrTail}`,
          { hint: e?.hint },
        );
      }
      console.log(`merged model: ${plan.data.output_dir}`);
    });
}
