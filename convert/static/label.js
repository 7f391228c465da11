// seam-qc label page: forwards key names to the server's state machine and renders its state.
// Requests run one at a time, in order, so held-down keys never race each other.
"use strict";

const $ = (id) => document.getElementById(id);
let state = null;
let known = new Set();
let chain = Promise.resolve();
let pending = 0;
let closed = false;

function setPending(delta) {
  pending += delta;
  document.body.dataset.pending = String(pending);
}

function showMessage(text, isError) {
  const m = $("message");
  m.textContent = text || "\u00a0";
  m.style.color = isError ? "#ff8a70" : "";
}

function request(path, body) {
  if (closed) return;
  setPending(1);
  chain = chain
    .then(() => fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }))
    .then((r) => r.json())
    .then(render)
    .catch(() => { if (!closed) showMessage("server not reachable (stopped?)", true); })
    .finally(() => setPending(-1));
}

function sendKey(key) { request("/api/key", { key }); }
function gotoFrame(frame) { request("/api/goto", { frame }); }

function keyName(ev) {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return null;
  let k = ev.key;
  if (k.length === 1) k = k.toLowerCase();
  if (k === " ") return null;
  if (ev.shiftKey && (k === "ArrowRight" || k === "ArrowLeft" || /^[a-z]$/.test(k))) k = "Shift+" + k;
  return k;
}

document.addEventListener("keydown", (ev) => {
  if (ev.target === $("jump")) {
    if (ev.key === "Escape") { $("jump").blur(); ev.preventDefault(); }
    return;  // typing a number; Enter submits the form
  }
  const k = keyName(ev);
  if (k === "j") { ev.preventDefault(); $("jump").focus(); $("jump").select(); return; }
  if (k && known.has(k)) { ev.preventDefault(); sendKey(k); }
});

document.querySelectorAll("[data-key]").forEach((el) => {
  el.addEventListener("click", (ev) => { ev.preventDefault(); el.blur(); sendKey(el.dataset.key); });
});

$("jump-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const v = $("jump").value.trim();
  if (/^-?\d+$/.test(v)) gotoFrame(parseInt(v, 10));
  else showMessage("type a frame number", true);
  $("jump").blur();
});

let shownFrame = -1;
let prefetched = null;

