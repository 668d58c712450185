import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { expandPaths, globToRegExp, type RawItem, readFile } from "../src/data/readers.ts";
import { validateFiles } from "../src/data/validate.ts";

const tmp = mkdtempSync(path.join(tmpdir(), "tuna-readers-"));
const write = (name: string, data: string | Buffer) => {
  const p = path.join(tmp, name);
  writeFileSync(p, data);
  return p;
};
async function collect(it: AsyncIterable<RawItem>): Promise<RawItem[]> {
  const out: RawItem[] = [];
  for await (const x of it) out.push(x);
  return out;
}

describe("JSONL", () => {
  it("gives file:line, reports bad lines, survives tiny chunks", async () => {
    const f = write("a.jsonl", '\ufeff{"a":1}\r\n\n{broken\n{"b":"\u00e9\u4f60"}\n{"c":3}');
    for (const chunkBytes of [1 << 20, 3]) {
      const items = await collect(readFile(f, { chunkBytes }));
      expect(items.map((i) => i.kind)).toEqual(["record", "blank", "error", "record", "record"]);
      expect(items[0]).toEqual({ kind: "record", record: { a: 1 }, source: `${f}:1` });
      expect(items[2].kind === "error" && items[2].error.reason).toBe("invalid_json");
      expect(items[3]).toMatchObject({ record: { b: "é你" }, source: `${f}:4` });
      expect(items[4]).toMatchObject({ record: { c: 3 }, source: `${f}:5` });
    }
  });

  it("reports oversize lines and invalid UTF-8 without throwing", async () => {
    const big = `{"x":"${"a".repeat(2000)}"}`;
    const f = write(
      "b.jsonl",
      Buffer.concat([
        Buffer.from(`${big}\n{"ok":1}\n{"bad":"`),
        Buffer.from([0xc3, 0x28]),
        Buffer.from('"}\n'),
      ]),
    );
    const items = await collect(readFile(f, { maxRecordBytes: 1000, chunkBytes: 64 }));
    expect(items).toHaveLength(3);
    expect(items[0].kind === "error" && items[0].error.reason).toBe("oversize_line");
    expect(items[0].kind === "error" && items[0].error.message).toContain(`${big.length} bytes`);
    expect(items[1]).toMatchObject({ kind: "record", record: { ok: 1 }, source: `${f}:2` });
    expect(items[2].kind === "error" && items[2].error.reason).toBe("invalid_utf8");
  });
});

describe("JSON", () => {
  it("streams a top-level array with element lines", async () => {
    const f = write("arr.json", '[\n  {"a": "]},["},\n  {"b": [1, {"c": "\\"x"}]}\n]');
    const items = await collect(readFile(f, { chunkBytes: 5 }));
    expect(items).toEqual([
      { kind: "record", record: { a: "]},[" }, source: `${f}:2` },
      { kind: "record", record: { b: [1, { c: '"x' }] }, source: `${f}:3` },
    ]);
  });

  it("finds the array under a key, or the one --field names", async () => {
    const f = write(
      "obj.json",
      '{"version": 2, "meta": {"k": [1]}, "data": [{"i": 0}, {"i": 1}], "extra": [9]}',
    );
    const picked = await collect(readFile(f, { field: "data" }));
    expect(picked.map((i) => i.kind === "record" && i.record)).toEqual([{ i: 0 }, { i: 1 }]);
    const extra = await collect(readFile(f, { field: "extra" }));
    expect(extra.map((i) => i.kind === "record" && i.record)).toEqual([9]);
    // Without --field two arrays are ambiguous: an error naming both, after the first one is read.
    await expect(collect(readFile(f))).rejects.toThrow(/several arrays \(data, extra\)/);
    const g = write("one.json", '{"rows": [{"i": 0}]}');
    expect((await collect(readFile(g))).length).toBe(1);
  });
});

describe("CSV/TSV", () => {
  it("handles RFC 4180 quoting, multi-line fields, CRLF and bad rows", async () => {
    const f = write("t.csv", 'text,category\r\n"Hello, ""world""",a\r\n"two\nlines",b\r\nonly-one\r\nlast,c');
    const items = await collect(readFile(f, { chunkBytes: 4 }));
    expect(items).toEqual([
      { kind: "record", record: { text: 'Hello, "world"', category: "a" }, source: `${f}:2` },
      { kind: "record", record: { text: "two\nlines", category: "b" }, source: `${f}:3` },
      expect.objectContaining({ kind: "error", source: `${f}:5` }),
      { kind: "record", record: { text: "last", category: "c" }, source: `${f}:6` },
    ]);
    const t = write("t.tsv", "user\tassistant\nhi, there\thello\n");
    expect(await collect(readFile(t))).toEqual([
      { kind: "record", record: { user: "hi, there", assistant: "hello" }, source: `${t}:2` },
    ]);
  });

  it("reads the real banking77 CSV (13,083 rows in two files)", async () => {
    let n = 0;
    for (const f of ["train", "test"]) {
      for await (const it of readFile(`../shared/data/banking77/${f}.csv`)) {
        expect(it.kind).toBe("record");
        n++;
      }
    }
    expect(n).toBe(13083);
  });
});

describe("Parquet", () => {
  for (const codec of ["snappy", "zstd", "gzip"]) {
    it(`reads ${codec} row groups as ShareGPT records`, async () => {
      const f = `test/fixtures/data/finetome-${codec}.parquet`;
      const items = await collect(readFile(f));
      expect(items).toHaveLength(25);
      expect(items[12]).toMatchObject({
        kind: "record",
        source: `${f}#13`,
        record: {
          conversations: [
            { from: "human", value: "question 12 你好" },
            { from: "gpt", value: "answer 12" },
          ],
        },
      });
      const report = await validateFiles([f]);
      expect(report.valid).toBe(25);
    });
  }
});

describe("paths", () => {
  it("expands directories and globs in sorted order", async () => {
    const d = path.join(tmp, "dir");
    write("dir-placeholder.txt", "");
    const { mkdirSync } = await import("node:fs");
    mkdirSync(path.join(d, "sub"), { recursive: true });
    writeFileSync(path.join(d, "b.jsonl"), "");
    writeFileSync(path.join(d, "a.csv"), "");
    writeFileSync(path.join(d, "sub", "c.jsonl"), "");
    writeFileSync(path.join(d, "notes.txt"), "");
    expect(await expandPaths([d])).toEqual([
      path.join(d, "a.csv"),
      path.join(d, "b.jsonl"),
      path.join(d, "sub", "c.jsonl"),
    ]);
    expect(await expandPaths([`${d}/**/*.jsonl`])).toEqual([
      path.join(d, "b.jsonl"),
      path.join(d, "sub", "c.jsonl"),
    ]);
    expect(await expandPaths([`${d}/*.{csv,txt}`])).toEqual([
      path.join(d, "a.csv"),
      path.join(d, "notes.txt"),
    ]);
    await expect(expandPaths([`${d}/*.parquet`])).rejects.toThrow(/matches no file/);
    expect(globToRegExp("a/**/x?.json").test("a/b/c/x1.json")).toBe(true);
    expect(globToRegExp("a/**/x?.json").test("a/x1.json")).toBe(true);
    expect(globToRegExp("a/*.json").test("a/b/x.json")).toBe(false);
  });
});
