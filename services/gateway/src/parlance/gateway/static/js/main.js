// The chat page's controller: sign-in, the model picker, the conversation view and the
// streamed completions (send, stop, regenerate, edit, branch switching, feedback).

import { Api, ApiError, describeError } from "./api.js";
import { ComparisonView, compareOption, setUpToggle } from "./compare.js";
import { $, h } from "./dom.js";
import { decorate } from "./icons.js";
import { chatModelOptions, conversationModel, lastModel, rememberModel } from "./models.js";
import { Sidebar } from "./sidebar.js";
import {
  NOTICES,
  messageElement,
  notice,
  pendingAssistant,
  pendingUser,
  renderAssistant,
} from "./thread.js";

decorate();
// Pressed: every question gets two answers side by side (compare.js).
const compareAsked = setUpToggle($("#compare-toggle"));

const KEY_STORAGE = "parlance.apiKey";
const THEME_STORAGE = "parlance.theme";

const els = {
  signin: $("#signin"),
  signinForm: $("#signin-form"),
  signinKey: $("#signin-key"),
  signinError: $("#signin-error"),
  app: $("#app"),
  title: $("#conversation-title"),
  model: $("#model"),
  thread: $("#thread"),
  empty: $("#empty-state"),
  messages: $("#messages"),
  banner: $("#banner"),
  composer: $("#composer"),
  prompt: $("#prompt"),
  send: $("#send"),
  stop: $("#stop"),
};

const state = {
  api: null,
  sidebar: null,
  // The open conversation: {id, title, messages, ...} as GET returns it; null for a new chat.
  conversation: null,
  // The completion in flight: {controller}; null when idle.
  streaming: null,
  // Reading back a stopped exchange (the gateway stores it just after the stop): a promise;
  // null when idle. Sending waits for it, so the next question goes below the stopped answer.
  settling: null,
  bannerTimer: null,
};

// --- theme ----------------------------------------------------------------------------------

function effectiveTheme() {
  const chosen = document.documentElement.dataset.theme;
  if (chosen) return chosen;
  return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

$("#theme-toggle").addEventListener("click", () => {
  const next = effectiveTheme() === "dark" ? "light" : "dark";
  document.documentElement.dataset.theme = next;
  localStorage.setItem(THEME_STORAGE, next);
});

// --- banner (errors and notices above the composer) -----------------------------------------

function showBanner(text, { kind = "error", retryAfter = null, render = null } = {}) {
  clearInterval(state.bannerTimer);
  els.banner.className = `banner${kind === "notice" ? " notice-banner" : ""}`;
  els.banner.hidden = false;
  if (retryAfter == null || !render) {
    els.banner.textContent = text;
    return;
  }
  // A 429/503 counts down to the moment a retry is worth it.
  const until = Date.now() + retryAfter * 1000;
  const tick = () => {
    const left = Math.ceil((until - Date.now()) / 1000);
    els.banner.textContent = render(Math.max(0, left));
    if (left <= 0) clearInterval(state.bannerTimer);
  };
  tick();
  state.bannerTimer = setInterval(tick, 1000);
}

function showError(error) {
  if (error instanceof ApiError && error.retryAfter != null) {
    showBanner(describeError(error), {
      retryAfter: error.retryAfter,
      render: (left) => describeError(error, left),
    });
  } else {
    showBanner(describeError(error));
  }
}

function hideBanner() {
  clearInterval(state.bannerTimer);
  els.banner.hidden = true;
}

// --- sign-in --------------------------------------------------------------------------------

function signOut(message) {
  localStorage.removeItem(KEY_STORAGE);
  state.api = null;
  els.app.hidden = true;
  els.signin.hidden = false;
  els.signinError.hidden = !message;
  els.signinError.textContent = message || "";
  els.signinKey.value = "";
  els.signinKey.focus();
}

els.signinForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = els.signinKey.value.trim();
  if (!key) return;
  els.signinError.hidden = true;
  $("#signin-submit").disabled = true;
  try {
    const api = new Api(key);
    const models = await api.models();
    localStorage.setItem(KEY_STORAGE, key);
    await start(api, models);
  } catch (error) {
    els.signinError.textContent =
      error instanceof ApiError && error.status === 401
        ? "That API key was not accepted."
        : describeError(error);
    els.signinError.hidden = false;
  } finally {
    $("#signin-submit").disabled = false;
  }
});

$("#sign-out").addEventListener("click", () => signOut());

async function boot() {
  const key = localStorage.getItem(KEY_STORAGE);
  if (!key) {
    signOut();
    return;
  }
  const api = new Api(key);
  let models = null;
  try {
    models = await api.models();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      signOut("Your saved API key was not accepted. Sign in again.");
      return;
    }
    // The key may well be fine (a 503 at startup): open the app and say what happened.
    await start(api, null);
    showError(error);
    return;
  }
  await start(api, models);
}

