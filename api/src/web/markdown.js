// A small markdown renderer for model output: paragraphs, headings, bold/italic/strike,
// inline code, fenced code blocks, lists, blockquotes, links. Everything is HTML-escaped
// first, so model output can never inject markup; only http(s)/mailto links are made.
// Works on partial text too (an unclosed fence renders as code), since it re-renders as
// tokens stream in.
(function (root) {
  "use strict";

  function escapeHtml(s) {
    return s
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;")
      .replace(/'/g, "&#39;");
  }

  // Placeholders keep finished HTML (code spans, links) away from later inline rules.
  // NUL never survives into the escaped text (it is stripped from the input).
  function inline(escaped) {
    const saved = [];
    const keep = (html) => "\u0000" + (saved.push(html) - 1) + "\u0000";
    let s = escaped;
    s = s.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, _ticks, code) =>
      keep("<code>" + code.trim() + "</code>"));
    s = s.replace(/\[([^\]\n]+)\]\(([^)\s]+)\)/g, (whole, text, url) => {
      const href = safeUrl(url);
      return href ? keep('<a href="' + href + '" target="_blank" rel="noopener noreferrer">' + text + "</a>") : whole;
    });
    s = s.replace(/(^|[\s(])(https?:\/\/[^\s<]*[^\s<.,:;!?)'&])/g, (_, lead, url) =>
      lead + keep('<a href="' + url + '" target="_blank" rel="noopener noreferrer">' + url + "</a>"));
    s = s.replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>");
    s = s.replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>");
    s = s.replace(/\*(?=[^\s*])([^*]*?[^\s*])\*/g, "<em>$1</em>");
    s = s.replace(/\*(?=[^\s*])([^*])\*/g, "<em>$1</em>");
    s = s.replace(/(^|[^\w])_(?=[^\s_])([^_]*?[^\s_]|[^\s_])_(?!\w)/g, "$1<em>$2</em>");
    s = s.replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => saved[Number(i)]);
  }

  // `url` is already escaped; only absolute http(s), mailto and same-page anchors pass.
  function safeUrl(url) {
    return /^(https?:\/\/|mailto:|#)/i.test(url) ? url : null;
  }

  const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
  const QUOTE = /^\s{0,3}&gt;\s?(.*)$/;

  function render(src) {
    const lines = escapeHtml(String(src).replace(/\u0000/g, "").replace(/\r\n?/g, "\n")).split("\n");
    const out = [];
    let para = [];
    const flush = () => {
      if (para.length) out.push("<p>" + inline(para.join("\n")).replace(/\n/g, "<br>") + "</p>");
      para = [];
    };
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if ((m = FENCE.exec(line))) {
        flush();
        const close = new RegExp("^\\s{0,3}" + m[1][0] + "{" + m[1].length + ",}\\s*$");
        const body = [];
        i++;
        while (i < lines.length && !close.test(lines[i])) body.push(lines[i++]);
        i++; // the closing fence (or past the end while it streams)
        const lang = m[2] ? ' class="language-' + m[2] + '"' : "";
        out.push("<pre><code" + lang + ">" + body.join("\n") + "</code></pre>");
        continue;
      }
      if (!line.trim()) { flush(); i++; continue; }
      if ((m = HEADING.exec(line))) {
        flush();
        const n = m[1].length;
        out.push("<h" + n + ">" + inline(m[2]) + "</h" + n + ">");
        i++;
        continue;
      }
      if (RULE.test(line)) { flush(); out.push("<hr>"); i++; continue; }
      if (QUOTE.test(line)) {
        flush();
        const quoted = [];
        while (i < lines.length && (m = QUOTE.exec(lines[i]))) { quoted.push(m[1]); i++; }
        // Quoted text is already escaped: render its structure without escaping it again.
        out.push("<blockquote>" + renderEscaped(quoted) + "</blockquote>");
        continue;
      }
      if (ITEM.test(line)) {
        flush();
        const items = [];
        while (i < lines.length) {
          const cur = lines[i];
          if ((m = ITEM.exec(cur))) {
            items.push({ indent: m[1].replace(/\t/g, "    ").length, ordered: /\d/.test(m[2]), start: parseInt(m[2], 10), text: [m[3]] });
            i++;
          } else if (cur.trim() && /^\s+/.test(cur) && items.length) {
            items[items.length - 1].text.push(cur.trim()); // a wrapped continuation line
            i++;
          } else {
            break;
          }
        }
        out.push(list(items));
        continue;
      }
      para.push(line);
      i++;
    }
    flush();
    return out.join("\n");
  }

  // Renders lines that were already escaped (blockquote bodies).
  function renderEscaped(lines) {
    const unescaped = lines.join("\n")
      .replace(/&#39;/g, "'").replace(/&quot;/g, '"').replace(/&gt;/g, ">").replace(/&lt;/g, "<").replace(/&amp;/g, "&");
    return render(unescaped);
  }

  // Nested lists by indentation: deeper items open a child list inside the previous item.
  function list(items) {
    let html = "";
    const stack = []; // {indent, tag}
    for (const item of items) {
      while (stack.length && item.indent < stack[stack.length - 1].indent) {
        html += "</li></" + stack.pop().tag + ">";
      }
      const top = stack[stack.length - 1];
      if (!top || item.indent > top.indent) {
        const tag = item.ordered ? "ol" : "ul";
        const start = item.ordered && item.start !== 1 && !isNaN(item.start) ? ' start="' + item.start + '"' : "";
        html += "<" + tag + start + ">";
        stack.push({ indent: item.indent, tag });
      } else {
        html += "</li>";
      }
      html += "<li>" + inline(item.text.join("\n")).replace(/\n/g, "<br>");
    }
    while (stack.length) html += "</li></" + stack.pop().tag + ">";
    return html;
  }

  const api = { render, escapeHtml };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.exoMarkdown = api;
})(typeof window !== "undefined" ? window : globalThis);
