// Tiny DOM helpers. Text always goes in as text nodes: the only HTML this page ever assigns
// comes from markdown.js (escaped first) or from a search snippet checked by setSnippet().

/** h("button", {class: "x", onclick: f, "aria-label": "Copy"}, "child", node, ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

/**
 * A search snippet is escaped text with the matches between <mark> and </mark>. It goes in as
 * HTML only when nothing but those two tags is in it; anything else is shown as plain text.
 */
export function setSnippet(el, snippet) {
  const text = String(snippet ?? "");
  if (/[<>]/.test(text.replace(/<\/?mark>/g, ""))) {
    el.textContent = text;
  } else {
    el.innerHTML = text;
  }
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (an insecure origin, or permission refused): the old way.
    const area = h("textarea");
    // Through CSSOM, not a style attribute: the page's CSP allows no inline styles.
    area.style.position = "fixed";
    area.style.opacity = "0";
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

/** A button that copies `getText()` and says so for a moment (in its text, or its tooltip
 * when it shows an icon). */
export function copyButton(getText, { label = "Copy", className = "", icon = null } = {}) {
  const button = h("button", { type: "button", class: className, "aria-label": label, title: label }, icon || label);
  button.addEventListener("click", async () => {
    const ok = await copyText(getText());
    const said = ok ? "Copied" : "Copy failed";
    if (icon) {
      button.title = said;
      button.classList.add("done");
    } else {
      button.textContent = said;
    }
    setTimeout(() => {
      button.title = label;
      button.classList.remove("done");
      if (!icon) button.textContent = label;
    }, 1500);
  });
  return button;
}

export function relativeTime(seconds) {
  const diff = Date.now() / 1000 - seconds;
  if (diff < 60) return "just now";
  if (diff < 3600) return `${Math.floor(diff / 60)} min ago`;
  if (diff < 86400) return `${Math.floor(diff / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString();
}
