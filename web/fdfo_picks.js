// FDFO picking panel: while the FDFO Trainer runs with the "FDFO Human Picks" reward, each epoch's
// pairs appear here. Keys: 1 = left is better, 2 = right, space = the same, s = skip,
// Backspace / left arrow = back to the previous pair (to correct it), right arrow = next pair.
// Images and rounds come from the package's routes (/fdfo/picks/...) and ComfyUI's websocket
// (fdfo.picks.round / update / closed); every answer is saved to picks.jsonl before it is acknowledged.
//
// One gesture, one pick, for the pair the person saw: a pick is taken only for the pair whose two
// images are on screen (a pair whose images are still loading, or failed to load, takes none: the
// old pair is hidden the moment the panel moves on, and a failed image says so); each shown pair
// takes one answer (held keys' auto-repeat, the second click of a double click and the click a
// focused button fires when Space is released are ignored), and none in its first MIN_VIEW_MS (a
// gesture that quick began before the pair could be seen); and every answer names the pick it
// replaces (`expect`), so a pair answered meanwhile in another tab is refused by the server with
// a message instead of being overwritten, and the tab whose pick another one changed says so.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const CHOICES = { "1": "left", "2": "right", " ": "equal", "s": "skip", "S": "skip" };
const PANEL_KEYS = new Set([...Object.keys(CHOICES), "Backspace", "ArrowLeft", "ArrowRight", "Escape", "r", "R"]);
// A pair takes no pick in its first quarter second on screen: no one judges two images faster, so
// such a gesture was aimed at the pair before (a double click's second click, a key pressed twice).
const MIN_VIEW_MS = 250;
// This window's name in its answers (a page load is a new window).
const CLIENT = (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`).slice(0, 36);
const LABELS = { left: "left", right: "right", equal: "same", skip: "skipped" };

const CSS = `
#fdfo-picks-panel { position: fixed; z-index: 10000; left: 50%; top: 50%; transform: translate(-50%, -50%);
  background: #1e1f22; color: #eee; border: 1px solid #555; border-radius: 10px; padding: 14px 18px;
  box-shadow: 0 8px 40px rgba(0,0,0,.6); font: 14px/1.4 system-ui, sans-serif; max-width: 96vw; }
#fdfo-picks-panel[hidden] { display: none; }
#fdfo-picks-panel .fdfo-head { display: flex; justify-content: space-between; align-items: baseline; gap: 16px; }
#fdfo-picks-panel .fdfo-title { font-weight: 600; font-size: 15px; }
#fdfo-picks-count { font-variant-numeric: tabular-nums; font-weight: 600; }
#fdfo-picks-prompt { margin: 8px 0 10px; font-style: italic; color: #cfd; max-width: 90vw; }
#fdfo-picks-panel .fdfo-pair { display: flex; gap: 14px; justify-content: center; }
#fdfo-picks-panel figure { margin: 0; text-align: center; }
#fdfo-picks-panel figure.fdfo-chosen img { outline: 4px solid #4c9; }
#fdfo-picks-panel img { width: min(40vw, 60vh, 420px); height: auto; aspect-ratio: auto; background: #333;
  border-radius: 6px; display: block; }
#fdfo-picks-panel img.fdfo-small { image-rendering: pixelated; }
#fdfo-picks-panel img.fdfo-hidden { visibility: hidden; }
#fdfo-picks-panel figcaption { margin-top: 4px; color: #aaa; }
#fdfo-picks-panel figcaption.fdfo-error { color: #f88; max-width: min(40vw, 60vh, 420px); }
#fdfo-picks-panel button:disabled { opacity: .45; cursor: default; }
#fdfo-picks-panel .fdfo-buttons { display: flex; gap: 8px; justify-content: center; margin-top: 12px; flex-wrap: wrap; }
#fdfo-picks-panel button { background: #2d3036; color: #eee; border: 1px solid #666; border-radius: 6px;
  padding: 6px 12px; cursor: pointer; font-size: 13px; }
