// The console's only script (the Content-Security-Policy allows no other): times in the
// agent's own time zone, and the customer page's live part replaced as the server pushes it.
"use strict";

function localizeTimes(root) {
  const format = new Intl.DateTimeFormat(document.documentElement.lang || undefined,
                                         {dateStyle: "medium", timeStyle: "medium"});
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  for (const el of root.querySelectorAll("time[datetime]")) {
    const when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when)) {
      el.textContent = format.format(when);
      el.title = zone;
    }
  }
}

function followLive() {
  const live = document.getElementById("live");
  if (!live) {
    return;
  }
  const state = document.getElementById("live-state");
  const source = new EventSource(live.dataset.source);
  source.addEventListener("update", (event) => {
    const opened = live.querySelector("details.dropped[open]") !== null;
    live.innerHTML = event.data;  // rendered and escaped by the server's templates
    const dropped = live.querySelector("details.dropped");
    if (dropped && opened) {
      dropped.open = true;
    }
    localizeTimes(live);
    live.dataset.updates = String(Number(live.dataset.updates || 0) + 1);
  });
  const lost = () => {
    source.close();
    state.textContent = state.dataset.lost;
    state.classList.add("lost");
  };
  source.addEventListener("gone", lost);
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      lost();
    }
  };
}

document.addEventListener("DOMContentLoaded", () => {
  localizeTimes(document);
  followLive();
});