async function start(api, models) {
  api.onUnauthorized = () => signOut("Your API key was not accepted. Sign in again.");
  state.api = api;
  els.signin.hidden = true;
  els.app.hidden = false;
  fillModels(models);
  if (!state.sidebar) {
    state.sidebar = new Sidebar(api, {
      open: (id, messageId) => {
        closeSidebarOnPhone();
        openConversation(id, { highlight: messageId });
      },
      deleted: (id) => {
        if (state.conversation?.id === id) newChat();
      },
      changed: (conversation) => {
        if (state.conversation?.id === conversation.id) {
          Object.assign(state.conversation, conversation);
          els.title.textContent = conversation.title || "New chat";
        }
      },
      error: (message) => showBanner(message),
    });
  } else {
    state.sidebar.api = api;
  }
  const fromUrl = conversationFromUrl();
  await Promise.all([
    state.sidebar.reload(),
    fromUrl ? openConversation(fromUrl) : Promise.resolve(newChat()),
  ]);
  els.prompt.focus();
}

function fillModels(models) {
  const options = chatModelOptions(models);
  els.model.replaceChildren(...options.map((o) => h("option", { value: o.value }, o.label)));
  selectModel(lastModel());
  els.model.disabled = options.length === 0;
}

/** Selects `model` when the picker offers it (else leaves the selection as it is). */
function selectModel(model) {
  if (model && [...els.model.options].some((o) => o.value === model)) els.model.value = model;
}

els.model.addEventListener("change", () =>
  rememberModel(els.model.value, state.conversation?.id ?? null),
);

// --- phone layout ---------------------------------------------------------------------------

$("#open-sidebar").addEventListener("click", () => els.app.classList.add("sidebar-open"));
$("#close-sidebar").addEventListener("click", closeSidebarOnPhone);
$("#scrim").addEventListener("click", closeSidebarOnPhone);

function closeSidebarOnPhone() {
  els.app.classList.remove("sidebar-open");
}

// --- the conversation view ------------------------------------------------------------------

function conversationFromUrl() {
  const match = location.hash.match(/^#\/c\/([\w-]+)$/);
  return match ? match[1] : null;
}

function setUrl(id) {
  const hash = id ? `#/c/${id}` : "";
  if (location.hash !== hash) history.replaceState(null, "", hash || location.pathname);
}

function newChat() {
  if (state.streaming) stop();
  state.conversation = null;
  selectModel(lastModel());
  els.title.textContent = "New chat";
  els.messages.replaceChildren();
  els.empty.hidden = false;
  hideBanner();
  setUrl(null);
  state.sidebar?.setActive(null);
  els.prompt.focus();
}

$("#new-chat").addEventListener("click", () => {
  closeSidebarOnPhone();
  newChat();
});

async function openConversation(id, { highlight } = {}) {
  if (state.streaming) stop();
  hideBanner();
  try {
    const conversation = await state.api.getConversation(id);
    showConversation(conversation);
    if (highlight) {
      const li = els.messages.querySelector(`li[data-id="${CSS.escape(highlight)}"]`);
      if (li) {
        li.classList.add("highlight");
        li.scrollIntoView({ block: "center" });
      }
    }
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      newChat();
      showBanner("That conversation no longer exists.");
    } else {
      showError(error);
    }
  }
}

/** Shows a conversation as GET returned it (the active branch). */
function showConversation(conversation) {
  state.conversation = conversation;
  selectModel(conversationModel(conversation));
  els.title.textContent = conversation.title || "New chat";
  setUrl(conversation.id);
  state.sidebar?.setActive(conversation.id);
  renderThread();
}

const messageActions = {
  busy: () => state.streaming !== null || state.settling !== null,
  edit: (message, text) => editAndResend(message, text),
  regenerate: (message) => regenerate(message),
  rate: (message, rating, comment) => rate(message, rating, comment),
  canSwitch: (message, index) => Boolean(siblingAt(message, index)),
  switchTo: (message, index) => switchBranch(message, index),
};

function renderThread() {
  const messages = state.conversation ? state.conversation.messages : [];
  els.messages.replaceChildren(
    ...messages
      .filter((m) => m.role !== "system")
      .map((m) => messageElement(m, messageActions)),
  );
  els.empty.hidden = els.messages.children.length > 0;
  scrollToBottom(true);
}

function scrollToBottom(force = false) {
  const t = els.thread;
  // Follow the stream only while the reader is at the bottom already.
  if (force || t.scrollHeight - t.scrollTop - t.clientHeight < 120) t.scrollTop = t.scrollHeight;
}

/** Removes the displayed messages from the one with `id` on (included). */
function truncateFrom(id) {
  const li = els.messages.querySelector(`li[data-id="${CSS.escape(id)}"]`);
  if (!li) return;
  while (li.nextSibling) li.nextSibling.remove();
  li.remove();
}

