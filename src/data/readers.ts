// Streaming readers: JSONL, JSON (array, or one array under a key), CSV/TSV, Parquet. Every reader is an async
// iterator of items, one per record, so memory stays flat whatever the file size. Problems with one record
// (invalid UTF-8, broken JSON, an oversize line, a CSV row with the wrong number of fields) come out as
// `error` items, never as exceptions: the caller counts them. Only problems with the file as a whole (it does
// not exist, unknown extension) throw a TunaError.
//
// All the structural characters of JSON and CSV are ASCII and UTF-8 never uses bytes < 0x80 inside a
// multi-byte character, so the scanners work on bytes and decode each record on its own: one bad byte
// spoils one record, not the file.
import { createReadStream } from "node:fs";
import { readdir, stat } from "node:fs/promises";
import path from "node:path";
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } from "hyparquet";
import { compressors } from "hyparquet-compressors";
import { TunaError } from "../errors.ts";
import type { Issue } from "./report.ts";

export type RawItem =
  | { kind: "record"; record: unknown; source: string }
  | { kind: "error"; source: string; error: Issue }
  | { kind: "blank"; source: string };

export interface ReadOptions {
  /** Longest line / record in bytes; longer ones are reported (`oversize_line`) and skipped. Default 4 MiB. */
  maxRecordBytes?: number;
  /** JSON files holding an object: the key of the array of records. Default: the first array-valued key. */
  field?: string;
  /** Bytes per read from disk. */
  chunkBytes?: number;
}

export const DEFAULT_MAX_RECORD_BYTES = 4 * 1024 * 1024;
export const DATA_EXTENSIONS = [".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"];

const utf8 = new TextDecoder("utf-8", { fatal: true });

function issue(reason: string, source: string, message: string, pathInRecord = ""): Issue {
  return { reason, source, path: pathInRecord, message };
}

/** Decode bytes as strict UTF-8; on failure say where the first bad byte is. */
function decodeUtf8(buf: Uint8Array): string | { badOffset: number } {
  try {
    return utf8.decode(buf);
  } catch {
    // Find the first offset where decoding fails (binary search over prefixes would cut characters; a
    // linear validator is simple and only runs on the bad record).
    let i = 0;
    while (i < buf.length) {
      const b = buf[i];
      const n =
        b < 0x80 ? 1 : b >= 0xc2 && b < 0xe0 ? 2 : b >= 0xe0 && b < 0xf0 ? 3 : b >= 0xf0 && b < 0xf5 ? 4 : 0;
      if (n === 0 || i + n > buf.length) return { badOffset: i };
      for (let k = 1; k < n; k++) if ((buf[i + k] & 0xc0) !== 0x80) return { badOffset: i };
      i += n;
    }
    return { badOffset: 0 };
  }
}

function parseJsonRecord(buf: Buffer, source: string): RawItem {
  const text = decodeUtf8(buf);
  if (typeof text !== "string") {
    return {
      kind: "error",
      source,
      error: issue(
        "invalid_utf8",
        source,
        `invalid UTF-8 at byte ${text.badOffset} of the record; expected UTF-8 text`,
      ),
    };
  }
  if (text.trim() === "") return { kind: "blank", source };
  try {
    return { kind: "record", record: JSON.parse(text), source };
  } catch (e) {
    const msg = (e as Error).message.slice(0, 200);
    return { kind: "error", source, error: issue("invalid_json", source, `not valid JSON (${msg})`) };
  }
}

function oversize(source: string, bytes: number, max: number): RawItem {
  return {
    kind: "error",
    source,
    error: issue(
      "oversize_line",
      source,
      `record is ${bytes} bytes, over the limit of ${max} bytes (raise maxRecordBytes / --max-record-bytes to read it)`,
    ),
  };
}

/**
 * The bytes of one record, gathered across read chunks. Past `max` bytes it stops keeping them and only counts
 * its length, so a 10 MB line costs no memory and is reported as oversize.
 */
class RecordBytes {
  private parts: Buffer[] = [];
  /** Bytes seen for the record so far (kept or not). */
  length = 0;
  over = false;

  constructor(private readonly max: number) {}

  add(bytes: Buffer): void {
    if (bytes.length === 0) return;
    this.length += bytes.length;
    if (this.over) return;
    if (this.length > this.max) {
      this.over = true;
      this.parts = [];
      return;
    }
    this.parts.push(bytes);
  }

