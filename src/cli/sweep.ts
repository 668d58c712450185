// `tuna sweep <config.yaml>`: train and evaluate a grid (or list) of run-config variants, keep the best by a
// metric, print and save the comparison table. Running the same command again continues an interrupted sweep.
import type { Command } from "commander";
import { TunaError } from "../errors.ts";
import { loadSweepConfig } from "../jobs/sweep/config.ts";
import { runSweep, sweepTable } from "../jobs/sweep/run.ts";

export function register(program: Command): void {
  program
    .command("sweep <config>")
    .description(
      "Train each trial of a grid or list over learning rate, rank, epochs, data mix… (docs/eval-config.md, Sweeps),\n" +
        "evaluate each, keep the best by select.metric, and write sweep.json + sweep.md. Interrupted sweeps continue\n" +
        "where they stopped when run again.",
    )
    .option("--out <dir>", "sweep folder (default: <run output_dir>/sweep-<config name>)")
    .option("--restart", "ignore finished trials in the sweep folder and run all again")
    .option("--max-trials <n>", "run at most n trials now (the rest on the next call)")
    .option("--quiet", "no progress output")
    .action(
      async (
        configPath: string,
        o: { out?: string; restart?: boolean; maxTrials?: string; quiet?: boolean },
      ) => {
        let maxTrials: number | undefined;
        if (o.maxTrials !== undefined) {
          maxTrials = Number(o.maxTrials);
          if (!Number.isInteger(maxTrials) || maxTrials < 1) {
            throw new TunaError(
              "BAD_OPTION",
              `--max-trials ${JSON.stringify(o.maxTrials)} is not a positive integer`,
            );
          }
        }
        const config = loadSweepConfig(configPath);
        const r = await runSweep(config, {
          configPath,
          outDir: o.out,
          restart: o.restart,
          maxTrials,
          quiet: o.quiet,
        });
        const keys = [...new Set(r.trials.flatMap((t) => Object.keys(t.params)))];
        process.stdout.write(`${sweepTable(r, keys)}\n\n`);
        process.stdout.write(
          r.best
            ? `best: trial ${r.best.index} ${JSON.stringify(r.best.params)} with ${r.metric} ${r.best.value} (${r.best.adapter_dir})\n`
            : `best: none (no finished trial has ${r.metric})\n`,
        );
        if (r.remaining > 0)
          process.stdout.write(`${r.remaining} trial(s) left: run the same command again to continue\n`);
        process.stdout.write(`table: ${r.sweep_dir}/sweep.md, ${r.sweep_dir}/sweep.json\n`);
        if (r.interrupted) process.exitCode = 130;
      },
    );
}