// --- completions ----------------------------------------------------------------------------

function setStreaming(streaming) {
  state.streaming = streaming;
  els.send.hidden = Boolean(streaming);
  els.stop.hidden = !streaming;
  els.model.disabled = Boolean(streaming) || els.model.options.length === 0;
}

function stop() {
  state.streaming?.controller.abort();
}

els.stop.addEventListener("click", stop);

/**
 * Runs one streamed completion. kind: "send" (continue or start a conversation), "edit"
 * (a new user message below `parentId`), "regenerate" (a new answer below `parentId`).
 */
async function complete({ kind, text = "", parentId = null }) {
  hideBanner();
  const conversation = state.conversation;
  // The page can show a comparison: it offers one always, and asks for one with the toggle.
  // No max_tokens: the answer's length is the key's and the gateway's to set
  // (GATEWAY_DEFAULT_MAX_TOKENS), and the stored conversation keeps the room it would lose.
  const body = { model: els.model.value, messages: [], parlance: compareOption(compareAsked()) };
  if (text) body.messages.push({ role: "user", content: text });
  if (conversation) {
    body.conversation_id = conversation.id;
    if (kind !== "send") body.parent_message_id = parentId ?? "";
  } else {
    body.store = true;
  }

  els.empty.hidden = true;
  const userLi = text ? pendingUser(text) : null;
  if (userLi) els.messages.append(userLi);
  const answer = pendingAssistant();
  els.messages.append(answer.li);
  scrollToBottom(true);

  const controller = new AbortController();
  setStreaming({ controller });
  let content = "";
  let finishReason = null;
  let conversationId = conversation?.id ?? null;
  let frame = 0;
  // Set when the gateway answers with two candidates (the stream's first chunk says so).
  let comparison = null;
  const paint = () => {
    frame = 0;
    renderAssistant(answer.bubble, content);
    scrollToBottom();
  };
  let outcome = "done";
  try {
    await state.api.streamChat(body, {
      signal: controller.signal,
      onChunk: (chunk) => {
        if (chunk.conversation_id && !conversationId) {
          conversationId = chunk.conversation_id;
          rememberModel(body.model, conversationId);
          setUrl(conversationId);
        }
        if (chunk.parlance?.comparison && !comparison) {
          comparison = new ComparisonView(answer, chunk.parlance.comparison);
        }
        const choice = chunk.choices?.[0];
        if (!choice) return;
        if (comparison) {
          comparison.take(choice);
          scrollToBottom();
          return;
        }
        if (choice.delta?.content) {
          content += choice.delta.content;
          if (!frame) frame = requestAnimationFrame(paint);
        }
        if (choice.finish_reason) finishReason = choice.finish_reason;
      },
    });
  } catch (error) {
    if (error.name === "AbortError") {
      outcome = "stopped";
    } else if (error instanceof ApiError && error.moderated) {
      outcome = "blocked";
    } else {
      outcome = "failed";
      showError(error);
    }
  } finally {
    cancelAnimationFrame(frame);
    setStreaming(null);
  }
  renderAssistant(answer.bubble, content);
  answer.bubble.classList.remove("cursor");
  answer.li.removeAttribute("aria-busy");
  comparison?.end();

  if (outcome === "blocked") {
    answer.li.remove();
    if (userLi) {
      userLi.classList.add("blocked");
      userLi.append(notice(NOTICES.inputModerated));
    }
    // The text comes back to the composer to be rephrased.
    if (kind === "send") els.prompt.value = text;
    return;
  }
  if (outcome === "stopped") {
    answer.li.append(notice(NOTICES.stopped));
    answer.li.dataset.stopped = "true";
    if (conversationId) {
      state.settling = readBackStopped(conversationId, conversation?.active_message_id ?? null);
      try {
        await state.settling;
      } finally {
        state.settling = null;
      }
      if (!conversation) watchTitle(conversationId);
    } else if (!state.conversation) {
      // Stopped before the gateway named the new conversation: nothing to go back to.
      setUrl(null);
    }
  } else if (finishReason === "content_filter") {
    answer.li.append(notice(NOTICES.outputModerated));
  }
  if (outcome === "done" && conversationId) {
    // The exchange is stored before the stream ends: reading it back gives the new messages'
    // ids, sibling counts and the conversation's title.
    await refresh(conversationId);
    comparison?.offer(els.messages, (chosen, rejected) =>
      pickComparison(conversationId, chosen, rejected),
    );
    if (!conversation) watchTitle(conversationId);
  } else if (outcome === "failed") {
    // Nothing was stored: the attempt leaves the screen and a sent text returns to the
    // composer, ready to retry once the banner says so.
    if (!content) answer.li.remove();
    if (kind === "send" && text && !els.prompt.value) {
      els.prompt.value = text;
      userLi?.remove();
    }
    if (!state.conversation) setUrl(null);
  }
}