  bytes(): Buffer {
    return this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts, this.length);
  }

  reset(): void {
    this.parts = [];
    this.length = 0;
    this.over = false;
  }
}

/** JSON Lines: one record per line, `file:line`. A trailing `\r` and a leading BOM are ignored. */
export async function* readJsonl(file: string, opts: ReadOptions = {}): AsyncGenerator<RawItem> {
  const max = opts.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
  const stream = createReadStream(file, { highWaterMark: opts.chunkBytes ?? 1 << 20 });
  const record = new RecordBytes(max);
  let line = 1;

  const emit = (): RawItem => {
    const source = `${file}:${line}`;
    if (record.over) return oversize(source, record.length, max);
    let buf = record.bytes();
    if (line === 1 && buf.length >= 3 && buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf)
      buf = buf.subarray(3);
    if (buf.length && buf[buf.length - 1] === 0x0d) buf = buf.subarray(0, buf.length - 1);
    return parseJsonRecord(buf, source);
  };

  for await (const chunk of stream as AsyncIterable<Buffer>) {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(10, start);
      record.add(chunk.subarray(start, nl === -1 ? chunk.length : nl));
      if (nl === -1) break;
      yield emit();
      line++;
      record.reset();
      start = nl + 1;
    }
  }
  if (record.length > 0) yield emit();
}

/**
 * JSON: a top-level array of records, or an object holding the array under a key (`field`, or the first
 * array-valued key). Streamed: each element is cut out by a byte scanner and parsed on its own, with the
 * line it starts on as its source.
 */
export async function* readJson(file: string, opts: ReadOptions = {}): AsyncGenerator<RawItem> {
  const max = opts.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
  const stream = createReadStream(file, { highWaterMark: opts.chunkBytes ?? 1 << 20 });
  // Scanner state.
  let depth = 0;
  let inString = false;
  let escaped = false;
  let line = 1;
  let layout: "unknown" | "array" | "object" = "unknown";
  let elementDepth = -1; // depth inside the array whose elements are records; -1 = not in it
  let doneArray = false;
  // Element capture.
  let capturing = false;
  const record = new RecordBytes(max);
  let elementLine = 0;
  // Object layout: keys at depth 1.
  let keyParts: number[] | null = null;
  let lastKey: string | null = null;
  let expectValue = false;
  let chosenKey: string | null = null;
  const arrayKeys: string[] = [];
  let sawAny = false;

  const finishElement = (): RawItem => {
    const source = `${file}:${elementLine}`;
    const item = record.over ? oversize(source, record.length, max) : parseJsonRecord(record.bytes(), source);
    capturing = false;
    record.reset();
    return item;
  };

  for await (const chunk of stream as AsyncIterable<Buffer>) {
    const out: RawItem[] = [];
    let segStart = capturing ? 0 : -1;
    const flushSeg = (end: number) => {
      if (segStart < 0) return;
      record.add(chunk.subarray(segStart, end));
      segStart = -1;
    };
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i];
      if (b === 0x0a) line++;
      if (inString) {
        if (keyParts && !escaped && b !== 0x22) keyParts.push(b);
        else if (keyParts && escaped) keyParts.push(b);
        if (escaped) escaped = false;
        else if (b === 0x5c) escaped = true;
        else if (b === 0x22) {
          inString = false;
          if (keyParts) {
            lastKey = Buffer.from(keyParts).toString("utf8");
            keyParts = null;
          }
        }
        continue;
      }
      const ws = b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
      if (layout === "unknown") {
        if (ws || (b === 0xef && !sawAny) || b === 0xbb || b === 0xbf) continue;
        sawAny = true;
        if (b === 0x5b) {
          layout = "array";
          depth = 1;
          elementDepth = 1;
          continue;
        }
        if (b === 0x7b) {
          layout = "object";
          depth = 1;
          continue;
        }
        throw new TunaError(
          "DATA_JSON_LAYOUT",
          "a .json file must hold an array of records or an object with one",
          {
            where: `${file}:${line}`,
            hint: "for one record per line use the .jsonl extension",
          },
        );
      }
      // Inside the records array, at element level.
      if (elementDepth > 0 && depth === elementDepth) {
        if (ws) continue;
        if (b === 0x2c) {
          if (capturing) {
            flushSeg(i);
            out.push(finishElement());
          }
          continue;
        }
        if (b === 0x5d) {
          if (capturing) {
            flushSeg(i);
            out.push(finishElement());
          }
          depth--;
          elementDepth = -1;
          doneArray = true;
          continue;
        }
        if (!capturing) {
          capturing = true;
          elementLine = line;
          segStart = i;
        }
      }
      if (b === 0x22) {
        inString = true;
        if (layout === "object" && depth === 1 && !expectValue) keyParts = [];
        continue;
      }
      if (layout === "object" && depth === 1) {
        if (b === 0x3a) {
          expectValue = true;
          continue;
        }
        if (b === 0x2c) {
          expectValue = false;
          continue;
        }
        if (expectValue && !ws) {
          expectValue = false;
          if (b === 0x5b && lastKey !== null) {
            arrayKeys.push(lastKey);
            const pick = opts.field !== undefined ? lastKey === opts.field : chosenKey === null;
            if (pick && !doneArray) {
              chosenKey = lastKey;
              depth = 2;
              elementDepth = 2;
              continue;
            }
          }
        }
      }
      if (b === 0x7b || b === 0x5b) depth++;
      else if (b === 0x7d || b === 0x5d) depth--;
    }
    if (capturing) flushSeg(chunk.length);
    for (const item of out) yield item;
  }
  if (capturing) yield finishElement();
  if (layout === "object") {
    if (chosenKey === null) {
      throw new TunaError(
        "DATA_JSON_LAYOUT",
        opts.field !== undefined
          ? `no array under key "${opts.field}" (array keys: ${arrayKeys.join(", ") || "none"})`
          : "the top-level object holds no array of records",
        { where: file, hint: "pass --field <key> naming the array of records" },
      );
    }
    if (opts.field === undefined && arrayKeys.length > 1) {
      throw new TunaError(
        "DATA_JSON_LAYOUT",
        `the top-level object holds several arrays (${arrayKeys.join(", ")}); read "${chosenKey}"`,
        { where: file, hint: "pass --field <key> to choose" },
      );
    }
  }
}

