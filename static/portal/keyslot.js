// The pasted key of the quickstart and the playground. Turnpike never stores a key's
// secret: what the user pastes is kept only in this tab's sessionStorage and written into
// the snippets' .key-slot spans. Exposes window.TurnpikeKey.get() for the page scripts.
"use strict";

(() => {
  const panel = document.getElementById("key-panel");
  const input = document.getElementById("key-secret");
  if (!panel || !input) return;
  const storageKey = "turnpike.key." + (panel.dataset.keyId || "any");
  const placeholder = "sk-tp-…";
  const warning = document.getElementById("key-warning");

  const lastKey = "turnpike.key.last";  // the latest pasted, for pages with no key chosen
  const matches = (secret) => {
    const { prefix, last4 } = panel.dataset;
    if (!secret || !prefix) return true;
    return secret.startsWith(prefix) && (!last4 || secret.endsWith(last4));
  };
  const read = () => {
    try {
      const own = sessionStorage.getItem(storageKey);
      if (own) return own;
      const last = sessionStorage.getItem(lastKey) || "";
      return matches(last) ? last : "";
    } catch { return ""; }
  };
  const write = (value) => {
    try {
      if (value) {
        sessionStorage.setItem(storageKey, value);
        sessionStorage.setItem(lastKey, value);
      } else {
        sessionStorage.removeItem(storageKey);
        sessionStorage.removeItem(lastKey);
      }
    } catch { /* storage disabled: the key lives in the field only */ }
  };
  const fill = () => {
    const secret = input.value.trim();
    for (const slot of document.querySelectorAll(".key-slot")) {
      slot.textContent = secret || placeholder;
    }
    if (warning) {
      const bad = !matches(secret);
      warning.hidden = !bad;
      warning.textContent = bad ? panel.dataset.mismatch : "";
    }
  };

  input.value = read();
  fill();
  input.addEventListener("input", () => { write(input.value.trim()); fill(); });
  const forget = document.getElementById("key-forget");
  if (forget) forget.addEventListener("click", () => { input.value = ""; write(""); fill(); });

  window.TurnpikeKey = {
    get: () => input.value.trim(),
    id: () => panel.dataset.keyId || "",
  };
})();
