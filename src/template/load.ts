// Load a model's own chat template (never a built-in copy): `tokenizer_config.json` `chat_template`, or
// `chat_template.jinja` beside it, the way transformers does. The special tokens come along because
// transformers passes them to the template (`bos_token`, `eos_token`, ...) and because the end-of-turn
// token decides where a trained span ends.
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { z } from "zod";
import { TunaError } from "../errors.ts";

/** A special token in tokenizer_config.json is a string or an AddedToken-like object `{content, ...}`. */
const SpecialToken = z.union([z.string(), z.object({ content: z.string() }).loose(), z.null()]).optional();

const NamedTemplate = z.object({ name: z.string(), template: z.string() });

const TokenizerConfig = z
  .object({
    chat_template: z.union([z.string(), z.array(NamedTemplate)]).optional(),
    bos_token: SpecialToken,
    eos_token: SpecialToken,
    pad_token: SpecialToken,
    unk_token: SpecialToken,
  })
  .loose();

export interface ChatTemplate {
  /** The jinja source, exactly as the model ships it. */
  readonly source: string;
  /** Where it came from: `<dir>/tokenizer_config.json` or `<dir>/chat_template.jinja`. */
  readonly path: string;
  /** sha256 (hex) of the template source, recorded in shard manifests. */
  readonly hash: string;
  /** Special tokens as transformers passes them to the template (only those the config sets). */
  readonly specialTokens: Readonly<Record<string, string>>;
  /** The end-of-turn token an assistant turn ends with (tokenizer_config `eos_token`, e.g. `<|im_end|>`). */
  readonly eosToken: string | undefined;
  /** Parsed once; rendering reuses it. */
  readonly compiled: Template;
}

function tokenText(v: z.infer<typeof SpecialToken>): string | undefined {
  if (v === undefined || v === null) return undefined;
  return typeof v === "string" ? v : v.content;
}

/** Build a ChatTemplate from a template source (used by loadChatTemplate and by tests of other templates). */
export function compileChatTemplate(
  source: string,
  path: string,
  specialTokens: Record<string, string> = {},
): ChatTemplate {
  let compiled: Template;
  try {
    compiled = new Template(source);
  } catch (e) {
    throw new TunaError(
      "TEMPLATE_PARSE_FAILED",
      `the chat template does not parse: ${(e as Error).message}`,
      {
        where: path,
        hint: "the template must be valid jinja; Tuna renders it with @huggingface/jinja",
        cause: e,
      },
    );
  }
  return {
    source,
    path,
    hash: createHash("sha256").update(source, "utf8").digest("hex"),
    specialTokens: Object.freeze({ ...specialTokens }),
    eosToken: specialTokens.eos_token,
    compiled,
  };
}

/**
 * The model's chat template, from `<modelDir>/tokenizer_config.json` (`chat_template`: a string, or the list of
 * `{name, template}`, of which "default" is taken) or else `<modelDir>/chat_template.jinja` (which transformers
 * prefers when both exist, so we do too).
 */
export function loadChatTemplate(modelDir: string): ChatTemplate {
  const configPath = join(modelDir, "tokenizer_config.json");
  const jinjaPath = join(modelDir, "chat_template.jinja");

  let config: z.infer<typeof TokenizerConfig> | undefined;
  if (existsSync(configPath)) {
    let raw: unknown;
    try {
      raw = JSON.parse(readFileSync(configPath, "utf8"));
    } catch (e) {
      throw new TunaError("TEMPLATE_CONFIG_INVALID", `not valid JSON: ${(e as Error).message}`, {
        where: configPath,
        cause: e,
      });
    }
    const parsed = TokenizerConfig.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new TunaError(
        "TEMPLATE_CONFIG_INVALID",
        `field "${issue.path.join(".")}": ${issue.message} (expected chat_template to be a string or a list of {name, template}, special tokens strings or {content})`,
        { where: configPath },
      );
    }
    config = parsed.data;
  }

  const specialTokens: Record<string, string> = {};
  for (const key of ["bos_token", "eos_token", "pad_token", "unk_token"] as const) {
    const t = tokenText(config?.[key]);
    if (t !== undefined) specialTokens[key] = t;
  }

  // transformers (>= 4.43) saves the template as chat_template.jinja and reads that file first.
  if (existsSync(jinjaPath)) {
    return compileChatTemplate(readFileSync(jinjaPath, "utf8"), jinjaPath, specialTokens);
  }

  const ct = config?.chat_template;
  if (typeof ct === "string") return compileChatTemplate(ct, configPath, specialTokens);
  if (Array.isArray(ct)) {
    const def = ct.find((t) => t.name === "default");
    if (!def) {
      throw new TunaError(
        "TEMPLATE_NOT_FOUND",
        `field "chat_template" is a list of named templates (${ct.map((t) => `"${t.name}"`).join(", ")}) without one named "default"`,
        { where: configPath, hint: 'name the chat template "default", or write it to chat_template.jinja' },
      );
    }
    return compileChatTemplate(def.template, configPath, specialTokens);
  }

  throw new TunaError(
    "TEMPLATE_NOT_FOUND",
    `no chat template in ${modelDir}: looked for field "chat_template" in ${configPath} (${
      config ? "present, no such field" : "file missing"
    }) and for ${jinjaPath} (file missing)`,
    {
      where: modelDir,
      hint: "point at a chat (instruct) model directory; base models often ship no chat template",
    },
  );
}
