// Starts the Python engine and turns its stdout into typed events (DESIGN.md "One seam").
//
// - The interpreter is TUNA_PYTHON, else the project's .venv (made by scripts/setup.mjs).
// - Every event line is validated with zod and appended to events.jsonl as it arrives, so a crash loses
//   nothing the engine said. Non-JSON stdout lines are kept as log events.
// - Ctrl-C is forwarded to the engine (which emits an INTERRUPTED error event and exits); a second Ctrl-C kills it.
import { type ChildProcess, spawn } from "node:child_process";
import { appendFileSync, existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { z } from "zod";
import { TunaError } from "../errors.ts";
import { EngineEvent, type ErrorEvent } from "./protocol.ts";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

export function enginePython(): string {
  if (process.env.TUNA_PYTHON) return process.env.TUNA_PYTHON;
  const venv = join(REPO_ROOT, ".venv", "bin", "python");
  if (!existsSync(venv)) {
    throw new TunaError("NO_PYTHON_ENV", `the engine's Python environment is missing (looked for ${venv})`, {
      hint: "run `npm run setup` (or set TUNA_PYTHON to a Python with torch, safetensors and numpy)",
    });
  }
  return venv;
}

export interface EngineRun {
  /** Resolves when the engine exits: the exit code, and its last error event if it sent one. */
  done: Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    error?: z.infer<typeof ErrorEvent>;
    stderrTail: string;
  }>;
  child: ChildProcess;
  /** Send one JSON request on stdin (long-lived commands such as generate). */
  send(request: unknown): void;
  close(): void;
}

export interface EngineOptions<E extends { event: string } = EngineEvent> {
  command: string;
  /** Event schema of the command (default: the training events). */
  schema?: z.ZodType<E>;
  planPath: string;
  /** events.jsonl to append every event to. */
  eventsPath?: string;
  onEvent?: (e: E) => void;
  /** Forward the engine's human log (stderr) here; default: kept only as a tail for error reports. */
  onStderr?: (chunk: string) => void;
  env?: Record<string, string>;
  /** Forward SIGINT/SIGTERM of this process to the engine (CLI use). */
  forwardSignals?: boolean;
}

export function startEngine<E extends { event: string } = EngineEvent>(opts: EngineOptions<E>): EngineRun {
  const schema = (opts.schema ?? EngineEvent) as z.ZodType<E>;
  const py = enginePython();
  const child = spawn(py, ["-m", "tuna_engine", opts.command, "--plan", opts.planPath], {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      PYTHONPATH: [join(REPO_ROOT, "engine"), process.env.PYTHONPATH].filter(Boolean).join(":"),
      PYTHONUNBUFFERED: "1",
      ...opts.env,
    },
    stdio: ["pipe", "pipe", "pipe"],
  });

  let lastError: z.infer<typeof ErrorEvent> | undefined;
  let stderrTail = "";
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (chunk: string) => {
    stderrTail = (stderrTail + chunk).slice(-8000);
    opts.onStderr?.(chunk);
  });

  const lines = createInterface({ input: child.stdout! });
  lines.on("line", (line) => {
    if (!line.trim()) return;
    let event: E;
    try {
      const parsed = schema.safeParse(JSON.parse(line));
      event = (parsed.success ? parsed.data : { event: "log", message: `unrecognised event: ${line}` }) as E;
    } catch {
      event = { event: "log", message: line } as unknown as E;
    }
    if (opts.eventsPath) appendFileSync(opts.eventsPath, `${JSON.stringify(event)}\n`);
    if (event.event === "error") lastError = event as unknown as z.infer<typeof ErrorEvent>;
    opts.onEvent?.(event);
  });

  let interrupts = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    interrupts++;
    if (interrupts === 1) child.kill(sig);
    else child.kill("SIGKILL");
  };
  if (opts.forwardSignals) {
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  }

  const done = new Promise<Awaited<EngineRun["done"]>>((resolveDone, reject) => {
    child.on("error", (err) =>
      reject(
        new TunaError("ENGINE_SPAWN", `could not start the engine with ${py}: ${err.message}`, {
          cause: err,
        }),
      ),
    );
    // "close" fires after stdout is drained, so every event has been handled.
    child.on("close", (code, signal) => {
      if (opts.forwardSignals) {
        process.off("SIGINT", onSignal);
        process.off("SIGTERM", onSignal);
      }
      resolveDone({ code, signal, error: lastError, stderrTail });
    });
  });

  return {
    done,
    child,
    send: (request) => child.stdin!.write(`${JSON.stringify(request)}\n`),
    close: () => child.stdin!.end(),
  };
}
