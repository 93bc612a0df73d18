// exo-p2p chat page: models from /v1/models, streamed chat over SSE (fetch + ReadableStream),
// a stop button, speed figures, and a live view of /v1/topology. No dependencies.
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const els = {
    model: $("model"), health: $("health"), newChat: $("new-chat"),
    keyToggle: $("key-toggle"), keyForm: $("key-form"), apiKey: $("api-key"),
    messages: $("messages"), empty: $("empty"), composer: $("composer"), prompt: $("prompt"),
    send: $("send"), stop: $("stop"), ttft: $("ttft"), tps: $("tps"), tokens: $("tokens"),
    status: $("status"), topology: $("topology"), topoUpdated: $("topo-updated"),
  };
  const TOPOLOGY_EVERY_MS = 3000;
  const MODELS_EVERY_MS = 15000;

  let apiKey = localStorage.getItem("exo.apiKey") || "";
  let history = []; // [{role, content}]
  let controller = null;

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (apiKey) h["Authorization"] = "Bearer " + apiKey;
    return h;
  }

  // The message of an OpenAI-shaped error body, or the status line.
  async function errorText(resp) {
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) { /* not JSON */ }
    return resp.status + " " + resp.statusText;
  }

  function needKey() {
    // Polls hit this every few seconds: open the form once, do not reset what is being typed.
    if (els.keyForm.hidden) showKeyForm(true);
    setStatus(apiKey ? "The API key was refused." : "This server needs an API key.", true);
  }

  async function getJson(path) {
    const resp = await fetch(path, { headers: headers() });
    if (resp.status === 401) { needKey(); throw new Error("API key required"); }
    if (!resp.ok) throw new Error(await errorText(resp));
    return resp.json();
  }

  function setStatus(text, isError) {
    els.status.textContent = text || "";
    els.status.classList.toggle("error", !!isError);
  }

  // ---------------------------------------------------------------------------------------
  // Models and health

  async function loadModels() {
    let data;
    try {
      data = await getJson("/v1/models");
    } catch (e) {
      if (!els.model.options.length || !els.model.value) {
        els.model.replaceChildren(new Option("(no models: " + e.message + ")", ""));
      }
      return;
    }
    const models = Array.isArray(data && data.data) ? data.data : [];
    const wanted = els.model.value || localStorage.getItem("exo.model") || "";
    const ids = models.map((m) => String(m && m.id)).filter(Boolean);
    const current = Array.from(els.model.options).map((o) => o.value);
    if (ids.join("\n") === current.join("\n")) return; // unchanged: keep the user's pick
    els.model.replaceChildren();
    if (!ids.length) els.model.append(new Option("(no models yet)", ""));
    for (const m of models) {
      if (!m || !m.id) continue;
      const label = m.owned_by && m.owned_by !== "exo-p2p" ? m.id + " (" + m.owned_by + ")" : m.id;
      els.model.append(new Option(label, m.id));
    }
    if (ids.includes(wanted)) els.model.value = wanted;
  }

  async function loadHealth() {
    try {
      const resp = await fetch("/health");
      const body = await resp.json().catch(() => ({}));
      els.health.textContent = resp.ok ? "ready" : "not ready";
      els.health.className = "pill " + (resp.ok ? "ok" : "bad");
      els.health.title = body && body.peer_id ? "peer " + body.peer_id + (body.version ? " · " + body.version : "") : "";
    } catch (_) {
      els.health.textContent = "offline";
      els.health.className = "pill bad";
    }
  }

  // ---------------------------------------------------------------------------------------
  // Chat

  function addMessage(role, text) {
    els.empty.hidden = true;
    const div = document.createElement("div");
    div.className = "msg " + role;
    const body = document.createElement("div");
    body.className = "body";
    div.append(body);
    els.messages.append(div);
    paint(body, role, text);
    return body;
  }

  function paint(body, role, text) {
    if (role === "user") body.textContent = text;
    else body.innerHTML = window.exoMarkdown.render(text); // escapes everything it does not render
  }

  function scrollDown() {
    els.messages.scrollTop = els.messages.scrollHeight;
  }

  function setBusy(busy) {
    els.send.disabled = busy;
    els.stop.disabled = !busy;
    els.prompt.readOnly = busy;
  }

  function showFigures(ttftMs, tokens, tps) {
    els.ttft.textContent = ttftMs == null ? "–" : Math.round(ttftMs) + " ms";
    els.tokens.textContent = tokens == null ? "–" : String(tokens);
    els.tps.textContent = tps == null || !isFinite(tps) ? "–" : tps.toFixed(1);
  }

  // Splits an SSE byte stream into `data:` payloads.
  async function* sseData(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
        if (data.length) yield data.join("\n");
      }
    }
  }

  async function send(text) {
    const model = els.model.value;
    if (!model) { setStatus("Pick a model first.", true); return; }
    history.push({ role: "user", content: text });
    addMessage("user", text);
    let answer = "";
    const body = addMessage("assistant", "");
    body.parentElement.classList.add("streaming");
    scrollDown();
    setBusy(true);
    setStatus("waiting for the first token…");
    showFigures(null, null, null);

    controller = new AbortController();
    const t0 = performance.now();
    let tFirst = null;
    let chunks = 0;
    let usage = null;
    let painted = false;
    const repaint = () => {
      if (painted) return;
      painted = true;
      requestAnimationFrame(() => { painted = false; paint(body, "assistant", answer); scrollDown(); });
    };
    const live = () => {
      const now = performance.now();
      const secs = tFirst == null ? 0 : (now - tFirst) / 1000;
      showFigures(tFirst == null ? null : tFirst - t0, chunks, secs > 0 && chunks > 1 ? (chunks - 1) / secs : null);
    };

    let outcome = "done";
    try {
      const resp = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ model, messages: history, stream: true, stream_options: { include_usage: true } }),
        signal: controller.signal,
      });
      if (resp.status === 401) needKey();
      if (!resp.ok) throw new Error(await errorText(resp));
      for await (const data of sseData(resp.body)) {
        if (data === "[DONE]") break;
        let chunk;
        try { chunk = JSON.parse(data); } catch (_) { continue; }
        if (chunk.error) throw new Error(chunk.error.message || "generation failed");
        if (chunk.usage) usage = chunk.usage;
        const choice = Array.isArray(chunk.choices) ? chunk.choices[0] : null;
        const delta = choice && choice.delta && choice.delta.content;
        if (delta) {
          if (tFirst == null) { tFirst = performance.now(); setStatus("streaming…"); }
          answer += delta;
          chunks++;
          repaint();
          live();
        }
        if (choice && choice.finish_reason === "length") outcome = "length";
      }
    } catch (e) {
      if (e.name === "AbortError") {
        outcome = "stopped";
      } else {
        outcome = "error";
        setStatus(e.message, true);
        const err = document.createElement("div");
        err.className = "error-note";
        err.textContent = e.message;
        body.parentElement.append(err);
      }
    } finally {
      controller = null;
      body.parentElement.classList.remove("streaming");
      paint(body, "assistant", answer);
      setBusy(false);
      const tokens = usage && usage.completion_tokens != null ? usage.completion_tokens : chunks;
      const secs = tFirst == null ? 0 : (performance.now() - tFirst) / 1000;
      showFigures(tFirst == null ? null : tFirst - t0, tokens, secs > 0 && tokens > 1 ? (tokens - 1) / secs : null);
      if (outcome === "done") setStatus("");
      else if (outcome === "stopped") setStatus("stopped");
      else if (outcome === "length") setStatus("stopped at the token limit");
      if (answer) history.push({ role: "assistant", content: answer });
      else history.pop(); // nothing came back: the question can be asked again cleanly
      scrollDown();
      els.prompt.focus();
    }
  }

  // ---------------------------------------------------------------------------------------
  // Topology: rendered defensively, any field may be missing or of another type.

  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  };
  const num = (v) => (typeof v === "number" && isFinite(v) ? v : null);
  const arr = (v) => (Array.isArray(v) ? v : []);
  const str = (v) => (v == null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));
  const shortId = (id) => { id = str(id); return id.length > 16 ? id.slice(0, 8) + "…" + id.slice(-6) : id; };
  function gib(bytes) {
    const b = num(bytes);
    return b == null ? "?" : (b / 1073741824).toFixed(b >= 10 * 1073741824 ? 0 : 1) + " GiB";
  }
  function bar(fraction, cls, label) {
    const outer = el("div", "bar " + (cls || ""));
    const inner = el("div", "fill");
    inner.style.width = Math.max(0, Math.min(100, fraction * 100)).toFixed(1) + "%";
    outer.append(inner);
    if (label) outer.title = label;
    return outer;
  }
  // Layers [start, end) of n as a positioned band.
  function layerBar(start, end, n, label) {
    const s = num(start), e = num(end), total = num(n);
    const outer = el("div", "bar layers");
    if (s != null && e != null && total) {
      const band = el("div", "band");
      band.style.left = (100 * s / total).toFixed(2) + "%";
      band.style.width = (100 * Math.max(0, e - s) / total).toFixed(2) + "%";
      outer.append(band);
    }
    outer.title = label || "";
    return outer;
  }
  const PALETTE = ["#60a5fa", "#f59e0b", "#34d399", "#f472b6", "#a78bfa", "#f87171", "#2dd4bf", "#facc15"];

  function renderTopology(t) {
    const root = document.createDocumentFragment();
    if (!t || typeof t !== "object") {
      root.append(el("p", "muted", "No topology."));
      els.topology.replaceChildren(root);
      return;
    }
    const self = str(t.peer_id);
    const nodes = arr(t.nodes);
    const summary = el("p", "muted", nodes.length + (nodes.length === 1 ? " node" : " nodes") + (self ? " · this node " + shortId(self) : ""));
    root.append(summary);

    const colors = {};
    nodes.forEach((n, i) => { if (n && n.peer_id != null) colors[str(n.peer_id)] = PALETTE[i % PALETTE.length]; });

    for (const n of nodes) {
      if (!n || typeof n !== "object") continue;
      const card = el("div", "node");
      card.dataset.peer = str(n.peer_id);
      const head = el("div", "node-head");
      const dot = el("span", "dot");
      dot.style.background = colors[str(n.peer_id)] || "#9ca3af";
      head.append(dot, el("code", "peer", shortId(n.peer_id)));
      head.lastChild.title = str(n.peer_id);
      const conn = str(n.connection) || (str(n.peer_id) === self ? "self" : "");
      if (conn) head.append(el("span", "pill conn " + conn.replace(/[^a-z]/gi, ""), conn === "self" ? "this node" : conn));
      card.append(head);
      if (n.cpu) card.append(el("div", "muted small", str(n.cpu)));
      const total = num(n.memory_total), avail = num(n.memory_available);
      if (total) {
        const used = avail == null ? null : total - avail;
        const row = el("div", "row");
        row.append(el("span", "small", "memory"), bar(used == null ? 0 : used / total, "mem", "used " + gib(used) + " of " + gib(total)));
        row.append(el("span", "small", gib(avail) + " free / " + gib(total)));
        card.append(row);
      }
      if (num(n.compute_score) != null) card.append(el("div", "small", "compute score " + num(n.compute_score).toFixed(2)));
      const loaded = arr(n.loaded);
      for (const l of loaded) {
        if (!l || typeof l !== "object") continue;
        const layers = l.layers && typeof l.layers === "object" ? l.layers : {};
        const label = str(l.model) + ": layers " + str(layers.start) + "–" + str(layers.end) + " of " + str(layers.n_layers);
        const row = el("div", "row");
        row.append(el("span", "small model-name", str(l.model)), layerBar(layers.start, layers.end, layers.n_layers, label), el("span", "small", "[" + str(layers.start) + ", " + str(layers.end) + ")"));
        card.append(row);
      }
      const models = arr(n.models).map((m) => (m && typeof m === "object" ? str(m.id) : str(m))).filter(Boolean);
      if (models.length) card.append(el("div", "muted small", "has: " + models.join(", ")));
      const addrs = arr(n.addrs).map(str);
      if (addrs.length) {
        const a = el("div", "muted small addrs", addrs[0] + (addrs.length > 1 ? " (+" + (addrs.length - 1) + ")" : ""));
        a.title = addrs.join("\n");
        card.append(a);
      }
      root.append(card);
    }

    const rings = t.rings && typeof t.rings === "object" ? t.rings : {};
    const names = Object.keys(rings);
    if (names.length) root.append(el("h3", null, "Rings"));
    for (const model of names) {
      const ring = arr(rings[model]).filter((p) => p && typeof p === "object");
      const box = el("div", "ring");
      box.dataset.model = model;
      box.append(el("div", "model-name", model));
      const total = Math.max(0, ...ring.map((p) => num(p.end) || 0));
      const strip = el("div", "bar ring-strip");
      for (const p of ring) {
        const s = num(p.start), e = num(p.end);
        if (s == null || e == null || !total) continue;
        const seg = el("div", "seg");
        seg.style.left = (100 * s / total).toFixed(2) + "%";
        seg.style.width = (100 * Math.max(0, e - s) / total).toFixed(2) + "%";
        seg.style.background = colors[str(p.peer_id)] || "#9ca3af";
        seg.title = shortId(p.peer_id) + ": layers [" + s + ", " + e + ")";
        strip.append(seg);
      }
      box.append(strip);
      const list = el("ol", "ring-list small");
      for (const p of ring) list.append(el("li", null, shortId(p.peer_id) + " · layers [" + str(p.start) + ", " + str(p.end) + ")"));
      box.append(list);
      root.append(box);
    }
    els.topology.replaceChildren(root);
  }

  async function loadTopology() {
    try {
      renderTopology(await getJson("/v1/topology"));
      els.topoUpdated.textContent = "updated " + new Date().toLocaleTimeString();
      els.topoUpdated.classList.remove("error");
    } catch (e) {
      els.topoUpdated.textContent = "unavailable: " + e.message;
      els.topoUpdated.classList.add("error");
    }
  }

  // ---------------------------------------------------------------------------------------
  // Wiring

  function showKeyForm(show) {
    els.keyForm.hidden = !show;
    els.keyToggle.setAttribute("aria-expanded", String(show));
    if (show) { els.apiKey.value = apiKey; els.apiKey.focus(); }
  }

  els.keyToggle.addEventListener("click", () => showKeyForm(els.keyForm.hidden));
  els.keyForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    apiKey = els.apiKey.value.trim();
    if (apiKey) localStorage.setItem("exo.apiKey", apiKey);
    else localStorage.removeItem("exo.apiKey");
    showKeyForm(false);
    setStatus("");
    loadModels();
    loadTopology();
  });
  els.model.addEventListener("change", () => localStorage.setItem("exo.model", els.model.value));
  els.composer.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = els.prompt.value.trim();
    if (!text || controller) return;
    els.prompt.value = "";
    send(text);
  });
  els.prompt.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      els.composer.requestSubmit();
    }
  });
  els.stop.addEventListener("click", () => { if (controller) controller.abort(); });
  els.newChat.addEventListener("click", () => {
    if (controller) controller.abort();
    history = [];
    els.messages.replaceChildren(els.empty);
    els.empty.hidden = false;
    showFigures(null, null, null);
    setStatus("");
  });

  loadHealth();
  loadModels();
  loadTopology();
  setInterval(loadTopology, TOPOLOGY_EVERY_MS);
  setInterval(loadHealth, TOPOLOGY_EVERY_MS);
  setInterval(loadModels, MODELS_EVERY_MS);
})();
