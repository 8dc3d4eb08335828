// The console's only script (the Content-Security-Policy allows no other): times in the
// agent's own time zone, the customer page's live part replaced as the server pushes it, and
// each outcome sent once.
"use strict";

// A link from another site is asked for again with `asked` added (web.py): it leaves the
// address bar, or an agent who copies the address into a CRM copies the mark, which the
// console then reads as a link of its own, not as one to ask for again.
function forgetAsked() {
  const url = new URL(window.location.href);
  if (url.searchParams.has("asked")) {
    url.searchParams.delete("asked");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }
}

// HTML as the browser reads it (in an inert template), so that the server's text and the
// page's own markup compare equal when they say the same
function asParsed(html) {
  const template = document.createElement("template");
  template.innerHTML = html;
  return template.innerHTML.trim();
}

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

const PAUSED_RETRY_MS = 10000;  // a paused page asks again while it is shown, after about this
const DOWN_RETRY_MAX_MS = 60000;  // and up to this while the gateway does not answer

// How long a paused page waits to ask again: about PAUSED_RETRY_MS, doubled for each time in a
// row before this one that the gateway did not answer (`downs`), up to DOWN_RETRY_MAX_MS; each
// page draws 0.5 to 1.5 times that, so the pages a restart paused together do not all ask
// again together, every 10 s, as the gateway comes back.
function pausedDelay(downs) {
  return Math.min(PAUSED_RETRY_MS * 2 ** downs, DOWN_RETRY_MAX_MS) * (0.5 + Math.random());
}

// The live part follows the server's events while the tab is shown. A hidden tab lets go of
// its stream: a browser opens at most six connections to one host, and tabs that each held one
// would leave the next page waiting. Shown again, it reconnects, and the stream's first event
// brings the page up to date.
function followLive() {
  const live = document.getElementById("live");
  if (!live) {
    return;
  }
  const state = document.getElementById("live-state");
  let source = null;
  let retry = null;
  let downs = 0;  // pauses in a row with the gateway not answering
  // the live part's HTML as last received, at first as the server rendered it (read before
  // times are localized): the first event, which brings the same, is not written again
  let shown = asParsed(live.innerHTML);
  // Both are live regions (role="status"): a screen reader reads out each write, so what
  // has not changed is not written again (every reconnection sends the page as it is).
  const show = (text, stopped) => {
    if (state.textContent !== text) {
      state.textContent = text;
    }
    state.classList.toggle("lost", stopped);
  };
  const stop = () => {
    clearTimeout(retry);
    if (source) {
      source.close();
      source = null;
    }
  };
  const start = () => {
    stop();
    source = new EventSource(live.dataset.source);
    source.addEventListener("update", (event) => {
      const received = asParsed(event.data);
      if (received !== shown) {
        shown = received;
        const opened = live.querySelector("details.dropped[open]") !== null;
        live.innerHTML = event.data;  // rendered and escaped by the server's templates
        const dropped = live.querySelector("details.dropped");
        if (dropped && opened) {
          dropped.open = true;
        }
        localizeTimes(live);
      }
      downs = 0;
      show(state.dataset.live, false);
      live.dataset.updates = String(Number(live.dataset.updates || 0) + 1);
    });
    source.addEventListener("gone", () => {
      stop();
      show(state.dataset.lost, true);
    });
    // a cap on live pages is full (the session's, its key's, the console's, the gateway's
    // watches for the console), or the gateway is busy or not answering: the event says
    // which, and the page asks again while it is shown
    source.addEventListener("paused", (event) => {
      stop();
      const why = {session: "pausedSession", key: "pausedKey", console: "pausedConsole",
                   host: "pausedHost", busy: "pausedBusy",
                   down: "pausedDown"}[event.data] || "pausedSession";
      show(state.dataset[why], true);
      retry = setTimeout(start, pausedDelay(event.data === "down" ? downs++ : 0));
    });
    source.onerror = () => {
      if (source && source.readyState === EventSource.CLOSED) {
        stop();
        show(state.dataset.lost, true);
      }
    };
  };
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      stop();
    } else {
      start();
    }
  });
  if (!document.hidden) {
    start();
  }
}

// An outcome is sent once: a second click on its form, before the next page comes, does
// nothing. The buttons are disabled after the submission has read the clicked one's value.
function sendOutcomesOnce() {
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!form.classList.contains("outcomes")) {
      return;
    }
    if (form.dataset.sent) {
      event.preventDefault();
      return;
    }
    form.dataset.sent = "1";
    setTimeout(() => {
      for (const button of form.querySelectorAll("button")) {
        button.disabled = true;
      }
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  forgetAsked();
  followLive();  // first: it reads the live part as the server sent it
  localizeTimes(document);
  sendOutcomesOnce();
});