/**
 * CSV (RFC 4180: quoted fields, doubled quotes, newlines inside quotes) and TSV. The first row is the
 * header; each later row becomes an object of strings, source `file:line` of the row's first line.
 */
export async function* readCsv(
  file: string,
  opts: ReadOptions & { delimiter?: string } = {},
): AsyncGenerator<RawItem> {
  const max = opts.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
  const delim = (opts.delimiter ?? (file.toLowerCase().endsWith(".tsv") ? "\t" : ",")).charCodeAt(0);
  const stream = createReadStream(file, { highWaterMark: opts.chunkBytes ?? 1 << 20 });
  let header: string[] | null = null;
  let fields: Buffer[][] = [];
  let cur: Buffer[] = [];
  let rowBytes = 0;
  let over = false;
  let line = 1;
  let rowLine = 1;
  // 0 field start, 1 unquoted, 2 quoted, 3 quote seen inside quoted
  let state = 0;
  let rowHasContent = false;
  let first = true;

  const finishRow = (): RawItem | null => {
    const source = `${file}:${rowLine}`;
    const raw = fields;
    fields = [];
    const wasOver = over;
    over = false;
    const bytes = rowBytes;
    rowBytes = 0;
    if (wasOver) return oversize(source, bytes, max);
    if (!rowHasContent) {
      return { kind: "blank", source };
    }
    const values: string[] = [];
    for (let k = 0; k < raw.length; k++) {
      let buf = Buffer.concat(raw[k]);
      if (first && k === 0 && buf.length >= 3 && buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf) {
        buf = buf.subarray(3);
      }
      const s = decodeUtf8(buf);
      if (typeof s !== "string") {
        const col = header?.[k] ?? `column ${k + 1}`;
        return {
          kind: "error",
          source,
          error: issue("invalid_utf8", source, `invalid UTF-8 at byte ${s.badOffset} of the field`, col),
        };
      }
      values.push(s);
    }
    first = false;
    if (header === null) {
      header = values;
      return null;
    }
    if (values.length !== header.length) {
      return {
        kind: "error",
        source,
        error: issue(
          "csv_columns",
          source,
          `row has ${values.length} fields, the header has ${header.length} (${header.join(", ")})`,
        ),
      };
    }
    const rec: Record<string, string> = {};
    header.forEach((h, k) => {
      rec[h] = values[k];
    });
    return { kind: "record", record: rec, source };
  };

  for await (const chunk of stream as AsyncIterable<Buffer>) {
    const out: RawItem[] = [];
    let segStart = -1;
    const flushSeg = (end: number) => {
      if (segStart >= 0 && end > segStart) {
        rowBytes += end - segStart;
        if (rowBytes > max) {
          over = true;
          cur = [];
        } else if (!over) cur.push(chunk.subarray(segStart, end));
      }
      segStart = -1;
    };
    const endField = (i: number) => {
      flushSeg(i);
      fields.push(over ? [] : cur);
      cur = [];
      state = 0;
    };
    if (state === 1 || state === 2) segStart = 0;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i];
      if (state === 2) {
        if (b === 0x0a) line++;
        if (b === 0x22) {
          flushSeg(i);
          state = 3;
        }
        continue;
      }
      if (state === 3) {
        if (b === 0x22) {
          // Doubled quote: a literal quote; keep this byte, stay quoted.
          segStart = i;
          state = 2;
          continue;
        }
        state = 1; // after the closing quote; anything but a delimiter/newline is kept as-is (lenient)
      }
      if (b === delim) {
        rowHasContent = true;
        endField(i);
        continue;
      }
      if (b === 0x0a) {
        flushSeg(i);
        // Drop the \r of a CRLF, which may sit at the end of a piece from an earlier chunk.
        for (let k = cur.length - 1; k >= 0; k--) {
          const piece = cur[k];
          if (piece.length === 0) continue;
          if (piece[piece.length - 1] === 0x0d) cur[k] = piece.subarray(0, piece.length - 1);
          break;
        }
        if (state !== 0 || fields.length > 0 || cur.length) endField(i);
        const item = finishRow();
        if (item) out.push(item);
        line++;
        rowLine = line;
        rowHasContent = false;
        continue;
      }
      if (state === 0) {
        if (b === 0x22) {
          state = 2;
          segStart = i + 1;
          rowHasContent = true;
          continue;
        }
        state = 1;
        segStart = i;
        if (b !== 0x0d) rowHasContent = true;
        continue;
      }
      if (segStart < 0) segStart = i;
      if (b !== 0x0d) rowHasContent = true;
    }
    flushSeg(chunk.length);
    for (const item of out) yield item;
  }
  if (state !== 0 || fields.length > 0 || cur.length) {
    if (state === 2) {
      const source = `${file}:${rowLine}`;
      yield {
        kind: "error",
        source,
        error: issue("csv_unclosed_quote", source, "a quoted field is not closed before the end of the file"),
      };
      return;
    }
    endField(0);
    const item = finishRow();
    if (item) yield item;
  }

  // The tail has no chunk in scope: its last segment was flushed into `cur` already.
  function endField(_i: number) {
    fields.push(over ? [] : cur);
    cur = [];
    state = 0;
  }
}

