// Chat templates, thinking modes, tools, per-turn expansion and loss masks (DESIGN.md "The masking invariant").
export { type ChatTemplate, compileChatTemplate, loadChatTemplate } from "./load.ts";
export {
  type RenderOptions,
  renderChat,
  TemplateMessage,
  toTemplateMessages,
  toTemplateTools,
} from "./render.ts";
export { buildSamples, DEFAULT_LOSS_POLICY, type LossPolicy, type Sample } from "./samples.ts";
export { type TokenizedSample, tokenizeSample } from "./tokenize.ts";
