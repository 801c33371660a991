// tooltune UI: plain JavaScript, no framework and no build step. Every value from the server is put on the page
// with textContent (never innerHTML), so text in a dataset or a model reply cannot run as markup.
"use strict";

const main = document.getElementById("main");
const params = new URLSearchParams(location.search);
const page = location.pathname.replace(/^\/ui\/?/, "").split("/")[0] || "data";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options) {
  const response = await fetch("/ui/api/" + path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = { error: `HTTP ${response.status}` }; }
  if (!response.ok) throw new Error(body && body.error ? body.error : `HTTP ${response.status}`);
  return body;
}

function postJSON(path, payload) {
  return api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(payload) });
}

function errorBox(message) { return el("p", { class: "error", role: "alert" }, message); }
function fmtBytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function fmtNum(v, digits = 4) {
  if (v === null || v === undefined) return "-";
  return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(digits)) : String(v);
}
function table(headers, rows, attrs) {
  const head = headers.some((h) => h) ? el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))) : null;
  return el("table", attrs || {}, head,
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell) =>
      cell instanceof Node ? el("td", {}, cell) : el("td", { class: typeof cell === "number" ? "num" : null }, cell))))));
}

document.querySelectorAll("header nav a").forEach((a) => {
  if (a.dataset.page === page || (page === "run" || page === "compare") && a.dataset.page === "runs") a.classList.add("active");
});

