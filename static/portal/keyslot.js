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

  const read = () => {
    try { return sessionStorage.getItem(storageKey) || ""; } catch { return ""; }
  };
  const write = (value) => {
    try {
      if (value) sessionStorage.setItem(storageKey, value);
      else sessionStorage.removeItem(storageKey);
    } catch { /* storage disabled: the key lives in the field only */ }
  };
  const matches = (secret) => {
    const { prefix, last4 } = panel.dataset;
    if (!secret || !prefix) return true;
    return secret.startsWith(prefix) && (!last4 || secret.endsWith(last4));
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
