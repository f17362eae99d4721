// The sidebar: the user's conversations newest first, loaded a page at a time as the list
// scrolls (cursor pagination), search with highlighted snippets, rename, archive, delete, and a
// filter by intent (the intents the gateway's routing classified the user's messages as; each
// conversation shows its own).

import { describeError } from "./api.js";
import { $, h, relativeTime, setSnippet } from "./dom.js";
import { icon } from "./icons.js";

const PAGE = 20;

export class Sidebar {
  /**
   * callbacks: open(id, messageId?) when the user picks a conversation, deleted(id) and
   * changed(conversation) after an edit, error(message).
   */
  constructor(api, callbacks) {
    this.api = api;
    this.callbacks = callbacks;
    this.list = $("#conversation-items");
    this.sentinel = $("#list-sentinel");
    this.results = $("#search-results");
    this.listNav = $("#conversation-list");
    this.searchInput = $("#search");
    this.archived = $("#show-archived");
    this.activeId = null;
    this.cursor = null;
    this.hasMore = true;
    this.loading = null;
    this.generation = 0;
    this.searchTimer = null;
    this.searchSeq = 0;

    // Infinite scroll: the next page loads when the sentinel under the list comes into view.
    this.observer = new IntersectionObserver(
      (entries) => {
        if (entries.some((e) => e.isIntersecting)) this.loadMore();
      },
      { root: this.listNav, rootMargin: "100px" },
    );
    this.observer.observe(this.sentinel);
    this.searchInput.addEventListener("input", () => this.scheduleSearch());
    this.searchInput.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        this.searchInput.value = "";
        this.scheduleSearch();
      }
    });
    this.archived.addEventListener("change", () => this.reload());
    // The intent filter: its choices are the intents of the conversations seen so far (the
    // page has no list of routes; a user's own conversations say which ones matter to them).
    this.intents = new Set();
    this.intentFilter = h(
      "select",
      { id: "intent-filter", class: "intent-filter", "aria-label": "Filter by intent" },
      h("option", { value: "" }, "All intents"),
    );
    // Hidden until a conversation has an intent (routing off: nothing to filter by).
    this.intentFilter.hidden = true;
    this.intentFilter.addEventListener("change", () => this.reload());
    this.archived.closest("label").after(this.intentFilter);
  }

  /** Adds a conversation's intents to the filter's choices (sorted, each once). */
  noteIntents(conversation) {
    const fresh = (conversation.intents || []).filter((name) => !this.intents.has(name));
    if (!fresh.length) return;
    for (const name of fresh) this.intents.add(name);
    const chosen = this.intentFilter.value;
    const options = [...this.intents].sort().map((name) => h("option", { value: name }, name));
    this.intentFilter.replaceChildren(h("option", { value: "" }, "All intents"), ...options);
    this.intentFilter.value = chosen;
    this.intentFilter.hidden = false;
  }

  /** Reads the list again from the first page (after a new conversation, a rename...). */
  async reload() {
    this.generation += 1;
    this.cursor = null;
    this.hasMore = true;
    this.loading = null;
    this.list.replaceChildren();
    await this.loadMore();
  }

  async loadMore() {
    if (!this.hasMore) return;
    if (this.loading) return this.loading;
    const generation = this.generation;
    this.sentinel.textContent = "Loading…";
    this.loading = (async () => {
      try {
        const page = await this.api.listConversations({
          after: this.cursor,
          limit: PAGE,
          includeArchived: this.archived.checked,
          intent: this.intentFilter.value,
        });
        if (generation !== this.generation) return;
        for (const conversation of page.data) this.list.append(this.item(conversation));
        this.cursor = page.next_cursor;
        this.hasMore = Boolean(page.has_more && page.next_cursor);
        this.sentinel.textContent = this.list.children.length ? "" : "No conversations yet";
      } catch (error) {
        if (generation !== this.generation) return;
        this.sentinel.textContent = "";
        this.callbacks.error(describeError(error), error);
      } finally {
        if (generation === this.generation) this.loading = null;
      }
    })();
    await this.loading;
    // A short first page may leave the sentinel visible without any scroll event to come.
    if (this.hasMore && generation === this.generation && this.sentinelVisible()) {
      await this.loadMore();
    }
  }

  sentinelVisible() {
    const box = this.sentinel.getBoundingClientRect();
    const root = this.listNav.getBoundingClientRect();
    return box.top < root.bottom + 100 && box.bottom >= root.top;
  }

  item(conversation) {
    const li = h("li", {
      class: `conversation-item${conversation.archived ? " archived" : ""}`,
      dataset: { id: conversation.id },
    });
    this.fill(li, conversation);
    if (conversation.id === this.activeId) li.classList.add("active");
    return li;
  }

  fill(li, conversation) {
    const title = conversation.title || "New chat";
    const intents = conversation.intents || [];
    this.noteIntents(conversation);
    const link = h(
      "button",
      {
        type: "button",
        class: "conversation-link",
        title: `${title} · ${relativeTime(conversation.updated_at)}`
          + (intents.length ? ` · ${intents.join(", ")}` : ""),
        onclick: () => this.callbacks.open(conversation.id),
      },
      title,
      // The conversation's intents, after its title (text only: route names from the server).
      ...(intents.length
        ? [h("span", { class: "intent-tags muted small" }, ` · ${intents.join(", ")}`)]
        : []),
    );
    const actions = h(
      "span",
      { class: "item-actions" },
      h("button", { type: "button", "aria-label": "Rename", title: "Rename", onclick: () => this.rename(li, conversation) }, icon("pencil")),
      h(
        "button",
        {
          type: "button",
          "aria-label": conversation.archived ? "Unarchive" : "Archive",
          title: conversation.archived ? "Unarchive" : "Archive",
          onclick: () => this.archive(li, conversation),
        },
        icon(conversation.archived ? "unarchive" : "archive"),
      ),
      h("button", { type: "button", "aria-label": "Delete", title: "Delete", onclick: () => this.remove(li, conversation) }, icon("trash")),
    );
    li.replaceChildren(link, actions);
  }

  setActive(id) {
    this.activeId = id;
    for (const li of this.list.children) li.classList.toggle("active", li.dataset.id === id);
  }

  /** Puts a conversation at the top (a new one, or one that just got a message). */
  upsertTop(conversation) {
    const existing = this.list.querySelector(`li[data-id="${CSS.escape(conversation.id)}"]`);
    if (existing) existing.remove();
    this.list.prepend(this.item(conversation));
    this.sentinel.textContent = "";
  }

  /** Shows a conversation's new title (or state) where it is listed. */
  update(conversation) {
    const li = this.list.querySelector(`li[data-id="${CSS.escape(conversation.id)}"]`);
    if (li && !li.querySelector(".rename-input")) this.fill(li, conversation);
  }

  rename(li, conversation) {
    const input = h("input", { class: "rename-input", "aria-label": "New title", maxlength: 512 });
    input.value = conversation.title;
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title && title !== conversation.title) {
        try {
          const updated = await this.api.updateConversation(conversation.id, { title });
          Object.assign(conversation, updated);
          this.callbacks.changed(updated);
        } catch (error) {
          this.callbacks.error(describeError(error), error);
        }
      }
      this.fill(li, conversation);
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
    li.replaceChildren(input);
    input.focus();
    input.select();
  }

  async archive(li, conversation) {
    try {
      const updated = await this.api.updateConversation(conversation.id, {
        archived: !conversation.archived,
      });
      Object.assign(conversation, updated);
      if (updated.archived && !this.archived.checked) {
        li.remove();
      } else {
        li.classList.toggle("archived", updated.archived);
        this.fill(li, conversation);
      }
      this.callbacks.changed(updated);
    } catch (error) {
      this.callbacks.error(describeError(error), error);
    }
  }

  async remove(li, conversation) {
    if (!window.confirm(`Delete "${conversation.title || "New chat"}"? This cannot be undone.`)) return;
    try {
      await this.api.deleteConversation(conversation.id);
      li.remove();
      this.callbacks.deleted(conversation.id);
    } catch (error) {
      this.callbacks.error(describeError(error), error);
    }
  }

  // --- search --------------------------------------------------------------------------------

  scheduleSearch() {
    clearTimeout(this.searchTimer);
    this.searchTimer = setTimeout(() => this.search(this.searchInput.value.trim()), 250);
  }

  async search(query) {
    const seq = ++this.searchSeq;
    if (!query) {
      this.results.hidden = true;
      this.listNav.hidden = false;
      return;
    }
    try {
      const found = await this.api.search(query);
      if (seq !== this.searchSeq) return;
      const hits = found.data.map((hit) => {
        const snippet = h("span", { class: "hit-snippet" });
        setSnippet(snippet, hit.snippet);
        return h(
          "button",
          {
            type: "button",
            class: "search-hit",
            onclick: () => this.callbacks.open(hit.conversation_id, hit.message_id),
          },
          h("span", { class: "hit-title" }, hit.conversation_title || "New chat"),
          snippet,
        );
      });
      this.results.replaceChildren(
        ...(hits.length ? hits : [h("p", { class: "muted small list-sentinel" }, "No matches")]),
      );
      this.results.hidden = false;
      this.listNav.hidden = true;
    } catch (error) {
      if (seq === this.searchSeq) this.callbacks.error(describeError(error), error);
    }
  }
}
