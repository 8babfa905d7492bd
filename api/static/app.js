// The live leaderboard page: the board picker, the period tabs, one Server-Sent Events stream
// for the chosen board and period with the top 10 rendered from each event, the choice kept in
// the URL; then "compare with friends" (the group ranking of some members) and "watch me" (one
// member's standing, highlighted everywhere, with a polite notice when someone passes them).
"use strict";

const PERIODS = {
  day: "Today",
  week: "This week",
  month: "This month",
  year: "This year",
  all: "All time",
  last7: "Last 7 days",
  last30: "Last 30 days",
};
const $ = (id) => document.getElementById(id);

// What the page shows.
const state = {
  boards: [], // GET /v1/boards
  board: null, // the chosen board's entry of that list
  period: null,
  latest: null, // the last board event of the chosen board and period
  lsn: null, // its id: the watermark it reflects
};
let stream = null;
let retryTimer = null;

// --- names of things ---------------------------------------------------------------------

function periodTitle(period) {
  return PERIODS[period] ?? period;
}

function boardTitle(board) {
  const words = board.name.replace(/[-_]+/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

// "12 pomodoros" on a count board named pomodoros, "score 40" on a sum board.
function scoreText(score, board = state.board) {
  const shown = score.toLocaleString("en");
  if (board.score !== "count") return `score ${shown}`;
  const noun = board.name.replace(/[-_]+/g, " ");
  return `${shown} ${score === 1 ? noun.replace(/s$/, "") : noun}`;
}

// --- the URL keeps board, period and friends --------------------------------------------

function readUrl() {
  return new URLSearchParams(location.search);
}

function writeUrl(changes) {
  const query = readUrl();
  for (const [name, value] of Object.entries(changes)) {
    if (value === null || value === "") query.delete(name);
    else query.set(name, value);
  }
  const search = query.toString();
  history.replaceState(null, "", search ? `?${search}` : location.pathname);
}

// --- boards and tabs ---------------------------------------------------------------------

async function loadBoards() {
  try {
    const response = await fetch("/v1/boards");
    const body = await response.json();
    if (!response.ok) throw new Error(body.error.message);
    state.boards = body.boards;
  } catch (error) {
    showProblem(`The list of boards did not load (${error.message}); retrying…`);
    setTimeout(loadBoards, 2000);
    return;
  }
  const picker = $("board");
  picker.replaceChildren(
    ...state.boards.map((board) => {
      const option = document.createElement("option");
      option.value = board.name;
      option.textContent = boardTitle(board);
      return option;
    }),
  );
  picker.disabled = false;
  const query = readUrl();
  const wanted = state.boards.find((board) => board.name === query.get("board"));
  chooseBoard(wanted ?? state.boards[0], query.get("period"));
}

function chooseBoard(board, period) {
  state.board = board;
  $("board").value = board.name;
  $("score-head").textContent = boardTitle(board);
  const tabs = board.periods.map((name) => {
    const tab = document.createElement("button");
    tab.type = "button";
    tab.setAttribute("role", "tab");
    tab.id = `tab-${name}`;
    tab.dataset.period = name;
    tab.setAttribute("aria-controls", "panel");
    tab.textContent = periodTitle(name);
    tab.addEventListener("click", () => choosePeriod(name));
    tab.addEventListener("keydown", onTabKey);
    return tab;
  });
  $("tabs").replaceChildren(...tabs);
  const kept = board.periods.includes(period) ? period : null;
  choosePeriod(kept ?? (board.periods.includes(state.period) ? state.period : board.periods[0]));
}

function choosePeriod(period) {
  for (const tab of $("tabs").children) {
    const chosen = tab.dataset.period === period;
    tab.setAttribute("aria-selected", String(chosen));
    tab.tabIndex = chosen ? 0 : -1;
  }
  $("panel").setAttribute("aria-labelledby", `tab-${period}`);
  state.period = period;
  state.latest = null;
  state.lsn = null;
  writeUrl({ board: state.board.name, period }); // named even when default: links stay exact
  const title = `${boardTitle(state.board)} · ${periodTitle(period)}`;
  $("caption").textContent = title;
  document.title = `${title} – Pomodoro leaderboards`;
  // Keep the old rows (dimmed) until the new board arrives: nothing jumps meanwhile.
  $("panel").setAttribute("aria-busy", "true");
  connect();
  boardChosen();
}

function onTabKey(event) {
  const tabs = [...$("tabs").children];
  const at = tabs.indexOf(event.currentTarget);
  const next = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  const tab = tabs[(next + tabs.length) % tabs.length];
  tab.focus();
  choosePeriod(tab.dataset.period);
}

// --- the stream --------------------------------------------------------------------------

function boardPath() {
  return `/v1/boards/${encodeURIComponent(state.board.name)}/${encodeURIComponent(state.period)}`;
}

function connect() {
  if (stream) stream.close();
  clearTimeout(retryTimer);
  setLive(false, "connecting…");
  const board = state.board.name;
  const period = state.period;
  const source = new EventSource(`${boardPath()}/events?limit=10`);
  stream = source;
  source.onmessage = (message) => {
    const answer = JSON.parse(message.data);
    if (source !== stream || answer.board !== board || answer.period !== period) return;
    state.latest = answer;
    state.lsn = message.lastEventId || null;
    render(answer);
    setLive(true, "live");
    boardUpdated();
  };
  source.onerror = () => {
    if (source !== stream) return;
    // The browser retries by itself unless the server refused the stream (4xx, 503): then
    // ask the same board as JSON to learn why, say so, and try again later.
    if (source.readyState === EventSource.CLOSED) explainRefusal(source);
    else setLive(false, "reconnecting…");
  };
}

async function explainRefusal(source) {
  setLive(false, "unavailable");
  let wait = 2;
  try {
    const response = await fetch(`${boardPath()}?limit=10`);
    if (source !== stream) return;
    if (response.ok) {
      setLive(false, "reconnecting…"); // the stream failed, the board did not: try again
    } else {
      const body = await response.json();
      const code = body.error && body.error.code;
      const retry = Number(response.headers.get("retry-after"));
      if (retry > 0) wait = Math.min(retry, 30);
      showProblem(
        code === "board_unavailable"
          ? `This board is unavailable right now: ${body.error.message}. The page retries by itself.`
          : body.error.message,
      );
    }
  } catch (error) {
    if (source !== stream) return;
    showProblem("The API does not answer; retrying…");
  }
  retryTimer = setTimeout(connect, wait * 1000);
}

function showProblem(text) {
  $("panel").setAttribute("aria-busy", "false");
  const row = emptyRow(text);
  row.cells[0].classList.add("error");
  $("rows").replaceChildren(row);
  $("total").textContent = "";
}

// --- rendering ---------------------------------------------------------------------------

function render(answer) {
  const rows = $("rows");
  const panel = $("panel");
  // Rows of another board or period are no "before": nothing flashes on a switch.
  const shown = panel.getAttribute("aria-busy") === "true" ? [] : rows.querySelectorAll("tr[data-member]");
  const before = new Map([...shown].map((tr) => [tr.dataset.member, tr.dataset.score]));
  panel.setAttribute("aria-busy", "false");
  $("caption").textContent = `${boardTitle(state.board)} · ${periodTitle(answer.period)} · ${bucketLabel(answer)}`;
  if (answer.entries.length === 0) {
    rows.replaceChildren(emptyRow("Nobody on this board yet. The first one takes the lead!"));
  } else {
    rows.replaceChildren(...answer.entries.map((entry) => entryRow(entry, { before })));
  }
  const people = answer.total === 1 ? "member" : "members";
  $("total").textContent = `${answer.total.toLocaleString("en")} ${people} on this board`;
  showFreshness(answer);
}

// One row: rank (a medal for the first three), label and id, score; `me` marks the watched
// member, `before` (member → score shown so far) flashes what changed, `extra` adds cells.
function entryRow(entry, { before = null, extra = [] } = {}) {
  const tr = document.createElement("tr");
  tr.dataset.member = entry.member;
  tr.dataset.score = String(entry.score);
  if (before && before.size > 0 && before.get(entry.member) !== String(entry.score)) tr.classList.add("changed");
  const rank = document.createElement("td");
  rank.className = "rank";
  const medal = document.createElement("span");
  medal.className = entry.rank !== null && entry.rank <= 3 ? `medal r${entry.rank}` : "medal";
  medal.textContent = entry.rank ?? "–";
  rank.append(medal);
  const name = document.createElement("td");
  name.className = "name";
  name.textContent = entry.label ?? entry.member;
  if (entry.label !== null && entry.label !== undefined) {
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = entry.member;
    name.append(" ", id);
  }
  const score = document.createElement("td");
  score.className = "num";
  score.textContent = entry.score.toLocaleString("en");
  tr.append(rank, name, ...extra, score);
  markMe(tr);
  return tr;
}

function emptyRow(text, columns = 3) {
  const tr = document.createElement("tr");
  const td = document.createElement("td");
  td.colSpan = columns;
  td.className = "empty";
  td.textContent = text;
  tr.append(td);
  return tr;
}

function bucketLabel(answer) {
  const b = answer.bucket;
  if (answer.period === "all") return "since the beginning";
  if (answer.period === "week") return `week ${Number(b.slice(6))} of ${b.slice(0, 4)}`;
  if (answer.period === "year") return b;
  if (answer.period !== "day" && answer.period !== "month") return b;
  const [y, m, d] = b.split("-").map(Number);
  const options = answer.period === "day"
    ? { weekday: "long", day: "numeric", month: "long", year: "numeric", timeZone: "UTC" }
    : { month: "long", year: "numeric", timeZone: "UTC" };
  return new Date(Date.UTC(y, m - 1, d || 1)).toLocaleDateString("en-GB", options);
}

function showFreshness(answer) {
  const when = answer.as_of.commit_time ? new Date(answer.as_of.commit_time) : null;
  const asOf = $("as-of");
  asOf.textContent = when ? when.toLocaleTimeString("en-GB", { hour12: false }) : "no commit yet";
  asOf.dateTime = answer.as_of.commit_time || "";
  asOf.title = `commit LSN ${answer.as_of.lsn}`;
  $("lag").textContent = when ? formatLag(Date.now() - when.getTime()) : "–";
  $("source").textContent = sourceName(answer.source);
}

function sourceName(source) {
  return source === "redis" ? "Redis" : "PostgreSQL (fallback)";
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

// Friends and the watched member are re-read after each update of the board's stream (at most
// once per update and a few times a second), and every 10 s while the page is visible: the
// stream only speaks when the top 10 or the total changed, which a move further down is not.
const MIN_GAP_MS = 300; // no more than about three refreshes a second
const SAFETY_MS = 10000;
const GET_MEMBERS = 100; // longer lists (or ids with commas) go in a POST body
const LSN = /^[0-9A-F]{1,8}\/[0-9A-F]{1,8}$/i;

const friends = { text: "", ids: [], answer: null };
const watch = { member: null, last: null };
const pump = { dirty: false, busy: false, at: -Infinity, timer: null };

// --- friends and the watched member: parsing what the user typed -----------------------

// Ids separated by commas or white space; "quoted" ids may hold either. Repeats count once.
function parseIds(text) {
  const ids = [];
  for (const match of text.matchAll(/"([^"]*)"|[^\s,"]+/g)) {
    const id = (match[1] ?? match[0]).trim();
    if (id && !ids.includes(id)) ids.push(id);
  }
  return ids;
}

