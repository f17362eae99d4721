// The gateway's HTTP API as the page uses it: JSON calls with the bearer key, OpenAI-shaped
// errors (with Retry-After on 429/503), and chat completions streamed as server-sent events.

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.type = error.type || null;
    this.param = error.param || null;
    // Seconds, or null when the server did not say.
    this.retryAfter = retryAfter;
  }

  get moderated() {
    return this.code === "content_filter";
  }
}

function retryAfterSeconds(response) {
  const value = response.headers.get("retry-after");
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - Date.now()) / 1000));
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's error page): the status says enough.
  }
  return new ApiError(response.status, body, retryAfterSeconds(response));
}

/**
 * A human sentence for an error. A 429 or 503 says when to retry: in `secondsLeft` seconds
 * (the server's Retry-After unless given; the banner counts it down).
 */
export function describeError(error, secondsLeft = error?.retryAfter) {
  if (!(error instanceof ApiError)) {
    return `Could not reach the server (${error?.message || error}). Check your connection.`;
  }
  let wait = "";
  if (secondsLeft != null) wait = secondsLeft > 0 ? ` Try again in ${secondsLeft} s.` : " You can try again now.";
  if (error.status === 429) return `Too many requests: ${error.message}${wait}`;
  if (error.status === 503) return `The service is busy or unavailable: ${error.message}${wait}`;
  if (error.status === 401) return "Your API key was refused. Sign in again.";
  return `${error.message}${wait}`;
}

export class Api {
  constructor(key, onUnauthorized = () => {}) {
    this.key = key;
    this.onUnauthorized = onUnauthorized;
  }

  headers(json) {
    const headers = { Authorization: `Bearer ${this.key}` };
    if (json) headers["Content-Type"] = "application/json";
    return headers;
  }

  async request(method, path, body, { signal } = {}) {
    const response = await fetch(path, {
      method,
      headers: this.headers(body !== undefined),
      body: body !== undefined ? JSON.stringify(body) : undefined,
      signal,
    });
    if (!response.ok) {
      const error = await errorFrom(response);
      if (error.status === 401) this.onUnauthorized(error);
      throw error;
    }
    return response.json();
  }

  models() {
    return this.request("GET", "/v1/models");
  }

  listConversations({ after, limit = 20, includeArchived = false, intent = "" } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (after) query.set("after", after);
    if (includeArchived) query.set("include_archived", "true");
    if (intent) query.set("intent", intent);
    return this.request("GET", `/v1/conversations?${query}`);
  }

  getConversation(id) {
    return this.request("GET", `/v1/conversations/${encodeURIComponent(id)}`);
  }

  updateConversation(id, changes) {
    return this.request("PATCH", `/v1/conversations/${encodeURIComponent(id)}`, changes);
  }

  deleteConversation(id) {
    return this.request("DELETE", `/v1/conversations/${encodeURIComponent(id)}`);
  }

  search(q, limit = 20) {
    const query = new URLSearchParams({ q, limit: String(limit) });
    return this.request("GET", `/v1/conversations/search?${query}`);
  }

  feedback(conversationId, messageId, rating, comment = "") {
    const path =
      `/v1/conversations/${encodeURIComponent(conversationId)}` +
      `/messages/${encodeURIComponent(messageId)}/feedback`;
    return this.request("POST", path, { rating, comment });
  }

  /** The user's pick between two compared answers (siblings); the chosen one becomes active. */
  compare(conversationId, chosenId, rejectedId) {
    const path = `/v1/conversations/${encodeURIComponent(conversationId)}/comparisons`;
    return this.request("POST", path, {
      chosen_message_id: chosenId,
      rejected_message_id: rejectedId,
    });
  }

  /**
   * Streams a chat completion. `handlers.onChunk(chunk)` gets every parsed event; resolves when
   * the stream ends ([DONE] or the connection closes). Aborting `signal` closes the
   * connection, which makes the gateway cancel the generation.
   */
  async streamChat(body, { signal, onChunk }) {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { ...this.headers(true), Accept: "text/event-stream" },
      body: JSON.stringify({ ...body, stream: true }),
      signal,
    });
    if (!response.ok) {
      const error = await errorFrom(response);
      if (error.status === 401) this.onUnauthorized(error);
      throw error;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const data of parser.push(value)) {
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        // After the headers an error can only travel as an event (OpenAI's convention).
        if (event.error) throw new ApiError(event.error.code === "content_filter" ? 400 : 500, event, null);
        onChunk(event);
      }
    }
  }
}

/** Incremental server-sent-events parser: push text, get the data of each complete event. */
export class SseParser {
  constructor() {
    this.buffer = "";
  }

  push(text) {
    this.buffer += text.replace(/\r\n?/g, "\n");
    const events = [];
    let end;
    while ((end = this.buffer.indexOf("\n\n")) >= 0) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""));
      if (data.length) events.push(data.join("\n"));
    }
    return events;
  }
}
