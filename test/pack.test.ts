import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { Rng } from "../src/model/init.ts";
import { packFirstFitDecreasing } from "../src/pack/pack.ts";
import { SplitWriter } from "../src/pack/shards.ts";
import { readSafetensors } from "../src/util/safetensors.ts";
import { testPython } from "./helpers/python.ts";

describe("first-fit-decreasing packing", () => {
  it("places every sample once, never over max length, longest first into the first pack with room", () => {
    const lengths = [7, 3, 5, 2, 8, 1, 4, 6];
    const { packs, usedTokens, paddingTokens } = packFirstFitDecreasing(lengths, 10);
    expect(packs.flat().sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    for (const p of packs) expect(p.reduce((a, i) => a + lengths[i], 0)).toBeLessThanOrEqual(10);
    // FFD by hand: 8→A, 7→B, 6→C, 5→D, 4→C(10), 3→B(10), 2→A(10), 1→D(6)
    expect(packs).toEqual([
      [4, 3],
      [0, 1],
      [7, 6],
      [2, 5],
    ]);
    expect(usedTokens).toBe(36);
    expect(paddingTokens).toBe(4);
  });

  it("rejects a sample longer than the pack", () => {
    expect(() => packFirstFitDecreasing([3, 11], 10)).toThrow(/more than maxLength/);
  });

  it("packs 200k samples quickly and tightly", () => {
    const rng = new Rng(1);
    const lengths = Array.from({ length: 200_000 }, () => 16 + Math.floor(rng.next() * 1000));
    const t0 = performance.now();
    const { packs, usedTokens } = packFirstFitDecreasing(lengths, 4096);
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(usedTokens / (packs.length * 4096)).toBeGreaterThan(0.99);
  });
});

describe("shard writer", () => {
  function sample(n: number, start: number, trainedFrom: number) {
    const ids = Int32Array.from({ length: n }, (_, i) => start + i);
    const lossWeight = Float32Array.from({ length: n }, (_, i) => (i >= trainedFrom ? 1 : 0));
    return { ids, lossWeight, source: `mem:${start}` };
  }

  it("writes the documented layout; Python safetensors reads the same tensors", () => {
    const dir = mkdtempSync(join(tmpdir(), "tuna-shards-"));
    const w = new SplitWriter({ dir, split: "train", maxLength: 8, overLength: "drop" });
    expect(w.add(sample(5, 100, 2))).toBe("kept");
    expect(w.add(sample(3, 200, 1))).toBe("kept");
    expect(w.add(sample(9, 300, 1))).toBe("dropped_too_long");
    expect(w.add(sample(4, 400, 9))).toBe("dropped_no_trained_tokens");
    expect(w.add(sample(6, 500, 0))).toBe("kept");
    const stats = w.finish();
    expect(stats).toMatchObject({
      samples: 3,
      packs: 2,
      tokens: 14,
      dropped_too_long: 1,
      dropped_no_trained_tokens: 1,
    });
    // trained: 3 + 2 + 5 (first token of each sample never trained)
    expect(stats.trained_tokens).toBe(10);
    const f = readSafetensors(join(dir, stats.shards[0]));
    expect(f.metadata).toMatchObject({ format: "tuna-shard", max_length: "8" });
    const tokens = new Int32Array(f.tensors.tokens.bytes.buffer);
    const seq = new BigInt64Array(f.tensors.seq_offsets.bytes.buffer);
    const packs = new BigInt64Array(f.tensors.pack_offsets.bytes.buffer);
    const weights = new Float32Array(f.tensors.loss_weight.bytes.buffer);
    // FFD: 6 tokens (500..) alone then 5 (100..) + 3 (200..)? 6+? : 6 first into pack 0, 5 → pack 1, 3 → pack 1 (8)
    expect([...packs].map(Number)).toEqual([0, 1, 3]);
    expect([...seq].map(Number)).toEqual([0, 6, 11, 14]);
    expect([...tokens.subarray(0, 6)]).toEqual([500, 501, 502, 503, 504, 505]);
    expect([...tokens.subarray(6, 11)]).toEqual([100, 101, 102, 103, 104]);
    expect([...weights.subarray(0, 6)]).toEqual([0, 1, 1, 1, 1, 1]);
    expect([...weights.subarray(6, 11)]).toEqual([0, 0, 1, 1, 1]);

    const out = execFileSync(
      testPython(),
      [
        "-c",
        "import sys,json; from safetensors.numpy import load_file; t=load_file(sys.argv[1]); print(json.dumps({k:[str(v.dtype),list(v.shape),v.reshape(-1)[:6].tolist()] for k,v in t.items()}))",
        join(dir, stats.shards[0]),
      ],
      { encoding: "utf8" },
    );
    const py = JSON.parse(out);
    expect(py.tokens).toEqual(["int32", [14], [500, 501, 502, 503, 504, 505]]);
    expect(py.loss_weight[0]).toBe("float32");
    expect(py.seq_offsets).toEqual(["int64", [4], [0, 6, 11, 14]]);
    expect(py.pack_offsets).toEqual(["int64", [3], [0, 1, 3]]);
    expect(readFileSync(join(dir, stats.shards[0])).length).toBeGreaterThan(14 * 8);
  });
});
