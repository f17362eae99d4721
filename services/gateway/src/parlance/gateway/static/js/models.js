// The model picker's data: which models the page offers (chat models, aliases first) and
// which one each conversation uses (kept in localStorage, so that reopening a conversation
// brings its model back; a conversation the page has no record of takes the model of its
// last answer when that is still offered).

const LAST_STORAGE = "parlance.model";
const BY_CONVERSATION_STORAGE = "parlance.modelByConversation";
// Conversations whose model is remembered (the oldest are forgotten first).
const REMEMBERED = 200;

/** The chat models of a /v1/models answer as picker options: aliases first. */
export function chatModelOptions(models) {
  const chat = (models?.data ?? []).filter((m) => (m.task ?? "chat") === "chat");
  const aliases = chat.filter((m) => m.alias_for);
  const plain = chat.filter((m) => !m.alias_for);
  return [
    ...aliases.map((m) => ({ value: m.id, label: `${m.id} (${m.alias_for})` })),
    ...plain.map((m) => ({ value: m.id, label: m.id })),
  ];
}

function readMap() {
  try {
    const value = JSON.parse(localStorage.getItem(BY_CONVERSATION_STORAGE) || "{}");
    return value && typeof value === "object" && !Array.isArray(value) ? value : {};
  } catch {
    return {};
  }
}

/** The model last chosen anywhere (for new chats). */
export function lastModel() {
  return localStorage.getItem(LAST_STORAGE);
}

/** Remembers `model` as the last choice and, with a conversation id, as that one's model. */
export function rememberModel(model, conversationId = null) {
  if (!model) return;
  localStorage.setItem(LAST_STORAGE, model);
  if (!conversationId) return;
  const map = readMap();
  delete map[conversationId];
  map[conversationId] = model;
  const ids = Object.keys(map);
  for (const id of ids.slice(0, Math.max(0, ids.length - REMEMBERED))) delete map[id];
  localStorage.setItem(BY_CONVERSATION_STORAGE, JSON.stringify(map));
}

/** The model to select for a conversation: the one remembered for it, else its last answer's. */
export function conversationModel(conversation) {
  const remembered = readMap()[conversation.id];
  if (remembered) return remembered;
  const answers = (conversation.messages ?? []).filter((m) => m.role === "assistant" && m.model);
  return answers.length ? answers[answers.length - 1].model : null;
}
