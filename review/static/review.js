// The item page's player, synced transcript and keyboard decisions. No other page needs
// script. Text is never inserted as HTML here: the page arrives escaped and stays so.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const item = document.getElementById("item");
  if (!item) return;
  const player = document.getElementById("player");
  const segments = Array.from(document.querySelectorAll(".segment"));
  const text = document.getElementById("segments");
  const toggle = document.getElementById("toggle-text");
  // A read-only page (the item not claimed yet) has a claim form (c) instead of this one.
  const form = document.getElementById("decision-form");
  const reason = document.getElementById("reason");
  const hint = document.getElementById("decision-hint");
  const reasonRequired = new Set((item.dataset.reasonRequired || "").split(",").filter(Boolean));
  const decisionButtons = form ? {
    "1": form.querySelector("button.violates"),
    "2": form.querySelector("button.does_not_violate"),
    "3": form.querySelector("button.unsure"),
  } : {};

  // Text is hidden until asked for (wellness): the RA may prefer to listen first.
  const setTextShown = (shown) => {
    text.hidden = !shown;
    toggle.textContent = shown ? "Hide text (t)" : "Show text (t)";
  };
  toggle.addEventListener("click", () => setTextShown(text.hidden));

  // Highlight the segment being played.
  let current = null;
  const highlight = () => {
    const t = player.currentTime;
    const found = segments.find((s) => t >= Number(s.dataset.start) && t < Number(s.dataset.end)) || null;
    if (found === current) return;
    if (current) { current.classList.remove("current"); current.removeAttribute("aria-current"); }
    if (found) { found.classList.add("current"); found.setAttribute("aria-current", "true"); }
    current = found;
  };
  player.addEventListener("timeupdate", highlight);
  player.addEventListener("seeked", highlight);

  // Click (or Enter on) a segment to play from its start.
  const seekTo = (segment) => {
    player.currentTime = Number(segment.dataset.start);
    highlight();
    player.play().catch(() => {});
  };
  segments.forEach((s) => {
    s.addEventListener("click", () => seekTo(s));
    s.addEventListener("keydown", (e) => { if (e.key === "Enter") seekTo(s); });
  });

  const decide = (key) => {
    const button = decisionButtons[key];
    if (!button) return;
    if (reasonRequired.has(button.value) && !reason.value.trim()) {
      hint.textContent = "Write a reason first, then press " + key + " again (or Ctrl+Enter in the box).";
      reason.dataset.pending = key;
      reason.focus();
      return;
    }
    form.requestSubmit(button);
  };

  // In the reason box keys are text; Ctrl+Enter submits the decision asked for, Esc leaves it.
  if (reason) reason.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { reason.blur(); e.preventDefault(); }
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && reason.dataset.pending) {
      e.preventDefault();
      decide(reason.dataset.pending);
    }
  });

  // n / p claim the next (previous) item: a POST, like every change.
  const submit = (id) => { const f = document.getElementById(id); if (f) f.requestSubmit(); };

  document.addEventListener("keydown", (e) => {
    const target = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement) return;
    switch (e.key) {
      case " ":
        e.preventDefault();
        if (player.paused) player.play().catch(() => {}); else player.pause();
        break;
      case "ArrowLeft": player.currentTime = Math.max(0, player.currentTime - 5); break;
      case "ArrowRight": player.currentTime = player.currentTime + 5; break;
      case "m": player.muted = !player.muted; break;
      case "t": setTextShown(text.hidden); break;
      case "1": case "2": case "3": e.preventDefault(); decide(e.key); break;
      case "c": submit("claim-form"); break;
      case "n": submit("next-form"); break;
      case "p": submit("prev-form"); break;
      default: return;
    }
  });
});
