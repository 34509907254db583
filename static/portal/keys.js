// Keys pages: show the custom expiry date only when "On a date" is picked (without
// JavaScript it is always shown and ignored unless that preset is picked).
"use strict";

function syncExpiry(box) {
  const custom = box.querySelector("[data-expiry-custom]");
  const picked = box.querySelector("input[name='expiry']:checked");
  if (custom) custom.hidden = !picked || picked.value !== "custom";
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-expiry]").forEach(syncExpiry);
});
document.addEventListener("change", (event) => {
  const box = event.target.closest("[data-expiry]");
  if (box) syncExpiry(box);
});
