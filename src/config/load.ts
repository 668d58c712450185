// Reading a run config: YAML → zod → one readable error listing every problem (file, field, value, expected).
import { readFileSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { LineCounter, parseDocument } from "yaml";
import type { z } from "zod";
import { TunaError } from "../errors.ts";

/** Formats zod issues as "field: got X; expected Y" lines, with the YAML line where the field is. */
export function formatIssues(
  issues: z.core.$ZodIssue[],
  input: unknown,
  locate?: (path: PropertyKey[]) => number | undefined,
): string[] {
  return issues.map((iss) => {
    const path = iss.path.length
      ? iss.path
          .map((p) => (typeof p === "number" ? `[${p}]` : String(p)))
          .join(".")
          .replace(/\.\[/g, "[")
      : "(top level)";
    const got = valueAt(input, iss.path);
    const line = locate?.(iss.path);
    const gotText = got === undefined ? "missing" : JSON.stringify(got)?.slice(0, 80);
    return `${line ? `line ${line}: ` : ""}${path}: ${iss.message} (given: ${gotText})`;
  });
}

function valueAt(v: unknown, path: PropertyKey[]): unknown {
  let cur = v;
  for (const p of path) {
    if (cur === null || typeof cur !== "object") return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[p];
  }
  return cur;
}

export interface LoadedYaml {
  value: unknown;
  locate: (path: PropertyKey[]) => number | undefined;
}

export function readYaml(file: string): LoadedYaml {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new TunaError("CONFIG_NOT_FOUND", `cannot read config ${file}: ${(e as Error).message}`);
  }
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: true });
  if (doc.errors.length) {
    const e = doc.errors[0];
    const pos = e.linePos?.[0];
    throw new TunaError("CONFIG_YAML", `${e.message.split("\n")[0]}`, {
      where: `${file}${pos ? `:${pos.line}` : ""}`,
    });
  }
  return {
    value: doc.toJS(),
    locate: (path) => {
      const node = doc.getIn(path as (string | number)[], true) as { range?: [number, number] } | undefined;
      const at = node?.range?.[0];
      return at === undefined ? undefined : lineCounter.linePos(at).line;
    },
  };
}

/** Parse `value` with `schema`; on failure one TunaError listing every problem. */
export function parseConfig<S extends z.ZodType>(schema: S, loaded: LoadedYaml, file: string): z.infer<S> {
  const r = schema.safeParse(loaded.value);
  if (!r.success) {
    const lines = formatIssues(r.error.issues, loaded.value, loaded.locate);
    throw new TunaError("CONFIG_INVALID", `invalid config:\n  ${lines.join("\n  ")}`, {
      where: file,
      hint: "see docs/config.md for every field, its default and what it allows",
    });
  }
  return r.data;
}

/** Paths in a config are relative to the current directory, like every other command-line path. */
export function resolvePath(p: string, base = process.cwd()): string {
  return isAbsolute(p) ? p : resolve(base, p);
}
