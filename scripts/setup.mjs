#!/usr/bin/env node
// Idempotent set-up for the two README commands (`npm run demo`, `npm test`).
//
// 1. npm dependencies: installed when node_modules is missing or package.json / package-lock.json changed.
// 2. The engine's Python environment `.venv`: created and filled from engine/requirements*.txt when missing
//    or when those files changed. Where TUNA_PYTHON is set, that interpreter is used as it is and nothing is
//    installed into it.
//
// A stamp (a hash of what was installed) in .setup/ makes the second run install nothing.
// Only Node built-ins here: this runs before any dependency exists.
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const forTests = process.argv.includes("--test");
const stampDir = join(root, ".setup");
mkdirSync(stampDir, { recursive: true });

function hashFiles(files, extra = "") {
  const h = createHash("sha256");
  for (const f of files) h.update(existsSync(f) ? readFileSync(f) : `missing:${f}`);
  h.update(extra);
  return h.digest("hex");
}

function stamped(name, hash) {
  const p = join(stampDir, name);
  return existsSync(p) && readFileSync(p, "utf8") === hash;
}

function run(cmd, args, opts = {}) {
  console.error(`[setup] ${cmd} ${args.join(" ")}`);
  const r = spawnSync(cmd, args, { stdio: "inherit", cwd: root, ...opts });
  if (r.status !== 0) {
    console.error(`[setup] failed: ${cmd} ${args.join(" ")} (exit ${r.status ?? r.signal})`);
    process.exit(1);
  }
}

// --- npm ---------------------------------------------------------------------------------------------
const npmHash = hashFiles([join(root, "package.json"), join(root, "package-lock.json")]);
if (!existsSync(join(root, "node_modules")) || !stamped("npm", npmHash)) {
  const lock = existsSync(join(root, "package-lock.json"));
  run("npm", [lock ? "ci" : "install", "--no-audit", "--no-fund"]);
  writeFileSync(join(stampDir, "npm"), npmHash);
}

// --- Python ------------------------------------------------------------------------------------------
if (process.env.TUNA_PYTHON) {
  console.error(`[setup] using TUNA_PYTHON=${process.env.TUNA_PYTHON}; installing nothing into it`);
  process.exit(0);
}

function hasGpu() {
  try {
    execFileSync("nvidia-smi", ["-L"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

const venv = join(root, ".venv");
const py = join(venv, "bin", "python");
// torch 2.13.0 is the CPU build where this workplace keeps its wheel; on a machine with a GPU, PyPI's
// default build (CUDA). TUNA_TORCH overrides both.
const torchSpec = process.env.TUNA_TORCH ?? (hasGpu() ? "torch>=2.6" : "torch==2.13.0");
const reqFiles = [join(root, "engine", "requirements.txt")];
if (forTests) reqFiles.push(join(root, "engine", "requirements-test.txt"));
const pyHash = hashFiles(reqFiles, torchSpec);
const stampName = forTests ? "python-test" : "python";
if (!existsSync(py) || !stamped(stampName, pyHash)) {
  if (!existsSync(py)) {
    const base = process.env.PYTHON ?? "python3";
    run(base, ["-m", "venv", venv]);
  }
  run(py, ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", torchSpec]);
  run(py, [
    "-m",
    "pip",
    "install",
    "--quiet",
    "--disable-pip-version-check",
    ...reqFiles.flatMap((f) => ["-r", f]),
  ]);
  writeFileSync(join(stampDir, stampName), pyHash);
  // A test environment is a superset of the run-time one.
  if (forTests) writeFileSync(join(stampDir, "python"), hashFiles([reqFiles[0]], torchSpec));
}
