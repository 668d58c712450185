// `tuna train <config.yaml>` and `tuna train --resume runs/<id>`.
import type { Command } from "commander";
import { parseConfig, readYaml } from "../config/load.ts";
import { RunConfig } from "../config/schema.ts";
import { TunaError } from "../errors.ts";
import { resume, train } from "../jobs/train/run.ts";

export function register(program: Command): void {
  program
    .command("train [config]")
    .description(
      "Fine-tune: data → chat template → tokens and loss mask → packed shards → engine → LoRA adapter",
    )
    .option("--resume <run-dir>", "continue an interrupted run from its latest checkpoint")
    .option("--strict", "fail on the first invalid record instead of skipping and counting it")
    .option("--max-steps <n>", "override train.max_steps (quick trials)")
    .option("--gpus <n>", "train on N GPUs of this machine under torchrun (sets distributed.gpus)")
    .action(
      async (
        configPath: string | undefined,
        o: { resume?: string; strict?: boolean; maxSteps?: string; gpus?: string },
      ) => {
        let summary: Awaited<ReturnType<typeof train>>;
        if (o.resume) {
          summary = await resume(o.resume);
        } else {
          if (!configPath)
            throw new TunaError("USAGE", "tuna train needs a config file (or --resume <run-dir>)");
          const loaded = readYaml(configPath);
          if (o.gpus !== undefined) {
            const n = Number(o.gpus);
            if (!Number.isInteger(n) || n <= 0)
              throw new TunaError("BAD_OPTION", `--gpus "${o.gpus}" is not a positive integer`, {
                hint: "the number of GPUs of this machine to train on, e.g. --gpus 2",
              });
            const raw = (loaded.value ?? {}) as Record<string, unknown>;
            loaded.value = { ...raw, distributed: { ...((raw.distributed ?? {}) as object), gpus: n } };
          }
          const config = parseConfig(RunConfig, loaded, configPath);
          if (o.maxSteps !== undefined) {
            const n = Number(o.maxSteps);
            if (!Number.isInteger(n) || n <= 0)
              throw new TunaError("BAD_OPTION", `--max-steps "${o.maxSteps}" is not a positive integer`);
            config.train.max_steps = n;
          }
          summary = await train({ config, configPath, strict: o.strict });
        }
        if (summary.status !== "done") {
          const e = summary.error;
          process.stderr.write(
            `training ${summary.status}${e ? ` [${e.code}]: ${e.message}` : ""}${e?.hint ? `\nhint: ${e.hint}` : ""}\nthe run directory keeps everything written so far: ${summary.run_dir}\n`,
          );
          process.exitCode = summary.status === "interrupted" ? 130 : 1;
        }
      },
    );
}
