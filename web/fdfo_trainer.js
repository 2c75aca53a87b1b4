// FDFO Trainer: the run's summary stays on the node after the run.
//
// While the Trainer runs, ComfyUI's front end shows its progress text (the epoch line) in a text box
// on the node. Front ends up to 1.35 leave the last one there; 1.58 removes it when the job ends, so
// the node lost its final line ("epoch 40/40 · reward ... · done", the LoRA file, where the run is).
// The Trainer returns that summary as its `ui.text` output (ComfyUI keeps it with the node's
// outputs and sends it again when a cached result is reused); this extension shows it in a read-only
// box of the same size in place of the progress text, where it stays until the Trainer runs again
// (its next progress text replaces it).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TRAINERS = new Set(["FDFOTrainerV2", "FDFOTrainer"]);
// The front end's own progress-text widget (1.27 ... 1.58 use this name).
const PROGRESS_TEXT = "$$node-text-preview";
export const SUMMARY = "fdfo_summary";
const MIN_HEIGHT = 58; // the progress text's own minimum height: the node keeps its layout

function removeWidget(node, name) {
  const i = (node.widgets || []).findIndex((w) => w.name === name);
  if (i < 0) return false;
  const [widget] = node.widgets.splice(i, 1);
  widget.onRemove?.();
  return true;
}

function showSummary(node, text) {
  removeWidget(node, PROGRESS_TEXT);
  let widget = (node.widgets || []).find((w) => w.name === SUMMARY);
  if (!widget) {
    const box = document.createElement("textarea");
    box.className = "comfy-multiline-input fdfo-summary";
    box.readOnly = true;
    box.spellcheck = false;
    box.setAttribute("aria-label", "FDFO Trainer: summary of the last run");
    widget = node.addDOMWidget(SUMMARY, "fdfo_summary", box, {
      getValue: () => box.value,
      setValue: (v) => { box.value = String(v ?? ""); },
      getMinHeight: () => MIN_HEIGHT,
      serialize: false,
    });
    widget.serialize = false;
    widget.options = { ...(widget.options || {}), serialize: false };
  }
  widget.value = text;
  if (widget.element) widget.element.value = text;
  node.setDirtyCanvas?.(true, true);
}

function trainerNode(nodeId) {
  const node = app.graph?.getNodeById?.(Number(nodeId)) ?? app.graph?.getNodeById?.(nodeId);
  return node && TRAINERS.has(node.comfyClass ?? node.type) ? node : null;
}

app.registerExtension({
  name: "FDFO.TrainerSummary",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TRAINERS.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const result = onExecuted?.apply(this, arguments);
      const text = output?.text;
      if (Array.isArray(text) && text.length) showSummary(this, text.join("\n"));
      else if (typeof text === "string" && text) showSummary(this, text);
      return result;
    };
  },
  setup() {
    // The Trainer runs again: its live progress text takes the summary's place.
    api.addEventListener("progress_text", (event) => {
      const id = event?.detail?.nodeId;
      if (id === undefined || id === null || String(id).includes(":")) return;
      const node = trainerNode(id);
      if (node && removeWidget(node, SUMMARY)) node.setDirtyCanvas?.(true, true);
    });
  },
});