#fdfo-picks-panel button:hover { background: #3a3e46; }
#fdfo-picks-panel button kbd { background: #111; border: 1px solid #555; border-radius: 3px; padding: 0 4px; margin-right: 5px; }
#fdfo-picks-status { margin-top: 8px; min-height: 1.4em; color: #aaa; text-align: center; }
#fdfo-picks-status.fdfo-error { color: #f88; }
#fdfo-picks-badge { position: fixed; z-index: 10000; right: 16px; bottom: 16px; background: #2b5; color: #fff;
  border-radius: 16px; padding: 6px 12px; cursor: pointer; font: 13px system-ui, sans-serif; }
#fdfo-picks-badge[hidden] { display: none; }
`;

function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

class PickPanel {
  constructor() {
    this.round = null; // the server's payload: {session, round, epoch, title, picked, total, pairs, deadline, now}
    this.index = 0;
    this.busy = false;
    this.minimized = false;
    this.clockSkew = 0;
    this.view = null; // {round, index, at}: the pair whose two images are on screen (since `at`) and not answered yet
    this.loading = null; // {round, index, token}: the pair whose images are being fetched (or failed)
    this.loadToken = 0;
    this.failed = null; // the current pair's image errors, {left, right} (null when they showed)
    this.mine = new Map(); // "round:index" -> the choice this window gave (to tell when another changes it)
    this.keysHandled = new Set(); // keys whose keydown the panel took (their keyup is the panel's too)
    this.swallowClick = false; // a click fired by releasing such a key (Space on a focused button)
    document.head.append(el("style", { text: CSS }));
    this.left = el("img", { id: "fdfo-picks-left", alt: "left image", class: "fdfo-hidden" });
    this.right = el("img", { id: "fdfo-picks-right", alt: "right image", class: "fdfo-hidden" });
    this.leftCap = el("figcaption", { text: "1: left" });
    this.rightCap = el("figcaption", { text: "2: right" });
    this.leftFig = el("figure", {}, [this.left, this.leftCap]);
    this.rightFig = el("figure", {}, [this.right, this.rightCap]);
    this.count = el("span", { id: "fdfo-picks-count" });
    this.titleEl = el("span", { class: "fdfo-title" });
    this.prompt = el("div", { id: "fdfo-picks-prompt" });
    this.status = el("div", { id: "fdfo-picks-status" });
    // Every button: one click, one action (the second click of a double click, and a click fired by
    // releasing a key the panel already acted on, do nothing); a click never leaves focus on a
    // button, so Space (the "same" key) cannot also press the button last clicked.
    const onClick = (b, action) => {
      b.addEventListener("mousedown", (e) => e.preventDefault());
      b.addEventListener("click", (e) => {
        if (e.detail > 1 || this.swallowClick) return;
        action(e);
      });
      return b;
    };
    this.choiceButtons = [];
    const button = (choice, key, label) => {
      const b = el("button", { "data-choice": choice, title: `${label} (key ${key})` }, [el("kbd", { text: key }), label]);
      this.choiceButtons.push(b);
      return onClick(b, (e) => this.answer(choice, e.timeStamp));
    };
    const back = onClick(el("button", { id: "fdfo-picks-back", title: "Back to the previous pair (Backspace)" },
                            [el("kbd", { text: "⌫" }), "back"]), () => this.move(-1));
    this.finishButton = el("button", { id: "fdfo-picks-finish",
      title: "End this epoch's picking: the pairs not picked yet are dropped or scored by the preference model" },
      ["Go on without the rest"]);
    onClick(this.finishButton, () => this.finish());
    const hide = onClick(el("button", { id: "fdfo-picks-hide", title: "Hide the panel (training keeps waiting)" }, ["hide"]),
                         () => this.setMinimized(true));
    this.panel = el("div", { id: "fdfo-picks-panel", hidden: "" }, [
      el("div", { class: "fdfo-head" }, [this.titleEl, this.count]),
      this.prompt,
      el("div", { class: "fdfo-pair" }, [this.leftFig, this.rightFig]),
      el("div", { class: "fdfo-buttons" }, [
        button("left", "1", "left is better"), button("equal", "space", "same"), button("right", "2", "right is better"),
        button("skip", "s", "skip"), back, this.finishButton, hide]),
      this.status,
    ]);
    this.badge = el("div", { id: "fdfo-picks-badge", hidden: "" });
    this.badge.addEventListener("click", () => this.setMinimized(false));
    document.body.append(this.panel, this.badge);
    window.addEventListener("keydown", (e) => this.onKey(e), true);
    window.addEventListener("keyup", (e) => this.onKeyUp(e), true);
    setInterval(() => this.tick(), 1000);
  }

  visible() {
    return this.round !== null && !this.minimized;
  }

  setMinimized(flag) {
    this.minimized = flag;
    this.render();
  }

  show(payload) {
    if (!payload || !payload.round) return;
    const fresh = !this.round || this.round.round !== payload.round || this.round.session !== payload.session;
    this.round = payload;
    this.clockSkew = payload.now ? Date.now() / 1000 - payload.now : 0;
    if (fresh) {
      this.index = this.firstUnpicked(0);
      this.minimized = false;
      this.setStatus("");
    }
    this.render();
  }

  update(payload) {
    if (!this.round || !payload || payload.round !== this.round.round) return this.show(payload);
    const last = payload.last;
    const shownBefore = this.round.pairs[this.index];
    this.round = payload;
    if (last && last.client !== CLIENT) {
      const key = `${payload.round}:${last.index}`;
      if (this.mine.has(key) && last.previous_client === CLIENT) {
        this.mine.delete(key);
        this.setStatus(`Pair ${last.index + 1}: your pick '${LABELS[last.previous]}' was changed to ` +
                       `'${LABELS[last.choice]}' in another window.`, true);
      }
      if (last.index === this.index && shownBefore && shownBefore.choice === null) {
        // The pair on screen was just picked elsewhere: move on (a key pressed now must not land on it).
        this.index = this.firstUnpicked(this.index + 1);
        this.setStatus(`Pair ${last.index + 1} was picked in another window ('${LABELS[last.choice]}'); ` +
                       "this is the next one.", true);
      }
    }
    this.render();
  }

  closed(info) {
    if (!this.round || info.round !== this.round.round) return;
    const why = { complete: "all pairs picked", finished: "went on without the rest", timeout: "time is up",
                  cancelled: "the run was cancelled" }[info.reason] || info.reason;
    this.round = null;
    this.setStatus(`Epoch closed (${why}): ${info.picked} / ${info.total} picked.`);
    this.render();
  }

  firstUnpicked(from) {
    const pairs = this.round ? this.round.pairs : [];
    for (let k = 0; k < pairs.length; k++) {
      const i = (from + k) % pairs.length;
      if (pairs[i].choice === null) return i;
    }
    return Math.min(from, Math.max(0, pairs.length - 1));
  }

  render() {
    const r = this.round;
    if (!r) {
      this.panel.hidden = true;
      this.badge.hidden = true;
      this.panel.removeAttribute("data-round");
      return;
    }
    this.panel.hidden = this.minimized;
    this.badge.hidden = !this.minimized;
    this.badge.textContent = `FDFO picks: ${r.picked} / ${r.total} picked — show`;
    const pair = r.pairs[this.index];
    this.titleEl.textContent = `FDFO — ${r.title || "training"}, epoch ${r.epoch + 1}: which is better? ` +
      `(pair ${this.index + 1} of ${r.total})`;
    this.count.textContent = `${r.picked} / ${r.total} picked`;
    this.prompt.textContent = pair.prompt;
    if (!this.loading || this.loading.round !== r.round || this.loading.index !== this.index) this.load(this.index);
    const pickable = !this.busy && this.isShown(r.round, this.index);
    for (const b of this.choiceButtons) b.disabled = !pickable;
    this.leftFig.classList.toggle("fdfo-chosen", pair.choice === "left" || pair.choice === "equal");
    this.rightFig.classList.toggle("fdfo-chosen", pair.choice === "right" || pair.choice === "equal");
    this.panel.setAttribute("data-round", r.round);
    this.panel.setAttribute("data-index", String(this.index));
    this.panel.setAttribute("data-picked", String(r.picked));
    this.panel.setAttribute("data-choice", pair.choice === null ? "" : pair.choice);
    this.finishButton.disabled = r.picked >= r.total;
    const elsewhere = pair.by && pair.by !== CLIENT ? " (picked in another window)" : "";
    if (pair.choice !== null && !this.statusIsError) {
      this.setStatus(`This pair: ${LABELS[pair.choice]}${elsewhere}. Press a key to change it.`);
    }
    if (r.picked >= r.total) this.setStatus("All pairs picked: training goes on.");
    this.tick();
  }

  // The pair `view` is on screen: pickable from MIN_VIEW_MS after it appeared (data-ready says when).
  arm(view) {
    this.view = view;
    const wait = Math.max(0, view.at + MIN_VIEW_MS - performance.now());
    this.panel.setAttribute("data-ready", wait > 0 ? "0" : "1");
    if (wait > 0) setTimeout(() => { if (this.view === view) this.panel.setAttribute("data-ready", "1"); }, wait);
  }

  isShown(round, index) {
    return this.view !== null && this.view.round === round && this.view.index === index;
  }

  // Fetch and show pair `index`'s two images. Until both are on screen the pair is not pickable
  // (the previous pair's images are hidden at once); an image that fails says why under it.
  async load(index) {
    const r = this.round;
    const token = ++this.loadToken;
    this.loading = { round: r.round, index, token };
    this.view = null;
    this.failed = null;
    this.panel.setAttribute("data-loaded", "0");
    this.panel.setAttribute("data-ready", "0");
    this.panel.setAttribute("data-failed", "0");
    const sides = [["left", this.left, this.leftCap, "1: left"], ["right", this.right, this.rightCap, "2: right"]];
    for (const [, img, cap] of sides) {
      img.classList.add("fdfo-hidden");
      cap.textContent = "loading…";
      cap.classList.remove("fdfo-error");
    }
    const results = await Promise.all(sides.map(async ([side, img]) => {
      try {
        const q = new URLSearchParams({ session: r.session, round: r.round, index: String(index), side });
        const res = await api.fetchApi(`/fdfo/picks/image?${q}`, { cache: "no-store" });
        if (!res.ok) {
          const data = await res.json().catch(() => ({}));
          return { error: data.error || `HTTP ${res.status}` };
        }
        const url = URL.createObjectURL(await res.blob());
        if (token !== this.loadToken) { URL.revokeObjectURL(url); return { stale: true }; }
        const old = img.getAttribute("src");
        img.setAttribute("src", url);
        if (old && old.startsWith("blob:")) URL.revokeObjectURL(old);
        await img.decode();
        return {};
      } catch (err) {
        return { error: err && err.message ? err.message : String(err) };
      }
    }));
    if (token !== this.loadToken) return; // the panel moved on meanwhile
    const errors = {};
    sides.forEach(([side, img, cap, label], k) => {
      if (results[k].error) {
        errors[side] = results[k].error;
        cap.textContent = `the ${side} image could not be loaded: ${results[k].error}`;
        cap.classList.add("fdfo-error");
      } else {
        cap.textContent = label;
      }
    });
    if (Object.keys(errors).length) {
      this.failed = errors;
      this.panel.setAttribute("data-failed", "1");
      this.setStatus("This pair's images could not be loaded: no pick can be made on it. " +
                     "Press r to try again, or → for the next pair.", true);
      this.render();
      return;
    }
    for (const [, img] of sides) img.classList.toggle("fdfo-small", img.naturalWidth < 256);
    for (const [, img] of sides) img.classList.remove("fdfo-hidden");
    this.arm({ round: r.round, index, at: performance.now() });
    this.panel.setAttribute("data-loaded", "1");
    this.render();
  }

  tick() {
    const r = this.round;
    if (!r || !r.deadline || this.statusIsError || r.picked >= r.total) return;
    const left = Math.max(0, Math.round(r.deadline - (Date.now() / 1000 - this.clockSkew)));
    const what = r.unpicked === "preference" ? "the preference model scores" : "training drops";
    this.setStatus(`${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")} left; then ${what} the unpicked pairs.`);
  }

  setStatus(text, isError = false) {
    this.statusIsError = isError;
    this.status.textContent = text;
    this.status.classList.toggle("fdfo-error", isError);
  }

  move(step) {
    if (!this.round) return;
    const n = this.round.pairs.length;
    this.index = (this.index + step + n) % n;
    this.setStatus("");
    this.render();
  }

  retry() {
    if (!this.round || !this.failed) return;
    this.setStatus("");
    this.load(this.index);
  }

  onKey(e) {
    if (!this.visible()) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    if (e.ctrlKey || e.metaKey || e.altKey || !PANEL_KEYS.has(e.key)) return;
    e.preventDefault();
    e.stopPropagation();
    this.keysHandled.add(e.code || e.key);
    if (e.repeat) return; // a held key: its auto-repeat is not another gesture
    if (e.key in CHOICES) this.answer(CHOICES[e.key], e.timeStamp);
    else if (e.key === "Backspace" || e.key === "ArrowLeft") this.move(-1);
    else if (e.key === "ArrowRight") this.move(1);
    else if (e.key === "Escape") this.setMinimized(true);
    else if (e.key === "r" || e.key === "R") this.retry();
  }

  onKeyUp(e) {
    // Releasing a key the panel acted on: no default action (a focused button fires its click when
    // Space is released in some browsers), and a click it fires all the same is ignored.
    if (!this.keysHandled.delete(e.code || e.key)) return;
    e.preventDefault();
    e.stopPropagation();
    this.swallowClick = true;
    setTimeout(() => { this.swallowClick = false; }, 0);
  }

  async post(route, body) {
    const res = await api.fetchApi(route, { method: "POST", headers: { "Content-Type": "application/json" },
                                            body: JSON.stringify(body) });
    const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
    if (!res.ok) {
      const err = new Error(data.error || `HTTP ${res.status}`);
      err.conflict = res.status === 409;
      throw err;
    }
    return data;
  }

  // One pick for the pair on screen: taken only while both its images show, once per showing.
  async answer(choice, when = performance.now()) {
    const r = this.round;
    if (!r) return;
    if (this.busy) return; // the previous pick is being saved: the next pair is not on screen yet
    if (!this.isShown(r.round, this.index)) {
      if (!this.failed) this.setStatus("Wait for the pair's images: a pick is for the pair you see.");
      return;
    }
    const shown = this.view;
    if (when - shown.at < MIN_VIEW_MS) {
      this.setStatus("Not taken: this pair had only just appeared (a pick is for the pair you looked at).");
      return;
    }
    const index = this.index;
    const key = `${r.round}:${index}`;
    const expect = r.pairs[index].choice;
    this.view = null; // this showing of the pair is answered
    this.panel.setAttribute("data-ready", "0");
    this.busy = true;
    this.render();
    let moved = false;
    try {
      const data = await this.post("/fdfo/picks/answer",
                                   { session: r.session, round: r.round, index, choice, expect, client: CLIENT });
      this.mine.set(key, choice);
      if (this.round && this.round.round === data.round) {
        this.round = data;
        this.setStatus("");
        this.index = this.firstUnpicked(index + 1);
        moved = this.index !== index;
      }
    } catch (err) {
      this.setStatus(`Not saved: ${err.message}`, true);
      if (err.conflict) await this.refresh();
    } finally {
      this.busy = false;
      // Still on the same pair (not saved, or nothing left to pick): its images are still on screen.
      if (!moved && this.round && this.round.round === r.round && this.index === index && !this.failed &&
          this.loading && this.loading.index === index && this.panel.getAttribute("data-loaded") === "1") {
        this.arm(shown);
      }
      this.render();
    }
  }

  async finish() {
    const r = this.round;
    if (!r) return;
    try {
      await this.post("/fdfo/picks/finish", { session: r.session, round: r.round });
    } catch (err) {
      this.setStatus(`${err.message}`, true);
    }
  }

  async refresh() {
    try {
      const res = await api.fetchApi("/fdfo/picks/current");
      const data = await res.json();
      if (data.rounds && data.rounds.length) {
        if (this.round && data.rounds[0].round === this.round.round) { this.round = data.rounds[0]; this.render(); }
        else this.show(data.rounds[0]);
      }
      else if (this.round) { this.round = null; this.render(); }
    } catch (err) {
      console.warn("FDFO picks: could not ask for open rounds", err);
    }
  }
}

app.registerExtension({
  name: "FDFO.PickingPanel",
  async setup() {
    const panel = new PickPanel();
    window.fdfoPickPanel = panel; // for tests and the console
    api.addEventListener("fdfo.picks.round", (e) => panel.show(e.detail));
    api.addEventListener("fdfo.picks.update", (e) => panel.update(e.detail));
    api.addEventListener("fdfo.picks.closed", (e) => panel.closed(e.detail));
    api.addEventListener("reconnected", () => panel.refresh());
    await panel.refresh(); // a round opened before this page loaded
  },
});
