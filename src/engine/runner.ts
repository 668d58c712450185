// Starts the Python engine and turns its stdout into typed events (DESIGN.md "One seam").
//
// - The interpreter is TUNA_PYTHON, else the project's .venv (made by scripts/setup.mjs).
// - Every event line is validated with zod and appended to events.jsonl as it arrives, so a crash loses
//   nothing the engine said. Non-JSON stdout lines are kept as log events.
// - Ctrl-C is forwarded to the engine (which emits an INTERRUPTED error event and exits); a second Ctrl-C kills it.
// - A train plan with a `distributed` section runs under torchrun (`python -m torch.distributed.run`, so the
//   same interpreter), NVLink multicast off. Rank 0 speaks the protocol; every rank writes its error event to
//   <run_dir>/errors/rank-<r>.json, read here when the engine exits without reporting one (docs/distributed.md).
import { type ChildProcess, spawn } from "node:child_process";
import { appendFileSync, existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { z } from "zod";
import { TunaError } from "../errors.ts";
import { type DistributedPlan, EngineEvent, ErrorEvent } from "./protocol.ts";

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

/** The launcher argv for a plan: plain `-m tuna_engine ...`, or torchrun around it for several processes. */
export function engineArgs(
  command: string,
  planPath: string,
  distributed?: DistributedPlan,
): { args: string[]; env: Record<string, string> } {
  const engine = ["-m", "tuna_engine", command, "--plan", planPath];
  if (!distributed || distributed.gpus * distributed.nnodes === 1) return { args: engine, env: {} };
  const d = distributed;
  return {
    args: [
      "-m",
      "torch.distributed.run",
      `--nproc-per-node=${d.gpus}`,
      `--nnodes=${d.nnodes}`,
      `--node-rank=${d.node_rank}`,
      `--master-addr=${d.master_addr}`,
      `--master-port=${d.master_port}`,
      ...engine,
    ],
    // NVLink SHARP / multicast off: it fails on some hosts and shared machines (KINDS.md, issue 6).
    env: { NCCL_NVLS_ENABLE: "0", TORCH_SYMM_MEM_DISABLE_MULTICAST: "1" },
  };
}

/** A train plan's run dir and distributed section (other commands: none). */
function trainLaunch(command: string, planPath: string): { runDir?: string; distributed?: DistributedPlan } {
  if (command !== "train") return {};
  try {
    const plan = JSON.parse(readFileSync(planPath, "utf8")) as {
      run_dir?: string;
      distributed?: DistributedPlan;
    };
    return { runDir: plan.run_dir, distributed: plan.distributed };
  } catch {
    return {}; // the engine reports an unreadable plan itself
  }
}

/** The error that ended a multi-process run: the earliest non-INTERRUPTED error a rank wrote (a rank that
 * loses its peer fails later, or is stopped by torchrun). */
export function rankError(runDir: string): z.infer<typeof ErrorEvent> | undefined {
  const dir = join(runDir, "errors");
  if (!existsSync(dir)) return undefined;
  const found: { time: number; event: z.infer<typeof ErrorEvent> }[] = [];
  for (const f of readdirSync(dir).filter((n) => /^rank-\d+\.json$/.test(n))) {
    try {
      const raw = JSON.parse(readFileSync(join(dir, f), "utf8")) as { time?: number };
      const parsed = ErrorEvent.safeParse(raw);
      if (parsed.success) found.push({ time: raw.time ?? Number.POSITIVE_INFINITY, event: parsed.data });
    } catch {
      // a half-written file: skip
    }
  }
  const causes = found.filter((f) => f.event.code !== "INTERRUPTED");
  const pick = (causes.length ? causes : found).sort((a, b) => a.time - b.time)[0];
  return pick?.event;
}

export function startEngine<E extends { event: string } = EngineEvent>(opts: EngineOptions<E>): EngineRun {
  const schema = (opts.schema ?? EngineEvent) as z.ZodType<E>;
  const py = enginePython();
  const launch = trainLaunch(opts.command, opts.planPath);
  const { args, env: distEnv } = engineArgs(opts.command, opts.planPath, launch.distributed);
  if (launch.distributed && launch.runDir)
    rmSync(join(launch.runDir, "errors"), { recursive: true, force: true });
  const child = spawn(py, args, {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      PYTHONPATH: [join(REPO_ROOT, "engine"), process.env.PYTHONPATH].filter(Boolean).join(":"),
      PYTHONUNBUFFERED: "1",
      ...distEnv,
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
      if (!lastError && code !== 0 && launch.distributed && launch.runDir) {
        // Rank 0 was killed before it could report (e.g. stuck in an NCCL collective): the ranks' files.
        lastError = rankError(launch.runDir);
        if (lastError && opts.eventsPath) appendFileSync(opts.eventsPath, `${JSON.stringify(lastError)}\n`);
        if (lastError) opts.onEvent?.(lastError as unknown as E);
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