function render(s) {
  state = s;
  known = new Set(s.keys);
  $("video").textContent = s.video;
  $("out").textContent = s.out;
  $("csv-name").textContent = s.csv;
  $("frame-no").textContent = String(s.frame);
  $("frame-last").textContent = String(s.frames - 1);
  const images = s.mode === "images";
  $("badge-frame").textContent = images ? `image ${s.frame}: ${s.image_name}` : "frame " + s.frame;
  $("progress-bar").style.width = (s.frames > 1 ? (100 * s.frame) / (s.frames - 1) : 100) + "%";
  $("jump").max = String(s.frames - 1);
  document.title = `${s.frame} / ${s.frames - 1} · ${s.video} · seam-qc label`;

  if (s.frame !== shownFrame) {
    shownFrame = s.frame;
    $("frame").src = `/frame/${s.frame}.jpg?v=${s.frame_tag}`;
  }

  renderRoi(s);

  const conflict = !!s.warning;
  document.querySelectorAll(".chip").forEach((chip) => {
    const a = chip.dataset.attr;
    const on = s.values[a] === true;
    const unknown = s.values[a] === null;  // Shift+key: cannot tell, saved as an empty cell
    chip.classList.toggle("on", on);
    chip.classList.toggle("unknown", unknown);
    chip.classList.toggle("conflict", conflict && on && (a === "good" || a === "error" || a === "break"));
    chip.setAttribute("aria-pressed", unknown ? "mixed" : String(on));
    chip.querySelector(".val").textContent =
      unknown ? "?" : a === "length" ? (on ? "2 mm" : "4 mm") : (on ? "on" : "off");
  });

  const w = $("warning");
  w.hidden = !conflict;
  w.textContent = conflict ? s.warning : "";

  const notes = $("notes");
  notes.hidden = !s.notes.length;
  notes.replaceChildren(...s.notes.map((n) => { const d = document.createElement("div"); d.textContent = n; return d; }));

  const badge = $("badge-saved");
  const savedAs = $("saved-as");
  if (s.saved && s.reviewed === false) {
    // a folder's pre-label (the model's, or an operator's verdict): Enter confirms it
    const same = Object.keys(s.values).every((a) => s.values[a] === s.saved[a]);
    const on = Object.keys(s.saved).filter((a) => s.saved[a]);
    badge.hidden = false;
    badge.textContent = same ? "pre-label · not reviewed" : "pre-label · corrected, not saved";
    badge.classList.toggle("differs", !same);
    savedAs.textContent = `pre-labelled ${on.length ? on.join(", ") : "nothing set"}` +
      (s.source ? ` (${s.source})` : "") + (same ? " — Enter confirms and moves on" : " — Enter saves the correction");
    savedAs.className = "saved-as differs";
  } else if (s.saved) {
    const same = Object.keys(s.values).every((a) => s.values[a] === s.saved[a]);
    const on = Object.keys(s.saved).filter((a) => s.saved[a]);
    badge.hidden = false;
    badge.textContent = (same ? (images ? "reviewed ✓" : "saved ✓") : "saved · labels differ");
    badge.classList.toggle("differs", !same);
    savedAs.textContent = `saved as ${s.image_name}: ${on.length ? on.join(", ") : "nothing set"}` +
      (same ? "" : " — press s to replace");
    savedAs.className = "saved-as " + (same ? "same" : "differs");
  } else {
    badge.hidden = true;
    savedAs.textContent = "not saved yet";
    savedAs.className = "saved-as";
  }

  for (const k of ["saved", "good", "error", "break", "length", "unknown", "contradictory"]) {
    $("count-" + k).textContent = String(s.counts[k]);
  }
  $("row-reviewed").hidden = !images;
  if (images) $("count-reviewed").textContent = `${s.counts.reviewed} / ${s.frames}`;
  $("row-contradictory").classList.toggle("has", s.counts.contradictory > 0);
  $("btn-undo").disabled = !s.can_undo;
  $("btn-undo").title = s.can_undo ? `u: undo the save of frame ${s.undo_frame}` : "nothing to undo";

  const help = $("help");
  if (!help.childElementCount) {
    for (const [keys, what] of s.help) {
      const item = document.createElement("span");
      item.className = "k";
      keys.split(" / ").forEach((part, i) => {
        if (i) item.append("/");
        part.split(" ").forEach((k) => {
          const kb = document.createElement("kbd"); kb.textContent = k; item.append(kb);
        });
      });
      item.append(" " + what);
      help.append(item);
    }
  }

  showMessage(s.message, s.message.startsWith("not saved") || s.message.startsWith("undo failed"));

  if (s.quit) {
    closed = true;
    $("closed-text").textContent = `${s.counts.saved} frame(s) saved to ${s.out}/${s.csv}.`;
    $("closed").hidden = false;
  }
}

// The camera ROI as an SVG in frame pixels over the frame: same box as the <img>, and both keep
// the aspect ratio centred (object-fit: contain / xMidYMid meet), so the box lands on the pixels.
function renderRoi(s) {
  const svg = $("roi");
  const badge = $("badge-roi");
  // an <svg> has no .hidden property (it is not an HTMLElement): set the attribute
  if (!s.roi) { svg.toggleAttribute("hidden", true); badge.hidden = true; return; }
  const [fw, fh] = s.frame_size;
  const [x, y, w, h] = s.roi;
  svg.setAttribute("viewBox", `0 0 ${fw} ${fh}`);
  const box = $("roi-box");
  box.setAttribute("x", x); box.setAttribute("y", y);
  box.setAttribute("width", w); box.setAttribute("height", h);
  $("roi-shade").setAttribute("d", `M0 0H${fw}V${fh}H0Z M${x} ${y}h${w}v${h}h${-w}Z`);
  svg.toggleAttribute("hidden", false);
  badge.textContent = `ROI ${x},${y} ${w}×${h} · saved: this crop`;
  badge.title = `camera ROI from ${s.roi_origin}: every save writes exactly this ${w}×${h} crop, what the daemon classifies`;
  badge.hidden = false;
}

// Prefetch the next frame once the current one is shown, so `n` feels instant.
$("frame").addEventListener("load", () => {
  if (!state || closed || pending) return;
  const next = state.frame + 1;
  if (next < state.frames && prefetched !== next) {
    prefetched = next;
    new Image().src = `/frame/${next}.jpg?v=${state.frame_tag}`;
  }
});

setPending(1);
fetch("/api/state").then((r) => r.json()).then(render)
  .catch(() => showMessage("server not reachable", true))
  .finally(() => setPending(-1));
