// Sibling ids for the branch switcher (‹ 2/3 ›). GET /v1/conversations/{id} returns the active
// branch with each message's sibling_count and sibling_index, but not the ids of its siblings,
// which PATCH active_message_id needs. So the page remembers, per conversation, every message
// id it has seen at each (parent, index) place; a sibling it never saw (made in another
// browser) cannot be switched to from here, and its arrow is disabled.

const PREFIX = "parlance.siblings.";

export class SiblingBook {
  constructor(conversationId) {
    this.key = PREFIX + conversationId;
    try {
      this.places = JSON.parse(localStorage.getItem(this.key) || "{}");
    } catch {
      this.places = {};
    }
  }

  static parentKey(message) {
    return message.parent_id || "(root)";
  }

  record(messages) {
    let changed = false;
    for (const m of messages) {
      const place = (this.places[SiblingBook.parentKey(m)] ||= {});
      if (place[m.sibling_index] !== m.id) {
        place[m.sibling_index] = m.id;
        changed = true;
      }
    }
    if (changed) {
      try {
        localStorage.setItem(this.key, JSON.stringify(this.places));
      } catch {
        // Storage full or blocked: switching still works for this page's lifetime.
      }
    }
  }

  /** The id of `message`'s sibling at 1-based `index`, or undefined when never seen. */
  sibling(message, index) {
    return (this.places[SiblingBook.parentKey(message)] || {})[index];
  }

  static forget(conversationId) {
    localStorage.removeItem(PREFIX + conversationId);
  }
}
