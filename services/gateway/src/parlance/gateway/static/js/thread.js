// The conversation view: one <li> per message of the active branch, with its tools (copy,
// edit, regenerate, thumbs, the ‹ 2/3 › branch switcher) and notices (moderation, stopped).

import { h, copyButton } from "./dom.js";
import { icon } from "./icons.js";
import { renderMarkdown } from "./markdown.js";

export const NOTICES = {
  outputModerated:
    "This answer was stopped by moderation: the rest of it was withheld (content_filter).",
  inputModerated:
    "This message was not sent: moderation flagged it (content_filter). Rephrase it and try again.",
  stopped: "Stopped. The answer so far is saved to the conversation.",
  cutAtLength: "This answer reached its length limit and was cut there (finish_reason: length).",
  preferred: "You preferred this response in a comparison.",
  notPreferred: "You preferred the other response in a comparison.",
};

/** Fills an assistant bubble with rendered Markdown and gives each code block a copy button. */
export function renderAssistant(bubble, text) {
  // Safe: renderMarkdown escapes the whole text before it writes any tag of its own.
  bubble.innerHTML = renderMarkdown(text);
  for (const pre of bubble.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    pre.append(copyButton(() => code.textContent, { label: "Copy code", className: "copy-code" }));
  }
}

export function notice(text, kind = "") {
  return h("div", { class: `notice ${kind}`.trim(), role: "status" }, text);
}

/**
 * A message element. `actions` are the controller's callbacks: edit(message, text),
 * regenerate(message), rate(message, rating, comment), switchTo(message, index),
 * canSwitch(message, index) -> bool, busy() -> bool.
 */
export function messageElement(message, actions) {
  const li = h("li", { class: `message ${message.role}`, dataset: { id: message.id } });
  const bubble = h("div", { class: "bubble" });
  if (message.role === "assistant") {
    renderAssistant(bubble, message.content);
  } else {
    bubble.textContent = message.content;
  }
  li.append(bubble);
  if (message.role === "assistant" && message.finish_reason === "content_filter") {
    li.append(notice(NOTICES.outputModerated));
  }
  if (message.role === "assistant" && message.finish_reason === "length") {
    li.append(notice(NOTICES.cutAtLength));
  }
  if (message.role === "assistant" && message.finish_reason === "cancelled") {
    li.append(notice(NOTICES.stopped));
    li.dataset.stopped = "true";
  }
  if (message.role === "assistant" && message.comparison) {
    li.append(comparisonMarker(message.comparison));
  }
  li.append(tools(li, bubble, message, actions));
  return li;
}

/** The stored outcome of a comparison this answer was a side of (compare.js asks for it). */
function comparisonMarker(comparison) {
  const chosen = Boolean(comparison.chosen);
  return h(
    "p",
    { class: `compare-marker small${chosen ? " chosen" : ""}` },
    chosen ? NOTICES.preferred : NOTICES.notPreferred,
  );
}

function tools(li, bubble, message, actions) {
  const bar = h("div", { class: "message-tools" });
  if (message.sibling_count > 1) bar.append(branchSwitcher(message, actions));
  bar.append(copyButton(() => message.content, { icon: icon("copy") }));
  if (message.role === "user") {
    bar.append(
      h(
        "button",
        {
          type: "button",
          "aria-label": "Edit",
          title: "Edit and resend",
          onclick: () => {
            if (!actions.busy()) editInPlace(li, bubble, message, actions);
          },
        },
        icon("edit"),
      ),
    );
  }
  if (message.role === "assistant") {
    bar.append(
      h(
        "button",
        {
          type: "button",
          "aria-label": "Regenerate",
          title: "Regenerate",
          onclick: () => {
            if (!actions.busy()) actions.regenerate(message);
          },
        },
        icon("regenerate"),
      ),
      ...thumbs(li, message, actions),
    );
  }
  return bar;
}

function branchSwitcher(message, actions) {
  const index = message.sibling_index;
  const count = message.sibling_count;
  const arrow = (target, label, glyph) => {
    const known = target >= 1 && target <= count && actions.canSwitch(message, target);
    return h(
      "button",
      {
        type: "button",
        "aria-label": label,
        title: label,
        disabled: !known,
        onclick: () => {
          if (!actions.busy()) actions.switchTo(message, target);
        },
      },
      glyph,
    );
  };
  return h(
    "span",
    { class: "branch" },
    arrow(index - 1, "Previous version", "‹"),
    h("span", { class: "branch-label" }, `${index}/${count}`),
    arrow(index + 1, "Next version", "›"),
  );
}

function thumbs(li, message, actions) {
  const buttons = [];
  const pressed = () => {
    buttons[0].setAttribute("aria-pressed", String(message.rating === 1));
    buttons[1].setAttribute("aria-pressed", String(message.rating === -1));
  };
  for (const [rating, label, glyph] of [
    [1, "Good response", "thumbUp"],
    [-1, "Bad response", "thumbDown"],
  ]) {
    buttons.push(
      h(
        "button",
        {
          type: "button",
          "aria-label": label,
          title: label,
          onclick: async () => {
            if (await actions.rate(message, rating, message.feedback?.comment || "")) {
              message.rating = rating;
              pressed();
              feedbackForm(li, message, rating, actions);
            }
          },
        },
        icon(glyph),
      ),
    );
  }
  pressed();
  return buttons;
}

/** The optional comment that follows a thumb. */
function feedbackForm(li, message, rating, actions) {
  li.querySelector(".feedback-form")?.remove();
  const input = h("input", {
    type: "text",
    "aria-label": "Feedback comment",
    placeholder: rating > 0 ? "What was good? (optional)" : "What went wrong? (optional)",
    maxlength: 10000,
  });
  input.value = message.feedback?.comment || "";
  const form = h(
    "form",
    {
      class: "feedback-form",
      onsubmit: async (event) => {
        event.preventDefault();
        const comment = input.value.trim();
        if (await actions.rate(message, rating, comment)) {
          message.feedback = { ...(message.feedback || {}), rating, comment };
          form.replaceWith(notice("Thanks for your feedback."));
        }
      },
    },
    input,
    h("button", { type: "submit" }, "Send"),
    h("button", { type: "button", "aria-label": "Close", onclick: () => form.remove() }, icon("close")),
  );
  li.append(form);
  input.focus();
}

function editInPlace(li, bubble, message, actions) {
  const area = h("textarea", { "aria-label": "Edit message" });
  area.value = message.content;
  const restore = () => box.replaceWith(bubble);
  const submit = () => {
    const text = area.value.trim();
    if (text) actions.edit(message, text);
  };
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    } else if (event.key === "Escape") {
      restore();
    }
  });
  const box = h(
    "div",
    { class: "edit-box" },
    area,
    h(
      "div",
      { class: "edit-actions" },
      h("button", { type: "button", onclick: restore }, "Cancel"),
      h("button", { type: "button", class: "primary", onclick: submit }, "Send"),
    ),
  );
  bubble.replaceWith(box);
  area.focus();
}

/** A message being streamed: the user's text and an assistant bubble that grows. */
export function pendingUser(text) {
  return h("li", { class: "message user pending" }, h("div", { class: "bubble" }, text));
}

export function pendingAssistant() {
  const bubble = h("div", { class: "bubble cursor" });
  const li = h("li", { class: "message assistant pending", "aria-busy": "true" }, bubble);
  return { li, bubble };
}
