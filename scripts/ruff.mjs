#!/usr/bin/env node
// ruff over the engine and the Python benchmarks, from the project's environment (TUNA_PYTHON or .venv).
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const py = process.env.TUNA_PYTHON ?? join(root, ".venv", "bin", "python");
const r = spawnSync(
  py,
  ["-m", "ruff", "check", "--config", "engine/pyproject.toml", "engine", "bench", "test/fixtures"],
  { stdio: "inherit", cwd: root },
);
process.exit(r.status ?? 1);
