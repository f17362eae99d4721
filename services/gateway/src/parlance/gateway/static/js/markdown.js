// A small Markdown renderer for model output that is safe by construction: the whole text is
// HTML-escaped FIRST, and only then are the Markdown constructs turned into tags that this
// module writes itself. Nothing the model writes can become a tag or an attribute; link
// targets are limited to http(s) and mailto.
//
// Supported: fenced code blocks (``` or ~~~, with a language), headings, paragraphs, line
// breaks, bullet and numbered lists, block quotes, horizontal rules, GFM tables, inline code,
// bold, italic, strikethrough and [links](https://...).

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}&gt;\s?(.*)$/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_DIVIDER = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

/** Markdown text (untrusted) -> HTML string (safe to assign to innerHTML). */
export function renderMarkdown(source) {
  // \u0000 is the placeholder delimiter of inline(): it must not occur in the input.
  const text = escapeHtml(String(source ?? "").replace(/\r\n?/g, "\n").replace(/\u0000/g, ""));
  return renderBlocks(text.split("\n"));
}

function renderBlocks(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const fence = line.match(FENCE);
    if (fence) {
      const marker = fence[1];
      const body = [];
      i += 1;
      // An unclosed fence (an answer still streaming) runs to the end of the text.
      while (i < lines.length && !isClosingFence(lines[i], marker)) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1;
      out.push(codeBlock(body.join("\n"), fence[2]));
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      const level = heading[1].length;
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      out.push("<hr>");
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        quoted.push(lines[i].match(QUOTE)[1]);
        i += 1;
      }
      out.push(`<blockquote>${renderBlocks(quoted)}</blockquote>`);
      continue;
    }
    if (LIST_ITEM.test(line)) {
      i = renderList(lines, i, out);
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_DIVIDER.test(lines[i + 1])) {
      i = renderTable(lines, i, out);
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() && !startsBlock(lines, i)) {
      paragraph.push(inline(lines[i].trim()));
      i += 1;
    }
    out.push(`<p>${paragraph.join("<br>")}</p>`);
  }
  return out.join("\n");
}

function startsBlock(lines, i) {
  const line = lines[i];
  return (
    FENCE.test(line) ||
    HEADING.test(line) ||
    RULE.test(line) ||
    QUOTE.test(line) ||
    LIST_ITEM.test(line) ||
    (line.includes("|") && i + 1 < lines.length && TABLE_DIVIDER.test(lines[i + 1]))
  );
}

function isClosingFence(line, marker) {
  const trimmed = line.trim();
  return trimmed.length >= marker.length && trimmed === marker[0].repeat(trimmed.length);
}

function codeBlock(code, lang) {
  // lang matched [\w+#.-]*: no quote or bracket can reach the attribute.
  const attr = lang ? ` data-lang="${lang}"` : "";
  const label = lang ? `<span class="code-lang">${lang}</span>` : "";
  return `<pre${attr}>${label}<code>${code}</code></pre>`;
}

function renderList(lines, start, out) {
  const first = lines[start].match(LIST_ITEM);
  const ordered = /\d/.test(first[2]);
  const items = [];
  let i = start;
  while (i < lines.length) {
    const item = lines[i].match(LIST_ITEM);
    if (item && /\d/.test(item[2]) === ordered) {
      items.push([item[3]]);
      i += 1;
    } else if (item) {
      break;
    } else if (lines[i].trim() && /^\s{2,}/.test(lines[i]) && items.length) {
      // An indented continuation line belongs to the item above.
      items[items.length - 1].push(lines[i].trim());
      i += 1;
    } else {
      break;
    }
  }
  const body = items.map((parts) => `<li>${parts.map(inline).join("<br>")}</li>`).join("");
  if (ordered) {
    const number = parseInt(first[2], 10);
    out.push(`<ol${number !== 1 ? ` start="${number}"` : ""}>${body}</ol>`);
  } else {
    out.push(`<ul>${body}</ul>`);
  }
  return i;
}

function tableCells(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|")) row = row.slice(0, -1);
  return row.split("|").map((cell) => inline(cell.trim()));
}

function renderTable(lines, start, out) {
  const head = tableCells(lines[start]);
  let i = start + 2;
  const rows = [];
  while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
    rows.push(tableCells(lines[i]));
    i += 1;
  }
  const th = head.map((c) => `<th>${c}</th>`).join("");
  const tr = rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`).join("");
  out.push(`<table><thead><tr>${th}</tr></thead><tbody>${tr}</tbody></table>`);
  return i;
}

/** Inline formatting of one already-escaped line. */
function inline(text) {
  const held = [];
  const hold = (html) => `\u0000${held.push(html) - 1}\u0000`;
  let s = text.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, __, code) =>
    hold(`<code>${code.trim()}</code>`),
  );
  s = s.replace(/\[([^\]]+)\]\(([^\s()]+)\)/g, (whole, label, url) => {
    if (!/^(https?:\/\/|mailto:)/i.test(url)) return whole;
    return hold(
      `<a href="${url}" target="_blank" rel="noopener noreferrer nofollow">${emphasis(label)}</a>`,
    );
  });
  s = emphasis(s);
  return s.replace(/\u0000(\d+)\u0000/g, (_, n) => held[Number(n)]);
}

function emphasis(s) {
  return s
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/(^|[^*\w])\*([^\s*](?:[^*]*?[^\s*])?)\*(?![*\w])/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_([^\s_](?:[^_]*?[^\s_])?)_(?!\w)/g, "$1<em>$2</em>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
}