/** Parquet: row groups are read one at a time (snappy, zstd, gzip, brotli, lz4 via hyparquet-compressors). */
export async function* readParquet(file: string): AsyncGenerator<RawItem> {
  const buffer = await asyncBufferFromFile(file);
  let metadata: Awaited<ReturnType<typeof parquetMetadataAsync>>;
  try {
    metadata = await parquetMetadataAsync(buffer);
  } catch (e) {
    throw new TunaError("DATA_PARQUET", `not a readable Parquet file (${(e as Error).message})`, {
      where: file,
    });
  }
  let rowStart = 0;
  for (const rg of metadata.row_groups) {
    const n = Number(rg.num_rows);
    const rows = await parquetReadObjects({
      file: buffer,
      metadata,
      compressors,
      rowStart,
      rowEnd: rowStart + n,
    });
    for (let k = 0; k < rows.length; k++) {
      yield { kind: "record", record: plainValue(rows[k]), source: `${file}#${rowStart + k + 1}` };
    }
    rowStart += n;
  }
}

/** Parquet int64 arrives as bigint; JSON has no bigint, so convert where it is exact. */
function plainValue(v: unknown): unknown {
  if (typeof v === "bigint") return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
  if (Array.isArray(v)) return v.map(plainValue);
  if (v && typeof v === "object" && !(v instanceof Date) && !(v instanceof Uint8Array)) {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) o[k] = plainValue(x);
    return o;
  }
  return v;
}

