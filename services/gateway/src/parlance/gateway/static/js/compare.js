// Side-by-side comparisons ("Which response do you prefer?"). Every chat request of the page
// offers one ("parlance": {"compare": "offer"}: the gateway compares a share of them), or asks
// for one when the Compare toggle is on ("always"). A comparison's stream names the message id
// of each candidate on its first chunk and carries both choices by index: the two panes fill
// live, side by side (stacked on a phone). The pick goes to POST .../comparisons; the chosen
// answer becomes the active branch, the other stays reachable through ‹ 1/2 ›, and the stored
// marker (message.comparison, shown by thread.js) says which was preferred after a reload.

import { h } from "./dom.js";
import { renderAssistant } from "./thread.js";

const TOGGLE_STORAGE = "parlance.compare";

export const COMPARE_NOTICES = {
  withheld:
    "One of the two answers was withheld by moderation (content_filter); this is the other one.",
  question: "Which response do you prefer?",
};

/** The Compare toggle of the composer: pressed means every question gets two answers. */
export function setUpToggle(button) {
  const set = (on) => {
    button.setAttribute("aria-pressed", String(on));
    localStorage.setItem(TOGGLE_STORAGE, on ? "1" : "0");
  };
  set(localStorage.getItem(TOGGLE_STORAGE) === "1");
  button.addEventListener("click", () => set(button.getAttribute("aria-pressed") !== "true"));
  return () => button.getAttribute("aria-pressed") === "true";
}

/** The request's extension object: asked for (the toggle), else offered. */
export function compareOption(asked) {
  return { compare: asked ? "always" : "offer" };
}

/**
 * A comparison while it streams and until it is answered. `pending` is the page's pending
 * assistant message ({li, bubble}); `info` the stream's parlance.comparison.
 */
export class ComparisonView {
  constructor(pending, info) {
    this.ids = info.message_ids;
    this.li = pending.li;
    this.li.classList.add("comparison");
    this.texts = ["", ""];
    this.finished = [null, null];
    this.frame = 0;
    this.panes = this.ids.map((_, i) => {
      const bubble = h("div", { class: "bubble cursor" });
      const section = h(
        "section",
        { class: "compare-pane", "aria-label": `Response ${i + 1}` },
        h("h3", { class: "compare-pane-title small muted" }, `Response ${i + 1}`),
        bubble,
      );
      return { section, bubble };
    });
    this.grid = h("div", { class: "compare-panes" }, ...this.panes.map((p) => p.section));
    pending.bubble.replaceWith(this.grid);
  }

  /** One chunk's choice: its text goes to its pane (painted once per frame). */
  take(choice) {
    const i = choice.index;
    if (!(i in this.finished)) return;
    if (choice.delta?.content) {
      this.texts[i] += choice.delta.content;
      if (!this.frame) this.frame = requestAnimationFrame(() => this.paint());
    }
    if (choice.finish_reason) {
      this.finished[i] = choice.finish_reason;
      if (choice.finish_reason === "content_filter") this.withhold(i);
    }
  }

  paint() {
    this.frame = 0;
    this.panes.forEach((pane, i) => renderAssistant(pane.bubble, this.texts[i]));
  }

  /** A flagged candidate leaves the screen at once; the other is then an ordinary answer. */
  withhold(i) {
    this.panes[i].section.remove();
    this.grid.classList.add("single");
  }

  get withheld() {
    return this.finished.filter((reason) => reason === "content_filter").length;
  }

  /** The stream ended: final text, no cursors. */
  end() {
    cancelAnimationFrame(this.frame);
    this.paint();
    for (const pane of this.panes) pane.bubble.classList.remove("cursor");
    this.li.removeAttribute("aria-busy");
  }

  /** Both candidates ended normally: the pick can be asked for. */
  get complete() {
    return this.finished.every((reason) => reason === "stop" || reason === "length");
  }

  /**
   * After the stored thread was shown again (`list`: the #messages element): a complete
   * comparison takes the place of the stored answer on screen and asks for the pick; with a
   * candidate withheld the stored answer says so. `pick(chosenId, rejectedId)` resolves true
   * once the pick is stored.
   */
  offer(list, pick) {
    const stored = this.ids
      .map((id) => list.querySelector(`li[data-id="${CSS.escape(id)}"]`))
      .find(Boolean);
    if (!this.complete) {
      // The stored answer (or, when history has not got it yet, the one streamed) says so.
      if (this.withheld === 1) {
        (stored || this.li).append(h("div", { class: "notice", role: "status" }, COMPARE_NOTICES.withheld));
      }
      return;
    }
    if (stored) stored.replaceWith(this.li);
    const heading = h("p", { class: "compare-question", id: `q-${this.ids[0]}` }, COMPARE_NOTICES.question);
    const buttons = this.panes.map((pane, i) => {
      const button = h(
        "button",
        {
          type: "button",
          class: "compare-pick",
          "aria-label": `I prefer response ${i + 1}`,
          onclick: async () => {
            for (const b of buttons) b.disabled = true;
            const ok = await pick(this.ids[i], this.ids[1 - i]);
            if (!ok) for (const b of buttons) b.disabled = false;
          },
        },
        "I prefer this response",
      );
      pane.section.append(button);
      return button;
    });
    this.li.prepend(heading);
    this.grid.setAttribute("role", "group");
    this.grid.setAttribute("aria-labelledby", heading.id);
  }
}
