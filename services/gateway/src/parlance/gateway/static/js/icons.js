// Inline SVG icons (24x24 strokes), built through the DOM: no icon font, no emoji font needed,
// nothing fetched from elsewhere.

const SVG = "http://www.w3.org/2000/svg";

const PATHS = {
  plus: ["M12 5v14", "M5 12h14"],
  pencil: ["M4 20h4L19 9l-4-4L4 16v4z", "M13.5 6.5l4 4"],
  archive: ["M3 5h18v4H3z", "M5 9v10h14V9", "M10 13h4"],
  unarchive: ["M3 5h18v4H3z", "M5 9v10h14V9", "M12 17v-5", "M9.5 14.5L12 12l2.5 2.5"],
  trash: ["M4 7h16", "M9 7V4h6v3", "M6 7l1 13h10l1-13", "M10 11v6", "M14 11v6"],
  copy: ["M9 9h11v11H9z", "M5 15H4V4h11v1"],
  regenerate: ["M20 12a8 8 0 1 1-2.3-5.7", "M20 4v5h-5"],
  thumbUp: ["M7 11v9H4v-9z", "M7 11l4-8c1.7 0 2.5 1 2.3 2.6L13 9h5.5a2 2 0 0 1 2 2.4l-1.4 6.8a2 2 0 0 1-2 1.8H7"],
  thumbDown: ["M7 13V4H4v9z", "M7 13l4 8c1.7 0 2.5-1 2.3-2.6L13 15h5.5a2 2 0 0 0 2-2.4l-1.4-6.8a2 2 0 0 0-2-1.8H7"],
  menu: ["M4 6h16", "M4 12h16", "M4 18h16"],
  close: ["M6 6l12 12", "M18 6L6 18"],
  theme: ["M12 3a9 9 0 1 0 0 18z", "M12 3a9 9 0 0 1 0 18"],
  send: ["M12 19V5", "M6 11l6-6 6 6"],
  stop: ["M7 7h10v10H7z"],
  edit: ["M4 20h4L19 9l-4-4L4 16v4z"],
};

export function icon(name) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "16");
  svg.setAttribute("height", "16");
  svg.setAttribute("fill", "none");
  svg.setAttribute("stroke", "currentColor");
  svg.setAttribute("stroke-width", "2");
  svg.setAttribute("stroke-linecap", "round");
  svg.setAttribute("stroke-linejoin", "round");
  svg.setAttribute("aria-hidden", "true");
  svg.classList.add("icon");
  for (const d of PATHS[name] || []) {
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}

/** Gives the static buttons of index.html their icons (data-icon="name"). */
export function decorate(root = document) {
  for (const el of root.querySelectorAll("[data-icon]")) {
    el.prepend(icon(el.dataset.icon));
  }
}