// --- refreshing: after each board update, throttled, one at a time -----------------------

function boardUpdated() {
  pump.dirty = true;
  runPump();
}

// A new board or period: what was shown belongs to another ranking.
function boardChosen() {
  watch.last = null;
  friends.answer = null;
  if (friends.ids.length) setStatus("friends-status", "Loading…");
  boardUpdated();
}

function runPump() {
  if (pump.busy || !pump.dirty || !state.board) return;
  const wait = pump.at + MIN_GAP_MS - performance.now();
  if (wait > 0) {
    if (pump.timer === null) {
      pump.timer = setTimeout(() => {
        pump.timer = null;
        runPump();
      }, wait);
    }
    return;
  }
  pump.dirty = false;
  pump.busy = true;
  pump.at = performance.now();
  Promise.all([refreshFriends(), refreshStanding()]).finally(() => {
    pump.busy = false;
    runPump();
  });
}

// GET (or POST) `path` and the JSON answer, or {error} with the API's message.
async function ask(path, query, members) {
  const params = new URLSearchParams(query);
  if (state.lsn && LSN.test(state.lsn)) params.set("min_lsn", state.lsn);
  let init;
  if (members !== undefined) {
    const listed = members.join(",");
    if (members.length <= GET_MEMBERS && !members.some((m) => m.includes(",")) && listed.length < 4000) {
      params.set("members", listed);
    } else {
      init = { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ members }) };
    }
  }
  try {
    const response = await fetch(`${path}?${params}`, init);
    const body = await response.json();
    if (response.ok) return { body };
    if (body.error.parameter === "min_lsn" && params.has("min_lsn")) {
      state.lsn = null; // a state this server cannot serve: ask for the newest instead
      return ask(path, query, members);
    }
    if (body.error.code === "board_unavailable") {
      return { error: `This board is unavailable right now: ${body.error.message}.` };
    }
    return { error: body.error.message };
  } catch (error) {
    return { error: "The API did not answer; retrying with the next update." };
  }
}

