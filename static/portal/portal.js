// Turnpike portal: small behaviours, no inline scripts (the Content-Security-Policy forbids
// them). Loaded with defer on every page.
"use strict";

document.addEventListener("change", (event) => {
  const select = event.target.closest("select[data-autosubmit]");
  if (select && select.form) select.form.requestSubmit();
});

// <button data-copy="#id"> copies the text of that element (or data-copy-text).
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy], [data-copy-text]");
  if (!button) return;
  const source = button.dataset.copy ? document.querySelector(button.dataset.copy) : null;
  const text = button.dataset.copyText ?? (source ? source.textContent.trim() : "");
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const label = button.dataset.copiedLabel || "Copied";
  const before = button.textContent;
  button.textContent = label;
  button.setAttribute("data-copied", "true");
  setTimeout(() => { button.textContent = before; }, 1500);
});

// Regions that scroll sideways on a phone (wide tables, code) must be reachable with the
// keyboard: they take focus (tabindex=0) on load and in content htmx swaps in.
function focusableScrollers(root) {
  const found = [...root.querySelectorAll(".table-wrap, pre")];
  if (root.matches && root.matches(".table-wrap, pre")) found.push(root);
  for (const el of found) if (!el.hasAttribute("tabindex")) el.tabIndex = 0;
}
if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", () => focusableScrollers(document));
} else {
  focusableScrollers(document);
}
document.addEventListener("htmx:load", (event) => focusableScrollers(event.target));
