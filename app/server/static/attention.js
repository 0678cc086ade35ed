// The playground's attention view: what POST /attention returns, drawn as bertviz's head view
// (tokens in two columns, a line from each query token to each key token it attends to, as
// opaque as the weight) or, for longer prompts, as a heatmap (query rows, key columns). Pick a
// layer and a head, or the mean over the heads; clicking a token keeps only what it attends to.
// No dependencies; every drawn weight carries its value in data-w so tests can read it back.
"use strict";

const AttentionView = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const HEATMAP_FROM = 40; // tokens: above this the lines would be a blur
  const ROW = 18; // px per token in the lines view

  function el(tag, attrs = {}, ns = null) {
    const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  // The [T][T] matrix for one layer index (a position in data.layers) and head (a position in
  // data.heads, or "mean").
  function matrix(data, layer, head) {
    const heads = data.attention[layer];
    if (head !== "mean") return heads[head];
    const t = heads[0].length;
    return Array.from({ length: t }, (_, q) =>
      Array.from({ length: t }, (_, k) => heads.reduce((s, h) => s + h[q][k], 0) / heads.length)
    );
  }

  function label(token) {
    const text = token.text.replace(/\n/g, "\\n");
    return text.trim() === "" ? `[${JSON.stringify(text)}]` : text;
  }

  function select(name, options, onChange) {
    const s = el("select", { "aria-label": name, "data-role": name });
    for (const [value, text] of options) {
      const o = el("option", { value });
      o.textContent = text;
      s.append(o);
    }
    s.addEventListener("change", onChange);
    return s;
  }

  function drawLines(box, tokens, m, focus) {
    const t = tokens.length;
    const width = 360;
    const svg = el("svg", { width, height: t * ROW + 8, class: "attn-lines", role: "img" }, SVG);
    const left = 110;
    const right = width - 110;
    m.forEach((row, q) =>
      row.forEach((w, k) => {
        if (w <= 0 || (focus !== null && focus !== q)) return;
        const line = el(
          "line",
          { x1: left, y1: q * ROW + 12, x2: right, y2: k * ROW + 12, "stroke-opacity": w, "data-q": q, "data-k": k, "data-w": w },
          SVG
        );
        svg.append(line);
      })
    );
    tokens.forEach((tok, i) => {
      for (const [x, anchor, side] of [
        [left - 4, "end", "query"],
        [right + 4, "start", "key"],
      ]) {
        const text = el("text", { x, y: i * ROW + 16, "text-anchor": anchor, "data-side": side, "data-i": i, tabindex: 0 }, SVG);
        text.textContent = label(tok);
        if (focus === i && side === "query") text.classList.add("attn-focus");
        svg.append(text);
      }
    });
    box.append(svg);
    return svg;
  }

  function drawHeatmap(box, tokens, m, focus) {
    const t = tokens.length;
    const cell = Math.max(4, Math.min(14, Math.floor(520 / t)));
    const pad = 100; // the query tokens' labels, left of their rows
    const svg = el("svg", { width: pad + t * cell + 2, height: t * cell + 2, class: "attn-heatmap", role: "img" }, SVG);
    m.forEach((row, q) =>
      row.forEach((w, k) => {
        if (k > q) return; // causal: nothing above the diagonal
        const r = el("rect", { x: pad + k * cell + 1, y: q * cell + 1, width: cell, height: cell, "data-q": q, "data-k": k, "data-w": w }, SVG);
        r.setAttribute("fill-opacity", focus === null || focus === q ? Math.max(w, 0.02) : w * 0.15);
        const tip = el("title", {}, SVG);
        tip.textContent = `${label(tokens[q])} → ${label(tokens[k])}: ${w.toFixed(4)}`;
        r.append(tip);
        svg.append(r);
      })
    );
    if (cell >= 8) {
      tokens.forEach((tok, i) => {
        const text = el("text", { x: pad - 4, y: i * cell + cell - 1, "text-anchor": "end", "data-side": "query", "data-i": i, tabindex: 0 }, SVG);
        text.textContent = label(tok);
        if (focus === i) text.classList.add("attn-focus");
        svg.append(text);
      });
    }
    box.append(svg);
    return svg;
  }

  // Draws ``data`` into ``container`` (replacing what was there); returns a small handle.
  function render(container, data) {
    container.replaceChildren();
    const state = { layer: 0, head: "mean", focus: null, mode: data.tokens.length > HEATMAP_FROM ? "heatmap" : "lines" };
    const controls = el("div", { class: "attn-controls" });
    const layerSel = select("layer", data.layers.map((l, i) => [i, `layer ${l}`]), (e) => {
      state.layer = Number(e.target.value);
      draw();
    });
    const headSel = select("head", [["mean", "mean of heads"], ...data.heads.map((h, i) => [i, `head ${h}`])], (e) => {
      state.head = e.target.value === "mean" ? "mean" : Number(e.target.value);
      draw();
    });
    const modeSel = select("view", [["lines", "lines"], ["heatmap", "heatmap"]], (e) => {
      state.mode = e.target.value;
      draw();
    });
    modeSel.value = state.mode;
    controls.append(layerSel, headSel, modeSel);
    const box = el("div", { class: "attn-box" });
    container.append(controls, box);

    function draw() {
      box.replaceChildren();
      const m = matrix(data, state.layer, state.head);
      const svg = (state.mode === "lines" ? drawLines : drawHeatmap)(box, data.tokens, m, state.focus);
      svg.addEventListener("click", (e) => {
        const i = e.target.getAttribute("data-i") ?? e.target.getAttribute("data-q");
        state.focus = i === null || Number(i) === state.focus ? null : Number(i);
        draw();
      });
      svg.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && e.target.getAttribute("data-i") !== null) e.target.dispatchEvent(new MouseEvent("click", { bubbles: true }));
      });
    }
    draw();
    return { state, draw, matrix: () => matrix(data, state.layer, state.head) };
  }

  return { render, matrix };
})();