function setStatus(id, text, isError = false) {
  const status = $(id);
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function answeredBy(answer) {
  const when = answer.as_of.commit_time ? new Date(answer.as_of.commit_time) : null;
  const time = when ? ` as of ${when.toLocaleTimeString("en-GB", { hour12: false })}` : "";
  return `${time} from ${sourceName(answer.source)}`;
}

// --- compare with friends ----------------------------------------------------------------

// `store`: remember the list in this browser too (not for a list that came with a link).
function setFriends(text, store = true) {
  friends.text = text.trim();
  friends.ids = parseIds(friends.text);
  friends.answer = null;
  $("friends").value = friends.text;
  if (store) localStorage.setItem("friends", friends.text);
  writeUrl({ friends: friends.text.length <= 2000 ? friends.text : null });
  if (!friends.ids.length) {
    $("friends-table").hidden = true;
    setStatus("friends-status", "");
  } else {
    setStatus("friends-status", "Loading…");
  }
  boardUpdated();
}

// The group asked: the typed ids, and the watched member too.
function groupMembers() {
  const members = [...friends.ids];
  if (watch.member && !members.includes(watch.member)) members.push(watch.member);
  return members;
}

async function refreshFriends() {
  if (!friends.ids.length) return;
  const members = groupMembers();
  const key = `${state.board.name}/${state.period}/${members.join("\n")}`;
  const { body, error } = await ask(`${boardPath()}/group`, {}, members);
  if (key !== `${state.board.name}/${state.period}/${groupMembers().join("\n")}` || !friends.ids.length) return;
  if (error) {
    setStatus("friends-status", error, true);
    return;
  }
  friends.answer = body;
  renderFriends(body);
}

function renderFriends(answer) {
  const rows = $("friends-rows");
  const before = new Map([...rows.querySelectorAll("tr[data-member]")].map((tr) => [tr.dataset.member, tr.dataset.score]));
  $("friends-caption").textContent = `${answer.members.length} compared · ${boardTitle(state.board)} · ${periodTitle(answer.period)}`;
  $("friends-score-head").textContent = boardTitle(state.board);
  rows.replaceChildren(
    ...answer.members.map((member) => {
      const onBoard = document.createElement("td");
      onBoard.className = "num";
      onBoard.textContent = member.board_rank === null ? "–" : `#${member.board_rank.toLocaleString("en")}`;
      return entryRow(member, { before, extra: [onBoard] });
    }),
  );
  $("friends-table").hidden = false;
  const ranked = answer.members.filter((member) => member.rank !== null).length;
  setStatus("friends-status", `${ranked} of ${answer.members.length} on this board;${answeredBy(answer)}.`);
}

// --- watch me ----------------------------------------------------------------------------

function setWatched(member) {
  watch.member = member || null;
  watch.last = null;
  if (watch.member) localStorage.setItem("watch-me", watch.member);
  else localStorage.removeItem("watch-me");
  $("me").value = watch.member ?? "";
  $("watch-stop").hidden = !watch.member;
  $("standing").replaceChildren();
  $("notice").textContent = "";
  for (const tr of document.querySelectorAll("tr[data-member]")) markMe(tr);
  boardUpdated();
}

// Highlight the watched member's row (also for those who cannot see the colour).
function markMe(tr) {
  const me = watch.member !== null && tr.dataset.member === watch.member;
  tr.classList.toggle("me", me);
  if (me) tr.setAttribute("aria-current", "true");
  else tr.removeAttribute("aria-current");
  const name = tr.querySelector("td.name");
  const badge = name && name.querySelector(".you");
  if (me && name && !badge) {
    const you = document.createElement("span");
    you.className = "you";
    you.textContent = "you";
    name.append(" ", you);
  } else if (!me && badge) {
    badge.remove();
  }
}

async function refreshStanding() {
  const member = watch.member;
  if (!member) return;
  const board = state.board;
  const period = state.period;
  const path = `${boardPath()}/members/${encodeURIComponent(member)}`;
  const { body, error } = await ask(path, { around: "1" });
  if (member !== watch.member || board !== state.board || period !== state.period) return;
  if (error) {
    const line = document.createElement("p");
    line.className = "error";
    line.textContent = error;
    $("standing").replaceChildren(line);
    return;
  }
  noticePassing(body);
  renderStanding(body);
}

function renderStanding(standing) {
  const who = standing.label ?? standing.member;
  const when = periodTitle(standing.period).toLowerCase();
  const line = document.createElement("p");
  if (standing.rank === null) {
    line.textContent = `${who} is not on ${boardTitle(state.board)} (${when}) yet.`;
    $("standing").replaceChildren(line);
    return;
  }
  line.textContent =
    `${who} is #${standing.rank.toLocaleString("en")} of ${standing.total.toLocaleString("en")} ` +
    `(${when}) with ${scoreText(standing.score)};${answeredBy(standing)}.`;
  const table = document.createElement("table");
  const caption = document.createElement("caption");
  caption.textContent = `${who} and neighbours`;
  const body = document.createElement("tbody");
  const me = { rank: standing.rank, member: standing.member, label: standing.label, score: standing.score };
  body.append(...[...standing.above, me, ...standing.below].map((entry) => entryRow(entry)));
  table.append(caption, body);
  $("standing").replaceChildren(line, table);
}

// Who is known to be above the watched member: its neighbours, and those of the top 10 and of
// the friends (of the same bucket) with a higher score.
function knownAbove(standing) {
  const above = new Map(standing.above.map((entry) => [entry.member, entry]));
  const others = [
    ...(state.latest && state.latest.bucket === standing.bucket ? state.latest.entries : []),
    ...(friends.answer && friends.answer.bucket === standing.bucket ? friends.answer.members : []),
  ];
  for (const entry of others) {
    if (entry.score > standing.score && entry.member !== standing.member) above.set(entry.member, entry);
  }
  return above;
}

// A polite notice when the rank got worse: who passed (when the page can tell), from where to where.
function noticePassing(standing) {
  const key = `${standing.board}/${standing.period}/${standing.bucket}/${standing.member}`;
  const now = { key, rank: standing.rank, score: standing.score, above: knownAbove(standing) };
  const last = watch.last;
  watch.last = now;
  if (!last || last.key !== key || last.rank === null || now.rank === null || now.rank <= last.rank) return;
  const ranks = `now #${now.rank.toLocaleString("en")}, was #${last.rank.toLocaleString("en")}`;
  const where = `${boardTitle(state.board)} · ${periodTitle(standing.period)}`;
  let text;
  if (now.score < last.score) {
    text = `Your score went from ${last.score} to ${now.score}: ${ranks} (${where}).`;
  } else {
    const passers = [...now.above.values()].filter((entry) => !last.above.has(entry.member));
    const names = passers.map((entry) => entry.label ?? entry.member);
    const who = names.length === 0
      ? "Someone"
      : names.length <= 3
        ? names.join(" and ").replace(/ and (?=.* and )/g, ", ")
        : `${names.slice(0, 2).join(", ")} and ${names.length - 2} others`;
    text = `${who} passed you: ${ranks} (${where}).`;
  }
  const time = new Date().toLocaleTimeString("en-GB", { hour12: false });
  $("notice").textContent = `${time} · ${text}`;
}

function startPeople() {
  $("friends-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setFriends($("friends").value);
  });
  $("friends-clear").addEventListener("click", () => setFriends(""));
  $("watch-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setWatched($("me").value.trim());
  });
  $("watch-stop").addEventListener("click", () => setWatched(""));
  setWatched(localStorage.getItem("watch-me") || "");
  const linked = readUrl().get("friends");
  setFriends(linked ?? localStorage.getItem("friends") ?? "", linked === null);
  setInterval(() => {
    const following = friends.ids.length || watch.member;
    if (following && document.visibilityState === "visible" && performance.now() - pump.at > SAFETY_MS) {
      boardUpdated();
    }
  }, SAFETY_MS / 2);
}

// --- start -------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("board").addEventListener("change", (event) => {
    const board = state.boards.find((b) => b.name === event.target.value);
    if (board) chooseBoard(board, state.period);
  });
  startPeople();
  loadBoards();
});
