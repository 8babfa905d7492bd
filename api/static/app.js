// The live leaderboard page: one Server-Sent Events stream for the selected period, the
// top 10 rendered from each event, and a lookup of one user's rank and neighbours.
"use strict";

const TITLES = { day: "Today", week: "This week", month: "This month", year: "This year", all: "All time" };
const $ = (id) => document.getElementById(id);

let period = "day";
let stream = null;
let retryTimer = null;
let lookedUp = null; // the user id of the lookup box, refreshed with the board
let lookupBusy = false;

// --- the board ---------------------------------------------------------------------------

function connect() {
  if (stream) stream.close();
  clearTimeout(retryTimer);
  setLive(false, "connecting…");
  stream = new EventSource(`/v1/leaderboards/${period}/events?limit=10`);
  stream.onmessage = (message) => {
    const board = JSON.parse(message.data);
    if (board.period !== period) return;
    render(board);
    setLive(true, "live");
    refreshLookup();
  };
  stream.onerror = () => {
    setLive(false, "reconnecting…");
    // The browser retries by itself unless the server refused the stream (e.g. 503).
    if (stream.readyState === EventSource.CLOSED) retryTimer = setTimeout(connect, 2000);
  };
}

function render(board) {
  const rows = $("rows");
  const before = new Map([...rows.querySelectorAll("tr[data-user]")].map((tr) => [tr.dataset.user, tr.dataset.score]));
  $("caption").textContent = `${TITLES[board.period]} · ${bucketLabel(board)}`;
  if (board.entries.length === 0) {
    rows.replaceChildren(emptyRow("No pomodoros yet. The first one takes the lead!"));
  } else {
    rows.replaceChildren(...board.entries.map((entry) => entryRow(entry, before)));
  }
  const people = board.total === 1 ? "person" : "people";
  $("total").textContent = `${board.total.toLocaleString("en")} ${people} on this board`;
  showFreshness(board);
}

function entryRow(entry, before, me) {
  const tr = document.createElement("tr");
  tr.dataset.user = entry.user_id;
  tr.dataset.score = String(entry.score);
  const old = before && before.get(entry.user_id);
  if (before && before.size > 0 && old !== String(entry.score)) tr.classList.add("changed");
  if (me) {
    tr.classList.add("me");
    tr.setAttribute("aria-current", "true");
  }
  const rank = document.createElement("td");
  rank.className = "rank";
  const medal = document.createElement("span");
  medal.className = entry.rank <= 3 ? `medal r${entry.rank}` : "medal";
  medal.textContent = entry.rank;
  rank.append(medal);
  const name = document.createElement("td");
  name.textContent = entry.display_name ?? entry.user_id;
  const id = document.createElement("span");
  id.className = "id";
  id.textContent = entry.user_id;
  name.append(" ", id);
  const score = document.createElement("td");
  score.className = "num";
  score.textContent = entry.score.toLocaleString("en");
  tr.append(rank, name, score);
  return tr;
}

function emptyRow(text) {
  const tr = document.createElement("tr");
  const td = document.createElement("td");
  td.colSpan = 3;
  td.className = "empty";
  td.textContent = text;
  tr.append(td);
  return tr;
}

function bucketLabel(board) {
  const b = board.bucket;
  if (board.period === "all") return "since the beginning";
  if (board.period === "week") return `week ${Number(b.slice(6))} of ${b.slice(0, 4)}`;
  if (board.period === "year") return b;
  const [y, m, d] = b.split("-").map(Number);
  const options = board.period === "day"
    ? { weekday: "long", day: "numeric", month: "long", year: "numeric", timeZone: "UTC" }
    : { month: "long", year: "numeric", timeZone: "UTC" };
  return new Date(Date.UTC(y, m - 1, d || 1)).toLocaleDateString("en-GB", options);
}

function showFreshness(board) {
  const when = board.as_of.commit_time ? new Date(board.as_of.commit_time) : null;
  const asOf = $("as-of");
  asOf.textContent = when ? when.toLocaleTimeString("en-GB", { hour12: false }) : "no commit yet";
  asOf.dateTime = board.as_of.commit_time || "";
  asOf.title = `commit LSN ${board.as_of.lsn}`;
  $("lag").textContent = when ? formatLag(Date.now() - when.getTime()) : "–";
  $("source").textContent = board.source === "redis" ? "Redis" : "PostgreSQL (fallback)";
}

function formatLag(ms) {
  ms = Math.max(0, ms);
  if (ms < 10000) return `${Math.round(ms)} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 7200000) return `${Math.round(ms / 60000)} min`;
  return `${Math.round(ms / 3600000)} h`;
}

function setLive(on, text) {
  const live = $("live");
  live.textContent = text;
  live.className = on ? "live on" : "live off";
}

// --- tabs: click, or arrow keys / Home / End on the focused tab --------------------------

function select(tab) {
  for (const other of document.querySelectorAll('[role="tab"]')) {
    const chosen = other === tab;
    other.setAttribute("aria-selected", String(chosen));
    other.tabIndex = chosen ? 0 : -1;
  }
  $("panel").setAttribute("aria-labelledby", tab.id);
  period = tab.dataset.period;
  $("rows").replaceChildren(emptyRow("Loading…"));
  connect();
}

function onTabKey(event) {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const at = tabs.indexOf(event.currentTarget);
  const next = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  const tab = tabs[(next + tabs.length) % tabs.length];
  tab.focus();
  select(tab);
}

// --- one user's rank and neighbours ------------------------------------------------------

async function refreshLookup() {
  if (!lookedUp || lookupBusy) return;
  lookupBusy = true;
  const user = lookedUp;
  try {
    const response = await fetch(`/v1/leaderboards/${period}/users/${encodeURIComponent(user)}?around=2`);
    const body = await response.json();
    if (user === lookedUp) showStanding(response.ok ? body : null, body);
  } catch (error) {
    showStanding(null, { error: { message: "The API did not answer; retrying with the next update." } });
  } finally {
    lookupBusy = false;
  }
}

function showStanding(standing, failure) {
  const box = $("standing");
  const line = document.createElement("p");
  if (!standing) {
    line.className = "error";
    line.textContent = failure.error.message;
    box.replaceChildren(line);
    return;
  }
  const who = standing.display_name ?? standing.user_id;
  const when = TITLES[standing.period].toLowerCase();
  if (standing.rank === null) {
    line.textContent = `${who} has no pomodoros ${when === "all time" ? "yet" : when}.`;
    box.replaceChildren(line);
    return;
  }
  const noun = standing.score === 1 ? "pomodoro" : "pomodoros";
  line.textContent = `${who} is #${standing.rank} of ${standing.total} (${when}) with ${standing.score} ${noun}.`;
  const table = document.createElement("table");
  const caption = document.createElement("caption");
  caption.textContent = `${who} and neighbours`;
  const body = document.createElement("tbody");
  const me = { rank: standing.rank, user_id: standing.user_id, display_name: standing.display_name, score: standing.score };
  body.append(
    ...standing.above.map((entry) => entryRow(entry)),
    entryRow(me, null, true),
    ...standing.below.map((entry) => entryRow(entry)),
  );
  table.append(caption, body);
  box.replaceChildren(line, table);
}

// --- start -------------------------------------------------------------------------------

for (const tab of document.querySelectorAll('[role="tab"]')) {
  tab.addEventListener("click", () => select(tab));
  tab.addEventListener("keydown", onTabKey);
}
$("lookup").addEventListener("submit", (event) => {
  event.preventDefault();
  lookedUp = $("user").value.trim();
  refreshLookup();
});
connect();
