// Which repository files a fine-tune needs. By default: the model's config, its safetensors weights (and the
// shard index), and the tokenizer and chat-template files, all at the repository root. Other weight formats
// (PyTorch .bin/.pth, GGUF, ONNX) and sub-folders come only when --include names them.
import { TunaError } from "../errors.ts";
import type { RemoteFile } from "./types.ts";

/** Root-level files a fine-tune uses (the weights are matched by extension below). */
export const DEFAULT_FILES = [
  "config.json",
  "generation_config.json",
  "model.safetensors.index.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "chat_template.jinja",
  "special_tokens_map.json",
  "added_tokens.json",
  "vocab.json",
  "merges.txt",
  "vocab.txt",
  "tokenizer.model",
] as const;

const LEGACY_WEIGHTS = /\.(bin|pth|pt|ckpt|gguf|onnx|msgpack|h5)$/i;

/**
 * A glob as Hugging Face's allow_patterns use them, matched against the whole path: `*` and `?` stay inside one
 * path segment, `**` crosses folders, a pattern without `/` also matches a file of that name in any folder.
 */
export function globToRegExp(glob: string): RegExp {
  if (!glob || glob.includes("\0")) {
    throw new TunaError("BAD_OPTION", `--include ${JSON.stringify(glob)} is not a usable glob`, {
      hint: 'use patterns such as "*.bin", "onnx/**" or "original/params.json"',
    });
  }
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*" && glob[i + 1] === "*") {
      // "**/" matches zero or more whole folders; a bare "**" anything at all.
      if (glob[i + 2] === "/") {
        re += "(?:.*/)?";
        i += 2;
      } else {
        re += ".*";
        i += 1;
      }
    } else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(glob.includes("/") ? `^${re}$` : `^(?:.*/)?${re}$`);
}

export interface Selection {
  files: RemoteFile[];
  /** Weight files of formats Tuna does not load, present in the repository but not selected. */
  skippedWeights: string[];
}

/** Default files plus whatever `include` globs match; refuses a repository whose only weights are .bin/.pth. */
export function selectFiles(all: RemoteFile[], include: string[], what: string): Selection {
  const extra = include.map(globToRegExp);
  const isDefault = (p: string) =>
    !p.includes("/") && ((DEFAULT_FILES as readonly string[]).includes(p) || p.endsWith(".safetensors"));
  const files = all.filter((f) => isDefault(f.path) || extra.some((r) => r.test(f.path)));
  const skippedWeights = all
    .filter((f) => LEGACY_WEIGHTS.test(f.path) && !files.includes(f))
    .map((f) => f.path);

  const hasSafetensors = files.some((f) => f.path.endsWith(".safetensors"));
  const hasLegacy = files.some((f) => LEGACY_WEIGHTS.test(f.path));
  const legacyAtRoot = skippedWeights.filter((p) => !p.includes("/") && /\.(bin|pth|pt)$/i.test(p));
  if (!hasSafetensors && !hasLegacy && legacyAtRoot.length > 0) {
    throw new TunaError(
      "HUB_NO_SAFETENSORS",
      `${what} has only PyTorch weights (${legacyAtRoot.slice(0, 3).join(", ")}${legacyAtRoot.length > 3 ? ", ..." : ""}), no *.safetensors; Tuna loads safetensors`,
      {
        hint: "look for a safetensors upload of this model (many repos have a refs/pr/N revision with one: --revision refs/pr/1), or pass --include '*.bin' to download the .bin files anyway and convert them",
      },
    );
  }
  for (const f of files) checkPath(f.path, what);
  return { files, skippedWeights };
}

/** A path from a hub listing is written under the target folder: it must not climb out of it. */
export function checkPath(p: string, what: string): void {
  const parts = p.split("/");
  if (p.startsWith("/") || p.includes("\\") || parts.some((s) => s === ".." || s === "." || s === "")) {
    throw new TunaError("HUB_BAD_LISTING", `${what} lists a file with an unsafe path ${JSON.stringify(p)}`, {
      hint: "a repository file path must be relative and must not contain '..'; check the --endpoint",
    });
  }
}