// ---------------------------------------------------------------- chart (inline SVG, no library)
function lineChart(series, opts = {}) {
  const width = opts.width || 640, height = opts.height || 240, pad = { l: 56, r: 12, t: 10, b: 28 };
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", "100%");
  svg.style.maxWidth = width + "px";
  const ns = (tag, attrs) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  };
  function draw() {
    svg.replaceChildren();
    const all = series.flatMap((s) => s.points);
    svg.dataset.points = String(series.reduce((n, s) => n + s.points.length, 0));
    if (!all.length) {
      const t = ns("text", { x: width / 2, y: height / 2, "text-anchor": "middle" });
      t.textContent = opts.empty || "no points yet";
      svg.append(t);
      return;
    }
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    const sx = (x) => pad.l + (x - x0) / (x1 - x0) * (width - pad.l - pad.r);
    const sy = (y) => height - pad.b - (y - y0) / (y1 - y0) * (height - pad.t - pad.b);
    svg.append(ns("line", { x1: pad.l, y1: height - pad.b, x2: width - pad.r, y2: height - pad.b, stroke: "#9ca3af" }));
    svg.append(ns("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: height - pad.b, stroke: "#9ca3af" }));
    // Tick labels with as many decimals as the range needs, and no repeated x labels for a few steps.
    const decimals = Math.min(6, Math.max(0, Math.ceil(-Math.log10((y1 - y0) / 4)) + 1));
    const xTicks = new Set();
    for (let i = 0; i <= 4; i++) {
      const y = y0 + (y1 - y0) * i / 4, t = ns("text", { x: pad.l - 4, y: sy(y) + 3, "text-anchor": "end" });
      t.textContent = y.toFixed(decimals);
      svg.append(t, ns("line", { x1: pad.l, y1: sy(y), x2: width - pad.r, y2: sy(y), stroke: "#f1f5f9" }));
      xTicks.add(Math.round(x0 + (x1 - x0) * i / 4));
    }
    for (const x of xTicks) {
      const tx = ns("text", { x: sx(x), y: height - pad.b + 14, "text-anchor": "middle" });
      tx.textContent = x;
      svg.append(tx);
    }
    const xl = ns("text", { x: width - pad.r, y: height - 2, "text-anchor": "end" });
    xl.textContent = opts.xlabel || "step";
    svg.append(xl);
    series.forEach((s, i) => {
      if (!s.points.length) return;
      const d = s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
      svg.append(ns("polyline", { points: d, fill: "none", stroke: s.color, "stroke-width": 1.6, "stroke-dasharray": s.dash || "" }));
      for (const p of s.points.slice(-1)) svg.append(ns("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: s.color }));
      const label = ns("text", { x: width - pad.r - 4, y: pad.t + 12 + 12 * i, fill: s.color, "text-anchor": "end" });
      label.textContent = `${s.name} (${s.points.length})`;
      label.style.fill = s.color;
      svg.append(label);
    });
  }
  draw();
  svg.redraw = draw;
  return svg;
}

// ---------------------------------------------------------------- data page
const TOOL_MARKS = /(<tool_call>[\s\S]*?<\/tool_call>|<tool_response>[\s\S]*?<\/tool_response>)/g;

function segmentNode(segment) {
  const span = el("span", { class: "seg " + (segment.trained ? "trained" : "prompt"), "data-tokens": segment.tokens });
  for (const piece of segment.text.split(TOOL_MARKS)) {
    if (!piece) continue;
    if (piece.startsWith("<tool_call>")) span.append(el("mark", { class: "toolcall", title: "tool call" }, piece));
    else if (piece.startsWith("<tool_response>")) span.append(el("mark", { class: "toolresult", title: "tool result" }, piece));
    else span.append(piece);
  }
  return span;
}

function sampleNode(sample) {
  const head = [`#${sample.index}`, sample.where, `${sample.tokens} tokens`, `${sample.trained_tokens} trained`,
    `${sample.kept_turns}/${sample.turns} turns`];
  if (sample.truncated) head.push(`✂ cut from ${sample.full_length} tokens`);
  return el("div", { class: "sample", "data-index": sample.index, "data-trained": sample.trained_tokens },
    el("div", { class: "head" }, head.join(" · ")),
    el("pre", {}, sample.segments.map(segmentNode), sample.truncated ? el("span", { class: "cut" }, "✂ cutoff") : null));
}

function dataPage() {
  const fields = [["dataset", "glaive_toolcall_en_demo", 260], ["dataset_dir", "", 160], ["model", "", 200]];
  const form = el("form", { class: "bar", id: "data-form" },
    fields.map(([name, value, w]) => el("label", {}, name,
      el("input", { name, value: params.get(name) ?? value, style: `width:${w}px`, placeholder: name === "model" ? "embedded default" : name === "dataset_dir" ? "bundled demo data" : "" }))),
    el("label", {}, "template", el("select", { name: "template" }, ["qwen", "jinja"].map((t) =>
      el("option", { value: t, selected: (params.get("template") || "qwen") === t }, t)))),
    el("label", {}, "cutoff_len", el("input", { name: "cutoff_len", value: params.get("cutoff_len") || "2048", style: "width:80px" })),
    el("label", {}, "policy", el("select", { name: "cutoff_policy" }, ["safe", "lf"].map((t) =>
      el("option", { value: t, selected: (params.get("cutoff_policy") || "safe") === t }, t)))),
    el("label", {}, "search", el("input", { name: "q", value: params.get("q") || "", style: "width:180px", placeholder: "text in the conversation" })),
    el("button", { type: "submit" }, "Show"));
  const summaryBox = el("div", { id: "summary" });
  const list = el("div", { id: "samples" });
  const pager = el("div", { class: "bar", id: "pager" });
  main.append(el("h2", {}, "Data as training sees it"),
    el("p", { class: "legend" }, el("span", { class: "seg trained" }, "trained tokens"), el("span", { class: "seg prompt" }, "prompt (not trained)"),
      el("mark", { class: "toolcall" }, "<tool_call>"), " ", el("mark", { class: "toolresult" }, "<tool_response>"), " ", el("span", { class: "cut" }, "✂ cutoff")),
    form, summaryBox, pager, list);
  let pageNo = Number(params.get("page") || 0);
  let lastSummaryKey = null;

  function query() {
    const q = new URLSearchParams(new FormData(form));
    for (const [k, v] of [...q.entries()]) if (!v) q.delete(k);
    return q;
  }
  async function load(resetPage) {
    if (resetPage) pageNo = 0;
    const q = query();
    const shown = new URLSearchParams(q); if (pageNo) shown.set("page", pageNo);
    history.replaceState(null, "", "/ui/data?" + shown);
    main.dataset.loading = "1";
    if (!lastSummaryKey) summaryBox.replaceChildren(el("p", { class: "muted" }, "encoding…"));
    const samplesQuery = new URLSearchParams(q); samplesQuery.set("page", pageNo); samplesQuery.set("size", 20);
    try {
      // The summary depends on the dataset arguments only: fetched again when they change, not on every page.
      const summaryKey = q.toString().replace(/(^|&)q=[^&]*/, "");
      const [summary, result] = await Promise.all([summaryKey === lastSummaryKey ? null : api("data/summary?" + q),
        api("data/samples?" + samplesQuery)]);
      if (summary) { summaryBox.replaceChildren(summaryNode(summary)); lastSummaryKey = summaryKey; }
      list.replaceChildren(...result.samples.map(sampleNode));
      window.scrollTo(0, 0);
      const pages = Math.max(1, Math.ceil(result.matched / result.size));
      pager.replaceChildren(
        el("button", { class: "secondary", disabled: pageNo === 0, onclick: () => { pageNo--; load(false); } }, "‹ prev"),
        el("span", { id: "page-info" }, `page ${pageNo + 1} of ${pages} · ${result.matched} of ${result.total} samples`),
        el("button", { class: "secondary", disabled: pageNo + 1 >= pages, onclick: () => { pageNo++; load(false); } }, "next ›"));
      main.dataset.ready = "1";
    } catch (e) {
      summaryBox.replaceChildren(errorBox(e.message));
      lastSummaryKey = null;
      list.replaceChildren();
    }
    delete main.dataset.loading;
  }
  form.addEventListener("submit", (ev) => { ev.preventDefault(); load(true); });
  load(false);
}

function summaryNode(s) {
  const rows = s.datasets.map((d) => [d.name, `${d.kept} kept, ${d.rejected} rejected (${d.path})`]);
  rows.push(["template", `${s.template}, cutoff_len ${s.cutoff_len}, policy ${s.policy}`]);
  rows.push(["samples", `${s.samples} (${s.skipped} skipped)`]);
  rows.push(["tokens", `${s.tokens} (${s.trained_tokens} trained, ${(100 * s.trained_share).toFixed(1)}%)`]);
  rows.push(["length", `p50 ${s.length.p50} · p90 ${s.length.p90} · p99 ${s.length.p99} · max ${s.length.max}`]);
  rows.push(["hit cutoff", String(s.hit_cutoff)]);
  const problems = [...s.rejected_records.map((r) => ["rejected", r.file, r.record, r.reason]),
    ...s.skipped_samples.map((r) => ["skipped", r.file, r.record, r.reason])];
  return el("div", { class: "grid2" }, table(["", ""], rows, { id: "summary-table" }),
    problems.length ? el("div", {}, el("h3", {}, "Left out"), table(["", "file", "record", "reason"], problems, { id: "problems" })) : el("div"));
}

// ---------------------------------------------------------------- runs
function statusPill(status) { return el("span", { class: "pill " + status }, status); }

async function runsPage() {
  main.append(el("h2", {}, "Runs"), el("p", { class: "muted" }, "Every run folder under runs/ in the workspace; tick two to compare."));
  const box = el("div", { id: "runs" });
  const compareButton = el("button", { disabled: true, onclick: () => {
    const picked = [...box.querySelectorAll("input:checked")].map((c) => c.value);
    location.href = `/ui/compare?left=${encodeURIComponent(picked[0])}&right=${encodeURIComponent(picked[1])}`;
  } }, "Compare");
  main.append(box, compareButton);
  async function refresh() {
    try {
      const { runs } = await api("runs");
      const picked = new Set([...box.querySelectorAll("input:checked")].map((c) => c.value));
      box.replaceChildren(runs.length ? table(["", "run", "status", "model", "dataset", "stages"], runs.map((r) => [
        el("input", { type: "checkbox", value: r.name, checked: picked.has(r.name), onchange: () => {
          compareButton.disabled = box.querySelectorAll("input:checked").length !== 2; } }),
        el("a", { href: `/ui/run?name=${encodeURIComponent(r.name)}` }, r.name), statusPill(r.status),
        r.model || "default", r.dataset || "-",
        Object.entries(r.stages).map(([k, v]) => `${k}:${v}`).join(" ")]), { id: "runs-table" })
        : el("p", { class: "muted" }, "No runs yet: start one from the form or with `tooltune run`."));
      main.dataset.ready = "1";
    } catch (e) { box.replaceChildren(errorBox(e.message)); }
  }
  await refresh();
  setInterval(refresh, 3000);
}

function stagesTable(rows) {
  return table(["stage", "status", "wall time", "peak memory", "summary"], rows.map((s) => [s.name, statusPill(s.status || "?"),
    s.wall_seconds === null || s.wall_seconds === undefined ? "-" : `${s.wall_seconds.toFixed(1)} s`, fmtBytes(s.peak_rss_bytes), s.summary]), { id: "stages" });
}

function evalTable(rows) {
  const rate = (r, k) => r.cases ? `${Math.round(100 * (r[k] || 0) / r.cases)}% (${r[k] || 0}/${r.cases})` : "-";
  return table(["model", "cases", "format-valid", "right function", "right arguments", "tok/s"],
    rows.map((r) => [r.model, r.cases || 0, rate(r, "format_valid"), rate(r, "right_name"), rate(r, "args_match"),
      r.tokens_per_second ? Math.round(r.tokens_per_second) : "-"]), { id: "eval" });
}

async function runPage() {
  const name = params.get("name") || "";
  let run;
  try { run = await api("runs/" + encodeURIComponent(name)); } catch (e) { main.append(errorBox(e.message)); return; }
  const lossSeries = [{ name: "train loss", color: "#2563eb", points: run.loss.train },
    { name: "held-out loss", color: "#dc2626", dash: "4 3", points: run.loss.eval }];
  const chart = lineChart(lossSeries, { empty: "waiting for the first logged step…" });
  chart.id = "loss-chart";
  const stopButton = el("button", { class: "secondary", onclick: async () => {
    stopButton.disabled = true;
    try { await postJSON(`runs/${encodeURIComponent(name)}/stop`, {}); } catch (e) { main.append(errorBox(e.message)); }
  } }, "Stop");
  const header = el("div", { class: "bar" }, el("h2", {}, "Run ", name), statusPill(run.status), run.status === "running" || run.status === "starting" ? stopButton : null);
  const stagesBox = el("div", {}, stagesTable(run.stage_rows));
  main.append(header, el("p", { class: "muted" }, run.command || ""), el("h3", {}, "Stages"), stagesBox,
    el("h3", {}, "Training loss ", el("span", { class: "muted", id: "live" }, "")), chart);
  if (Object.keys(run.train_figures).length) main.append(table(["figure", "value"], Object.entries(run.train_figures).map(([k, v]) => [k, fmtNum(v)])));
  if (run.eval_rows.length) main.append(el("h3", {}, "Tool-calling accuracy (held-out)"), evalTable(run.eval_rows));
  for (const image of run.images.filter((i) => i !== "loss.png")) {
    main.append(el("img", { src: `/ui/api/runs/${encodeURIComponent(name)}/image/${image}`, alt: image, class: "report-chart", style: "max-width:640px;display:block" }));
  }
  if (run.gguf_files.length) main.append(el("h3", {}, "GGUF files"), table(["file", "type", "size"], run.gguf_files.map((f) => [f.name, f.type || "", fmtBytes(f.bytes)]), { id: "gguf" }));
  if (run.gguf_report) main.append(el("pre", { class: "block" }, run.gguf_report));
  if (run.modelfile) main.append(el("h3", {}, "Modelfile"), el("pre", { class: "block", id: "modelfile" }, run.modelfile));
  if (run.report) main.append(el("details", {}, el("summary", {}, "report.md"), el("pre", { class: "block" }, run.report)));
  if (run.launch_log) main.append(el("details", {}, el("summary", {}, "output of `tooltune run`"), el("pre", { class: "block", id: "launch-log" }, run.launch_log)));
  main.append(el("details", {}, el("summary", {}, "config"), el("pre", { class: "block" }, JSON.stringify(run.config, null, 2))));
  main.dataset.ready = "1";

  // Live loss: the server pushes each new trainer_log.jsonl line (server-sent events); no reload, no polling here.
  const live = document.getElementById("live");
  const source = new EventSource(`/ui/api/runs/${encodeURIComponent(name)}/loss-stream?after=${run.log_lines}`);
  source.onmessage = (event) => {
    const { records, reset } = JSON.parse(event.data);
    if (reset) { lossSeries[0].points.length = 0; lossSeries[1].points.length = 0; }
    for (const r of records) {
      if (typeof r.loss === "number") lossSeries[0].points.push([r.step, r.loss]);
      if (typeof r.eval_loss === "number") lossSeries[1].points.push([r.step, r.eval_loss]);
    }
    chart.redraw();
    const last = records[records.length - 1];
    if (!last) return;
    live.textContent = `· live, step ${last.step}` + (typeof last.loss === "number" ? `, loss ${last.loss.toFixed(4)}` : "");
    window.__lastChartUpdate = performance.timeOrigin + performance.now();
  };
  // The stage table follows the manifest (a few seconds' lag is fine there; the loss is what moves fast).
  setInterval(async () => {
    try { const fresh = await api("runs/" + encodeURIComponent(name)); stagesBox.replaceChildren(stagesTable(fresh.stage_rows));
      header.querySelector(".pill").replaceWith(statusPill(fresh.status)); } catch (e) { /* keep the last view */ }
  }, 3000);
}

async function comparePage() {
  const left = params.get("left") || "", right = params.get("right") || "";
  let result;
  try { result = await api(`compare?left=${encodeURIComponent(left)}&right=${encodeURIComponent(right)}`); }
  catch (e) { main.append(errorBox(e.message)); return; }
  const chart = lineChart([
    { name: `${left} train`, color: "#2563eb", points: result.left.loss.train },
    { name: `${right} train`, color: "#ea580c", points: result.right.loss.train },
    { name: `${left} held-out`, color: "#2563eb", dash: "4 3", points: result.left.loss.eval },
    { name: `${right} held-out`, color: "#ea580c", dash: "4 3", points: result.right.loss.eval }]);
  main.append(el("h2", {}, `Compare ${left} ↔ ${right}`), chart,
    el("div", { class: "grid2" },
      el("div", {}, el("h3", {}, "Config differences"), table(["key", left, right],
        result.config_diff.map((d) => [d.key, JSON.stringify(d.left), JSON.stringify(d.right)]), { id: "config-diff" })),
      el("div", {}, el("h3", {}, "Figures"), table(["figure", left, right, "right − left"], result.metric_diff.map((d) => [d.key, fmtNum(d.left), fmtNum(d.right),
        typeof d.left === "number" && typeof d.right === "number" ? fmtNum(d.right - d.left) : ""]), { id: "metric-diff" }))),
    el("div", { class: "grid2" }, el("div", {}, el("h3", {}, left), stagesTable(result.left.stage_rows)),
      el("div", {}, el("h3", {}, right), stagesTable(result.right.stage_rows))));
  main.dataset.ready = "1";
}

// ---------------------------------------------------------------- start a run
async function startPage() {
  let defaults;
  try { ({ defaults } = await api("form")); } catch (e) { main.append(errorBox(e.message)); return; }
  const hints = { model_name_or_path: "HF model folder in the workspace", dataset: "name or .json in the workspace",
    dataset_dir: "folder with dataset_info.json (empty: bundled demo data)", quantize: "e.g. Q4_K_M,Q8_0" };
  const form = el("form", { id: "run-form" },
    el("div", { class: "bar" }, el("label", {}, "run name", el("input", { name: "name", required: true, placeholder: "my-run", style: "width:200px" }))),
    el("div", { class: "bar" }, Object.entries(defaults).map(([key, value]) => el("label", {}, key,
      el("input", { name: key, value: value === null || value === undefined ? "" : value, placeholder: hints[key] || "", style: "width:200px" })))),
    el("button", { type: "submit" }, "Start `tooltune run`"));
  const result = el("div", { id: "result" });
  main.append(el("h2", {}, "Start a run"), el("p", { class: "muted" }, "Same keys, defaults and checks as `tooltune run`; the values are saved as runs/NAME/ui_pipeline.yaml."), form, result);
  main.dataset.ready = "1";
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {};
    for (const [k, v] of new FormData(form).entries()) if (v !== "") body[k] = v;
    try {
      const started = await postJSON("runs", body);
      location.href = `/ui/run?name=${encodeURIComponent(started.name)}`;
    } catch (e) { result.replaceChildren(errorBox(e.message)); }
  });
}

// ---------------------------------------------------------------- playground
const TOOL_EXAMPLES = {
  openai: [{ type: "function", function: { name: "get_weather", description: "Current weather in a city",
    parameters: { type: "object", properties: { city: { type: "string", description: "City name" } }, required: ["city"] } } }],
  bare: [{ name: "get_weather", description: "Current weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } }],
  param_list: [{ name: "get_weather", description: "Current weather in a city",
    parameters: [{ name: "city", description: "City name", required: true }] }],
};

async function playgroundPage() {
  let targets = [];
  try { ({ targets } = await api("targets")); } catch (e) { main.append(errorBox(e.message)); return; }
  const targetOptions = (selected) => [...targets.map((t, i) => el("option", { value: String(i), selected: i === selected }, t.label)),
    el("option", { value: "custom" }, "other server…")];
  const pickA = el("select", { id: "target-a" }, targetOptions(0));
  const pickB = el("select", { id: "target-b" }, el("option", { value: "" }, "(none)"), targetOptions(-1));
  const customUrl = el("input", { id: "custom-url", placeholder: "http://127.0.0.1:11434" });
  const modelA = el("input", { id: "model-a", placeholder: "model (empty: the server's)" });
  const modelB = el("input", { id: "model-b", placeholder: "model (empty: the server's)" });
  const system = el("textarea", { id: "system", rows: 2 });
  const tools = el("textarea", { id: "tools", rows: 12 }, JSON.stringify(TOOL_EXAMPLES.openai, null, 1));
  const choice = el("select", { id: "tool-choice" });
  const toolsError = el("div", { class: "error" });
  const temperature = el("input", { id: "temperature", value: "0", style: "width:60px" });
  const maxTokens = el("input", { id: "max-tokens", value: "128", style: "width:60px" });
  const seed = el("input", { id: "seed", value: "", style: "width:60px" });
  function refreshChoices() {
    let names = [];
    try { const parsed = JSON.parse(tools.value || "[]"); names = (Array.isArray(parsed) ? parsed : [parsed]).map((t) => (t.function || t).name).filter(Boolean); toolsError.textContent = ""; }
    catch (e) { toolsError.textContent = "tools: " + e.message; }
    const current = choice.value || "auto";
    choice.replaceChildren(...["auto", "none", "required", ...names].map((n) => el("option", { value: n, selected: n === current }, n === "auto" || n === "none" || n === "required" ? n : `call ${n}`)));
  }
  tools.addEventListener("input", refreshChoices);
  refreshChoices();
  const shapeButtons = Object.keys(TOOL_EXAMPLES).map((shape) => el("button", { type: "button", class: "secondary", onclick: () => {
    tools.value = JSON.stringify(TOOL_EXAMPLES[shape], null, 1); refreshChoices(); } }, shape));

  const columns = el("div", { class: "columns", id: "columns" });
  const input = el("textarea", { id: "user-input", rows: 3, style: "width:100%", placeholder: "Message…" });
  const sendButton = el("button", { id: "send" }, "Send");
  const status = el("div", { id: "play-status" });
  const side = el("div", { class: "side" },
    el("label", {}, "model A", pickA, modelA), el("label", {}, "model B (side by side)", pickB, modelB), el("label", {}, "other server URL", customUrl),
    el("label", {}, "system prompt", system),
    el("label", {}, "tools (JSON: one of the three shapes)", el("div", { class: "bar" }, shapeButtons), tools), toolsError,
    el("label", {}, "tool_choice", choice),
    el("div", { class: "bar" }, el("label", {}, "temperature", temperature), el("label", {}, "max_tokens", maxTokens), el("label", {}, "seed", seed)));
  main.append(el("h2", {}, "Playground"), el("div", { class: "play" }, side, el("div", {}, columns, input, el("div", { class: "bar" }, sendButton, el("button", { class: "secondary", onclick: reset }, "Clear")), status)));

  // One conversation per model shown; each keeps the messages it was sent and its own replies.
  let panes = [];
  function target(pick, model) {
    if (pick.value === "custom") return { url: customUrl.value.trim(), model: model.value.trim() };
    const t = targets[Number(pick.value)];
    return t ? { url: t.url, model: model.value.trim() || t.model } : null;
  }
  function reset() {
    const chosen = [target(pickA, modelA), pickB.value !== "" ? target(pickB, modelB) : null].filter(Boolean);
    panes = chosen.map((t, i) => ({ target: t, messages: [], node: el("div", { class: "chat", "data-pane": i }, el("div", { class: "muted" }, `${"AB"[i]}: ${t.model || "(server's model)"} @ ${t.url}`)) }));
    columns.style.setProperty("--cols", panes.length || 1);
    columns.replaceChildren(...panes.map((p) => p.node));
  }
  pickA.addEventListener("change", reset); pickB.addEventListener("change", reset);
  modelA.addEventListener("change", reset); modelB.addEventListener("change", reset); customUrl.addEventListener("change", reset);
  reset();
  main.dataset.ready = "1";

  async function turn(pane) {
    let toolList = [];
    try { toolList = JSON.parse(tools.value || "[]"); } catch (e) { throw new Error("tools: " + e.message); }
    const reply = await postJSON("chat", { target: pane.target, messages: pane.messages, tools: toolList, tool_choice: choice.value,
      system: system.value, options: { temperature: temperature.value, max_tokens: maxTokens.value, seed: seed.value } });
    pane.messages.push(reply.assistant_message);
    pane.node.append(replyNode(pane, reply));
  }
  async function sendAll(appendMessage) {
    sendButton.disabled = true; status.replaceChildren(el("span", { class: "muted" }, "waiting for the model…"));
    const results = await Promise.allSettled(panes.map((pane) => { appendMessage(pane); return turn(pane); }));
    const failed = results.filter((r) => r.status === "rejected");
    status.replaceChildren(...failed.map((r) => errorBox(r.reason.message)));
    sendButton.disabled = false;
  }
  sendButton.addEventListener("click", () => {
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    sendAll((pane) => { pane.messages.push({ role: "user", content: text }); pane.node.append(el("div", { class: "msg user" }, text)); });
  });

  function replyNode(pane, reply) {
    const node = el("div", { class: "msg assistant" });
    if (reply.reasoning) node.append(el("details", { class: "reasoning" }, el("summary", {}, "reasoning"), el("pre", {}, reply.reasoning)));
    if (reply.content) node.append(el("div", { class: "content" }, reply.content));
    for (const call of reply.tool_calls) {
      const result = el("textarea", { class: "tool-result", rows: 2, style: "width:100%", placeholder: `result of ${call.name} (JSON or text)` });
      const card = el("div", { class: "card tool-call", "data-name": call.name },
        el("div", {}, el("span", { class: "muted" }, "tool call "), el("span", { class: "name" }, call.name)),
        el("pre", { class: "arguments" }, JSON.stringify(call.arguments, null, 2)), result,
        el("button", { class: "secondary send-result", onclick: async (ev) => {
          ev.target.disabled = true;
          pane.messages.push({ role: "tool", tool_call_id: call.id, name: call.name, content: result.value });
          pane.node.append(el("div", { class: "msg tool" }, `${call.name} → ${result.value}`));
          status.replaceChildren(el("span", { class: "muted" }, "waiting for the model…"));
          try { await turn(pane); status.replaceChildren(); } catch (e) { status.replaceChildren(errorBox(e.message)); }
        } }, "Send result"));
      node.append(card);
    }
    if (!reply.content && !reply.tool_calls.length) node.append(el("span", { class: "muted" }, "(empty reply)"));
    node.append(el("div", { class: "muted" }, `${reply.model} · finish ${reply.finish_reason}`),
      el("details", { class: "prompt" }, el("summary", {}, "prompt as rendered"), el("pre", {}, reply.prompt ?? "(the server does not expose its template)")),
      el("details", { class: "raw" }, el("summary", {}, "raw output"), el("pre", {}, JSON.stringify(reply.raw, null, 2))));
    return node;
  }
}

const pages = { data: dataPage, runs: runsPage, run: runPage, compare: comparePage, start: startPage, playground: playgroundPage };
(pages[page] || dataPage)();
