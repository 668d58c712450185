// Evaluation: metrics and checkers that take model outputs as data (generation lives elsewhere).
export {
  BfclAnswer,
  BfclCase,
  type CheckOptions,
  type CheckResult,
  categoryOf,
  checkCall,
  checkCase,
  ERROR_KINDS,
  type ErrorKind,
  FunctionDoc,
  nameMatches,
  standardizeString,
} from "./bfcl.ts";
export { Bm25Index, type Hit, loadPassages, type Passage, retrievalTokens, splitPassages } from "./bm25.ts";
export {
  extractGsm8kAnswer,
  forgettingGuard,
  gsm8kAccuracy,
  gsm8kCorrect,
  gsm8kReference,
} from "./gsm8k.ts";
export { PyFloat, parsePyJson, pyEquals, pyType } from "./pyjson.ts";
export { type ParsedCall, type ParsedOutput, type ParseIssue, parseQwen3Output } from "./qwen3-output.ts";
export {
  EvalReport,
  type EvalReportInput,
  renderHtml,
  renderJson,
  renderMarkdown,
  writeReport,
} from "./report.ts";
export { answerTokens, exactMatch, rougeL, scoreAnswer, scoreAnswers, tokenF1 } from "./text-metrics.ts";
export { thinkingCheck, thinkingRate, thinkingShape } from "./thinking.ts";
export { scoreToolFiles, type ToolEvalResult, ToolPrediction } from "./tool-eval.ts";
