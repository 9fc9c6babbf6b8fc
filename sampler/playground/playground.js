// refsampler playground: plain JavaScript, no build step, nothing fetched from elsewhere.
// It uses the public API only: GET /v1/models, POST /v1/completions (streamed with
// logprobs and the sampling_trace extension), and GET /playground/fields.json for the
// controls' ranges (the table the server's validation reads).
"use strict";

(() => {
  const STAGES = ["raw", "logit_bias", "penalties", "temperature", "top_p"];
  const STAGE_LABEL = {
    raw: "raw (after the mask)",
    logit_bias: "after logit_bias",
    penalties: "after penalties",
    temperature: "after temperature",
    top_p: "after top_p: sampled from",
  };
  const NEG = -9999; // how the API writes a logprob of -inf
  const $ = (id) => document.getElementById(id);
  const state = {
    key: null, // the API key: memory only, sent as a header, never in a URL
    models: new Map(),
    fields: [],
    controller: null,
    choices: [],
    promptChars: 0,
    selected: null,
    body: null,
  };

  // ---- small helpers ----------------------------------------------------------------
  function el(tag, attrs = {}, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "style") node.style.cssText = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids) node.append(kid);
    return node;
  }
  const prob = (lp) => (lp === null || lp === undefined || lp <= NEG ? 0 : Math.exp(lp));
  function pct(p) {
    if (p === 0) return "0%";
    if (p < 1e-4) return (p * 100).toExponential(1) + "%";
    return (p * 100).toFixed(p < 0.1 ? 3 : 2) + "%";
  }
  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    if (state.key) h.Authorization = "Bearer " + state.key;
    return h;
  }
  // A token as shown: newlines and tabs made visible, the rest as the API names it.
  const shown = (t) => t.replace(/\n/g, "\u21b5\n").replace(/\t/g, "\u21e5\t");
  const codePoints = (s) => Array.from(s).length;

  // ---- controls ---------------------------------------------------------------------
  function rangeText(f) {
    const parts = [];
    if (f.minimum !== undefined && f.minimum !== null) {
      parts.push(f.maximum === null ? `\u2265 ${f.minimum}` : `${f.minimum} to ${f.maximum}`);
    }
    if (f.choices) parts.push(f.choices.join(" | "));
    parts.push("default " + (f.default === null ? "none" : String(f.default)));
    return "(" + parts.join(", ") + ")";
  }

  function control(f) {
    const id = "f-" + f.name;
    const described = `h-${f.name} e-${f.name}`;
    const common = { id, name: f.name, "aria-describedby": described };
    let input;
    if (f.kind === "boolean") {
      input = el("input", { ...common, type: "checkbox" });
      input.checked = f.initial !== undefined ? !!f.initial : !!f.default;
    } else if (f.kind === "choice") {
      input = el("select", common);
      for (const c of f.choices) input.append(el("option", { value: c, text: c }));
      input.value = f.initial ?? f.default;
    } else if (f.kind === "bias" || f.kind === "lines") {
      input = el("textarea", { ...common, rows: 2, spellcheck: "false" });
      if (f.kind === "bias") input.placeholder = '{"15": 5}';
    } else if (f.kind === "text") {
      input = el("input", { ...common, type: "text", spellcheck: "false" });
    } else if (f.name === "seed") {
      // int64 is beyond a double's exact integers: the text is sent as written
      input = el("input", { ...common, type: "text", inputmode: "numeric", pattern: "-?[0-9]+" });
    } else {
      input = el("input", {
        ...common,
        type: "number",
        min: f.minimum,
        max: f.maximum,
        step: f.kind === "integer" ? 1 : f.step ?? "any",
      });
      if (f.default !== null) input.placeholder = String(f.default);
    }
    if (f.initial !== undefined && f.kind !== "boolean" && f.kind !== "choice") {
      input.value = String(f.initial);
    }
    const label = el("label", { for: id }, f.name + " ", el("span", { class: "range", text: rangeText(f) }));
    const help = el("p", { class: "help", id: "h-" + f.name, text: f.help });
    const error = el("p", { class: "error", id: "e-" + f.name, role: "alert" });
    const wrap = el("div", { class: "field" + (f.kind === "boolean" ? " check" : ""), id: "w-" + f.name });
    if (f.kind === "boolean") wrap.append(input, label, help, error);
    else if (f.name === "seed") {
      const fresh = el("button", { type: "button", id: "new-seed", text: "New seed" });
      fresh.addEventListener("click", () => { input.value = String(randomSeed()); });
      wrap.append(label, el("div", { class: "seed-row" }, input, fresh), help, error);
    } else wrap.append(label, input, help, error);
    return wrap;
  }

  const randomSeed = () => Math.floor(Math.random() * 2 ** 31);

  async function loadFields() {
    const resp = await fetch("/playground/fields.json");
    state.fields = (await resp.json()).fields;
    const box = $("params");
    for (const f of state.fields) box.append(control(f));
  }

  // ---- models and the API key -------------------------------------------------------
  async function loadModels() {
    const resp = await fetch("/v1/models", { headers: headers(false) });
    if (resp.status === 401) {
      $("key-box").hidden = false;
      if (state.key) $("key-error").textContent = (await resp.json()).error.message;
      $("api-key").focus();
      return false;
    }
    $("key-box").hidden = true;
    $("key-error").textContent = "";
    const data = await resp.json();
    const select = $("model");
    select.replaceChildren();
    state.models.clear();
    for (const m of data.data) {
      state.models.set(m.id, m);
      select.append(el("option", { value: m.id, text: m.id }));
    }
    modelChanged();
    return true;
  }

  function modelChanged() {
    const card = state.models.get($("model").value);
    const info = (card && card.refsampler) || {};
    const suffix = $("w-suffix");
    if (suffix) suffix.hidden = !info.suffix;
    const max = $("f-max_tokens");
    if (max && info.context_length) max.max = String(info.context_length);
  }

  // ---- the request ------------------------------------------------------------------
  class FieldError extends Error {
    constructor(param, message) { super(message); this.param = param; }
  }

  // The body the page sends: every field the user set; blank means the API's default.
  function collect() {
    const body = { model: $("model").value, prompt: $("f-prompt").value };
    let seedText = null;
    for (const f of state.fields) {
      const input = $("f-" + f.name);
      if (!input || ($("w-" + f.name) || {}).hidden) continue;
      if (f.kind === "boolean") {
        if (input.checked) body[f.name] = true;
        continue;
      }
      const raw = input.value;
      if (f.kind === "choice") {
        if (raw !== f.default) body[f.name] = raw;
        continue;
      }
      if (raw.trim() === "") {
        if (f.name !== "seed") continue;
        input.value = String(randomSeed()); // a seed is always sent: the result reproduces
      }
      const value = input.value.trim();
      if (f.name === "seed") {
        if (!/^-?[0-9]+$/.test(value)) throw new FieldError("seed", "Invalid 'seed': expected an integer.");
        seedText = value;
        body.seed = "\u0000seed"; // replaced by the exact digits when serialised
      } else if (f.kind === "integer" || f.kind === "number") {
        const number = Number(value);
        if (!Number.isFinite(number)) throw new FieldError(f.name, `Invalid '${f.name}': expected a number.`);
        body[f.name] = number;
      } else if (f.kind === "bias") {
        try {
          body[f.name] = JSON.parse(value);
        } catch (err) {
          throw new FieldError(f.name, `Invalid 'logit_bias': not valid JSON (${err.message}).`);
        }
      } else if (f.kind === "lines") {
        const lines = input.value.split("\n").filter((s) => s !== "");
        body[f.name] = lines.map((s) => s.replace(/\\n/g, "\n").replace(/\\t/g, "\t"));
      } else {
        body[f.name] = input.value;
      }
    }
    return { body, text: serialise(body, seedText, null), seedText };
  }

  function serialise(body, seedText, indent) {
    const text = JSON.stringify(body, null, indent);
    // Anchored on the key: a prompt holding the placeholder's text is escaped differently.
    return seedText === null ? text : text.replace(/("seed": ?)"\\u0000seed"/, (_, key) => key + seedText);
  }

  function clearErrors() {
    for (const node of document.querySelectorAll(".error")) node.textContent = "";
    for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  }

  // The server's error, next to the field it names (or under the form).
  function showError(param, message) {
    const where = param && $("e-" + param);
    const field = param && $("f-" + param);
    if (where && !(($("w-" + param) || {}).hidden)) {
      where.textContent = message;
      if (field) {
        field.setAttribute("aria-invalid", "true");
        field.focus();
      }
    } else {
      $("e-form").textContent = (param ? `${param}: ` : "") + message;
    }
  }

  async function run(event) {
    event.preventDefault();
    clearErrors();
    hidePopover();
    let request;
    try {
      request = collect();
    } catch (err) {
      if (err instanceof FieldError) return showError(err.param, err.message);
      throw err;
    }
    state.choices = [];
    state.selected = null;
    state.promptChars = codePoints(request.body.prompt);
    state.echo = !!request.body.echo;
    $("choices").replaceChildren();
    $("candidates").hidden = true;
    $("chart").hidden = true;
    state.body = request;
    renderSnippets(request);
    if (window.matchMedia("(max-width: 760px)").matches) $("choices").scrollIntoView();
    const controller = (state.controller = new AbortController());
    $("run").disabled = true;
    $("stop").disabled = false;
    setStatus("running\u2026");
    let tokens = 0;
    try {
      const resp = await fetch("/v1/completions", {
        method: "POST",
        headers: headers(true),
        body: request.text,
        signal: controller.signal,
      });
      if (!resp.ok) {
        const err = await resp.json().catch(() => ({ error: { message: resp.statusText } }));
        if (resp.status === 401) { state.key = null; await loadModels(); }
        showError(err.error.param, err.error.message);
        setStatus(`error ${resp.status}`);
        return;
      }
      state.failed = false;
      if (request.body.stream) {
        await readStream(resp);
      } else {
        const obj = await resp.json();
        applyObject(obj);
        tokens = obj.usage.completion_tokens;
        if (obj.candidates) renderCandidates(obj.candidates);
      }
      if (state.failed) return;
      if (request.body.stream) tokens = state.choices.reduce((n, c) => n + (c ? c.generated : 0), 0);
      const reasons = state.choices.map((c) => c && c.finish).join(", ");
      const counted = !request.body.stream || state.choices.some((c) => c && c.logprobs);
      setStatus(`done: ${counted ? tokens + " tokens generated, " : ""}finish_reason ${reasons}`);
    } catch (err) {
      if (err.name === "AbortError") setStatus("stopped");
      else { $("e-form").textContent = String(err); setStatus("failed"); }
    } finally {
      state.controller = null;
      $("run").disabled = false;
      $("stop").disabled = true;
    }
  }

  async function readStream(resp) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") return;
          const obj = JSON.parse(data);
          if (obj.error) {
            state.failed = true;
            showError(obj.error.param, obj.error.message);
            setStatus("failed");
            return;
          }
          applyObject(obj);
        }
      }
    }
  }

  // One response or chunk: its choices' text and logprobs entries, in order.
  function applyObject(obj) {
    for (const c of obj.choices) {
      const st = (state.choices[c.index] ||= { index: c.index, text: "", entries: [], finish: null, shown: 0, generated: 0 });
      st.text += c.text;
      const lp = c.logprobs;
      if (lp) {
        const traces = lp.sampling_trace || [];
        for (let i = 0; i < lp.tokens.length; i++) {
          const e = {
            token: lp.tokens[i],
            logprob: lp.token_logprobs[i],
            top: lp.top_logprobs[i],
            offset: lp.text_offset[i],
            trace: traces[i] || null,
          };
          e.prompt = state.echo && !e.trace && st.generated === 0 && e.offset < state.promptChars;
          if (!e.prompt) st.generated += 1;
          st.entries.push(e);
        }
        st.logprobs = true;
      }
      if (c.finish_reason) st.finish = c.finish_reason;
      renderChoice(st);
    }
  }

  function setStatus(text) { $("status").textContent = text; }

  // ---- rendering --------------------------------------------------------------------
  function renderChoice(st) {
    let card = $("choice-" + st.index);
    if (!card) {
      card = el("article", { class: "choice", id: "choice-" + st.index, "data-index": st.index },
        el("h2", {}),
        el("div", { class: "tokens", role: "group", "aria-label": `choice ${st.index} tokens` }),
        el("details", { class: "plain" }, el("summary", { text: "Plain text" }), el("pre", { class: "text" })));
      const list = $("choices");
      const after = [...list.children].find((n) => Number(n.dataset.index) > st.index);
      list.insertBefore(card, after || null);
    }
    card.querySelector("h2").textContent = `choice ${st.index}` + (st.finish ? ` \u00b7 finish_reason: ${st.finish}` : "");
    card.querySelector("pre.text").textContent = st.text;
    const box = card.querySelector(".tokens");
    if (!st.logprobs) { box.textContent = st.text; return; }
    for (; st.shown < st.entries.length; st.shown++) box.append(tokenSpan(st, st.shown));
  }

  function tokenSpan(st, i) {
    const e = st.entries[i];
    const prompt = e.prompt;
    const p = prob(e.logprob);
    const classes = ["tok"];
    if (prompt) classes.push("prompt");
    if (e.logprob === null) classes.push("noprob");
    if (e.token.startsWith("bytes:")) classes.push("bytes");
    const span = el("span", {
      class: classes.join(" "),
      tabindex: 0,
      "data-choice": st.index,
      "data-i": i,
      style: e.logprob === null ? null : `--p:${p.toFixed(4)}`,
      "aria-label": `${e.token}, ${e.logprob === null ? "no logprob" : pct(p)}${prompt ? ", prompt" : ""}`,
      text: shown(e.token),
    });
    return span;
  }

  function entryOf(span) {
    const st = state.choices[Number(span.dataset.choice)];
    return { st, e: st.entries[Number(span.dataset.i)] };
  }

  // ---- the popover: a token's alternatives ------------------------------------------
  function showPopover(span) {
    const { e } = entryOf(span);
    const pop = $("popover");
    pop.replaceChildren();
    const mode = (state.body && state.body.body.logprobs_mode) || "raw";
    pop.append(el("h3", {}, el("code", { class: "t", text: shown(e.token) }),
      ` ${e.logprob === null ? "(first prompt token: no logprob)" : pct(prob(e.logprob)) + " (" + mode + ")"}`));
    if (e.trace) {
      const t = e.trace;
      const params = state.body.body;
      pop.append(el("p", { text: `nucleus: ${t.nucleus} token${t.nucleus === 1 ? "" : "s"} kept (top_p ${params.top_p ?? 1}); temperature ${params.temperature ?? 1}${(params.temperature ?? 1) === 0 ? " (greedy: the argmax)" : ""}` }));
      const table = el("table", { class: "alts" },
        el("thead", {}, el("tr", {},
          el("th", { text: "token" }), el("th", { class: "num", text: "raw" }),
          el("th", { class: "num", text: "processed" }), el("th", { text: "nucleus" }),
          el("th", { class: "num", text: "bias" }), el("th", { class: "num", text: "penalty" }))));
      const rows = el("tbody");
      t.ids.forEach((id, j) => {
        const name = t.tokens ? t.tokens[j] : String(id);
        const tr = el("tr", {
          class: (id === t.chosen ? "chosen " : "") + (t.in_nucleus[j] ? "" : "out"),
          "data-id": id, "data-token": name, "data-raw": t.raw[j], "data-processed": t.top_p[j],
        },
        el("td", {}, el("code", { class: "t", text: shown(name) })),
        el("td", { class: "num", text: pct(prob(t.raw[j])) }),
        el("td", { class: "num", text: pct(prob(t.top_p[j])) }),
        el("td", { text: t.in_nucleus[j] ? "\u2713 in" : "\u2013 out" }),
        el("td", { class: "num", text: t.bias[j] ? (t.bias[j] > 0 ? "+" : "") + t.bias[j] : "" }),
        el("td", { class: "num", text: t.penalty[j] ? "\u2212" + t.penalty[j].toFixed(2) : "" }));
        rows.append(tr);
      });
      table.append(rows);
      pop.append(table, el("p", { text: "Click or press Enter for this step's chart. Escape closes." }));
    } else if (e.top) {
      const table = el("table", { class: "alts" },
        el("thead", {}, el("tr", {}, el("th", { text: "token" }), el("th", { class: "num", text: "probability" }))));
      const rows = el("tbody");
      for (const [name, lp] of Object.entries(e.top)) {
        rows.append(el("tr", { class: name === e.token ? "chosen" : "", "data-token": name, "data-raw": lp },
          el("td", {}, el("code", { class: "t", text: shown(name) })),
          el("td", { class: "num", text: pct(prob(lp)) })));
      }
      table.append(rows);
      pop.append(table);
    }
    pop.hidden = false;
    const box = span.getBoundingClientRect();
    const width = pop.offsetWidth;
    const left = Math.max(4, Math.min(window.scrollX + box.left, window.scrollX + document.documentElement.clientWidth - width - 4));
    pop.style.left = left + "px";
    pop.style.top = window.scrollY + box.bottom + 6 + "px";
    state.popFor = span;
  }

  function hidePopover() {
    $("popover").hidden = true;
    state.popFor = null;
  }

  // ---- the chart: one step's distribution through the stages ------------------------
  function select(span) {
    for (const node of document.querySelectorAll(".tok.sel")) node.classList.remove("sel");
    span.classList.add("sel");
    const { st, e } = entryOf(span);
    const chart = $("chart");
    chart.replaceChildren();
    if (!e.trace) {
      chart.append(el("h2", { text: "This token has no trace" }),
        el("p", { text: "Prompt tokens (echo) are scored, not sampled; generated tokens carry a trace when sampling_trace is set." }));
      chart.hidden = false;
      return;
    }
    const t = e.trace;
    const step = st.entries.slice(0, Number(span.dataset.i)).filter((x) => x.trace).length + 1;
    chart.append(el("h2", {}, `Choice ${st.index}, token ${step}: `, el("code", { class: "t", text: shown(e.token) }), " \u2014 the distribution at each step"));
    const key = el("div", { class: "stage-key" });
    for (const s of STAGES) key.append(el("span", {}, el("i", { class: "stage-" + s }), STAGE_LABEL[s]));
    chart.append(key);
    const bars = el("div", { class: "bars", role: "list" });
    const top = Math.max(...STAGES.flatMap((s) => t[s].map(prob)));
    t.ids.forEach((id, j) => {
      const name = t.tokens ? t.tokens[j] : String(id);
      const set = el("div", { class: "set" });
      for (const s of STAGES) {
        const p = prob(t[s][j]);
        set.append(el("div", { class: "bar-row", "data-stage": s },
          el("i", { class: "stage-" + s, style: `width:${((p / top) * 85).toFixed(2)}%` }), pct(p)));
      }
      const label = el("div", { class: "label", title: name }, (id === t.chosen ? "\u25b6 " : "") + shown(name));
      const item = el("div", { role: "listitem", "aria-label": `${name}: ` + STAGES.map((s) => `${STAGE_LABEL[s]} ${pct(prob(t[s][j]))}`).join("; "), style: "display:contents" }, label, set);
      bars.append(item);
    });
    const k = state.body.body.sampling_trace;
    chart.append(bars, el("p", { class: "help", text: `The step's top ${k} ids of each stage and the chosen one (\u25b6); bars are drawn to the largest shown (${pct(top)}). The nucleus kept ${t.nucleus} ids.` }));
    chart.hidden = false;
  }

  function renderCandidates(cands) {
    const box = $("candidates");
    const table = el("table", {},
      el("thead", {}, el("tr", {}, el("th", { text: "prompt" }), el("th", { text: "candidate" }),
        el("th", { class: "num", text: "mean logprob" }), el("th", { class: "num", text: "tokens" }),
        el("th", { text: "text" }), el("th", { text: "returned as" }))));
    const rows = el("tbody");
    for (const c of cands) {
      rows.append(el("tr", { class: c.index === null ? "out" : "chosen" },
        el("td", { text: c.prompt }), el("td", { text: c.candidate }),
        el("td", { class: "num", text: c.mean_logprob.toFixed(4) }), el("td", { class: "num", text: c.tokens }),
        el("td", {}, el("code", { class: "t", text: c.text })),
        el("td", { text: c.index === null ? "not returned" : `choice ${c.index}` })));
    }
    table.append(rows);
    box.replaceChildren(el("h2", { text: "best_of: every candidate, ranked by mean raw logprob" }), table);
    box.hidden = false;
  }

  // ---- snippets ---------------------------------------------------------------------
  function py(value, indent) {
    if (value === null) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
    if (Array.isArray(value)) return "[" + value.map((v) => py(v, indent)).join(", ") + "]";
    return "{" + Object.entries(value).map(([k, v]) => JSON.stringify(k) + ": " + py(v, indent)).join(", ") + "}";
  }

  function renderSnippets(request) {
    const origin = window.location.origin;
    const pretty = serialise(request.body, request.seedText, 2);
    $("s-json").textContent = pretty;
    const auth = state.key ? ` \\\n  -H "Authorization: Bearer $OPENAI_API_KEY"` : "";
    const quoted = "'" + request.text.replace(/'/g, "'\\''") + "'";
    $("s-curl").textContent = `curl -sS ${origin}/v1/completions \\\n  -H "Content-Type: application/json"${auth} \\\n  -d ${quoted}`;
    const standard = new Set(["model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "n", "best_of",
      "logprobs", "echo", "stop", "presence_penalty", "frequency_penalty", "logit_bias", "seed", "user"]);
    const args = [];
    const extra = [];
    for (const [k, v] of Object.entries(request.body)) {
      if (k === "stream") continue; // streamed or not, the choices are the same
      const literal = k === "seed" ? request.seedText : py(v);
      if (standard.has(k)) args.push(`    ${k}=${literal},`);
      else extra.push(`${JSON.stringify(k)}: ${literal}`);
    }
    if (extra.length) args.push(`    extra_body={${extra.join(", ")}},  # refsampler's extensions`);
    const key = state.key ? 'os.environ["OPENAI_API_KEY"]' : '"unused"';
    $("s-python").textContent = [
      ...(state.key ? ["import os", ""] : []),
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url="${origin}/v1", api_key=${key})`,
      "response = client.completions.create(",
      ...args,
      ")",
      "for choice in response.choices:",
      "    print(choice.text)",
    ].join("\n");
    $("snippets").hidden = false;
  }

  async function copy(button) {
    const text = $(button.dataset.for).textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const area = el("textarea", { style: "position:fixed;opacity:0" });
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    const old = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = old; }, 1200);
  }

  // ---- wiring -----------------------------------------------------------------------
  function wire() {
    $("form").addEventListener("submit", run);
    $("stop").addEventListener("click", () => state.controller && state.controller.abort());
    $("model").addEventListener("change", modelChanged);
    $("key-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      state.key = $("api-key").value.trim() || null;
      $("api-key").value = "";
      if (await loadModels()) $("f-prompt").focus();
    });
    const choices = $("choices");
    choices.addEventListener("mouseover", (event) => {
      const span = event.target.closest(".tok");
      if (span && span !== state.popFor) showPopover(span);
    });
    choices.addEventListener("mouseleave", hidePopover);
    choices.addEventListener("focusin", (event) => {
      if (event.target.classList.contains("tok")) showPopover(event.target);
    });
    choices.addEventListener("focusout", (event) => {
      if (!choices.contains(event.relatedTarget)) hidePopover();
    });
    choices.addEventListener("click", (event) => {
      const span = event.target.closest(".tok");
      if (span) select(span);
    });
    choices.addEventListener("keydown", (event) => {
      const span = event.target.closest(".tok");
      if (!span) return;
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        select(span);
      } else if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
        const next = event.key === "ArrowRight" ? span.nextElementSibling : span.previousElementSibling;
        if (next) { event.preventDefault(); next.focus(); }
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !$("popover").hidden) hidePopover();
    });
    for (const button of document.querySelectorAll("button.copy")) {
      button.addEventListener("click", () => copy(button));
    }
  }

  async function start() {
    wire();
    await loadFields();
    await loadModels();
    document.body.dataset.ready = "true";
  }

  start().catch((err) => { $("e-form").textContent = "The page could not start: " + err; });
})();