async function refresh(id) {
  try {
    const conversation = await state.api.getConversation(id);
    showConversation(conversation);
    state.sidebar?.upsertTop(conversation);
  } catch (error) {
    // History can lag (its writes go through an outbox when it is down): the streamed answer
    // stays on screen and the next read catches up.
    if (!(error instanceof ApiError && error.status === 404)) showError(error);
  }
}

/**
 * The gateway stores a stopped exchange (the question and the answer as far as it was sent)
 * in the background once the stream is cut, so it lands a moment after the stop: a few reads
 * until the conversation's active message moves past `previousLeaf`, then the stored thread
 * replaces the one on screen (ids, branch switcher, the stopped notice from finish_reason).
 */
async function readBackStopped(id, previousLeaf, tries = 10) {
  for (let i = 0; i < tries; i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 300));
    // The reader went to another conversation meanwhile: leave that view alone.
    if (conversationFromUrl() !== id) return;
    let conversation;
    try {
      conversation = await state.api.getConversation(id);
    } catch (error) {
      // 404: a new conversation whose first exchange is not stored yet.
      if (error instanceof ApiError && error.status === 404) continue;
      return;
    }
    if (conversation.active_message_id && conversation.active_message_id !== previousLeaf) {
      if (conversationFromUrl() !== id) return;
      showConversation(conversation);
      state.sidebar?.upsertTop(conversation);
      return;
    }
  }
  // History is slow or down (the write waits in the gateway's outbox): the answer stays as
  // shown, and the next read of the conversation catches up.
}

/**
 * A new conversation starts with its first question as a provisional title; the gateway asks
 * the model for a better one in the background. A few reads pick it up when it lands.
 */
async function watchTitle(id, tries = 6) {
  const provisional = state.conversation?.id === id ? state.conversation.title : null;
  for (let i = 0; i < tries; i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 1500));
    let conversation;
    try {
      conversation = await state.api.getConversation(id);
    } catch {
      return;
    }
    if (conversation.title !== provisional) {
      state.sidebar?.update(conversation);
      if (state.conversation?.id === id) {
        state.conversation.title = conversation.title;
        els.title.textContent = conversation.title || "New chat";
      }
      return;
    }
  }
}

async function sendFromComposer() {
  const text = els.prompt.value.trim();
  if (!text || state.streaming || state.settling) return;
  if (!els.model.value) {
    showBanner("No model is available yet. Try again shortly.");
    return;
  }
  els.prompt.value = "";
  autosize();
  // Attempts that are not (or not yet) in the stored conversation leave the screen: a blocked
  // question, or a stopped answer history has not taken yet.
  for (const li of els.messages.querySelectorAll("li.pending, li.blocked")) li.remove();
  await complete({ kind: "send", text });
}

function regenerate(message) {
  truncateFrom(message.id);
  return complete({ kind: "regenerate", parentId: message.parent_id });
}

function editAndResend(message, text) {
  truncateFrom(message.id);
  return complete({ kind: "edit", text, parentId: message.parent_id ?? "" });
}

/** The id of `message`'s sibling at 1-based `index` (GET lists them all, itself included). */
function siblingAt(message, index) {
  return message.sibling_ids?.[index - 1];
}

async function switchBranch(message, index) {
  const target = siblingAt(message, index);
  if (!target || !state.conversation) return;
  try {
    await state.api.updateConversation(state.conversation.id, { active_message_id: target });
    const conversation = await state.api.getConversation(state.conversation.id);
    showConversation(conversation);
  } catch (error) {
    showError(error);
  }
}

/** Stores the pick of a comparison; the chosen answer's branch is then the one shown. */
async function pickComparison(conversationId, chosenId, rejectedId) {
  try {
    await state.api.compare(conversationId, chosenId, rejectedId);
  } catch (error) {
    showError(error);
    return false;
  }
  if (conversationFromUrl() === conversationId) await refresh(conversationId);
  return true;
}

async function rate(message, rating, comment) {
  if (!state.conversation) return false;
  try {
    await state.api.feedback(state.conversation.id, message.id, rating, comment);
    return true;
  } catch (error) {
    showError(error);
    return false;
  }
}

// --- composer -------------------------------------------------------------------------------

function autosize() {
  els.prompt.style.height = "auto";
  els.prompt.style.height = `${Math.min(els.prompt.scrollHeight, 192)}px`;
}

els.prompt.addEventListener("input", autosize);
els.prompt.addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter is a new line; an IME composition's Enter is the IME's.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendFromComposer();
  }
});
els.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendFromComposer();
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.streaming) stop();
});

boot();
