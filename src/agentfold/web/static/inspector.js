// agentfold inspector: live regions and the tail, fed by server-sent events (/live).
// Text from the log is only ever set with textContent; replaced regions come from this server's own pages.
"use strict";

function liveUrl(prefix, after) {
  const query = new URLSearchParams();
  if (prefix) query.set("prefix", prefix);
  query.set("after", String(after));
  return "/live?" + query.toString();
}

function follow(prefix, after, onEvent) {
  // EventSource reconnects by itself and sends Last-Event-ID, so the server resumes after the last position seen.
  const source = new EventSource(liveUrl(prefix, after));
  source.addEventListener("append", (message) => onEvent(JSON.parse(message.data)));
  return source;
}

function editing(region) {
  const active = document.activeElement;
  return active !== null && region.contains(active) && ["INPUT", "TEXTAREA", "SELECT"].includes(active.tagName);
}

function setupLiveRegion(region) {
  let timer = null;
  let busy = false;
  const refresh = async () => {
    timer = null;
    if (busy || editing(region)) {
      timer = setTimeout(refresh, 500);
      return;
    }
    busy = true;
    try {
      const response = await fetch(window.location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("live-region");
      if (fresh !== null) {
        region.replaceChildren(...Array.from(fresh.childNodes).map((node) => document.importNode(node, true)));
        region.dataset.liveAfter = fresh.dataset.liveAfter;
        if (fresh.dataset.liveRecheckMs) region.dataset.liveRecheckMs = fresh.dataset.liveRecheckMs;
        else delete region.dataset.liveRecheckMs;
        document.body.dataset.liveUpdated = String(Date.now());
      }
    } finally {
      busy = false;
    }
  };
  follow(region.dataset.livePrefix, region.dataset.liveAfter, () => {
    if (timer === null) timer = setTimeout(refresh, 250);
  });
  // Some of what a region shows changes with time and with events outside its prefix (an unfinished run turns
  // Stalled when its holder's lease runs out, and back when a worker claims it after the page was read): such a
  // region is read again every so often too, for as long as the server still asks for it.
  const recheck = () => {
    const every = Number(region.dataset.liveRecheckMs || 0);
    if (every > 0) {
      setTimeout(() => {
        if (timer === null) timer = setTimeout(refresh, 0);
        recheck();
      }, every);
    }
  };
  recheck();
}

function setupTail(table) {
  const body = table.querySelector("tbody");
  const status = document.getElementById("tail-status");
  const source = follow(table.dataset.tailPrefix, table.dataset.tailAfter, (event) => {
    const row = document.createElement("tr");
    const link = document.createElement("a");
    link.href = "/stream?id=" + encodeURIComponent(event.stream_id);
    link.textContent = event.stream_id;
    const cells = [String(event.position), link, String(event.version), event.type, event.recorded_at, event.summary];
    for (const value of cells) {
      const cell = document.createElement("td");
      if (typeof value === "string") cell.textContent = value; else cell.appendChild(value);
      row.appendChild(cell);
    }
    row.title = event.data;
    body.prepend(row);
    while (body.children.length > 500) body.lastElementChild.remove();
    if (status !== null) status.textContent = "Live: last position " + event.position;
  });
  source.addEventListener("error", () => {
    if (status !== null) status.textContent = "Connection lost; reconnecting…";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const region = document.getElementById("live-region");
  if (region !== null && region.dataset.liveRefresh === "1") setupLiveRegion(region);
  const tail = document.getElementById("tail");
  if (tail !== null) setupTail(tail);
});
