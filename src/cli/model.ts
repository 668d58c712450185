// `tuna model init <dir> --preset <name>`: a random-initialised model directory of a real architecture.
// `tuna model pull <repo>`: a model directory from Hugging Face (or a mirror) or ModelScope.
import type { Command } from "commander";
import { TunaError } from "../errors.ts";
import { type HubName, pullModel } from "../hub/index.ts";
import { formatBytes } from "../hub/progress.ts";
import { initModel, PRESETS } from "../model/init.ts";

export function register(program: Command): void {
  const model = program
    .command("model")
    .description("Model directories: create from a preset, or pull from a hub");
  model
    .command("init <dir>")
    .description(
      "Write a model directory: a real architecture's config.json, random weights, Qwen3 tokenizer and chat template",
    )
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
          if (process.stderr.isTTY)
            process.stderr.write(`\r  writing weights ${((100 * d) / t).toFixed(0)}%`);
        },
      });
      if (process.stderr.isTTY) process.stderr.write("\n");
      const secs = ((Date.now() - started) / 1000).toFixed(1);
      console.log(
        `${dir}: ${o.preset} (${PRESETS[o.preset].about}), ${(r.params / 1e6).toFixed(1)}M parameters, random weights in ${r.files.length} file(s), ${secs}s`,
      );
    });

  model
    .command("pull <repo>")
    .description(
      "Download the files a fine-tune needs (config, safetensors weights, tokenizer, chat template) from Hugging Face, a mirror or ModelScope: resumable, verified, idempotent",
    )
    .option("--hub <hub>", "huggingface or modelscope", "huggingface")
    .option(
      "--revision <rev>",
      'branch, tag or commit (default: "main" on Hugging Face, "master" on ModelScope)',
    )
    .option(
      "--endpoint <url>",
      "hub address, e.g. https://hf-mirror.com (default: $HF_ENDPOINT / $MODELSCOPE_ENDPOINT, else the public hub)",
    )
    .option("--dir <dir>", "target directory (default: models/<repo>)")
    .option(
      "--token <token>",
      "access token for private or gated models (default: $HF_TOKEN / $MODELSCOPE_API_TOKEN)",
    )
    .option("--include <glob...>", "also download files matching these globs, e.g. '*.bin' or 'onnx/**'")
    .option("--jobs <n>", "files downloaded at once", "4")
    .option("--retries <n>", "retries per file after 5xx answers, timeouts and dropped connections", "5")
    .action(
      async (
        repo: string,
        o: {
          hub: string;
          revision?: string;
          endpoint?: string;
          dir?: string;
          token?: string;
          include?: string[];
          jobs: string;
          retries: string;
        },
      ) => {
        if (o.hub !== "huggingface" && o.hub !== "modelscope") {
          throw new TunaError("BAD_OPTION", `--hub "${o.hub}" is not one of huggingface, modelscope`);
        }
        const int = (v: string, name: string, min: number) => {
          const n = Number(v);
          if (!Number.isInteger(n) || n < min) {
            throw new TunaError("BAD_OPTION", `${name} "${v}" is not an integer >= ${min}`);
          }
          return n;
        };
        const started = Date.now();
        const r = await pullModel({
          repo,
          hub: o.hub as HubName,
          revision: o.revision,
          endpoint: o.endpoint,
          dir: o.dir,
          token: o.token,
          include: o.include,
          jobs: int(o.jobs, "--jobs", 1),
          retries: int(o.retries, "--retries", 0),
        });
        for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
        const got = r.files.filter((f) => f.status === "downloaded").length;
        const secs = ((Date.now() - started) / 1000).toFixed(1);
        console.log(
          `${r.dir}: ${r.repo}@${r.revision}${r.commit ? ` (${r.commit.slice(0, 10)})` : ""} from ${r.endpoint}: ${r.files.length} file(s), ${got} downloaded (${formatBytes(r.fetchedBytes)}), ${r.files.length - got} already present and verified, ${secs}s`,
        );
      },
    );
}
