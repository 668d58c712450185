#!/usr/bin/env node
// Generates the TunaPay payment-support sample dataset from hand-written templates and slot values.
//
//   node examples/payment-support/generate.mjs [--out DIR]     (default: this script's folder)
//
// Deterministic: every file has its own seeded PRNG (mulberry32), so the output is byte-identical on
// every run and editing one file's templates leaves the others unchanged. No Math.random, no clock.
// Every number in the conversations follows knowledge/policy.md; money is computed in integer cents
// with half-up rounding, as the policy says.
//
// Writes: style.jsonl, knowledge.jsonl, reasoning.jsonl, tools.jsonl, eval/questions.jsonl,
// eval/tool_cases.jsonl, eval/tool_answers.jsonl.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outFlag = process.argv.indexOf("--out");
const OUT = outFlag >= 0 ? process.argv[outFlag + 1] : here;
const TOOLS = JSON.parse(readFileSync(join(here, "tools.json"), "utf8"));

// ---------------------------------------------------------------------------------------------------
// Seeded randomness

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Rng {
  constructor(seed) {
    this.f = mulberry32(seed);
  }
  next() {
    return this.f();
  }
  /** Integer in [lo, hi], both included. */
  int(lo, hi) {
    return lo + Math.floor(this.f() * (hi - lo + 1));
  }
  pick(arr) {
    return arr[Math.floor(this.f() * arr.length)];
  }
  chance(p) {
    return this.f() < p;
  }
  digits(n) {
    let s = "";
    for (let i = 0; i < n; i++) s += String(this.int(0, 9));
    return s;
  }
  shuffle(arr) {
    const a = arr.slice();
    for (let i = a.length - 1; i > 0; i--) {
      const j = Math.floor(this.f() * (i + 1));
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  }
}

// ---------------------------------------------------------------------------------------------------
// Money (integer cents, half-up rounding) and the policy's numbers

/** round(a / b) half up, for non-negative integers. */
const divRound = (a, b) => Math.floor((2 * a + b) / (2 * b));

const POLICY = {
  crossBorderPermille: 15, // 1.5%
  domesticWithdrawal: { free: 3, permille: 5, min: { USD: 100, CNY: 500 }, max: { USD: 2000, CNY: 10000 } },
  crossBorderWithdrawalFixed: { USD: 300, CNY: 2000 },
  cardReplacement: { USD: 500, CNY: 3500 },
  chargebackFee: { USD: 1500, CNY: 10000 },
  // cents: [single payment, daily payments, daily withdrawals]
  tiers: {
    1: { USD: [50000, 100000, 50000], CNY: [300000, 600000, 300000], crossBorder: false },
    2: { USD: [500000, 1000000, 500000], CNY: [3000000, 6000000, 3000000], crossBorder: true },
    3: { USD: [2000000, 5000000, 2000000], CNY: [12000000, 30000000, 12000000], crossBorder: true },
  },
};

const crossBorderFee = (cents) => divRound(cents * POLICY.crossBorderPermille, 1000);

/** Fee for a domestic withdrawal that is the `nth` (1-based) of the calendar month. */
function domesticWithdrawalFee(cents, nth, cur) {
  const w = POLICY.domesticWithdrawal;
  if (nth <= w.free) return 0;
  const raw = divRound(cents * w.permille, 1000);
  return Math.min(w.max[cur], Math.max(w.min[cur], raw));
}

const CUR_ZH = { USD: "美元", CNY: "元", EUR: "欧元", GBP: "英镑", JPY: "日元", HKD: "港币", SGD: "新加坡元" };

function amt(cents, cur = "USD") {
  const whole = cur === "JPY";
  const v = whole ? Math.round(cents / 100) : cents / 100;
  return v.toLocaleString("en-US", { minimumFractionDigits: whole ? 0 : 2, maximumFractionDigits: whole ? 0 : 2 });
}
/** "1,234.56 USD" in English, "1,234.56 元" / "12.00 美元" in Chinese. */
const money = (cents, cur, lang) => (lang === "zh" ? `${amt(cents, cur)} ${CUR_ZH[cur]}` : `${amt(cents, cur)} ${cur}`);
/** Plain number for JSON (tool arguments and results). */
const num = (cents) => Math.round(cents) / 100;

// Mid-market base rates (units of `to` per 1 `from`), jittered ±1% per conversation.
const BASE_RATES = {
  "EUR>USD": 1.085, "GBP>USD": 1.27, "JPY>USD": 0.00668, "HKD>USD": 0.128, "SGD>USD": 0.745, "CNY>USD": 0.1385,
  "EUR>CNY": 7.84, "GBP>CNY": 9.17, "JPY>CNY": 0.0482, "HKD>CNY": 0.924, "SGD>CNY": 5.38, "USD>CNY": 7.22,
};
/** A rate as an integer in millionths, rounded to 4 significant decimals where the rate is >= 0.1. */
function rate6(r, from, to) {
  const base = BASE_RATES[`${from}>${to}`];
  let v = Math.round(base * 1e6 * (1 + (r.next() * 2 - 1) * 0.01));
  if (base >= 0.1) v = Math.round(v / 100) * 100;
  return v;
}
const fmtRate = (r6) => (r6 >= 100000 ? (r6 / 1e6).toFixed(4) : (r6 / 1e6).toFixed(6));
const convert = (cents, r6) => divRound(cents * r6, 1e6);

// ---------------------------------------------------------------------------------------------------
// Dates (UTC days; business days are Mon–Fri, and settlement cases use holiday-free weeks only)

const DAY = 86400000;
const day = (y, m, d) => Date.UTC(y, m - 1, d);
const addDays = (t, n) => t + n * DAY;
const dow = (t) => new Date(t).getUTCDay();
const isBusiness = (t) => dow(t) !== 0 && dow(t) !== 6;
function nextBusinessDay(t) {
  let u = addDays(t, 1);
  while (!isBusiness(u)) u = addDays(u, 1);
  return u;
}
function addBusinessDays(t, n) {
  let u = t;
  for (let i = 0; i < n; i++) u = nextBusinessDay(u);
  return u;
}
const EN_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const EN_DOW = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const ZH_DOW = ["周日", "周一", "周二", "周三", "周四", "周五", "周六"];
function fmtDate(t, lang, withDow = false) {
  const d = new Date(t);
  const y = d.getUTCFullYear();
  const m = d.getUTCMonth();
  const dd = d.getUTCDate();
  if (lang === "zh") return `${y}年${m + 1}月${dd}日${withDow ? `（${ZH_DOW[d.getUTCDay()]}）` : ""}`;
  return `${withDow ? `${EN_DOW[d.getUTCDay()]}, ` : ""}${EN_MONTHS[m]} ${dd}, ${y}`;
}
const iso = (t) => new Date(t).toISOString().slice(0, 10);
const daysBetween = (a, b) => Math.round((b - a) / DAY);
/** A "today" anywhere in 2025-03 .. 2025-11. */
const randomToday = (r) => addDays(day(2025, 3, 3), r.int(0, 270));
/** A weekday in a week with no public holiday in the US or China (for settlement cases). */
function settlementDay(r) {
  const start = r.pick([day(2025, 3, 3), day(2025, 3, 10), day(2025, 3, 17), day(2025, 8, 4), day(2025, 8, 11), day(2025, 8, 18)]);
  return addDays(start, r.int(0, 4));
}

// ---------------------------------------------------------------------------------------------------
// People, merchants, ids

const EN_NAMES = ["Maria Lopez", "James Carter", "Priya Nair", "Daniel Kim", "Sofia Rossi", "Ahmed Hassan", "Emily Clarke",
  "Lucas Martin", "Hannah Weber", "Kenji Sato", "Olivia Brown", "Marcus Reed", "Chloe Dubois", "Diego Alvarez", "Aisha Bello",
  "Tom Fischer", "Grace Liu", "Noah Cohen", "Fatima Khan", "Ben Walsh", "Laura Novak", "Samuel Osei", "Mei Tan", "Ryan Murphy"];
const ZH_SURNAMES = ["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "何", "林", "罗", "高"];
const ZH_GIVEN_F = ["芳", "静", "丽", "婷", "雪", "敏", "佳怡", "欣然", "晓雯", "雨桐"];
const ZH_GIVEN_M = ["伟", "强", "磊", "军", "洋", "杰", "浩然", "子轩", "建国", "志明"];
const EN_MERCHANTS = ["Blue Harbor Books", "CityRide", "Maple Grocers", "Nimbus Cloud Storage", "Sunset Electronics", "Peak Fitness",
  "Lumen Airlines", "Urban Threads", "Corner Cafe", "PixelPlay Games", "GreenLeaf Pharmacy", "Atlas Hotels", "Northwind Furniture"];
const ZH_MERCHANTS = ["海风书店", "城市出行", "枫叶超市", "云端存储", "日落电器", "巅峰健身", "光明航空", "都市衣橱", "街角咖啡",
  "像素游戏", "绿叶药房", "阿特拉斯酒店", "北风家居"];
const FOREIGN = {
  en: [["EUR", "Paris", "Le Petit Atelier"], ["GBP", "London", "Camden Market Goods"], ["JPY", "Tokyo", "Shibuya Camera"],
    ["HKD", "Hong Kong", "Harbour Tea House"], ["SGD", "Singapore", "Marina Gadgets"]],
  zh: [["EUR", "巴黎", "Le Petit Atelier"], ["GBP", "伦敦", "Camden Market Goods"], ["JPY", "东京", "涩谷相机店"],
    ["HKD", "香港", "海港茶楼"], ["SGD", "新加坡", "滨海数码"]],
};

function person(r, lang) {
  if (lang === "en") {
    const full = r.pick(EN_NAMES);
    return { full, call: full.split(" ")[0] };
  }
  const s = r.pick(ZH_SURNAMES);
  const female = r.chance(0.5);
  const full = s + r.pick(female ? ZH_GIVEN_F : ZH_GIVEN_M);
  return { full, call: s + (female ? "女士" : "先生") };
}
const txnId = (r, t) => `TP${iso(t).replace(/-/g, "").slice(2)}${r.digits(4)}`;
const userId = (r) => `U${r.int(1, 9)}${r.digits(7)}`;
const merchantId = (r) => `M${r.int(1, 9)}${r.digits(5)}`;
const last4 = (r) => `${r.int(1, 9)}${r.digits(3)}`;
const callId = (r) => `call_${r.digits(3)}${"abcdefghjkmnpqrstuvwxyz"[r.int(0, 22)]}${r.digits(4)}`;

/** An amount in cents between lo and hi (whole units), sometimes with cents. */
function cents(r, lo, hi, cur = "USD") {
  const whole = r.int(lo, hi);
  if (cur === "JPY") return whole * 100;
  return whole * 100 + (r.chance(0.6) ? r.int(1, 99) : 0);
}

// ---------------------------------------------------------------------------------------------------
// The house voice: warm, concise, greets by name when known, never blames, ends with an offer to help.

const VOICE = {
  en: {
    greetName: ["Hi {n}!", "Hello {n}!", "Hi {n}, thanks for reaching out.", "Thanks for getting in touch, {n}."],
    greetAnon: ["Hi there!", "Hello!", "Thanks for reaching out.", "Hi, thanks for getting in touch."],
    sorry: ["I'm sorry for the trouble.", "I understand how frustrating that is.", "Sorry for the worry this has caused.",
      "I know that's not what you expected, and I'm sorry."],
    close: ["Is there anything else I can help you with?", "Let me know if there's anything else I can do for you.",
      "Happy to help with anything else you need.", "If anything else comes up, I'm here to help."],
    system: "You are TunaPay's customer support assistant. Be warm and concise, greet the customer by name when you know it, never blame the customer, follow TunaPay policy exactly, and end by offering further help.",
    profile: (p) => ` The customer's name is ${p.full}.`,
    today: (t) => ` Today is ${fmtDate(t, "en", true)}.`,
  },
  zh: {
    greetName: ["{n}您好，", "{n}，您好！", "您好，{n}！", "{n}您好，感谢您的联系。"],
    greetAnon: ["您好，", "您好！", "您好，感谢您联系 TunaPay。", "您好，很高兴为您服务。"],
    sorry: ["给您带来不便，非常抱歉。", "理解您着急的心情。", "很抱歉让您担心了。", "这确实让人困扰，非常抱歉。"],
    close: ["请问还有其他可以帮您的吗？", "如有其他问题，随时告诉我。", "还有什么需要我帮您处理的吗？", "如还需要帮助，请随时联系我们。"],
    system: "你是 TunaPay 的客服助手。语气亲切、简洁，知道客户姓名时称呼对方，始终使用“您”，从不责怪客户，严格遵循 TunaPay 政策，结尾主动询问是否还需要帮助。",
    profile: (p) => `客户姓名：${p.full}（称呼：${p.call}）。`,
    today: (t) => `今天是${fmtDate(t, "zh", true)}。`,
  },
};

/** Per-conversation voice helpers; the name is used only if `known`. */
function voice(r, lang, p, known) {
  const v = VOICE[lang];
  const sep = lang === "en" ? " " : "";
  return {
    greet: () => (known ? r.pick(v.greetName).replace("{n}", p.call) : r.pick(v.greetAnon)),
    sorry: () => r.pick(v.sorry),
    close: () => r.pick(v.close),
    join: (...parts) => parts.filter(Boolean).join(sep),
  };
}

function systemPrompt(lang, { p = null, today = null } = {}) {
  const v = VOICE[lang];
  return v.system + (p ? v.profile(p) : "") + (today ? v.today(today) : "");
}

const sys = (content) => ({ role: "system", content });
const user = (content) => ({ role: "user", content });
const assistant = (content, extra = {}) => ({ role: "assistant", content, ...extra });
const fill = (s, slots) => s.replace(/\{(\w+)\}/g, (_, k) => {
  if (!(k in slots)) throw new Error(`template slot {${k}} has no value in: ${s}`);
  return slots[k];
});

// ---------------------------------------------------------------------------------------------------
// style.jsonl — house style across everyday support issues. Each issue returns [user, assistant] turns.

const STYLE_ISSUES = {
  failed_payment(r, lang, c) {
    const cur = lang === "en" ? "USD" : "CNY";
    const m = r.pick(lang === "en" ? EN_MERCHANTS : ZH_MERCHANTS);
    const a = money(cents(r, 12, 480, cur), cur, lang);
    if (lang === "en") {
      const q = fill(r.pick([
        "My payment to {m} for {a} just failed, but I think the money left my card. What's going on?",
        "I paid {m} {a} and got 'payment failed'. Was I charged anyway?",
        "payment failed at {m} ({a}) but my bank app shows a pending charge??",
      ]), { m, a });
      return [[q, c.v.join(c.v.greet(), c.v.sorry(),
        `A failed payment never takes money from your account. If your bank app shows a pending ${a}, that's only a temporary authorization hold: TunaPay has already released it on our side, and your bank removes it within 5 business days.`,
        r.pick(["You're welcome to try the payment again whenever you're ready.", "You can retry the payment to " + m + " at any time."]),
        c.v.close())]];
    }
    const q = fill(r.pick([
      "我在{m}付了{a}，显示支付失败，但卡里好像扣钱了，怎么回事？",
      "支付{m}{a}提示失败了，钱到底扣没扣？",
      "刚才给{m}付款{a}失败，银行App里却有一笔待处理的扣款，这是为什么？",
    ]), { m, a });
    return [[q, c.v.join(c.v.greet(), c.v.sorry(),
      `支付失败不会从您的账户扣款。如果银行App里显示一笔${a}的待处理款项，那只是临时预授权冻结：TunaPay 已经立即释放，发卡行会在 5 个工作日内解除。`,
      r.pick(["您可以随时重新尝试支付。", `您随时可以重新向${m}付款。`]), c.v.close())]];
  },

  double_charge(r, lang, c) {
    const cur = lang === "en" ? "USD" : "CNY";
    const today = randomToday(r);
    const when = addDays(today, -r.int(1, 2));
    const m = r.pick(lang === "en" ? EN_MERCHANTS : ZH_MERCHANTS);
    const a = money(cents(r, 9, 350, cur), cur, lang);
    if (lang === "en") {
      const q = fill(r.pick([
        "I was charged twice for the same order at {m} on {d}, {a} each time.",
        "Why do I see two charges of {a} from {m}? I only ordered once ({d}).",
        "Double charge!! {m}, {a} x2 on {d}. Please fix.",
      ]), { m, a, d: fmtDate(when, "en") });
      return [[q, c.v.join(c.v.greet(), r.pick(["Sorry about the double charge — let's get that sorted.", c.v.sorry()]),
        `A duplicate charge like this is reversed automatically within 3 business days, so the second ${a} should disappear on its own.`,
        `If it's still there after that, just send me the transaction ID and I'll refund the duplicate in full — that works any time within 90 days of the charge.`,
        c.v.close())]];
    }
    const q = fill(r.pick([
      "我{d}在{m}的同一笔订单被扣了两次，每次{a}。",
      "为什么{m}扣了我两笔{a}？我只下了一单（{d}）。",
      "重复扣款了！{m}，{d}，{a}扣了两次，请处理。",
    ]), { m, a, d: fmtDate(when, "zh") });
    return [[q, c.v.join(c.v.greet(), r.pick(["重复扣款给您添麻烦了，我来帮您处理。", c.v.sorry()]),
      `这类重复扣款会在 3 个工作日内自动冲正，多扣的那笔${a}会自动退回。`,
      "如果 3 个工作日后仍未退回，请把交易号发给我，我会为您全额退还重复的一笔——扣款后 90 天内都可以办理。", c.v.close())]];
  },

  card_declined(r, lang, c) {
    const m = r.pick(lang === "en" ? EN_MERCHANTS : ZH_MERCHANTS);
    if (lang === "en") {
      const q = fill(r.pick([
        "My card keeps getting declined at {m}. This is embarrassing.",
        "Card declined again when paying {m}, what's wrong with it?",
        "Why was my TunaPay card declined at {m} today?",
      ]), { m });
      const turns = [[q, c.v.join(c.v.greet(), c.v.sorry(),
        "A decline usually comes from one of these: not enough funds, an expired card, a CVV or billing address that doesn't match, your verification tier's limit, or your bank's own fraud check.",
        "Could you check the card's expiry date and the details you entered? I'm glad to look into it further with you.")]];
      if (r.chance(0.5)) {
        turns.push([r.pick(["Card is valid and there's plenty of money on it. The details are right too.", "All of that looks fine on my side."]),
          c.v.join("Thanks for checking.", "Then the two things left are your tier's limits — on Tier 1 Basic a single payment can be at most 500 USD and payments are capped at 1,000 USD a day — and your bank's fraud check, which a quick call to your bank usually clears.",
            "You can see your tier under Profile > Verification.", c.v.close())]);
      } else turns[0][1] = c.v.join(turns[0][1], c.v.close());
      return turns;
    }
    const q = fill(r.pick(["我的卡在{m}一直被拒，太尴尬了。", "在{m}付款时卡又被拒了，是卡有问题吗？", "今天我的 TunaPay 卡在{m}为什么被拒？"]), { m });
    const turns = [[q, c.v.join(c.v.greet(), c.v.sorry(),
      "卡被拒通常有以下几个原因：余额不足、卡已过期、CVV 或账单地址不一致、超出您认证等级的限额，或发卡行自身的风控。",
      "麻烦您先核对一下卡片有效期和填写的信息，我也很乐意继续帮您排查。")]];
    if (r.chance(0.5)) {
      turns.push([r.pick(["卡没过期，余额也够，信息都填对了。", "这些我都看过了，没有问题。"]),
        c.v.join("感谢您的核对。", "那剩下两个可能：一是等级限额——一级基础账户单笔最多 3,000 元、每日支付最多 6,000 元；二是发卡行的风控，通常给银行打个电话即可解除。",
          "您可以在“我的 > 身份认证”中查看当前等级。", c.v.close())]);
    } else turns[0][1] = c.v.join(turns[0][1], c.v.close());
    return turns;
  },

  login_trouble(r, lang, c) {
    if (lang === "en") {
      const q = r.pick(["I can't log in, it says my account is locked.", "Locked out of my TunaPay account after a few password attempts. Help!",
        "Sign-in is blocked and I need to pay a bill today."]);
      return [[q, c.v.join(c.v.greet(), c.v.sorry(),
        "After five wrong passwords in a row, sign-in is locked for 30 minutes to keep your account safe. Once the 30 minutes have passed you can sign in again, or you can reset your password right away by email or SMS from the sign-in page.",
        "Please never share your password or a verification code with anyone — TunaPay will never ask for them.", c.v.close())]];
    }
    const q = r.pick(["我登录不了，提示账户被锁定。", "密码输错几次后账户被锁了，怎么办？", "登录被限制了，我今天还要交账单。"]);
    return [[q, c.v.join(c.v.greet(), c.v.sorry(),
      "为保护您的账户安全，连续输错 5 次密码后，登录会锁定 30 分钟。30 分钟后您就可以重新登录；也可以在登录页通过邮箱或短信立即重置密码。",
      "请不要向任何人透露密码或验证码——TunaPay 绝不会向您索要。", c.v.close())]];
  },

  limits(r, lang, c) {
    const tier = r.int(1, 3);
    const cur = lang === "en" ? "USD" : "CNY";
    const [single, daily] = POLICY.tiers[tier][cur];
    const next = tier < 3 ? tier + 1 : null;
    if (lang === "en") {
      const q = fill(r.pick(["Why can't I pay more today? I'm on Tier {t}.", "I'm a Tier {t} customer and my payment was blocked by a limit. What are my limits?",
        "What's the most I can spend per day on Tier {t}?"]), { t: tier });
      const up = next ? ` If you need more, you can upgrade to Tier ${next} under Profile > Verification${next === 2 ? " (ID and a selfie, reviewed within 1 business day)" : " (proof of address and source of funds, reviewed within 3 business days)"}.` : "";
      return [[q, c.v.join(c.v.greet(),
        `On Tier ${tier} a single payment can be up to ${money(single, cur, lang)}, and payments add up to at most ${money(daily, cur, lang)} a day. Successful and pending payments count toward it; failed ones don't.`,
        `The daily limit resets at 00:00 in the time zone set in your profile.${up}`, c.v.close())]];
    }
    const zt = ["", "一级", "二级", "三级"];
    const q = fill(r.pick(["我是{t}账户，今天为什么不能再付款了？", "我是{t}认证用户，付款被限额拦住了，我的限额是多少？", "{t}每天最多能花多少钱？"]), { t: zt[tier] });
    const up = next ? `如需更高额度，可以在“我的 > 身份认证”升级到${zt[next]}${next === 2 ? "（身份证件和自拍照，1 个工作日内审核）" : "（地址证明和资金来源证明，3 个工作日内审核）"}。` : "";
    return [[q, c.v.join(c.v.greet(),
      `${zt[tier]}账户单笔支付最高 ${money(single, cur, lang)}，每日支付合计最高 ${money(daily, cur, lang)}。成功和处理中的支付都会计入，失败的不计入。`,
      `每日限额在您资料中所设时区的 00:00 重置。${up}`, c.v.close())]];
  },

  kyc(r, lang, c) {
    if (lang === "en") {
      const q = r.pick(["How do I verify my identity, and how long does it take?", "What do I need for Tier 2 verification?",
        "I uploaded my ID for verification. When will it be approved?"]);
      return [[q, c.v.join(c.v.greet(),
        "For Tier 2 Verified we need a government ID and a selfie, and the review is done within 1 business day. Tier 3 Premium additionally needs proof of address and proof of your source of funds, reviewed within 3 business days.",
        "You can start or check your verification under Profile > Verification.", c.v.close())]];
    }
    const q = r.pick(["怎么做身份认证？需要多久？", "升级二级认证需要准备什么？", "我已经上传了身份证件，什么时候能通过？"]);
    return [[q, c.v.join(c.v.greet(),
      "二级实名认证需要身份证件和一张自拍照，1 个工作日内完成审核；三级高级认证还需要地址证明和资金来源证明，3 个工作日内完成审核。",
      "您可以在“我的 > 身份认证”中提交或查看进度。", c.v.close())]];
  },

  settlement_delay(r, lang, c) {
    const cur = lang === "en" ? "USD" : "CNY";
    const sale = settlementDay(r);
    const pay = nextBusinessDay(sale);
    const a = money(cents(r, 300, 9000, cur), cur, lang);
    if (lang === "en") {
      const q = fill(r.pick(["I'm a merchant. My sales from {d} ({a}) haven't reached my bank yet. When will they?",
        "When do I get paid for {d}'s card sales? About {a}.", "Merchant here — settlement for {d} still missing, {a} total."]), { d: fmtDate(sale, "en", true), a });
      const weekend = dow(sale) === 5 ? ` Since ${fmtDate(sale, "en")} was a Friday, the next business day is Monday.` : "";
      return [[q, c.v.join(c.v.greet(),
        `Settlement is T+1: sales captured before 22:00 your local time on a business day are paid out on the next business day.${weekend} So your ${a} from ${fmtDate(sale, "en", true)} is scheduled for ${fmtDate(pay, "en", true)}.`,
        "One exception: during a merchant's first 30 days after activation, settlement is T+3. If the payout hasn't arrived by the end of the scheduled day, I'll open a settlement case for you right away.", c.v.close())]];
    }
    const q = fill(r.pick(["我是商户，{d}的营业款{a}还没到账，什么时候能到？", "{d}的刷卡收入大约{a}，什么时候结算给我？", "商户咨询：{d}的结算款{a}还没收到。"]), { d: fmtDate(sale, "zh", true), a });
    const weekend = dow(sale) === 5 ? `${fmtDate(sale, "zh")}是周五，下一个营业日是周一。` : "";
    return [[q, c.v.join(c.v.greet(),
      `我们的结算周期是 T+1：营业日当地时间 22:00 前完成的交易，会在下一个营业日打款。${weekend}因此您${fmtDate(sale, "zh", true)}的${a}预计在${fmtDate(pay, "zh", true)}到账。`,
      "另外，新商户开通后的前 30 天按 T+3 结算。如果预定日期结束仍未到账，我会立即为您提交结算工单。", c.v.close())]];
  },

  refund_status(r, lang, c) {
    const cur = lang === "en" ? "USD" : "CNY";
    const m = r.pick(lang === "en" ? EN_MERCHANTS : ZH_MERCHANTS);
    const a = money(cents(r, 15, 600, cur), cur, lang);
    const dest = r.pick(["card", "balance", "bank"]);
    const n = r.int(1, 3);
    const en = { card: ["my card", "your card", "3–5 business days"], balance: ["my TunaPay balance", "your TunaPay balance", "1 business day"], bank: ["my bank account", "your bank account", "1–3 business days"] };
    const zh = { card: ["银行卡", "银行卡", "3–5 个工作日"], balance: ["TunaPay 余额", "TunaPay 余额", "1 个工作日"], bank: ["银行账户", "银行账户", "1–3 个工作日"] };
    if (lang === "en") {
      const q = fill(r.pick(["{m} approved my refund of {a} {n} day(s) ago. When will it be back on {dest}?",
        "Where is my refund? {a} from {m}, going back to {dest}, approved {n} day(s) ago.", "Refund of {a} ({m}) still not on {dest}, it's been {n} day(s)."]), { m, a, n, dest: en[dest][0] });
      return [[q, c.v.join(c.v.greet(), r.pick(["I understand you'd like your money back soon.", "Thanks for your patience with this."]),
        `Refunds to ${en[dest][1]} take ${en[dest][2]} from approval, so your ${a} from ${m} is still on its way.`,
        "If it hasn't arrived by the end of that time, send me the transaction ID and I'll trace it for you.", c.v.close())]];
    }
    const q = fill(r.pick(["{m}{n}天前同意退款{a}，什么时候退回到{dest}？", "我的退款去哪了？{m}的{a}，退回{dest}，{n}天前已批准。", "{m}的退款{a}过了{n}天还没到{dest}。"]), { m, a, n, dest: zh[dest][0] });
    return [[q, c.v.join(c.v.greet(), r.pick(["理解您希望尽快收到退款。", "感谢您的耐心等待。"]),
      `退回${zh[dest][1]}需要自批准起 ${zh[dest][2]}，所以您在${m}的${a}退款仍在途中。`,
      "如果到期仍未到账，请把交易号发给我，我来帮您追踪。", c.v.close())]];
  },

  chargeback(r, lang, c) {
    const m = r.pick(lang === "en" ? EN_MERCHANTS : ZH_MERCHANTS);
    if (lang === "en") {
      const q = fill(r.pick(["I want to dispute a charge from {m}. They never delivered my order.", "How does a chargeback work? {m} won't answer my emails.",
        "Can I get my money back from {m}? The item was never shipped."]), { m });
      return [[q, c.v.join(c.v.greet(), c.v.sorry(),
        "You can open a dispute within 120 days of the transaction date. The merchant then has 7 days to respond, and we decide within 30 days after their response. If the decision is in your favour, the money is back within 3 business days.",
        "If you share the transaction ID, I can start the dispute for you now.", c.v.close())]];
    }
    const q = fill(r.pick(["我要对{m}的一笔扣款提出争议，他们一直没发货。", "拒付怎么操作？{m}不回我的邮件。", "{m}的东西一直没寄出，钱能要回来吗？"]), { m });
    return [[q, c.v.join(c.v.greet(), c.v.sorry(),
      "您可以在交易日期后 120 天内发起争议。商户有 7 天时间回应，我们会在商户回应后 30 天内作出决定；如果结果对您有利，款项会在 3 个工作日内退回。",
      "您把交易号告诉我，我现在就可以帮您发起争议。", c.v.close())]];
  },

  currency_conversion(r, lang, c) {
    const acct = lang === "en" ? "USD" : "CNY";
    const [fcur, city, shop] = r.pick(FOREIGN[lang]);
    const price = fcur === "JPY" ? cents(r, 1500, 60000, "JPY") : cents(r, 20, 700, fcur);
    const r6 = rate6(r, fcur, acct);
    const conv = convert(price, r6);
    const fee = crossBorderFee(conv);
    const total = conv + fee;
    if (lang === "en") {
      const q = fill(r.pick(["Why was I charged {t} when the price at {shop} in {city} was {p}?", "I paid {p} in {city} but my statement says {t}. Why the difference?",
        "The price was {p} ({shop}), the charge is {t}. Is that right?"]), { t: money(total, acct, lang), p: money(price, fcur, lang), shop, city });
      return [[q, c.v.join(c.v.greet(), "Happy to break that down for you.",
        `${money(price, fcur, lang)} was converted at the mid-market rate at the time of payment (1 ${fcur} = ${fmtRate(r6)} ${acct}), which makes ${money(conv, acct, lang)}. Payments in another currency also carry our 1.5% cross-border fee, here ${money(fee, acct, lang)}, so the total is ${money(total, acct, lang)}.`,
        c.v.close())]];
    }
    const q = fill(r.pick(["我在{city}的{shop}买东西标价{p}，为什么扣了{t}？", "在{city}付了{p}，账单显示{t}，差额是怎么来的？", "标价{p}（{shop}），实际扣了{t}，这样对吗？"]),
      { t: money(total, acct, lang), p: money(price, fcur, lang), shop, city });
    return [[q, c.v.join(c.v.greet(), "我来为您拆分一下这笔费用。",
      `${money(price, fcur, lang)}按支付时的中间价（1 ${fcur} = ${fmtRate(r6)} ${acct}）换算为 ${money(conv, acct, lang)}；外币支付另收 1.5% 跨境手续费，即 ${money(fee, acct, lang)}，合计 ${money(total, acct, lang)}。`,
      c.v.close())]];
  },

  lost_card(r, lang, c) {
    const l4 = last4(r);
    const cur = lang === "en" ? "USD" : "CNY";
    if (lang === "en") {
      const q = fill(r.pick(["I lost my card ending {l}. What should I do?", "Can't find my TunaPay card ({l}) anywhere, I think I dropped it.", "Help, my wallet with my card ending in {l} is gone."]), { l: l4 });
      return [[q, c.v.join(c.v.greet(), r.pick(["I'm sorry — let's keep your money safe first.", c.v.sorry()]),
        `You can freeze the card ending ${l4} in the app right now, and it takes effect at once; if it turns up, you can unfreeze it any time. If it's gone for good, reporting it lost blocks it permanently and a replacement arrives in 5–7 business days — the first replacement each calendar year is free, after that it's ${money(POLICY.cardReplacement[cur], cur, lang)}.`,
        "If you spot any payment you didn't make, tell us within 60 days and it's refunded in full after our investigation.", c.v.close())]];
    }
    const q = fill(r.pick(["我的卡（尾号{l}）丢了，怎么办？", "尾号{l}的 TunaPay 卡找不到了，可能掉了。", "钱包丢了，里面有尾号{l}的卡，急！"]), { l: l4 });
    return [[q, c.v.join(c.v.greet(), r.pick(["别着急，我们先保障您的资金安全。", c.v.sorry()]),
      `您可以立即在 App 中冻结尾号${l4}的卡片，冻结马上生效；如果找到了，随时可以解冻。如果确认丢失，挂失后卡片将永久停用，新卡 5–7 个工作日送达——每个自然年第一次补卡免费，之后每次 ${money(POLICY.cardReplacement[cur], cur, lang)}。`,
      "如发现非本人交易，请在 60 天内告诉我们，经调查后将全额退还。", c.v.close())]];
  },

  phishing(r, lang, c) {
    if (lang === "en") {
      const q = r.pick(["Someone called saying they're from TunaPay and asked for my verification code. Is that real?",
        "I got an SMS asking me to confirm my full card number for TunaPay. Legit?", "A 'TunaPay agent' wants my password to fix my account. Should I give it?"]);
      return [[q, c.v.join(c.v.greet(), "Thank you for checking with us first — that was exactly the right thing to do.",
        "TunaPay never asks for a full card number, a password or a verification code, so please don't share them. If you already did, reset your password now and freeze your card in the app, and I'll help you review recent transactions.",
        c.v.close())]];
    }
    const q = r.pick(["有人打电话说是 TunaPay 客服，要我的验证码，是真的吗？", "收到短信让我提供完整卡号来验证 TunaPay 账户，可信吗？", "一个自称 TunaPay 的人要我的密码帮我处理账户，能给吗？"]);
    return [[q, c.v.join(c.v.greet(), "感谢您先向我们核实，您做得非常对。",
      "TunaPay 绝不会索要完整卡号、密码或验证码，请不要提供。如果已经提供了，请立即重置密码并在 App 中冻结卡片，我会协助您核查近期交易。", c.v.close())]];
  },

  withdrawal_missing(r, lang, c) {
    const cur = lang === "en" ? "USD" : "CNY";
    const a = money(cents(r, 50, 3000, cur), cur, lang);
    const cross = r.chance(0.4);
    if (lang === "en") {
      const q = cross ? fill(r.pick(["I withdrew {a} to my bank account abroad yesterday and it's not there.", "International withdrawal of {a} still hasn't arrived."]), { a })
        : fill(r.pick(["I withdrew {a} to my bank yesterday, still nothing.", "My withdrawal of {a} hasn't shown up in my bank account."]), { a });
      const when = cross ? "Withdrawals to a bank account in another country or currency arrive within 2–4 business days" : "Standard withdrawals to your bank account arrive within 1 business day";
      return [[q, c.v.join(c.v.greet(), r.pick(["I understand you're waiting on this money.", c.v.sorry()]),
        `${when}, counted from the day you made the withdrawal. If your ${a} hasn't arrived after that, send me the transaction ID and I'll trace it with the bank.`, c.v.close())]];
    }
    const q = cross ? fill(r.pick(["我昨天提现{a}到境外银行账户，还没到。", "跨境提现{a}一直没到账。"]), { a })
      : fill(r.pick(["我昨天提现{a}到银行卡，还没到账。", "提现{a}，银行账户里一直没看到。"]), { a });
    const when = cross ? "提现到其他国家或币种的银行账户需要 2–4 个工作日" : "普通提现到银行账户 1 个工作日内到账";
    return [[q, c.v.join(c.v.greet(), r.pick(["理解您着急用这笔钱。", c.v.sorry()]),
      `${when}，从您发起提现当天起算。如果到期后${a}仍未到账，请把交易号发给我，我会联系银行追踪。`, c.v.close())]];
  },

  cross_border_blocked(r, lang, c) {
    const [fcur, city] = r.pick(FOREIGN[lang]);
    if (lang === "en") {
      const q = fill(r.pick(["I tried to pay a shop in {city} ({fcur}) and the app says 'not allowed'. Why?", "Can I use TunaPay to pay in {fcur}? It keeps refusing.",
        "Paying a merchant in {city} doesn't work for me."]), { city, fcur });
      return [[q, c.v.join(c.v.greet(), c.v.sorry(),
        "Cross-border payments and withdrawals need Tier 2 Verified or above, and it sounds like your account is still on Tier 1 Basic. You can upgrade under Profile > Verification with a government ID and a selfie; the review is done within 1 business day.",
        "Once verified, payments in another currency carry a 1.5% cross-border fee on the converted amount.", c.v.close())]];
    }
    const q = fill(r.pick(["我想给{city}的商家付款（{fcur}），App 提示“不可用”，为什么？", "TunaPay 能用{fcur}付款吗？一直被拒绝。", "向{city}的商户付款总是失败。"]), { city, fcur });
    return [[q, c.v.join(c.v.greet(), c.v.sorry(),
      "跨境支付和跨境提现需要二级实名或以上等级，您的账户目前可能还是一级基础。您可以在“我的 > 身份认证”提交身份证件和自拍照升级，1 个工作日内完成审核。",
      "认证通过后，外币支付会按换算后金额收取 1.5% 跨境手续费。", c.v.close())]];
  },
};

function genStyle() {
  const r = new Rng(0x5eed01);
  const out = [];
  const issues = Object.keys(STYLE_ISSUES);
  for (let k = 0; k < 3; k++) {
    for (const issue of issues) {
      for (const lang of ["en", "zh"]) {
        const p = person(r, lang);
        const mode = r.pick(["profile", "profile", "signed", "anon"]);
        const known = mode !== "anon";
        const c = { v: voice(r, lang, p, known) };
        const turns = STYLE_ISSUES[issue](r, lang, c);
        if (mode === "signed") {
          turns[0][0] = lang === "en" ? `${r.pick(["Hi, this is", "Hello, it's", "Hi, I'm"])} ${p.call}. ${turns[0][0]}` : `您好，我是${p.full}。${turns[0][0]}`;
        }
        const messages = [sys(systemPrompt(lang, { p: mode === "profile" ? p : null }))];
        for (const [u, a] of turns) messages.push(user(u), assistant(a));
        out.push({ messages });
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// knowledge.jsonl and eval/questions.jsonl — policy facts. `q` are the training paraphrases, `e` the
// held-out evaluation paraphrase (never used for training), `a` the answer (also the eval reference).

const FACTS = [
  { id: "cross_border_fee",
    en: { q: ["What is the fee for paying in a foreign currency?", "How much does TunaPay charge for cross-border payments?"],
      e: "If I buy something abroad with TunaPay, what percentage do you take?",
      a: "Cross-border payments and withdrawals carry a 1.5% fee. The amount is first converted at the mid-market rate at the time of the transaction, and the 1.5% is charged on the converted amount in your account currency. There is no minimum fee." },
    zh: { q: ["用外币付款要收多少手续费？", "TunaPay 跨境支付怎么收费？"],
      e: "在国外用 TunaPay 消费，你们抽成多少？",
      a: "跨境支付和跨境提现收取 1.5% 手续费。金额先按交易时的中间价换算成您的账户币种，再对换算后的金额收取 1.5%，没有最低收费。" } },
  { id: "domestic_payment_fee",
    en: { q: ["Do I pay anything to send a domestic payment?", "Are there fees on local payments in my own currency?"],
      e: "Is paying a shop in my own country free with TunaPay?",
      a: "Domestic payments — same currency, same country — are free for you as the payer." },
    zh: { q: ["境内付款要手续费吗？", "用本币在国内支付收费吗？"],
      e: "在国内商家用 TunaPay 付钱免费吗？",
      a: "境内支付（同币种、同国家）对付款方免费。" } },
  { id: "domestic_withdrawal_fee",
    en: { q: ["How many free withdrawals do I get each month?", "What does it cost to withdraw money to my bank account?"],
      e: "After my free bank withdrawals are used up, what do further ones cost?",
      a: "Your first 3 domestic withdrawals to a bank account in each calendar month are free. From the 4th on, the fee is 0.5% of the amount, at least 1.00 USD and at most 20.00 USD (for CNY accounts at least 5.00 CNY and at most 100.00 CNY)." },
    zh: { q: ["每个月有几次免费提现？", "提现到银行卡怎么收费？"],
      e: "免费提现次数用完以后，再提现怎么收费？",
      a: "每个自然月前 3 笔境内提现到银行账户免费；从第 4 笔起收取金额的 0.5%，最低 5.00 元、最高 100.00 元（美元账户最低 1.00 美元、最高 20.00 美元）。" } },
  { id: "cross_border_withdrawal_fee",
    en: { q: ["What does an international withdrawal cost?", "How much is the fee to withdraw to a bank account in another currency?"],
      e: "Do my free monthly withdrawals also cover sending money to my bank abroad?",
      a: "A cross-border withdrawal costs the 1.5% cross-border fee plus a fixed 3.00 USD (20.00 CNY for CNY accounts). Cross-border withdrawals are never free and don't use up your 3 free domestic withdrawals; they arrive within 2–4 business days." },
    zh: { q: ["跨境提现手续费是多少？", "提现到其他币种的银行账户怎么收费？"],
      e: "每月的免费提现次数能用在提现到境外银行吗？",
      a: "跨境提现收取 1.5% 跨境手续费，另加固定 20.00 元（美元账户 3.00 美元）。跨境提现从不免费，也不占用每月 3 笔境内免费提现次数，2–4 个工作日到账。" } },
  { id: "withdrawal_time",
    en: { q: ["How long does a withdrawal to my bank take?", "When will money I withdraw reach my bank account?"],
      e: "If I cash out to my local bank today, how soon will I see it?",
      a: "Standard withdrawals to a bank account in your own country and currency arrive within 1 business day. Cross-border withdrawals take 2–4 business days." },
    zh: { q: ["提现到银行卡要多久？", "提现的钱什么时候到银行账户？"],
      e: "今天提现到国内银行卡，多快能到？",
      a: "普通境内提现 1 个工作日内到账；跨境提现需要 2–4 个工作日。" } },
  { id: "refund_7_days",
    en: { q: ["How long do I have to get a refund with no questions asked?", "What is the no-questions refund window?"],
      e: "I bought something 5 days ago and changed my mind — can I still get my money back easily?",
      a: "Within 7 days of the payment (the payment date is day 0) you can get a refund with no questions asked, and it's approved immediately." },
    zh: { q: ["无理由退款的期限是多久？", "多少天内可以无理由退款？"],
      e: "5 天前买的东西不想要了，还能直接退款吗？",
      a: "支付后 7 天内（支付当天为第 0 天）可以无理由退款，申请后立即批准。" } },
  { id: "refund_8_30_days",
    en: { q: ["Can I get a refund after 7 days?", "What happens if I ask for a refund two weeks after paying?"],
      e: "My purchase was 20 days ago. Is a refund still possible?",
      a: "Yes — from day 8 to day 30 after the payment, a refund is possible after review: you tell us the reason, and TunaPay and the merchant decide within 3 business days. The 1.5% cross-border fee, if any, is not refunded in this case." },
    zh: { q: ["超过 7 天还能退款吗？", "付款两周后申请退款会怎样？"],
      e: "东西是 20 天前买的，还能退吗？",
      a: "可以。支付后第 8 到第 30 天可以申请审核退款：您说明原因，TunaPay 与商户在 3 个工作日内决定。这种情况下如有 1.5% 跨境手续费，不予退还。" } },
  { id: "refund_after_30",
    en: { q: ["Can I get a refund for something I bought 45 days ago?", "Is there any refund after 30 days?"],
      e: "It's been over a month since I paid. Can TunaPay still refund me?",
      a: "After 30 days a refund is no longer possible through TunaPay. Please contact the merchant directly, or, if there's a problem with the purchase, open a dispute — that's possible within 120 days of the transaction date." },
    zh: { q: ["45 天前买的东西能退款吗？", "超过 30 天还能退款吗？"],
      e: "付款已经一个多月了，TunaPay 还能给我退吗？",
      a: "超过 30 天后无法通过 TunaPay 退款。请直接联系商户；如果交易有问题，也可以在交易日期后 120 天内发起争议。" } },
  { id: "cross_border_fee_refund",
    en: { q: ["Do I get the cross-border fee back when I get a refund?", "Is the 1.5% fee refunded too?"],
      e: "I returned an item I paid for in euros. What happens to the conversion fee I paid?",
      a: "With a refund within 7 days of the payment, the 1.5% cross-border fee is refunded in full (proportionally for a partial refund). With a refund after review (days 8–30), the cross-border fee is not refunded." },
    zh: { q: ["退款时跨境手续费会退吗？", "1.5% 的手续费也能退回来吗？"],
      e: "用欧元买的东西退货了，当时付的换汇手续费怎么办？",
      a: "支付后 7 天内退款，1.5% 跨境手续费全额退还（部分退款按比例退还）；第 8–30 天审核后退款，跨境手续费不退还。" } },
  { id: "refund_destination_time",
    en: { q: ["How long does a refund take to reach my card?", "When does refunded money show up?"],
      e: "My refund was approved this morning. When will I actually have the money?",
      a: "It depends on where the money goes back: to your TunaPay balance within 1 business day, to a bank card within 3–5 business days, and to a bank account within 1–3 business days." },
    zh: { q: ["退款多久能退回银行卡？", "退款什么时候到账？"],
      e: "今天上午退款批准了，钱什么时候真正到我手上？",
      a: "取决于退回去向：TunaPay 余额 1 个工作日内，银行卡 3–5 个工作日，银行账户 1–3 个工作日。" } },
  { id: "p2p_refund",
    en: { q: ["I sent money to the wrong friend. Can TunaPay refund it?", "Can transfers to family be refunded?"],
      e: "Oops, I transferred 50 dollars to my cousin by mistake. Can you reverse it?",
      a: "Transfers to friends and family can't be refunded through TunaPay. Please ask the recipient to send the money back to you. Gift-card purchases can't be refunded either." },
    zh: { q: ["转账转错了朋友，TunaPay 能退吗？", "给家人的转账可以退款吗？"],
      e: "不小心给表哥转了 300 元，你们能帮我撤回吗？",
      a: "向亲友的转账无法通过 TunaPay 退款，请联系收款人把钱退回给您。礼品卡购买同样不能退款。" } },
  { id: "dispute_deadline",
    en: { q: ["How long do I have to open a dispute?", "What's the deadline for a chargeback?"],
      e: "Is it too late to dispute a charge from three months ago?",
      a: "You can open a dispute within 120 days of the transaction date." },
    zh: { q: ["发起争议的期限是多久？", "拒付最晚什么时候申请？"],
      e: "三个月前的一笔扣款现在申请争议还来得及吗？",
      a: "您可以在交易日期后 120 天内发起争议。" } },
  { id: "dispute_timeline",
    en: { q: ["How long does a dispute take?", "What happens after I open a chargeback?"],
      e: "Walk me through the steps once I've filed a dispute — how long until I know?",
      a: "After you open a dispute, the merchant has 7 days to respond. TunaPay decides within 30 days after the response (or after the 7 days run out). If you win, the money is back within 3 business days, and either side can appeal once within 10 days of the decision." },
    zh: { q: ["争议处理要多久？", "发起拒付后流程是怎样的？"],
      e: "我提交了争议，接下来要等多久才有结果？",
      a: "发起争议后，商户有 7 天时间回应；TunaPay 在商户回应后（或 7 天期满后）30 天内作出决定。如果您胜诉，款项 3 个工作日内退回；双方均可在决定后 10 天内申诉一次。" } },
  { id: "chargeback_fee",
    en: { q: ["Is there a chargeback fee for merchants?", "As a merchant, what do I pay if a customer disputes a sale?"],
      e: "Merchant question: if a buyer files a dispute and I win, am I charged anything?",
      a: "The chargeback fee is 15.00 USD (100.00 CNY for CNY accounts), and the merchant pays it only if the merchant loses the dispute. If you win, there's no fee." },
    zh: { q: ["商户要付拒付费用吗？", "作为商户，客户发起争议我要付多少钱？"],
      e: "商户咨询：买家申请争议但我赢了，会被收费吗？",
      a: "拒付费用为 100.00 元（美元账户 15.00 美元），仅在商户败诉时由商户支付；商户胜诉不收费。" } },
  { id: "tier1_limits",
    en: { q: ["What are the limits on a Tier 1 Basic account?", "How much can I pay with only my phone and email verified?"],
      e: "I haven't uploaded any ID yet. What can I do with my account?",
      a: "Tier 1 Basic (phone and email verified): up to 500 USD per payment, 1,000 USD of payments a day and 500 USD of withdrawals a day (CNY accounts: 3,000 / 6,000 / 3,000 CNY). Cross-border payments and withdrawals are not available on Tier 1." },
    zh: { q: ["一级基础账户有哪些限额？", "只验证了手机号和邮箱，能付多少钱？"],
      e: "我还没上传身份证件，现在账户能做什么？",
      a: "一级基础（已验证手机号和邮箱）：单笔支付最高 3,000 元，每日支付最高 6,000 元，每日提现最高 3,000 元（美元账户为 500 / 1,000 / 500 美元）。一级账户不能进行跨境支付和跨境提现。" } },
  { id: "tier2_limits",
    en: { q: ["What are the Tier 2 limits?", "How much can a Verified account spend per day?"],
      e: "Once my ID is verified, how high do my limits go?",
      a: "Tier 2 Verified: up to 5,000 USD per payment, 10,000 USD of payments a day and 5,000 USD of withdrawals a day (CNY accounts: 30,000 / 60,000 / 30,000 CNY), and cross-border payments are allowed." },
    zh: { q: ["二级账户的限额是多少？", "实名认证账户每天能花多少？"],
      e: "身份证件认证通过后，额度能提高到多少？",
      a: "二级实名：单笔支付最高 30,000 元，每日支付最高 60,000 元，每日提现最高 30,000 元（美元账户为 5,000 / 10,000 / 5,000 美元），并可进行跨境支付。" } },
  { id: "tier3_limits",
    en: { q: ["What are the limits for Tier 3 Premium?", "What does Premium verification require, and what limits does it give?"],
      e: "I need to move larger sums. What's the highest tier and its limits?",
      a: "Tier 3 Premium needs everything from Tier 2 plus proof of address and source of funds. It allows up to 20,000 USD per payment, 50,000 USD of payments a day and 20,000 USD of withdrawals a day (CNY accounts: 120,000 / 300,000 / 120,000 CNY)." },
    zh: { q: ["三级高级账户的限额是多少？", "高级认证需要什么？额度是多少？"],
      e: "我需要大额收付款，最高等级是什么、额度多少？",
      a: "三级高级需要在二级基础上提供地址证明和资金来源证明，单笔支付最高 120,000 元，每日支付最高 300,000 元，每日提现最高 120,000 元（美元账户为 20,000 / 50,000 / 20,000 美元）。" } },
  { id: "limit_reset",
    en: { q: ["When does my daily limit reset?", "Do failed payments count toward my daily limit?"],
      e: "If a refund comes back today, can I spend that part of my daily limit again?",
      a: "Daily limits reset at 00:00 in the time zone set in your profile. They count successful and pending transactions; failed or declined ones don't count, and refunds don't give the limit back." },
    zh: { q: ["每日限额什么时候重置？", "失败的支付算进每日限额吗？"],
      e: "今天有一笔退款回来了，这部分额度能再用吗？",
      a: "每日限额在您资料所设时区的 00:00 重置。成功和处理中的交易计入限额，失败或被拒的不计入，退款也不会恢复已用额度。" } },
  { id: "kyc_review_time",
    en: { q: ["How long does verification review take?", "When will my tier upgrade be approved?"],
      e: "I just submitted my documents for the top tier. How long will you take?",
      a: "Upgrades to Tier 2 are reviewed within 1 business day, and upgrades to Tier 3 within 3 business days." },
    zh: { q: ["认证审核需要多久？", "等级升级什么时候能通过？"],
      e: "我刚提交了最高等级的材料，要审核多久？",
      a: "升级二级在 1 个工作日内完成审核，升级三级在 3 个工作日内完成审核。" } },
  { id: "settlement",
    en: { q: ["When are merchant sales paid out?", "What is TunaPay's settlement schedule for merchants?"],
      e: "I run a shop. If I sell something on Friday afternoon, when does the money hit my account?",
      a: "Settlement is T+1: sales captured before 22:00 (your local time) on a business day are paid to your bank account on the next business day. Sales after 22:00, on a weekend or on a public holiday count as captured on the next business day. New merchants are settled T+3 during their first 30 days." },
    zh: { q: ["商户的营业款什么时候结算？", "TunaPay 给商户的结算周期是多久？"],
      e: "我开店的，周五下午卖出的东西，钱什么时候到账？",
      a: "结算周期为 T+1：营业日当地时间 22:00 前完成的交易，在下一个营业日打款到您的银行账户；22:00 之后、周末或法定节假日的交易视为下一个营业日完成。新商户开通后前 30 天按 T+3 结算。" } },
  { id: "card_replacement",
    en: { q: ["How much does a replacement card cost?", "Is a new card free if I lose mine?"],
      e: "This is the second time this year I've lost my card. Will the new one cost me?",
      a: "The first card replacement in a calendar year is free; each further one costs 5.00 USD (35.00 CNY for CNY accounts). A replacement arrives in 5–7 business days." },
    zh: { q: ["补办卡片要多少钱？", "卡丢了换新卡免费吗？"],
      e: "今年我已经第二次丢卡了，新卡要收费吗？",
      a: "每个自然年第一次补卡免费，之后每次 35.00 元（美元账户 5.00 美元），新卡 5–7 个工作日送达。" } },
  { id: "unauthorized",
    en: { q: ["What if there's a payment on my account I didn't make?", "Am I covered for fraudulent transactions?"],
      e: "There's a charge I don't recognise from last month. Will I get that money back?",
      a: "Unauthorized transactions reported within 60 days are refunded in full after an investigation of up to 10 business days. Freeze your card in the app right away so nothing else can be charged." },
    zh: { q: ["账户里有一笔不是我本人的交易怎么办？", "盗刷的钱能赔吗？"],
      e: "上个月有一笔我不认识的扣款，钱能拿回来吗？",
      a: "60 天内报告的未授权交易，经最长 10 个工作日的调查后全额退还。请先在 App 中立即冻结卡片，避免再被扣款。" } },
  { id: "account_lock",
    en: { q: ["Why is my sign-in locked?", "How many wrong passwords before my account locks?"],
      e: "I mistyped my password a bunch of times and now I'm stuck. How long?",
      a: "Five wrong passwords in a row lock sign-in for 30 minutes. You can wait it out or reset your password by email or SMS right away." },
    zh: { q: ["为什么我的登录被锁了？", "密码输错几次会锁定账户？"],
      e: "我密码输错好多次，现在登不上了，要等多久？",
      a: "连续输错 5 次密码，登录会锁定 30 分钟。您可以等待解锁，或立即通过邮箱或短信重置密码。" } },
  { id: "duplicate_charge",
    en: { q: ["What happens if I'm charged twice for the same order?", "How do duplicate charges get fixed?"],
      e: "Two identical charges for one purchase showed up. Do I need to do anything?",
      a: "A duplicate charge is reversed automatically within 3 business days. If it hasn't been, TunaPay refunds the duplicate in full on request within 90 days of the charge, whatever the refund window." },
    zh: { q: ["同一笔订单被扣了两次怎么办？", "重复扣款怎么处理？"],
      e: "一次购物出现了两笔一样的扣款，我需要做什么吗？",
      a: "重复扣款会在 3 个工作日内自动冲正。若未冲正，您在扣款后 90 天内申请，TunaPay 会全额退还重复的一笔，不受退款时限限制。" } },
];

function genKnowledge() {
  const r = new Rng(0x5eed02);
  const out = [];
  for (const f of FACTS) {
    for (const lang of ["en", "zh"]) {
      for (const q of f[lang].q) {
        const withSys = r.chance(0.7);
        const messages = withSys ? [sys(systemPrompt(lang))] : [];
        messages.push(user(q), assistant(f[lang].a));
        out.push({ messages });
      }
    }
  }
  return out;
}

function genEvalQuestions() {
  const out = [];
  for (const f of FACTS) {
    for (const lang of ["en", "zh"]) out.push({ id: `${f.id}.${lang}`, question: f[lang].e, reference: f[lang].a, lang });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// reasoning.jsonl — multi-step cases. Each case returns { today, turns: [[user, reasoning, answer], ...] }.

const TIER_ZH = ["", "一级", "二级", "三级"];
const TIER_EN = ["", "Tier 1 Basic", "Tier 2 Verified", "Tier 3 Premium"];

const REASONING_CASES = {
  refund(r, lang, v) {
    const cur = lang === "en" ? "USD" : "CNY";
    const today = randomToday(r);
    const days = r.pick([0, 2, 3, 5, 6, 7, 7, 8, 8, 10, 14, 21, 29, 30, 31, 33, 45, 60]);
    const paid = addDays(today, -days);
    const cross = r.chance(0.45);
    const [fcur, , shop] = r.pick(FOREIGN[lang]);
    const m = cross ? shop : r.pick(lang === "en" ? EN_MERCHANTS : ZH_MERCHANTS);
    let conv;
    let price;
    if (cross) {
      price = fcur === "JPY" ? cents(r, 3000, 80000, "JPY") : cents(r, 30, 600, fcur);
      conv = convert(price, rate6(r, fcur, cur));
    } else conv = cents(r, 20, 900, cur);
    const fee = cross ? crossBorderFee(conv) : 0;
    const M = (c) => money(c, cur, lang);
    const pd = fmtDate(paid, lang);
    const td = fmtDate(today, lang);
    const turns = [];
    if (lang === "en") {
      const q = cross
        ? `I paid ${money(price, fcur, lang)} at ${m} on ${pd}; my statement shows ${M(conv)} plus a ${M(fee)} cross-border fee. I'd like to return it — what would I get back?`
        : r.pick([`Can I still get a refund for my ${M(conv)} payment to ${m} from ${pd}?`, `I paid ${m} ${M(conv)} on ${pd}. Am I still eligible for a refund?`]);
      const steps = [`Payment date ${pd}, today ${td}. Day 0 is the payment date, so ${days} days have passed.`];
      let a;
      if (days <= 7) {
        steps.push(`${days} ≤ 7, so this is in the no-questions window: the refund is approved immediately.`);
        if (cross) {
          steps.push(`Cross-border payment: in the 0–7 day window the 1.5% fee is refunded in full. Refund = ${M(conv)} + ${M(fee)} = ${M(conv + fee)}.`);
          a = `Good news: your payment is ${days} day${days === 1 ? "" : "s"} old, so it's within our 7-day no-questions window. You'd get back the full ${M(conv + fee)} — the ${M(conv)} purchase plus the ${M(fee)} cross-border fee — and the refund is approved as soon as you request it.`;
        } else {
          steps.push(`Refund = the full ${M(conv)}.`);
          a = `Yes — your payment is ${days} day${days === 1 ? "" : "s"} old, which is within our 7-day no-questions window, so the full ${M(conv)} can be refunded and it's approved right away.`;
        }
      } else if (days <= 30) {
        steps.push(`8 ≤ ${days} ≤ 30, so a refund is possible after review: the customer gives a reason, TunaPay and the merchant decide within 3 business days.`);
        if (cross) {
          steps.push(`Cross-border fee is not refunded after review. Refund if approved = ${M(conv)}; the ${M(fee)} fee stays.`);
          a = `Your payment is ${days} days old, so it's past the 7-day no-questions window but still within 30 days: a refund is possible after review. Tell us the reason, and TunaPay and ${m} will decide within 3 business days. If approved, you'd get back ${M(conv)}; the ${M(fee)} cross-border fee isn't refunded after a review.`;
        } else {
          steps.push(`Refund if approved = ${M(conv)}.`);
          a = `Your payment is ${days} days old — past the 7-day no-questions window, but within 30 days, so a refund is possible after review. Share the reason with us and TunaPay and ${m} will decide within 3 business days; if approved, the full ${M(conv)} comes back.`;
        }
      } else {
        steps.push(`${days} > 30, so no refund through TunaPay. Options: contact the merchant, or open a dispute — ${days} ≤ 120 days, so a dispute is still possible.`);
        a = `I'm sorry — the payment is ${days} days old, and refunds through TunaPay are only possible within 30 days. You can still ask ${m} directly, and if there's a problem with the purchase you can open a dispute, which is possible up to 120 days after the transaction. I'm happy to start one with you.`;
      }
      turns.push([q, steps.join("\n"), a]);
      if (days <= 7 && r.chance(0.6)) {
        const part = divRound(conv * r.pick([25, 40, 50, 60]), 100);
        const feePart = divRound(fee * part, conv);
        const q2 = `Actually I'll keep part of it. What if I only refund ${M(part)}${cross ? " of the purchase" : ""}?`;
        const s2 = [`Partial refunds are allowed; ${M(part)} ≤ ${M(conv)}.`];
        let a2;
        if (cross) {
          s2.push(`Fee refunded proportionally: ${M(fee)} × ${amt(part)} / ${amt(conv)} = ${M(feePart)}. Total = ${M(part)} + ${M(feePart)} = ${M(part + feePart)}.`);
          a2 = `That works. Partial refunds are fine, and within 7 days the cross-border fee comes back proportionally: you'd receive ${M(part)} plus ${M(feePart)} of the fee, ${M(part + feePart)} in total.`;
        } else {
          s2.push(`Refund = ${M(part)}; the rest of the payment stays.`);
          a2 = `No problem — partial refunds are allowed, so ${M(part)} can be refunded right away and the rest of the payment stays as it is.`;
        }
        turns.push([q2, s2.join("\n"), `${a2} ${v.close()}`]);
      } else turns[0][2] += ` ${v.close()}`;
      return { today, turns };
    }
    const q = cross
      ? `我${pd}在${m}消费了${money(price, fcur, lang)}，账单显示${M(conv)}，另加跨境手续费${M(fee)}。现在想退货，能退回多少？`
      : r.pick([`我${pd}在${m}付了${M(conv)}，现在还能退款吗？`, `${pd}给${m}付款${M(conv)}，我还符合退款条件吗？`]);
    const steps = [`支付日期${pd}，今天${td}。支付当天为第 0 天，已过去 ${days} 天。`];
    let a;
    if (days <= 7) {
      steps.push(`${days} ≤ 7，属于无理由退款期，申请后立即批准。`);
      if (cross) {
        steps.push(`跨境支付：7 天内退款，1.5% 手续费全额退还。退款 = ${M(conv)} + ${M(fee)} = ${M(conv + fee)}。`);
        a = `好消息：这笔支付才过去 ${days} 天，在 7 天无理由退款期内。您可以拿回全部 ${M(conv + fee)}（消费 ${M(conv)} 加跨境手续费 ${M(fee)}），申请后立即批准。`;
      } else {
        steps.push(`退款 = 全额 ${M(conv)}。`);
        a = `可以。这笔支付过去了 ${days} 天，在 7 天无理由退款期内，${M(conv)} 可以全额退款，申请后立即批准。`;
      }
    } else if (days <= 30) {
      steps.push(`8 ≤ ${days} ≤ 30，可以审核后退款：客户说明原因，TunaPay 与商户在 3 个工作日内决定。`);
      if (cross) {
        steps.push(`审核退款不退跨境手续费。批准后退款 = ${M(conv)}，手续费 ${M(fee)} 不退。`);
        a = `这笔支付已过去 ${days} 天，超过 7 天无理由期，但仍在 30 天内，可以申请审核退款：请说明原因，TunaPay 与${m}会在 3 个工作日内决定。批准后退回 ${M(conv)}；审核退款不退还 ${M(fee)} 的跨境手续费。`;
      } else {
        steps.push(`批准后退款 = ${M(conv)}。`);
        a = `这笔支付已过去 ${days} 天，超过 7 天无理由期，但仍在 30 天内，可以申请审核退款。请告诉我们原因，TunaPay 与${m}会在 3 个工作日内决定；批准后全额退回 ${M(conv)}。`;
      }
    } else {
      steps.push(`${days} > 30，不能通过 TunaPay 退款。可联系商户，或发起争议——${days} ≤ 120 天，仍可发起争议。`);
      a = `很抱歉，这笔支付已过去 ${days} 天，TunaPay 只受理 30 天内的退款。您仍可以直接联系${m}；如果交易有问题，也可以在交易后 120 天内发起争议，我可以帮您办理。`;
    }
    turns.push([q, steps.join("\n"), a]);
    if (days <= 7 && r.chance(0.6)) {
      const part = divRound(conv * r.pick([25, 40, 50, 60]), 100);
      const feePart = divRound(fee * part, conv);
      const q2 = `其实我想留下一部分，只退${M(part)}可以吗？`;
      const s2 = [`允许部分退款；${M(part)} ≤ ${M(conv)}。`];
      let a2;
      if (cross) {
        s2.push(`手续费按比例退：${M(fee)} × ${amt(part)} / ${amt(conv)} = ${M(feePart)}。合计 = ${M(part)} + ${M(feePart)} = ${M(part + feePart)}。`);
        a2 = `可以。支持部分退款，7 天内跨境手续费按比例退还：您将收到 ${M(part)}，加上手续费 ${M(feePart)}，共 ${M(part + feePart)}。`;
      } else {
        s2.push(`退款 = ${M(part)}，其余部分保留。`);
        a2 = `没问题，支持部分退款，${M(part)} 可以立即退回，其余部分保持不变。`;
      }
      turns.push([q2, s2.join("\n"), `${a2}${v.close()}`]);
    } else turns[0][2] += v.close();
    return { today, turns };
  },

  cross_border_withdrawal(r, lang, v) {
    const cur = lang === "en" ? "USD" : "CNY";
    const today = randomToday(r);
    const tier = r.pick([1, 2, 2, 3, 3]);
    const limit = POLICY.tiers[tier][cur][2];
    const [fcur, city] = r.pick(FOREIGN[lang]);
    const over = tier > 1 && r.chance(0.3);
    const used = over ? divRound(limit * r.int(50, 85), 100) : r.chance(0.5) ? divRound(limit * r.int(5, 30), 100) : 0;
    const amount = over ? Math.round((limit - used + divRound(limit * r.int(5, 30), 100)) / 100) * 100 : Math.min(cents(r, 80, cur === "USD" ? 1500 : 10000, cur), limit - used - divRound(limit, 20));
    const pct = crossBorderFee(amount);
    const fixed = POLICY.crossBorderWithdrawalFixed[cur];
    const fee = pct + fixed;
    const M = (c) => money(c, cur, lang);
    if (lang === "en") {
      const q = `I'm on ${TIER_EN[tier]} and want to withdraw ${M(amount)} to my ${fcur} bank account in ${city}.${used ? ` I've already withdrawn ${M(used)} today.` : ""} How much will it cost?`;
      const steps = [];
      let a;
      if (tier === 1) {
        steps.push("Cross-border withdrawals need Tier 2 or Tier 3. The customer is on Tier 1, so it isn't possible yet.");
        steps.push(`For reference once upgraded: 1.5% of ${M(amount)} = ${M(pct)}, plus the fixed ${M(fixed)} = ${M(fee)}.`);
        a = `Withdrawals to a bank account abroad need Tier 2 Verified or above, so it isn't available on Tier 1 yet. You can upgrade under Profile > Verification with an ID and a selfie (reviewed within 1 business day). After that, this withdrawal would cost ${M(fee)}: the 1.5% cross-border fee (${M(pct)}) plus the fixed ${M(fixed)}.`;
      } else {
        steps.push(`Tier ${tier} allows cross-border withdrawals; daily withdrawal limit ${M(limit)}.`);
        steps.push(`Used today ${M(used)} + ${M(amount)} = ${M(used + amount)} ${over ? ">" : "≤"} ${M(limit)}.`);
        if (over) {
          steps.push(`Too much for today. Left today: ${M(limit)} − ${M(used)} = ${M(limit - used)}.`);
          steps.push(`Fee on the full amount (when possible): 1.5% × ${M(amount)} = ${M(pct)}, + ${M(fixed)} = ${M(fee)}.`);
          a = `With ${M(used)} already withdrawn today, ${M(amount)} would go over your ${TIER_EN[tier]} daily withdrawal limit of ${M(limit)} — you can withdraw up to ${M(limit - used)} more today, and the limit resets at 00:00 in your profile's time zone. The fee for the full ${M(amount)} would be ${M(fee)}: the 1.5% cross-border fee (${M(pct)}) plus a fixed ${M(fixed)}.`;
        } else {
          steps.push(`Fee: 1.5% × ${M(amount)} = ${M(pct)}; plus fixed ${M(fixed)} → ${M(fee)}. Cross-border withdrawals are never free.`);
          steps.push(`Total leaving the balance: ${M(amount)} + ${M(fee)} = ${M(amount + fee)}. Arrival: 2–4 business days.`);
          a = `The fee is ${M(fee)}: the 1.5% cross-border fee (${M(pct)}) plus the fixed ${M(fixed)} for withdrawals abroad. So ${M(amount + fee)} leaves your balance in total, and the money arrives within 2–4 business days.`;
        }
      }
      return { today, turns: [[q, steps.join("\n"), `${a} ${v.close()}`]] };
    }
    const q = `我是${TIER_ZH[tier]}账户，想提现${M(amount)}到我在${city}的${fcur}银行账户。${used ? `今天已经提现了${M(used)}。` : ""}要多少手续费？`;
    const steps = [];
    let a;
    if (tier === 1) {
      steps.push("跨境提现需要二级或三级，客户是一级，目前不能跨境提现。");
      steps.push(`供参考，升级后：1.5% × ${M(amount)} = ${M(pct)}，加固定 ${M(fixed)}，共 ${M(fee)}。`);
      a = `提现到境外银行账户需要二级实名或以上，一级账户暂时无法办理。您可以在“我的 > 身份认证”提交身份证件和自拍照升级（1 个工作日内审核）。升级后这笔提现的手续费为 ${M(fee)}：1.5% 跨境手续费 ${M(pct)}，加固定 ${M(fixed)}。`;
    } else {
      steps.push(`${TIER_ZH[tier]}可以跨境提现；每日提现限额 ${M(limit)}。`);
      steps.push(`今日已提 ${M(used)} + ${M(amount)} = ${M(used + amount)} ${over ? ">" : "≤"} ${M(limit)}。`);
      if (over) {
        steps.push(`超出今日额度。今日剩余：${M(limit)} − ${M(used)} = ${M(limit - used)}。`);
        steps.push(`全额的手续费：1.5% × ${M(amount)} = ${M(pct)}，加 ${M(fixed)}，共 ${M(fee)}。`);
        a = `您今天已提现 ${M(used)}，再提 ${M(amount)} 会超过${TIER_ZH[tier]}每日提现限额 ${M(limit)}——今天最多还能提 ${M(limit - used)}，限额在您资料所设时区的 00:00 重置。全额 ${M(amount)} 的手续费为 ${M(fee)}：1.5% 跨境手续费 ${M(pct)}，加固定 ${M(fixed)}。`;
      } else {
        steps.push(`手续费：1.5% × ${M(amount)} = ${M(pct)}；加固定 ${M(fixed)}，共 ${M(fee)}。跨境提现不免费。`);
        steps.push(`余额共扣：${M(amount)} + ${M(fee)} = ${M(amount + fee)}。到账：2–4 个工作日。`);
        a = `手续费为 ${M(fee)}：1.5% 跨境手续费 ${M(pct)}，加跨境提现固定费用 ${M(fixed)}。您的余额共扣除 ${M(amount + fee)}，资金 2–4 个工作日内到账。`;
      }
    }
    return { today, turns: [[q, steps.join("\n"), `${a}${v.close()}`]] };
  },

  domestic_withdrawal(r, lang, v) {
    const cur = lang === "en" ? "USD" : "CNY";
    const today = randomToday(r);
    const prev = r.pick([0, 1, 2, 2, 3, 3, 4, 5, 6]);
    const nth = prev + 1;
    const kind = r.pick(["min", "mid", "mid", "max"]);
    const f = cur === "USD" ? 1 : 5;
    const amount = kind === "min" ? cents(r, 20 * f, 180 * f, cur) : kind === "max" ? cents(r, 4100 * f, 4900 * f, cur) : cents(r, 220 * f, 3800 * f, cur);
    const tier = amount > POLICY.tiers[1][cur][2] ? r.pick([2, 3]) : r.pick([1, 2, 3]);
    const fee = domesticWithdrawalFee(amount, nth, cur);
    const raw = divRound(amount * 5, 1000);
    const w = POLICY.domesticWithdrawal;
    const M = (c) => money(c, cur, lang);
    const month = new Date(today).getUTCMonth();
    const firstNext = Date.UTC(new Date(today).getUTCFullYear(), month + 1, 1);
    const turns = [];
    if (lang === "en") {
      const q = `${prev === 0 ? "I haven't withdrawn anything yet this month." : `I've made ${prev} withdrawal${prev === 1 ? "" : "s"} to my bank this month.`} What's the fee if I withdraw ${M(amount)} to my bank account now? (${TIER_EN[tier]}, same-currency bank account)`;
      const steps = [`Domestic withdrawal; ${prev} this month already, so this is number ${nth}. The first ${w.free} per calendar month are free.`];
      let a;
      if (fee === 0) {
        steps.push(`${nth} ≤ 3 → free.`);
        a = `This would be your ${["first", "second", "third"][nth - 1]} withdrawal this month, and the first 3 each calendar month are free — so no fee: the full ${M(amount)} goes to your bank, within 1 business day.`;
      } else {
        steps.push(`${nth} > 3 → 0.5% × ${M(amount)} = ${M(raw)}; bounds ${M(w.min[cur])}–${M(w.max[cur])} → fee ${M(fee)}.`);
        const why = raw < w.min[cur] ? ` (0.5% would be ${M(raw)}, below the ${M(w.min[cur])} minimum)` : raw > w.max[cur] ? ` (0.5% would be ${M(raw)}, above the ${M(w.max[cur])} cap)` : "";
        a = `You've used your 3 free withdrawals this month, so this one costs 0.5% of the amount, at least ${M(w.min[cur])} and at most ${M(w.max[cur])}: the fee is ${M(fee)}${why}. The money arrives within 1 business day.`;
      }
      turns.push([q, steps.join("\n"), a]);
      if (fee > 0 && r.chance(0.6)) {
        turns.push([`And if I wait until ${fmtDate(firstNext, "en")}?`,
          `${fmtDate(firstNext, "en")} starts a new calendar month, so the count of withdrawals resets; it would be the 1st withdrawal → free.`,
          `Then it's free: ${fmtDate(firstNext, "en")} starts a new calendar month, so it would be your first withdrawal of the month and no fee applies. ${v.close()}`]);
      } else turns[0][2] += ` ${v.close()}`;
      return { today, turns };
    }
    const q = `${prev === 0 ? "我这个月还没提现过。" : `我这个月已经提现了 ${prev} 次到银行卡。`}现在提现${M(amount)}到银行账户要多少手续费？（${TIER_ZH[tier]}账户，同币种境内银行账户）`;
    const steps = [`境内提现；本月已有 ${prev} 笔，这是第 ${nth} 笔。每个自然月前 ${w.free} 笔免费。`];
    let a;
    if (fee === 0) {
      steps.push(`${nth} ≤ 3 → 免费。`);
      a = `这是您本月第 ${nth} 笔提现，每个自然月前 3 笔免费，所以不收手续费，${M(amount)} 全额到账，1 个工作日内到达。`;
    } else {
      steps.push(`${nth} > 3 → 0.5% × ${M(amount)} = ${M(raw)}；上下限 ${M(w.min[cur])}–${M(w.max[cur])} → 手续费 ${M(fee)}。`);
      const why = raw < w.min[cur] ? `（按 0.5% 为 ${M(raw)}，低于最低 ${M(w.min[cur])}）` : raw > w.max[cur] ? `（按 0.5% 为 ${M(raw)}，高于上限 ${M(w.max[cur])}）` : "";
      a = `本月 3 笔免费提现已用完，这笔按金额的 0.5% 收费，最低 ${M(w.min[cur])}、最高 ${M(w.max[cur])}：手续费为 ${M(fee)}${why}。资金 1 个工作日内到账。`;
    }
    turns.push([q, steps.join("\n"), a]);
    if (fee > 0 && r.chance(0.6)) {
      turns.push([`那如果等到${fmtDate(firstNext, "zh")}再提呢？`,
        `${fmtDate(firstNext, "zh")}是新的自然月，提现次数重新计算，那将是第 1 笔 → 免费。`,
        `那就免费了：${fmtDate(firstNext, "zh")}是新的自然月，这将是您当月第一笔提现，不收手续费。${v.close()}`]);
    } else turns[0][2] += v.close();
    return { today, turns };
  },

  payment_limit(r, lang, v) {
    const cur = lang === "en" ? "USD" : "CNY";
    const today = randomToday(r);
    const tier = r.int(1, 3);
    const [single, daily] = POLICY.tiers[tier][cur];
    const spent = divRound(daily * r.int(10, 90), 100) - r.int(0, 99);
    const failed = r.chance(0.5) ? divRound(single * r.int(20, 60), 100) : 0;
    const outcome = r.pick(["ok", "single", "daily"]);
    const left = daily - spent;
    let amount;
    if (outcome === "single") amount = single + divRound(single * r.int(5, 40), 100);
    else if (outcome === "daily") amount = Math.min(single, left + divRound(single * r.int(5, 30), 100));
    else amount = Math.max(100, divRound(Math.min(single, left) * r.int(30, 90), 100));
    const maxNow = Math.min(single, left);
    const allowed = amount <= single && amount <= left;
    const M = (c) => money(c, cur, lang);
    if (lang === "en") {
      const q = `I'm on ${TIER_EN[tier]}. Today I've paid ${M(spent)} so far${failed ? ` (plus one payment of ${M(failed)} that failed)` : ""}. Can I make a payment of ${M(amount)} now?`;
      const steps = [`${TIER_EN[tier]}: single payment ≤ ${M(single)}, daily payments ≤ ${M(daily)}.`];
      if (failed) steps.push(`The failed ${M(failed)} doesn't count toward the daily limit.`);
      steps.push(`Left today: ${M(daily)} − ${M(spent)} = ${M(left)}.`);
      steps.push(`Single-payment check: ${M(amount)} ${amount <= single ? "≤" : ">"} ${M(single)}. Daily check: ${M(amount)} ${amount <= left ? "≤" : ">"} ${M(left)}.`);
      steps.push(allowed ? "Both pass → allowed." : `Not allowed; the most possible now is min(${M(single)}, ${M(left)}) = ${M(maxNow)}.`);
      let a;
      if (allowed) a = `Yes, you can. ${M(amount)} is within your ${M(single)} single-payment limit, and you have ${M(left)} of today's ${M(daily)} left${failed ? " (the failed payment doesn't count)" : ""}.`;
      else if (amount > single) a = `Not in one payment, I'm afraid: on ${TIER_EN[tier]} a single payment can be at most ${M(single)}. Right now the most you can pay at once is ${M(maxNow)}.${tier < 3 ? ` Upgrading to ${TIER_EN[tier + 1]} under Profile > Verification raises the limit.` : ""}`;
      else a = `Not today, I'm afraid: you have ${M(left)} left of your ${M(daily)} daily payment limit${failed ? " (the failed payment doesn't count)" : ""}, so the most you can pay right now is ${M(maxNow)}. The limit resets at 00:00 in your profile's time zone.`;
      return { today, turns: [[q, steps.join("\n"), `${a} ${v.close()}`]] };
    }
    const q = `我是${TIER_ZH[tier]}账户，今天已经付款 ${M(spent)}${failed ? `（另有一笔 ${M(failed)} 支付失败了）` : ""}。现在还能付 ${M(amount)} 吗？`;
    const steps = [`${TIER_ZH[tier]}：单笔 ≤ ${M(single)}，每日支付 ≤ ${M(daily)}。`];
    if (failed) steps.push(`失败的 ${M(failed)} 不计入每日限额。`);
    steps.push(`今日剩余：${M(daily)} − ${M(spent)} = ${M(left)}。`);
    steps.push(`单笔检查：${M(amount)} ${amount <= single ? "≤" : ">"} ${M(single)}。每日检查：${M(amount)} ${amount <= left ? "≤" : ">"} ${M(left)}。`);
    steps.push(allowed ? "两项都通过 → 可以支付。" : `不能支付；现在最多可付 min(${M(single)}, ${M(left)}) = ${M(maxNow)}。`);
    let a;
    if (allowed) a = `可以。${M(amount)} 没有超过单笔限额 ${M(single)}，您今天 ${M(daily)} 的额度还剩 ${M(left)}${failed ? "（失败的那笔不计入）" : ""}。`;
    else if (amount > single) a = `抱歉，一笔付不了：${TIER_ZH[tier]}账户单笔最高 ${M(single)}，您现在一次最多可付 ${M(maxNow)}。${tier < 3 ? `在“我的 > 身份认证”升级到${TIER_ZH[tier + 1]}可以提高限额。` : ""}`;
    else a = `抱歉，今天付不了这么多：您每日 ${M(daily)} 的支付额度还剩 ${M(left)}${failed ? "（失败的那笔不计入）" : ""}，现在最多可付 ${M(maxNow)}。限额在您资料所设时区的 00:00 重置。`;
    return { today, turns: [[q, steps.join("\n"), `${a}${v.close()}`]] };
  },

  settlement_date(r, lang, v) {
    const cur = lang === "en" ? "USD" : "CNY";
    let sale = settlementDay(r);
    if (r.chance(0.25)) sale = addDays(sale, 5 - dow(sale) + r.int(1, 2)); // the Saturday or Sunday after
    const late = isBusiness(sale) && r.chance(0.35);
    const hour = late ? r.int(22, 23) : r.int(9, 21);
    const time = `${String(hour).padStart(2, "0")}:${String(r.int(0, 11) * 5).padStart(2, "0")}`;
    const isNew = r.chance(0.3);
    const activeDays = isNew ? r.int(3, 28) : r.int(45, 400);
    const capture = isBusiness(sale) && !late ? sale : nextBusinessDay(sale);
    const payout = addBusinessDays(capture, isNew ? 3 : 1);
    const today = addDays(sale, 1);
    const a0 = money(cents(r, 200, 20000, cur), cur, lang);
    const F = (t) => fmtDate(t, lang, true);
    if (lang === "en") {
      const q = `My shop went live on TunaPay ${activeDays} days ago. I made a sale of ${a0} on ${F(sale)} at ${time}. When will it be paid out?`;
      const steps = [`Sale: ${F(sale)} ${time}.`];
      if (!isBusiness(sale)) steps.push(`${EN_DOW[dow(sale)]} is not a business day → counts as captured on the next business day, ${F(capture)}.`);
      else if (late) steps.push(`After 22:00 → counts as captured on the next business day, ${F(capture)}.`);
      else steps.push(`Business day, before 22:00 → captured ${F(capture)}.`);
      steps.push(isNew ? `Merchant active ${activeDays} days < 30 → T+3: three business days after ${F(capture)} = ${F(payout)}.` : `Merchant active ${activeDays} days ≥ 30 → T+1: next business day = ${F(payout)}.`);
      const why = !isBusiness(sale) ? "Weekend sales count as captured on the next business day" : late ? "Sales after 22:00 count as captured on the next business day" : "It was captured on a business day before 22:00";
      const a = `${why}, so the sale is treated as captured on ${F(capture)}. ${isNew ? `During your first 30 days settlement is T+3, so` : "With T+1 settlement,"} the ${a0} will be paid to your bank account on ${F(payout)}.`;
      return { today, turns: [[q, steps.join("\n"), `${a} ${v.close()}`]] };
    }
    const q = `我的店开通 TunaPay ${activeDays} 天了。${F(sale)} ${time} 有一笔 ${a0} 的销售，什么时候结算给我？`;
    const steps = [`销售时间：${F(sale)} ${time}。`];
    if (!isBusiness(sale)) steps.push(`${ZH_DOW[dow(sale)]}不是营业日 → 视为下一个营业日 ${F(capture)} 完成。`);
    else if (late) steps.push(`22:00 之后 → 视为下一个营业日 ${F(capture)} 完成。`);
    else steps.push(`营业日 22:00 前 → 于 ${F(capture)} 完成。`);
    steps.push(isNew ? `开通 ${activeDays} 天 < 30 → T+3：${F(capture)} 之后第三个营业日 = ${F(payout)}。` : `开通 ${activeDays} 天 ≥ 30 → T+1：下一个营业日 = ${F(payout)}。`);
    const why = !isBusiness(sale) ? "周末的交易视为下一个营业日完成" : late ? "22:00 之后的交易视为下一个营业日完成" : "这笔交易在营业日 22:00 前完成";
    const a = `${why}，即按 ${F(capture)} 计算。${isNew ? "新商户前 30 天按 T+3 结算，" : "按 T+1 结算，"}这笔 ${a0} 将于 ${F(payout)} 打款到您的银行账户。`;
    return { today, turns: [[q, steps.join("\n"), `${a}${v.close()}`]] };
  },

  foreign_payment(r, lang, v) {
    const cur = lang === "en" ? "USD" : "CNY";
    const today = randomToday(r);
    const tier = r.pick([1, 2, 2, 3]);
    const [fcur, city, shop] = r.pick(FOREIGN[lang]);
    const price = fcur === "JPY" ? cents(r, 2000, 90000, "JPY") : cents(r, 15, 800, fcur);
    const r6 = rate6(r, fcur, cur);
    const conv = convert(price, r6);
    const fee = crossBorderFee(conv);
    const M = (c) => money(c, cur, lang);
    const P = money(price, fcur, lang);
    if (lang === "en") {
      const q = `I'm on ${TIER_EN[tier]} and want to pay ${P} at ${shop} in ${city}. The app shows 1 ${fcur} = ${fmtRate(r6)} ${cur}. How much will it cost me in total?`;
      const steps = [tier === 1 ? "Cross-border payments need Tier 2 or Tier 3; the customer is on Tier 1 → not possible yet." : `Tier ${tier} allows cross-border payments.`,
        `Convert: ${P} × ${fmtRate(r6)} = ${M(conv)}.`, `Cross-border fee 1.5% × ${M(conv)} = ${M(fee)}.`, `Total = ${M(conv)} + ${M(fee)} = ${M(conv + fee)}.`];
      const a = tier === 1
        ? `Payments in another currency need Tier 2 Verified or above, so this one won't go through on Tier 1 yet — you can upgrade under Profile > Verification (reviewed within 1 business day). Once you're verified, it would cost ${M(conv + fee)}: ${M(conv)} at today's rate plus the 1.5% cross-border fee of ${M(fee)}.`
        : `It comes to ${M(conv + fee)}: ${P} converts to ${M(conv)} at 1 ${fcur} = ${fmtRate(r6)} ${cur}, plus our 1.5% cross-border fee of ${M(fee)}. The final figure uses the mid-market rate at the moment you pay, so it may move slightly.`;
      return { today, turns: [[q, steps.join("\n"), `${a} ${v.close()}`]] };
    }
    const q = `我是${TIER_ZH[tier]}账户，想在${city}的${shop}支付${P}，App 显示 1 ${fcur} = ${fmtRate(r6)} ${cur}。一共要花多少钱？`;
    const steps = [tier === 1 ? "跨境支付需要二级或三级；客户是一级 → 目前不能支付。" : `${TIER_ZH[tier]}可以跨境支付。`,
      `换算：${P} × ${fmtRate(r6)} = ${M(conv)}。`, `跨境手续费 1.5% × ${M(conv)} = ${M(fee)}。`, `合计 = ${M(conv)} + ${M(fee)} = ${M(conv + fee)}。`];
    const a = tier === 1
      ? `外币支付需要二级实名或以上，一级账户暂时无法支付——您可以在“我的 > 身份认证”升级（1 个工作日内审核）。认证后这笔支付共需 ${M(conv + fee)}：按当前汇率换算为 ${M(conv)}，加 1.5% 跨境手续费 ${M(fee)}。`
      : `一共 ${M(conv + fee)}：${P} 按 1 ${fcur} = ${fmtRate(r6)} ${cur} 换算为 ${M(conv)}，加 1.5% 跨境手续费 ${M(fee)}。实际金额以支付时的中间价为准，可能略有浮动。`;
    return { today, turns: [[q, steps.join("\n"), `${a}${v.close()}`]] };
  },

  dispute_window(r, lang, v) {
    const today = randomToday(r);
    const days = r.pick([35, 48, 60, 75, 90, 104, 118, 120, 121, 130, 150]);
    const txn = addDays(today, -days);
    const respond = addDays(today, 7);
    const decide = addDays(respond, 30);
    const m = r.pick(lang === "en" ? EN_MERCHANTS : ZH_MERCHANTS);
    const F = (t) => fmtDate(t, lang);
    if (lang === "en") {
      const q = `${m} charged me on ${F(txn)} and never delivered. Can I still open a dispute today, and when would I have an answer?`;
      const steps = [`Transaction ${F(txn)}, today ${F(today)} → ${days} days.`, `Dispute window 120 days: ${days} ${days <= 120 ? "≤" : ">"} 120 → ${days <= 120 ? "still possible" : "too late"}.`];
      if (days <= 120) steps.push(`If opened today: merchant responds by ${F(respond)} (7 days); decision at the latest 30 days after that, ${F(decide)}; money back within 3 business days if the customer wins.`);
      const a = days <= 120
        ? `Yes — it's been ${days} days, and disputes can be opened up to 120 days after the transaction. If you open it today, ${m} has until ${F(respond)} to respond, and we'll decide by ${F(decide)} at the latest. If the decision is in your favour, the money is back within 3 business days.`
        : `I'm sorry — it's been ${days} days since the transaction, and disputes can only be opened within 120 days, so it's no longer possible through TunaPay. I'd suggest contacting ${m} directly; I'm glad to help you draft the message.`;
      return { today, turns: [[q, steps.join("\n"), `${a} ${v.close()}`]] };
    }
    const q = `${m}在${F(txn)}扣了我的钱，一直没发货。今天还能发起争议吗？多久能有结果？`;
    const steps = [`交易日期${F(txn)}，今天${F(today)} → ${days} 天。`, `争议期限 120 天：${days} ${days <= 120 ? "≤" : ">"} 120 → ${days <= 120 ? "仍可发起" : "已超期"}。`];
    if (days <= 120) steps.push(`今天发起：商户须在${F(respond)}前回应（7 天）；最晚再过 30 天，即${F(decide)}前作出决定；客户胜诉则 3 个工作日内退款。`);
    const a = days <= 120
      ? `可以。距交易已 ${days} 天，争议可在交易后 120 天内发起。今天发起的话，${m}须在${F(respond)}前回应，我们最晚在${F(decide)}前作出决定；如果结果对您有利，款项 3 个工作日内退回。`
      : `很抱歉，距交易已 ${days} 天，争议只能在交易后 120 天内发起，现在已无法通过 TunaPay 办理。建议您直接联系${m}，我也可以帮您起草沟通内容。`;
    return { today, turns: [[q, steps.join("\n"), `${a}${v.close()}`]] };
  },
};

function genReasoning() {
  const r = new Rng(0x5eed03);
  const out = [];
  for (let k = 0; k < 4; k++) {
    for (const kind of Object.keys(REASONING_CASES)) {
      for (const lang of ["en", "zh"]) {
        const p = person(r, lang);
        const known = r.chance(0.5);
        const v = voice(r, lang, p, known);
        const { today, turns } = REASONING_CASES[kind](r, lang, v);
        const messages = [sys(systemPrompt(lang, { p: known ? p : null, today }))];
        turns.forEach(([u, think, answer], i) => {
          const text = i === 0 && known ? v.join(v.greet(), answer) : answer;
          messages.push(user(u), assistant(text, { reasoning_content: think }));
        });
        out.push({ messages });
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// tools.jsonl — function calling over tools.json. A scenario returns { today?, uid?, msgs } where msgs are
// the messages after the system prompt; `call` builds an assistant turn with tool calls, `result` the replies.

function toolKit(r) {
  return {
    call(content, calls) {
      const tool_calls = calls.map(([name, args]) => ({ id: callId(r), type: "function", function: { name, arguments: JSON.stringify(args) } }));
      return { msg: assistant(content, { tool_calls }), ids: tool_calls.map((c) => c.id) };
    },
    result: (id, obj) => ({ role: "tool", tool_call_id: id, content: JSON.stringify(obj) }),
  };
}

function makeTxn(r, lang, today, { daysAgo, cross = false, amount = null, merchant = null }) {
  const cur = lang === "en" ? "USD" : "CNY";
  const t = addDays(today, -daysAgo);
  const conv = amount ?? cents(r, 15, 900, cur);
  const fee = cross ? crossBorderFee(conv) : 0;
  const hh = String(r.int(8, 21)).padStart(2, "0");
  const mm = String(r.int(0, 59)).padStart(2, "0");
  return {
    transaction_id: txnId(r, t), type: "payment", status: "completed",
    merchant: merchant ?? (cross ? r.pick(FOREIGN[lang])[2] : r.pick(lang === "en" ? EN_MERCHANTS : ZH_MERCHANTS)),
    amount: num(conv), currency: cur, cross_border: cross, cross_border_fee: num(fee), refunded_amount: 0,
    created_at: `${iso(t)}T${hh}:${mm}:00`, _t: t, _cents: conv, _fee: fee,
  };
}
/** The transaction as the tool returns it (without the generator's private fields). */
const pub = (x) => Object.fromEntries(Object.entries(x).filter(([k]) => !k.startsWith("_")));

const TOOL_SCENARIOS = {
  freeze_card(r, lang, v) {
    const l4 = last4(r);
    const kind = r.pick(["lost", "stolen", "temporary"]);
    const cur = lang === "en" ? "USD" : "CNY";
    const k = toolKit(r);
    const q = lang === "en"
      ? { lost: `I lost my card ending ${l4}. Please block it.`, stolen: `My bag was stolen with my TunaPay card in it, last digits ${l4}. Freeze it now please!`, temporary: `I can't find my card (ending ${l4}), probably somewhere at home. Can you freeze it for now?` }[kind]
      : { lost: `我尾号${l4}的卡丢了，请帮我停用。`, stolen: `我的包被偷了，里面有尾号${l4}的 TunaPay 卡，请马上冻结！`, temporary: `尾号${l4}的卡找不到了，可能在家里，能先帮我冻结吗？` }[kind];
    const c = k.call("", [["freeze_card", { card_last4: l4, reason: kind }]]);
    const res = kind === "temporary" ? { card_last4: l4, status: "frozen", reversible: true }
      : { card_last4: l4, status: "blocked", reversible: false, replacement: { ordered: true, eta_business_days: "5-7", fee: 0, currency: cur } };
    let a;
    if (lang === "en") {
      a = kind === "temporary"
        ? `Done — your card ending ${l4} is frozen as of now, so nobody can pay with it. When you find it, you can unfreeze it in the app at any time.`
        : `Done — your card ending ${l4} is blocked for good, so it can't be used by anyone. A replacement is on its way and will arrive in 5–7 business days, free of charge. If you notice any payment you didn't make, tell us within 60 days and it's refunded in full after our investigation.`;
    } else {
      a = kind === "temporary"
        ? `已办好——尾号${l4}的卡现已冻结，任何人都无法用它付款。找到后，您可以随时在 App 中解冻。`
        : `已办好——尾号${l4}的卡已永久停用，任何人都无法使用。新卡已为您免费补办，5–7 个工作日送达。如发现非本人交易，请在 60 天内告诉我们，经调查后将全额退还。`;
    }
    return { msgs: [user(q), c.msg, k.result(c.ids[0], res), assistant(v.join(v.greet(), a, v.close()))] };
  },

  lookup(r, lang, v) {
    const today = randomToday(r);
    const cross = r.chance(0.4);
    const x = makeTxn(r, lang, today, { daysAgo: r.int(0, 20), cross });
    const k = toolKit(r);
    const q = lang === "en" ? r.pick([`What is transaction ${x.transaction_id}? I don't recognise it.`, `Can you check ${x.transaction_id} for me?`])
      : r.pick([`交易 ${x.transaction_id} 是什么？我不记得这笔。`, `帮我查一下 ${x.transaction_id}。`]);
    const c = k.call("", [["get_transaction", { transaction_id: x.transaction_id }]]);
    const cur = x.currency;
    const d = fmtDate(x._t, lang);
    let a;
    if (lang === "en") {
      a = `${x.transaction_id} is a payment of ${money(x._cents, cur, lang)} to ${x.merchant} on ${d}${cross ? `, made in another currency, so it also carried the 1.5% cross-border fee of ${money(x._fee, cur, lang)}` : ""}. It's completed and nothing has been refunded yet. If you don't recognise it, I can freeze your card and open a dispute for you.`;
    } else {
      a = `${x.transaction_id} 是${d}向${x.merchant}支付的 ${money(x._cents, cur, lang)}${cross ? `，属于外币交易，另收了 1.5% 跨境手续费 ${money(x._fee, cur, lang)}` : ""}。交易已完成，尚未退款。如果您不认识这笔交易，我可以帮您冻结卡片并发起争议。`;
    }
    return { today, msgs: [user(q), c.msg, k.result(c.ids[0], pub(x)), assistant(v.join(v.greet(), a, v.close()))] };
  },

  refund_flow(r, lang, v) {
    const today = randomToday(r);
    const days = r.pick([0, 1, 3, 5, 7, 8, 12, 20, 30, 31, 40]);
    const cross = r.chance(0.35);
    const x = makeTxn(r, lang, today, { daysAgo: days, cross });
    const k = toolKit(r);
    const cur = x.currency;
    const M = (c) => money(c, cur, lang);
    const q = lang === "en" ? r.pick([`I'd like a refund for ${x.transaction_id}, I changed my mind.`, `Please refund my payment ${x.transaction_id}. The product isn't what I expected.`])
      : r.pick([`我想退款，交易号 ${x.transaction_id}，不想要了。`, `请帮我退掉 ${x.transaction_id} 这笔，商品和描述不符。`]);
    const c1 = k.call("", [["get_transaction", { transaction_id: x.transaction_id }]]);
    const msgs = [user(q), c1.msg, k.result(c1.ids[0], pub(x))];
    if (days <= 7) {
      const reason = /expected|不符/.test(q) ? "merchant_error" : "customer_request";
      const c2 = k.call("", [["refund_transaction", { transaction_id: x.transaction_id, amount: x.amount, reason }]]);
      const back = x._cents + x._fee;
      msgs.push(c2.msg, k.result(c2.ids[0], { transaction_id: x.transaction_id, status: "approved", refunded_amount: num(x._cents), cross_border_fee_refunded: num(x._fee), currency: cur, destination: "original_payment_method" }));
      const a = lang === "en"
        ? `Your refund is approved. The payment was ${days} day${days === 1 ? "" : "s"} ago, within our 7-day no-questions window, so you get back ${M(back)}${cross ? ` (${M(x._cents)} plus the ${M(x._fee)} cross-border fee)` : ""}. It goes back to your original payment method: 1 business day for a TunaPay balance, 3–5 business days for a card.`
        : `退款已批准。这笔支付是 ${days} 天前，在 7 天无理由退款期内，您将收到 ${M(back)}${cross ? `（${M(x._cents)} 加跨境手续费 ${M(x._fee)}）` : ""}，原路退回：TunaPay 余额 1 个工作日内，银行卡 3–5 个工作日。`;
      msgs.push(assistant(v.join(v.greet(), a, v.close())));
    } else if (days <= 30) {
      const summary = lang === "en" ? `Refund review for ${x.transaction_id}: ${M(x._cents)} to ${x.merchant} on ${iso(x._t)} (${days} days ago). Customer reason: ${/expected/.test(q) ? "product not as expected" : "changed mind"}.`
        : `退款审核 ${x.transaction_id}：${iso(x._t)} 向${x.merchant}支付 ${M(x._cents)}（${days} 天前）。客户原因：${/不符/.test(q) ? "商品与描述不符" : "不想要了"}。`;
      const c2 = k.call("", [["create_ticket", { category: "refund_review", summary, priority: "normal" }]]);
      const tid = `T-${r.digits(6)}`;
      msgs.push(c2.msg, k.result(c2.ids[0], { ticket_id: tid, status: "open", category: "refund_review" }));
      const a = lang === "en"
        ? `The payment was ${days} days ago, so it's past the 7-day no-questions window but within 30 days — I've sent it for review (case ${tid}). TunaPay and ${x.merchant} will decide within 3 business days${cross ? `; if approved you'd get back ${M(x._cents)}, as the ${M(x._fee)} cross-border fee isn't refunded after a review` : `, and if approved the full ${M(x._cents)} comes back`}.`
        : `这笔支付已过去 ${days} 天，超过 7 天无理由期但仍在 30 天内，我已为您提交审核（工单 ${tid}）。TunaPay 与${x.merchant}会在 3 个工作日内决定${cross ? `；批准后退回 ${M(x._cents)}，审核退款不退还 ${M(x._fee)} 的跨境手续费` : `，批准后全额退回 ${M(x._cents)}`}。`;
      msgs.push(assistant(v.join(v.greet(), a, v.close())));
    } else {
      const a = lang === "en"
        ? `I'm sorry — this payment to ${x.merchant} was ${days} days ago, and refunds through TunaPay are only possible within 30 days. You can still ask ${x.merchant} directly, and if something is wrong with the purchase you can open a dispute, which is possible up to 120 days after the transaction.`
        : `很抱歉，这笔向${x.merchant}的支付已过去 ${days} 天，TunaPay 只受理 30 天内的退款。您仍可直接联系${x.merchant}；如果交易有问题，也可以在交易后 120 天内发起争议。`;
      msgs.push(assistant(v.join(v.greet(), a, v.close())));
    }
    return { today, msgs };
  },

  double_charge(r, lang, v) {
    const today = randomToday(r);
    const daysAgo = r.int(4, 20);
    const a1 = makeTxn(r, lang, today, { daysAgo });
    const a2 = { ...a1, transaction_id: txnId(r, a1._t), created_at: a1.created_at.replace(/:00$/, ":41") };
    const k = toolKit(r);
    const M = (c) => money(c, a1.currency, lang);
    const q = lang === "en" ? `I was charged twice by ${a1.merchant}: ${a1.transaction_id} and ${a2.transaction_id}. Same order!`
      : `${a1.merchant}扣了我两次：${a1.transaction_id} 和 ${a2.transaction_id}，是同一个订单！`;
    const c1 = k.call("", [["get_transaction", { transaction_id: a1.transaction_id }], ["get_transaction", { transaction_id: a2.transaction_id }]]);
    const c2 = k.call("", [["refund_transaction", { transaction_id: a2.transaction_id, amount: a2.amount, reason: "duplicate_charge" }]]);
    const a = lang === "en"
      ? `I can see both: ${M(a1._cents)} to ${a1.merchant} on ${fmtDate(a1._t, lang)}, charged twice within the same minute. I've refunded the duplicate (${a2.transaction_id}) in full — ${M(a2._cents)} goes back to your original payment method. Sorry for the hassle.`
      : `我看到了这两笔：${fmtDate(a1._t, lang)}向${a1.merchant}支付的 ${M(a1._cents)}，同一分钟内扣了两次。我已全额退还重复的一笔（${a2.transaction_id}），${M(a2._cents)} 将原路退回。给您添麻烦了。`;
    return { today, msgs: [user(q), c1.msg, k.result(c1.ids[0], pub(a1)), k.result(c1.ids[1], pub(a2)), c2.msg,
      k.result(c2.ids[0], { transaction_id: a2.transaction_id, status: "approved", refunded_amount: a2.amount, currency: a2.currency, destination: "original_payment_method" }),
      assistant(v.join(v.greet(), a, v.close()))] };
  },

  limits(r, lang, v) {
    const uid = userId(r);
    const cur = lang === "en" ? "USD" : "CNY";
    const tier = r.int(1, 3);
    const [single, daily, wd] = POLICY.tiers[tier][cur];
    const used = divRound(daily * r.int(20, 95), 100);
    const left = daily - used;
    const want = left < single ? left + divRound(single * r.int(5, 40), 100) - (left % 100) : single + divRound(single * r.int(10, 50), 100);
    const k = toolKit(r);
    const M = (c) => money(c, cur, lang);
    const q = lang === "en" ? `Why was my payment of ${M(want)} blocked? My user ID is ${uid}.` : `我付 ${M(want)} 被拦截了，为什么？我的用户 ID 是 ${uid}。`;
    const c = k.call("", [["get_account_limits", { user_id: uid }]]);
    const res = { user_id: uid, tier, currency: cur, single_payment_limit: num(single), daily_payment_limit: num(daily), daily_payment_used: num(used), daily_withdrawal_limit: num(wd), daily_withdrawal_used: 0, cross_border_allowed: tier > 1 };
    const maxNow = Math.min(single, left);
    let a;
    if (lang === "en") {
      a = want > single
        ? `Your account is on ${TIER_EN[tier]}, where a single payment can be at most ${M(single)} — ${M(want)} is above that. Right now you can pay up to ${M(maxNow)} at once.${tier < 3 ? ` Upgrading to ${TIER_EN[tier + 1]} under Profile > Verification would raise the limit.` : ""}`
        : `You've already used ${M(used)} of your ${M(daily)} daily payment limit on ${TIER_EN[tier]}, so ${M(left)} is left today — not enough for ${M(want)}. The limit resets at 00:00 in your profile's time zone.`;
    } else {
      a = want > single
        ? `您的账户是${TIER_ZH[tier]}，单笔支付最高 ${M(single)}，${M(want)} 超出了这个限额。您现在一次最多可付 ${M(maxNow)}。${tier < 3 ? `在“我的 > 身份认证”升级到${TIER_ZH[tier + 1]}可以提高限额。` : ""}`
        : `您今天已使用 ${M(used)}，${TIER_ZH[tier]}每日支付限额为 ${M(daily)}，今天还剩 ${M(left)}，不够支付 ${M(want)}。限额在您资料所设时区的 00:00 重置。`;
    }
    return { msgs: [user(q), c.msg, k.result(c.ids[0], res), assistant(v.join(v.greet(), a, v.close()))] };
  },

  exchange(r, lang, v) {
    const cur = lang === "en" ? "USD" : "CNY";
    const [fcur, city] = r.pick(FOREIGN[lang]);
    const price = fcur === "JPY" ? cents(r, 2000, 60000, "JPY") : cents(r, 20, 900, fcur);
    const r6 = rate6(r, fcur, cur);
    const conv = convert(price, r6);
    const fee = crossBorderFee(conv);
    const k = toolKit(r);
    const M = (c) => money(c, cur, lang);
    const P = money(price, fcur, lang);
    const q = lang === "en" ? `How much would a ${P} payment in ${city} cost me in ${cur}, fees included?` : `在${city}支付 ${P}，折合人民币含手续费一共多少？`;
    const c = k.call("", [["get_exchange_rate", { from_currency: fcur, to_currency: cur }]]);
    const res = { from_currency: fcur, to_currency: cur, rate: r6 / 1e6, type: "mid-market" };
    const a = lang === "en"
      ? `At the current mid-market rate (1 ${fcur} = ${fmtRate(r6)} ${cur}), ${P} is ${M(conv)}. Adding the 1.5% cross-border fee of ${M(fee)}, the total is ${M(conv + fee)}. The rate at the moment you pay applies, so the final amount may move slightly.`
      : `按当前中间价（1 ${fcur} = ${fmtRate(r6)} ${cur}），${P} 折合 ${M(conv)}，加 1.5% 跨境手续费 ${M(fee)}，共计 ${M(conv + fee)}。实际以支付时的汇率为准，可能略有浮动。`;
    return { msgs: [user(q), c.msg, k.result(c.ids[0], res), assistant(v.join(v.greet(), a, v.close()))] };
  },

  settlement(r, lang, v) {
    const mid = merchantId(r);
    const sale = settlementDay(r);
    const pay = nextBusinessDay(sale);
    const today = r.chance(0.5) ? pay : addDays(sale, 1) < pay ? addDays(sale, 1) : pay;
    const cur = lang === "en" ? "USD" : "CNY";
    const total = cents(r, 300, 30000, cur);
    const paid = today >= pay && r.chance(0.5);
    const k = toolKit(r);
    const q = lang === "en" ? `Merchant ${mid} here. Where is the money for my sales on ${iso(sale)}?` : `我是商户 ${mid}，${iso(sale)} 的营业款到哪了？`;
    const c = k.call("", [["get_settlement_status", { merchant_id: mid, date: iso(sale) }]]);
    const res = { merchant_id: mid, capture_date: iso(sale), amount: num(total), currency: cur, schedule: "T+1", payout_date: iso(pay), status: paid ? "paid" : "scheduled" };
    const M = money(total, cur, lang);
    const F = fmtDate(pay, lang, true);
    const a = lang === "en"
      ? paid ? `Your ${M} from ${fmtDate(sale, lang)} was paid out on ${F}. Depending on your bank it may take a few hours to show; if it isn't there by the end of the day, I'll open a settlement case.`
        : `Your ${M} from ${fmtDate(sale, lang)} is scheduled for payout on ${F} — settlement is T+1, the next business day after the sales are captured.`
      : paid ? `您${fmtDate(sale, lang)}的 ${M} 已于${F}打款。银行入账可能需要几个小时；如果今天结束前仍未到账，我会为您提交结算工单。`
        : `您${fmtDate(sale, lang)}的 ${M} 计划于${F}打款——结算周期为 T+1，即交易完成后的下一个营业日。`;
    return { today, msgs: [user(q), c.msg, k.result(c.ids[0], res), assistant(v.join(v.greet(), a, v.close()))] };
  },

  suspicious(r, lang, v) {
    const today = randomToday(r);
    const l4 = last4(r);
    const x = makeTxn(r, lang, today, { daysAgo: r.int(0, 3) });
    const k = toolKit(r);
    const M = (c) => money(c, x.currency, lang);
    const q = lang === "en" ? `There's a payment ${x.transaction_id} I never made! Freeze my card ending ${l4} right now.`
      : `有一笔 ${x.transaction_id} 不是我付的！马上冻结我尾号${l4}的卡。`;
    const c1 = k.call("", [["freeze_card", { card_last4: l4, reason: "suspicious_activity" }], ["get_transaction", { transaction_id: x.transaction_id }]]);
    const summary = lang === "en" ? `Customer reports unauthorized payment ${x.transaction_id}: ${M(x._cents)} to ${x.merchant} on ${iso(x._t)}. Card ${l4} frozen.`
      : `客户报告未授权交易 ${x.transaction_id}：${iso(x._t)} 向${x.merchant}支付 ${M(x._cents)}。尾号${l4}的卡已冻结。`;
    const c2 = k.call("", [["create_ticket", { category: "dispute", summary, priority: "high" }]]);
    const tid = `T-${r.digits(6)}`;
    const a = lang === "en"
      ? `Your card ending ${l4} is frozen, so nothing else can be charged to it. The payment is ${M(x._cents)} to ${x.merchant} on ${fmtDate(x._t, lang)}; I've opened case ${tid} for it. Because you reported it within 60 days, it will be refunded in full once our investigation confirms it, which takes up to 10 business days.`
      : `尾号${l4}的卡已冻结，不会再被扣款。这笔交易是${fmtDate(x._t, lang)}向${x.merchant}支付的 ${M(x._cents)}，我已为您创建工单 ${tid}。您在 60 天内报告，调查确认后（最长 10 个工作日）将全额退还。`;
    return { today, msgs: [user(q), c1.msg, k.result(c1.ids[0], { card_last4: l4, status: "frozen", reversible: true }), k.result(c1.ids[1], pub(x)),
      c2.msg, k.result(c2.ids[0], { ticket_id: tid, status: "open", category: "dispute" }), assistant(v.join(v.greet(), a, v.close()))] };
  },

  login_ticket(r, lang, v) {
    const k = toolKit(r);
    const q = lang === "en" ? r.pick(["I reset my password but I still can't get in, and I don't receive the SMS code anymore. I changed phone numbers.", "Locked out for days now — the reset email never arrives."])
      : r.pick(["我重置了密码还是登录不了，换了手机号收不到短信验证码。", "好几天登录不上了，重置密码的邮件一直收不到。"]);
    const summary = lang === "en" ? `Customer cannot sign in: password reset did not help and ${/SMS/.test(q) ? "the phone number has changed, so SMS codes do not arrive" : "the reset email never arrives"}. Needs identity check and contact update.`
      : `客户无法登录：重置密码无效，${/短信/.test(q) ? "已更换手机号，收不到短信验证码" : "重置邮件一直收不到"}。需要核验身份并更新联系方式。`;
    const c = k.call("", [["create_ticket", { category: "login", summary, priority: "high" }]]);
    const tid = `T-${r.digits(6)}`;
    const a = lang === "en"
      ? `${v.sorry()} I've opened case ${tid} with our account security team; they'll verify your identity and update your contact details so you can sign in again. Please don't share your password or any code with anyone who contacts you — TunaPay never asks for them.`
      : `${v.sorry()}我已为您向账户安全团队提交工单 ${tid}，他们会核验您的身份并更新联系方式，帮您恢复登录。任何人联系您索要密码或验证码都请不要提供——TunaPay 绝不会索要。`;
    return { msgs: [user(q), c.msg, k.result(c.ids[0], { ticket_id: tid, status: "open", category: "login" }), assistant(v.join(v.greet(), a, v.close()))] };
  },

  no_tool(r, lang, v) {
    const f = r.pick(FACTS);
    return { msgs: [user(r.pick(f[lang].q)), assistant(v.join(v.greet(), f[lang].a, v.close()))] };
  },

  missing_argument(r, lang, v) {
    const kind = r.pick(["refund", "freeze", "limits"]);
    const today = randomToday(r);
    const k = toolKit(r);
    const ask = {
      en: { refund: ["Can you refund my last purchase?", "I'm happy to help with that refund. Could you share the transaction ID? It starts with TP and is shown on your receipt and in the app under Activity."],
        freeze: ["Freeze my card please, quickly!", "Of course — I'll freeze it right away. Which card is it? Please tell me the last 4 digits (never the full number)."],
        limits: ["What are my limits right now?", "I can check that for you. Could you tell me your TunaPay user ID? It starts with U and is under Profile in the app."] },
      zh: { refund: ["能帮我把上一笔消费退款吗？", "很乐意帮您办理退款。请提供交易号，以 TP 开头，可在收据或 App 的“账单”中找到。"],
        freeze: ["快帮我冻结卡！", "好的，我马上为您冻结。请告诉我是哪张卡的后 4 位（请不要发送完整卡号）。"],
        limits: ["我现在的限额是多少？", "我来帮您查询。请告诉我您的 TunaPay 用户 ID，以 U 开头，可在 App 的“我的”中找到。"] },
    }[lang][kind];
    const msgs = [user(ask[0]), assistant(v.join(v.greet(), ask[1]))];
    if (r.chance(0.5)) return { today, msgs };
    if (kind === "freeze") {
      const l4 = last4(r);
      const c = k.call("", [["freeze_card", { card_last4: l4, reason: "temporary" }]]);
      msgs.push(user(l4), c.msg, k.result(c.ids[0], { card_last4: l4, status: "frozen", reversible: true }),
        assistant(lang === "en" ? `Your card ending ${l4} is frozen now. You can unfreeze it in the app whenever you like. ${v.close()}` : `尾号${l4}的卡已冻结，您可以随时在 App 中解冻。${v.close()}`));
    } else if (kind === "limits") {
      const uid = userId(r);
      const cur = lang === "en" ? "USD" : "CNY";
      const tier = r.int(1, 3);
      const [single, daily, wd] = POLICY.tiers[tier][cur];
      const used = divRound(daily * r.int(0, 70), 100);
      const c = k.call("", [["get_account_limits", { user_id: uid }]]);
      const M = (x) => money(x, cur, lang);
      msgs.push(user(uid), c.msg, k.result(c.ids[0], { user_id: uid, tier, currency: cur, single_payment_limit: num(single), daily_payment_limit: num(daily), daily_payment_used: num(used), daily_withdrawal_limit: num(wd), daily_withdrawal_used: 0, cross_border_allowed: tier > 1 }),
        assistant(lang === "en"
          ? `You're on ${TIER_EN[tier]}: up to ${M(single)} per payment and ${M(daily)} of payments a day, of which ${M(used)} is used today, so ${M(daily - used)} is left. You can withdraw up to ${M(wd)} a day. ${v.close()}`
          : `您是${TIER_ZH[tier]}账户：单笔最高 ${M(single)}，每日支付最高 ${M(daily)}，今天已用 ${M(used)}，还剩 ${M(daily - used)}；每日提现最高 ${M(wd)}。${v.close()}`));
    } else {
      const days = r.int(0, 6);
      const x = makeTxn(r, lang, today, { daysAgo: days });
      const c1 = k.call("", [["get_transaction", { transaction_id: x.transaction_id }]]);
      const c2 = k.call("", [["refund_transaction", { transaction_id: x.transaction_id, amount: x.amount, reason: "customer_request" }]]);
      const M = money(x._cents, x.currency, lang);
      msgs.push(user(x.transaction_id), c1.msg, k.result(c1.ids[0], pub(x)), c2.msg,
        k.result(c2.ids[0], { transaction_id: x.transaction_id, status: "approved", refunded_amount: x.amount, currency: x.currency, destination: "original_payment_method" }),
        assistant(lang === "en"
          ? `Done — the ${M} payment to ${x.merchant} was ${days} day${days === 1 ? "" : "s"} ago, within the 7-day no-questions window, so the full amount is refunded to your original payment method. ${v.close()}`
          : `已办好——这笔向${x.merchant}支付的 ${M} 是 ${days} 天前，在 7 天无理由退款期内，已全额原路退回。${v.close()}`));
    }
    return { today, msgs };
  },
};

function genTools() {
  const r = new Rng(0x5eed04);
  const out = [];
  for (let k = 0; k < 3; k++) {
    for (const kind of Object.keys(TOOL_SCENARIOS)) {
      for (const lang of ["en", "zh"]) {
        const p = person(r, lang);
        const known = r.chance(0.5);
        const v = voice(r, lang, p, known);
        const { today, msgs } = TOOL_SCENARIOS[kind](r, lang, v);
        out.push({ messages: [sys(systemPrompt(lang, { p: known ? p : null, today }))].concat(msgs), tools: TOOLS });
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// eval/tool_cases.jsonl + eval/tool_answers.jsonl — BFCL-shaped cases over tools.json (see eval/README.md).

/** JSON Schema → the Python-style types BFCL files use (object → dict, number → float). */
function bfclSchema(s) {
  if (Array.isArray(s)) return s.map(bfclSchema);
  if (s === null || typeof s !== "object") return s;
  const o = {};
  for (const [k, val] of Object.entries(s)) {
    if (k === "type") o.type = val === "object" ? "dict" : val === "number" ? "float" : val;
    else o[k] = bfclSchema(val);
  }
  return o;
}
const BFCL_FUNCTIONS = TOOLS.map((t) => ({ name: t.function.name, description: t.function.description, parameters: bfclSchema(t.function.parameters) }));

function genToolEval() {
  const r = new Rng(0x5eed05);
  const cases = [];
  const answers = [];
  const add = (kind, question, truth) => {
    const id = `payment_${kind}_${cases.length}`;
    cases.push({ id, question: [[{ role: "user", content: question }]], function: BFCL_FUNCTIONS });
    answers.push({ id, ground_truth: truth });
  };
  const tx = () => txnId(r, randomToday(r));
  for (const lang of ["en", "zh", "en"]) {
    const l4 = last4(r);
    const reason = r.pick(["lost", "stolen", "temporary"]);
    const q = lang === "en"
      ? { lost: `I've lost my TunaPay card, the one ending in ${l4}. Block it please.`, stolen: `Someone stole my card ending ${l4}, freeze it!`, temporary: `Could you pause my card ending ${l4} for now? I think I left it at the office.` }[reason]
      : { lost: `我的 TunaPay 卡丢了，尾号 ${l4}，请停用。`, stolen: `尾号 ${l4} 的卡被偷了，快冻结！`, temporary: `尾号 ${l4} 的卡先帮我暂停一下，好像落在办公室了。` }[reason];
    add("simple", q, [{ freeze_card: { card_last4: [l4], reason: [reason] } }]);
  }
  for (const lang of ["zh", "en", "zh"]) {
    const id = tx();
    add("simple", lang === "en" ? `What's the status of transaction ${id}?` : `查一下交易 ${id} 的详情。`, [{ get_transaction: { transaction_id: [id] } }]);
  }
  for (const [lang, reason] of [["en", "duplicate_charge"], ["zh", "duplicate_charge"], ["en", "not_received"]]) {
    const id = tx();
    const cur = lang === "en" ? "USD" : "CNY";
    const a = cents(r, 10, 400, cur);
    const q = reason === "duplicate_charge"
      ? lang === "en" ? `Please refund ${money(a, cur, lang)} for ${id}; it's a duplicate of another charge.` : `${id} 是重复扣款，请退回 ${money(a, cur, lang)}。`
      : `I paid yesterday (${id}, ${money(a, cur, lang)}) but the order was cancelled and never arrived. Refund the full ${money(a, cur, lang)} please.`;
    add("simple", q, [{ refund_transaction: { transaction_id: [id], amount: [num(a)], reason: [reason] } }]);
  }
  for (const lang of ["en", "zh"]) {
    const uid = userId(r);
    add("simple", lang === "en" ? `My user ID is ${uid}. How much of today's limit do I have left?` : `我的用户 ID 是 ${uid}，今天的额度还剩多少？`, [{ get_account_limits: { user_id: [uid] } }]);
  }
  for (const [lang, from, to] of [["en", "GBP", "USD"], ["zh", "JPY", "CNY"]]) {
    add("simple", lang === "en" ? `What's the exchange rate from ${from} to ${to} right now?` : `现在${CUR_ZH[from]}兑人民币的汇率是多少？`,
      [{ get_exchange_rate: { from_currency: [from], to_currency: [to] } }]);
  }
  for (const lang of ["zh", "en"]) {
    const mid = merchantId(r);
    const d = iso(settlementDay(r));
    add("simple", lang === "en" ? `Merchant ${mid}: has the settlement for ${d} been paid?` : `商户 ${mid}，${d} 的结算款打了吗？`, [{ get_settlement_status: { merchant_id: [mid], date: [d] } }]);
  }
  {
    const a = tx();
    const b = tx();
    add("parallel", `Check ${a} and ${b} for me — I think one of them is a double charge.`, [{ get_transaction: { transaction_id: [a] } }, { get_transaction: { transaction_id: [b] } }]);
    const l4 = last4(r);
    const c = tx();
    add("parallel", `有一笔 ${c} 不是我付的，帮我查一下，同时把尾号 ${l4} 的卡冻结。`, [{ freeze_card: { card_last4: [l4], reason: ["suspicious_activity", "stolen"] } }, { get_transaction: { transaction_id: [c] } }]);
  }
  add("irrelevance", "How long do I have to get a refund with no questions asked?", []);
  add("irrelevance", "请帮我退款。", []);
  add("irrelevance", "What's the weather like in Singapore tomorrow?", []);
  return { cases, answers };
}

// ---------------------------------------------------------------------------------------------------

function writeJsonl(rel, rows) {
  const p = join(OUT, rel);
  mkdirSync(dirname(p), { recursive: true });
  writeFileSync(p, rows.map((x) => JSON.stringify(x)).join("\n") + "\n");
  return `${rel}: ${rows.length}`;
}

const { cases, answers } = genToolEval();
const report = [
  writeJsonl("style.jsonl", genStyle()),
  writeJsonl("knowledge.jsonl", genKnowledge()),
  writeJsonl("reasoning.jsonl", genReasoning()),
  writeJsonl("tools.jsonl", genTools()),
  writeJsonl("eval/questions.jsonl", genEvalQuestions()),
  writeJsonl("eval/tool_cases.jsonl", cases),
  writeJsonl("eval/tool_answers.jsonl", answers),
];
console.error(`wrote to ${OUT}\n  ${report.join("\n  ")}`);
