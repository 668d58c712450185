#!/usr/bin/env node
// Runs the engine's Python tests in the project's environment (TUNA_PYTHON or .venv).
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const py = process.env.TUNA_PYTHON ?? join(root, ".venv", "bin", "python");
const r = spawnSync(py, ["-m", "pytest", "-q", "engine/tests", ...process.argv.slice(2)], {
  stdio: "inherit",
  cwd: root,
  env: { ...process.env, PYTHONPATH: join(root, "engine") },
});
// pytest exits 5 when it collected nothing; that is a failure of the suite, not a pass.
process.exit(r.status ?? 1);
