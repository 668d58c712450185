// `tuna model init <dir> --preset <name>`: a random-initialised model directory of a real architecture.
import type { Command } from "commander";
import { TunaError } from "../errors.ts";
import { PRESETS, initModel } from "../model/init.ts";

export function register(program: Command): void {
  const model = program.command("model").description("Model directories: create from a preset");
  model
    .command("init <dir>")
    .description("Write a model directory: a real architecture's config.json, random weights, Qwen3 tokenizer and chat template")
    .requiredOption("--preset <name>", `architecture preset: ${Object.keys(PRESETS).join(", ")}`)
    .option("--seed <n>", "random seed for the weights", "0")
    .option("--dtype <dtype>", "storage dtype: float32, bfloat16 or float16 (default: the preset's)")
    .option("--force", "overwrite a non-empty directory")
    .action((dir: string, o: { preset: string; seed: string; dtype?: string; force?: boolean }) => {
      const seed = Number(o.seed);
      if (!Number.isInteger(seed)) throw new TunaError("BAD_OPTION", `--seed "${o.seed}" is not an integer`);
      if (o.dtype && !["float32", "bfloat16", "float16"].includes(o.dtype)) {
        throw new TunaError("BAD_OPTION", `--dtype "${o.dtype}" is not one of float32, bfloat16, float16`);
      }
      const started = Date.now();
      const r = initModel(dir, {
        preset: o.preset,
        seed,
        force: o.force,
        dtype: o.dtype as "float32" | "bfloat16" | "float16" | undefined,
        onProgress: (d, t) => {
          if (process.stderr.isTTY) process.stderr.write(`\r  writing weights ${((100 * d) / t).toFixed(0)}%`);
        },
      });
      if (process.stderr.isTTY) process.stderr.write("\n");
      const secs = ((Date.now() - started) / 1000).toFixed(1);
      console.log(
        `${dir}: ${o.preset} (${PRESETS[o.preset].about}), ${(r.params / 1e6).toFixed(1)}M parameters, random weights in ${r.files.length} file(s), ${secs}s`,
      );
    });
}