/** Read one file, choosing the reader by extension. */
export function readFile(file: string, opts: ReadOptions = {}): AsyncGenerator<RawItem> {
  const ext = path.extname(file).toLowerCase();
  switch (ext) {
    case ".jsonl":
    case ".ndjson":
      return readJsonl(file, opts);
    case ".json":
      return readJson(file, opts);
    case ".csv":
    case ".tsv":
      return readCsv(file, opts);
    case ".parquet":
      return readParquet(file);
    default:
      throw new TunaError("DATA_EXTENSION", `unknown data file extension "${ext}"`, {
        where: file,
        hint: `expected one of ${DATA_EXTENSIONS.join(", ")}`,
      });
  }
}

/** Read every file that `inputs` name (files, directories, globs), in a stable order. */
export async function* readAll(inputs: string[], opts: ReadOptions = {}): AsyncGenerator<RawItem> {
  for (const file of await expandPaths(inputs)) yield* readFile(file, opts);
}

// ---- paths and globs ----

const GLOB_CHARS = /[*?[{]/;

/** Glob pattern → RegExp over `/`-separated paths: `*`, `?`, `**` (any depth), `[abc]`, `{a,b}`. */
export function globToRegExp(pattern: string): RegExp {
  let re = "";
  let inBraces = 0;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "*") {
      if (pattern[i + 1] === "*") {
        const slashAfter = pattern[i + 2] === "/";
        re += slashAfter ? "(?:.*/)?" : ".*";
        i += slashAfter ? 2 : 1;
      } else re += "[^/]*";
    } else if (c === "?") re += "[^/]";
    else if (c === "[") {
      const close = pattern.indexOf("]", i + 1);
      if (close === -1) re += "\\[";
      else {
        let body = pattern.slice(i + 1, close);
        if (body.startsWith("!")) body = `^${body.slice(1)}`;
        re += `[${body.replace(/\\/g, "\\\\")}]`;
        i = close;
      }
    } else if (c === "{") {
      inBraces++;
      re += "(?:";
    } else if (c === "}" && inBraces) {
      inBraces--;
      re += ")";
    } else if (c === "," && inBraces) re += "|";
    else re += c.replace(/[.+^$()|\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

async function walk(dir: string, out: string[]): Promise<void> {
  const entries = await readdir(dir, { withFileTypes: true });
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await walk(p, out);
    else if (e.isFile()) out.push(p);
  }
}

/**
 * Files named by `inputs`: a file as is; a directory → every data file under it; a glob → matching files.
 * Sorted, so the same inputs always give the same order. Throws if an input matches nothing.
 */
export async function expandPaths(inputs: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const input of inputs) {
    const norm = input.split(path.sep).join("/");
    if (GLOB_CHARS.test(norm)) {
      const segs = norm.split("/");
      const firstGlob = segs.findIndex((s) => GLOB_CHARS.test(s));
      const base = segs.slice(0, firstGlob).join("/") || (norm.startsWith("/") ? "/" : ".");
      const re = globToRegExp(norm.replace(/^\.\//, ""));
      const files: string[] = [];
      try {
        await walk(base, files);
      } catch {
        // base missing: matches nothing
      }
      const matched = files
        .map((f) => f.split(path.sep).join("/"))
        .filter((f) => re.test(f) || re.test(f.replace(/^\.\//, "")))
        .sort();
      if (matched.length === 0) throw new TunaError("DATA_NO_FILES", `glob "${input}" matches no file`);
      out.push(...matched);
      continue;
    }
    let st: Awaited<ReturnType<typeof stat>>;
    try {
      st = await stat(input);
    } catch {
      throw new TunaError("DATA_NO_FILES", `no such file or directory "${input}"`);
    }
    if (st.isDirectory()) {
      const files: string[] = [];
      await walk(input, files);
      const data = files.filter((f) => DATA_EXTENSIONS.includes(path.extname(f).toLowerCase())).sort();
      if (data.length === 0) {
        throw new TunaError(
          "DATA_NO_FILES",
          `directory "${input}" holds no data file (${DATA_EXTENSIONS.join(", ")})`,
        );
      }
      out.push(...data);
    } else out.push(input);
  }
  return out;
}
