// FDFO picking panel: while the FDFO Trainer runs with the "FDFO Human Picks" reward, each epoch's
// pairs appear here. Keys: 1 = left is better, 2 = right, space = the same, s = skip,
// Backspace / left arrow = back to the previous pair (to correct it), right arrow = next pair.
// Images and rounds come from the package's routes (/fdfo/picks/...) and ComfyUI's websocket
// (fdfo.picks.round / update / closed); every answer is saved to picks.jsonl before it is acknowledged.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const CHOICES = { "1": "left", "2": "right", " ": "equal", "s": "skip", "S": "skip" };
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
#fdfo-picks-panel figcaption { margin-top: 4px; color: #aaa; }
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
    document.head.append(el("style", { text: CSS }));
    this.left = el("img", { id: "fdfo-picks-left", alt: "left image" });
    this.right = el("img", { id: "fdfo-picks-right", alt: "right image" });
    this.leftFig = el("figure", {}, [this.left, el("figcaption", { text: "1: left" })]);
    this.rightFig = el("figure", {}, [this.right, el("figcaption", { text: "2: right" })]);
    for (const img of [this.left, this.right]) img.addEventListener("load", () => this.imageLoaded(img));
    this.count = el("span", { id: "fdfo-picks-count" });
    this.titleEl = el("span", { class: "fdfo-title" });
    this.prompt = el("div", { id: "fdfo-picks-prompt" });
    this.status = el("div", { id: "fdfo-picks-status" });
    const button = (choice, key, label) => {
      const b = el("button", { "data-choice": choice, title: `${label} (key ${key})` }, [el("kbd", { text: key }), label]);
      b.addEventListener("click", () => this.answer(choice));
      return b;
    };
    const back = el("button", { id: "fdfo-picks-back", title: "Back to the previous pair (Backspace)" },
                    [el("kbd", { text: "⌫" }), "back"]);
    back.addEventListener("click", () => this.move(-1));
    this.finishButton = el("button", { id: "fdfo-picks-finish",
      title: "End this epoch's picking: the pairs not picked yet are dropped or scored by the preference model" },
      ["Go on without the rest"]);
    this.finishButton.addEventListener("click", () => this.finish());
    const hide = el("button", { id: "fdfo-picks-hide", title: "Hide the panel (training keeps waiting)" }, ["hide"]);
    hide.addEventListener("click", () => this.setMinimized(true));
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
    setInterval(() => this.tick(), 1000);
  }

  visible() {
    return this.round !== null && !this.minimized;
  }

  setMinimized(flag) {
    this.minimized = flag;
    this.render();
  }

  url(index, side) {
    const r = this.round;
    const q = new URLSearchParams({ session: r.session, round: r.round, index: String(index), side });
    return api.apiURL(`/fdfo/picks/image?${q}`);
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
    this.round = payload;
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
    const ls = this.url(this.index, "left"), rs = this.url(this.index, "right");
    if (this.left.getAttribute("src") !== ls) {
      this.panel.setAttribute("data-loaded", "0");
      this.left.setAttribute("src", ls);
      this.right.setAttribute("src", rs);
    }
    this.leftFig.classList.toggle("fdfo-chosen", pair.choice === "left" || pair.choice === "equal");
    this.rightFig.classList.toggle("fdfo-chosen", pair.choice === "right" || pair.choice === "equal");
    this.panel.setAttribute("data-round", r.round);
    this.panel.setAttribute("data-index", String(this.index));
    this.panel.setAttribute("data-picked", String(r.picked));
    this.finishButton.disabled = r.picked >= r.total;
    if (pair.choice !== null && !this.statusIsError) this.setStatus(`This pair: ${LABELS[pair.choice]}. Press a key to change it.`);
    if (r.picked >= r.total) this.setStatus("All pairs picked: training goes on.");
    this.tick();
  }

  imageLoaded() {
    if (this.left.complete && this.right.complete && this.left.naturalWidth && this.right.naturalWidth) {
      for (const img of [this.left, this.right]) img.classList.toggle("fdfo-small", img.naturalWidth < 256);
      this.panel.setAttribute("data-loaded", "1");
    }
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

  onKey(e) {
    if (!this.visible()) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    let handled = true;
    if (e.key in CHOICES && !e.ctrlKey && !e.metaKey && !e.altKey) this.answer(CHOICES[e.key]);
    else if (e.key === "Backspace" || e.key === "ArrowLeft") this.move(-1);
    else if (e.key === "ArrowRight") this.move(1);
    else if (e.key === "Escape") this.setMinimized(true);
    else handled = false;
    if (handled) {
      e.preventDefault();
      e.stopPropagation();
    }
  }

  async post(route, body) {
    const res = await api.fetchApi(route, { method: "POST", headers: { "Content-Type": "application/json" },
                                            body: JSON.stringify(body) });
    const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
    if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
    return data;
  }

  async answer(choice) {
    const r = this.round;
    if (!r || this.busy) return;
    this.busy = true;
    const index = this.index;
    try {
      const data = await this.post("/fdfo/picks/answer", { session: r.session, round: r.round, index, choice });
      if (this.round && this.round.round === data.round) {
        this.round = data;
        this.setStatus("");
        this.index = this.firstUnpicked(index + 1);
        this.render();
      }
    } catch (err) {
      this.setStatus(`Not saved: ${err.message}`, true);
    } finally {
      this.busy = false;
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
      if (data.rounds && data.rounds.length) this.show(data.rounds[0]);
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
