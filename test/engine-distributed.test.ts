import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { distributedPlan, RunConfig } from "../src/config/schema.ts";
import { DistributedPlan } from "../src/engine/protocol.ts";
import { engineArgs, rankError } from "../src/engine/runner.ts";

describe("distributed launch", () => {
  it("wraps the engine in torchrun with multicast off for several GPUs, plain otherwise", () => {
    const d = {
      strategy: "fsdp" as const,
      gpus: 2,
      nnodes: 1,
      node_rank: 0,
      master_addr: "127.0.0.1",
      master_port: 29511,
    };
    const multi = engineArgs("train", "/r/plan.json", d);
    expect(multi.args).toEqual([
      "-m",
      "torch.distributed.run",
      "--nproc-per-node=2",
      "--nnodes=1",
      "--node-rank=0",
      "--master-addr=127.0.0.1",
      "--master-port=29511",
      "-m",
      "tuna_engine",
      "train",
      "--plan",
      "/r/plan.json",
    ]);
    expect(multi.env).toEqual({ NCCL_NVLS_ENABLE: "0", TORCH_SYMM_MEM_DISABLE_MULTICAST: "1" });
    expect(engineArgs("train", "/r/plan.json", { ...d, gpus: 1 }).args).toEqual([
      "-m",
      "tuna_engine",
      "train",
      "--plan",
      "/r/plan.json",
    ]);
  });

  it("reports the earliest non-INTERRUPTED rank error", () => {
    const run = mkdtempSync(join(tmpdir(), "tuna-dist-"));
    mkdirSync(join(run, "errors"));
    const ev = (code: string, message: string, time: number) =>
      JSON.stringify({ event: "error", code, message, time });
    writeFileSync(join(run, "errors", "rank-0.json"), ev("INTERRUPTED", "rank 0: stopped by SIGTERM", 3));
    writeFileSync(join(run, "errors", "rank-1.json"), ev("DATA_INVALID", "rank 1: bad shard", 2));
    writeFileSync(join(run, "errors", "rank-2.json"), ev("INTERNAL", "rank 2: connection closed", 4));
    expect(rankError(run)).toMatchObject({ code: "DATA_INVALID", message: "rank 1: bad shard" });
  });

  it("rejects a grad_accum the process count does not divide", () => {
    const base = { model: "m", data: { sources: [] }, train: { grad_accum: 3 }, distributed: { gpus: 2 } };
    const r = RunConfig.safeParse(base);
    expect(r.success).toBe(false);
    expect(JSON.stringify(r.error?.issues)).toContain("not divisible by 2 processes");
  });

  it("defaults the strategy to auto, which the plan carries for the engine to resolve", () => {
    const c = RunConfig.parse({
      model: "m",
      data: { sources: [{ path: "a.jsonl" }] },
      train: { grad_accum: 4 },
      distributed: { gpus: 4 },
    });
    const plan = distributedPlan(c);
    expect(plan?.strategy).toBe("auto");
    expect(DistributedPlan.parse(plan).strategy).toBe("auto");
    expect(
      RunConfig.safeParse({
        model: "m",
        data: { sources: [{ path: "a.jsonl" }] },
        distributed: { strategy: "zero3" },
      }).success,
    ).toBe(false);
  });
});
