// Peak memory of reading + validating a 2 GB JSONL: generates the file (once) under /tmp, then reads and
// validates it in a child process and prints that child's peak RSS (target < 500 MB) and throughput.
//   npx tsx bench/data/read-validate.ts [--gb 2] [--keep]
import { spawnSync } from "node:child_process";
import { once } from "node:events";
import { createWriteStream, existsSync, statSync, unlinkSync } from "node:fs";

const args = process.argv.slice(2);
const gb = Number(args[args.indexOf("--gb") + 1] ?? 2) || 2;
const file = `/tmp/tuna-bench-${gb}gb.jsonl`;

if (args[0] === "--child") {
  const { validateFiles } = await import("../../src/data/validate.ts");
  const t0 = performance.now();
  const report = await validateFiles([args[1]]);
  const s = (performance.now() - t0) / 1000;
  const peakMB = process.resourceUsage().maxRSS / 1024;
  process.stdout.write(
    `${JSON.stringify({ seconds: s, peakRssMB: peakMB, total: report.total, valid: report.valid, skipped: report.skipped })}\n`,
  );
  process.exit(0);
}

async function generate(): Promise<void> {
  const out = createWriteStream(file);
  const target = gb * 1024 ** 3;
  let bytes = 0;
  let i = 0;
  const filler =
    "The customer was charged twice for order 1234 and asks for a refund of the duplicate payment. ";
  while (bytes < target) {
    const rec =
      i % 10 === 9
        ? `{"messages": [{"role": "user", "content": "broken ${i}"`
        : JSON.stringify({
            messages: [
              { role: "system", content: "You are a payment support assistant." },
              { role: "user", content: `Case ${i}: ${filler.repeat(1 + (i % 7))}` },
              {
                role: "assistant",
                content: `<think>Case ${i} needs a lookup.</think>`,
                tool_calls: [
                  { id: "c", type: "function", function: { name: "lookup", arguments: `{"case": ${i}}` } },
                ],
              },
              { role: "tool", tool_call_id: "c", content: '{"status": "duplicate"}' },
              { role: "assistant", content: `Refund issued for case ${i}. ${filler}` },
            ],
            tools: [
              {
                type: "function",
                function: {
                  name: "lookup",
                  parameters: {
                    type: "object",
                    properties: { case: { type: "integer" } },
                    required: ["case"],
                  },
                },
              },
            ],
          });
    const line = `${rec}\n`;
    bytes += Buffer.byteLength(line);
    i++;
    if (!out.write(line)) await once(out, "drain");
  }
  out.end();
  await once(out, "finish");
}

if (!existsSync(file) || statSync(file).size < gb * 1024 ** 3) {
  const t0 = performance.now();
  await generate();
  process.stderr.write(
    `generated ${file} (${(statSync(file).size / 1024 ** 3).toFixed(2)} GiB) in ${((performance.now() - t0) / 1000).toFixed(0)} s\n`,
  );
}
const child = spawnSync(
  process.execPath,
  ["--import", "tsx", new URL(import.meta.url).pathname, "--child", file],
  {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  },
);
const r = JSON.parse(child.stdout);
const size = statSync(file).size;
process.stdout.write(
  `read+validate ${(size / 1024 ** 3).toFixed(2)} GiB: ${r.total} records (${r.valid} valid, ${r.skipped} skipped) in ${r.seconds.toFixed(1)} s ` +
    `(${(size / 1024 ** 2 / r.seconds).toFixed(0)} MiB/s), peak RSS ${r.peakRssMB.toFixed(0)} MB (target < 500 MB)\n`,
);
if (!args.includes("--keep")) unlinkSync(file);
