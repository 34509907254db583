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
