// The request form, generated from one model's `parameters` schema (GET /v1/models): a control
// per field with its default and bounds, the LoRA picker (GET /v1/loras), image and mask uploads
// (POST /v1/files) and the priority class. `values()` gives the request body: the prompt and
// every field whose value differs from the model's default.

const LABELS = {
  negative_prompt: "Negative prompt",
  width: "Width",
  height: "Height",
  num_inference_steps: "Steps",
  guidance_scale: "Guidance scale",
  num_images: "Images",
  seed: "Seed",
  scheduler: "Scheduler",
  num_frames: "Frames",
  fps: "Frames per second",
  duration_s: "Duration (s)",
  image: "Input image",
  mask_image: "Mask (white = repaint)",
  strength: "Strength",
  loras: "LoRA adapters",
  output_format: "Output format",
  output_quality: "Quality (jpeg/webp)",
  priority: "Priority class",
};

// Fields the form does not show: the prompt has its own box, outputs are fetched as files.
const HIDDEN = new Set(["prompt", "return_base64"]);
const UPLOADS = new Set(["image", "mask_image"]);
const GROUPS = [
  ["Generation", ["negative_prompt", "width", "height", "num_inference_steps",
    "guidance_scale", "num_images", "seed", "scheduler", "num_frames", "fps", "duration_s"]],
  ["Input image (image-to-image, inpainting)", ["image", "mask_image", "strength"]],
  ["Adapters", ["loras"]],
  ["Output and queue", ["output_format", "output_quality", "priority"]],
];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export { el };

function label(name) {
  return LABELS[name] ?? name.replaceAll("_", " ");
}

function hint(schema) {
  const parts = [];
  if (schema.minimum !== undefined && schema.maximum !== undefined) {
    parts.push(`${schema.minimum}–${schema.maximum}`);
  }
  if (schema.multipleOf) parts.push(`multiple of ${schema.multipleOf}`);
  if (schema.rule) parts.push(`frames = ${schema.rule}`);
  if (schema.default !== undefined && schema.default !== null) parts.push(`default ${schema.default}`);
  if (schema.maxLength) parts.push(`up to ${schema.maxLength} characters`);
  if (schema.description) parts.push(schema.description);
  return parts.join(", ");
}

/** A field's wrapper: label, control, hint and the element its error goes to. */
function wrap(name, control, help) {
  const id = control.id;
  const err = el("p", {
    class: "field-error", id: `error-${name}`, "data-testid": `error-${name}`,
    role: "alert", hidden: true,
  });
  const helpEl = help ? el("p", { class: "hint", id: `hint-${name}`, text: help }) : null;
  const describedBy = [help ? `hint-${name}` : null, `error-${name}`].filter(Boolean).join(" ");
  if (control.matches?.("input, select, textarea")) control.setAttribute("aria-describedby", describedBy);
  const lab = el("label", { for: id, text: label(name) });
  return el("div", { class: "field", "data-field": name }, lab, control, helpEl, err);
}

function numberControl(name, schema) {
  const integer = schema.type === "integer";
  return el("input", {
    id: `f-${name}`, name, type: "number", inputmode: integer ? "numeric" : "decimal",
    "data-testid": `field-${name}`,
    min: schema.minimum, max: schema.maximum,
    step: schema.multipleOf ?? (integer ? 1 : "any"),
    value: schema.default ?? undefined,
    placeholder: name === "seed" ? "random" : undefined,
  });
}

function selectControl(name, options, selected) {
  const select = el("select", { id: `f-${name}`, name, "data-testid": `field-${name}` });
  for (const [value, text] of options) {
    const option = el("option", { value, text });
    if (value === selected) option.selected = true;
    select.append(option);
  }
  return select;
}

export class RequestForm {
  /**
   * @param container the element the fields go in
   * @param model one entry of GET /v1/models
   * @param adapters the adapters of GET /v1/loras
   * @param upload async (File) => upload body of POST /v1/files
   */
  constructor(container, model, adapters, upload) {
    this.container = container;
    this.errors = new FieldErrors(container.closest("form") ?? document);
    this.model = model;
    this.upload = upload;
    this.schema = { ...model.parameters };
    this.schema.priority = {
      type: "string", enum: ["", "interactive", "batch"], default: "",
      description: `empty: the model's default (${model.priority_class}) or your tenant's`,
    };
    this.controls = new Map(); // name -> () => value | undefined
    this.uploads = new Map(); // name -> {id, pending}
    this.adapters = adapters.filter((a) => a.base_model === model.id);
    this.render();
  }

  render() {
    this.container.replaceChildren();
    const names = Object.keys(this.schema).filter((n) => !HIDDEN.has(n));
    const placed = new Set();
    for (const [title, members] of GROUPS) {
      const present = members.filter((n) => names.includes(n));
      if (!present.length) continue;
      const fieldset = el("fieldset", { class: "group" }, el("legend", { text: title }));
      for (const name of present) {
        fieldset.append(this.field(name, this.schema[name]));
        placed.add(name);
      }
      this.container.append(fieldset);
    }
    const rest = names.filter((n) => !placed.has(n));
    if (rest.length) {
      const fieldset = el("fieldset", { class: "group" }, el("legend", { text: "More" }));
      for (const name of rest) fieldset.append(this.field(name, this.schema[name]));
      this.container.append(fieldset);
    }
  }

  field(name, schema) {
    if (UPLOADS.has(name)) return this.uploadField(name, schema);
    if (name === "loras") return this.loraField(schema);
    if (Array.isArray(schema.enum)) {
      const options = schema.enum.map((v) => [String(v), v === "" ? "default" : String(v)]);
      const control = selectControl(name, options, String(schema.default ?? schema.enum[0]));
      this.controls.set(name, () => (control.value === String(schema.default ?? "") ? undefined
        : control.value));
      return wrap(name, control, schema.description ?? (schema.default ? `default ${schema.default}` : ""));
    }
    if (schema.type === "integer" || schema.type === "number") {
      const control = numberControl(name, schema);
      this.controls.set(name, () => {
        if (control.value.trim() === "") return undefined;
        const value = Number(control.value);
        return value === schema.default ? undefined : value;
      });
      return wrap(name, control, hint(schema));
    }
    if (schema.type === "boolean") {
      const control = el("input", { id: `f-${name}`, name, type: "checkbox", "data-testid": `field-${name}` });
      control.checked = Boolean(schema.default);
      this.controls.set(name, () => (control.checked === Boolean(schema.default) ? undefined
        : control.checked));
      return wrap(name, control, schema.description ?? "");
    }
    const multiline = name.endsWith("prompt");
    const control = el(multiline ? "textarea" : "input", {
      id: `f-${name}`, name, "data-testid": `field-${name}`, rows: multiline ? 2 : undefined,
      type: multiline ? undefined : "text", maxlength: schema.maxLength,
    });
    this.controls.set(name, () => (control.value.trim() === "" ? undefined : control.value));
    return wrap(name, control, hint(schema));
  }

  uploadField(name, schema) {
    const control = el("input", {
      id: `f-${name}`, name, type: "file", accept: "image/png,image/jpeg,image/webp",
      "data-testid": `field-${name}`,
    });
    const status = el("p", { class: "hint upload-status", "data-testid": `upload-${name}`, "aria-live": "polite" });
    const thumb = el("img", { class: "thumb", alt: `${label(name)} preview`, hidden: true });
    const clear = el("button", { type: "button", class: "small", text: "Remove", hidden: true });
    const reset = () => {
      this.uploads.delete(name);
      control.value = "";
      status.textContent = "";
      thumb.hidden = true;
      clear.hidden = true;
    };
    clear.addEventListener("click", reset);
    control.addEventListener("change", () => {
      const file = control.files?.[0];
      this.errors.clearError(name);
      if (!file) return reset();
      thumb.src = URL.createObjectURL(file);
      thumb.hidden = false;
      clear.hidden = false;
      status.textContent = `uploading ${file.name}…`;
      const entry = { id: null, pending: null };
      entry.pending = this.upload(file).then(
        (body) => {
          entry.id = body.id;
          status.textContent = `uploaded: ${body.width}×${body.height}, id ${body.id}`;
        },
        (err) => {
          this.uploads.delete(name);
          status.textContent = "";
          this.errors.showError(name, err.message);
          throw err;
        },
      );
      this.uploads.set(name, entry);
    });
    this.controls.set(name, () => this.uploads.get(name)?.id ?? undefined);
    const box = el("div", { class: "upload" }, control, clear);
    const field = wrap(name, box, schema.description ?? "");
    field.querySelector("label").setAttribute("for", control.id);
    control.setAttribute("aria-describedby", `hint-${name} error-${name}`);
    field.append(status, thumb);
    return field;
  }

  loraField(schema) {
    const scale = schema.items?.scale ?? {};
    const box = el("div", { class: "loras", id: "f-loras", "data-testid": "field-loras", role: "group" });
    const rows = [];
    if (!this.adapters.length) {
      box.append(el("p", { class: "hint", text: "No adapters for this model (admins add them with POST /v1/admin/loras)." }));
    }
    for (const adapter of this.adapters) {
      const check = el("input", { type: "checkbox", id: `lora-${adapter.id}`, value: adapter.id,
        "data-testid": `lora-${adapter.id}` });
      const weight = el("input", {
        type: "number", id: `lora-scale-${adapter.id}`, min: scale.minimum, max: scale.maximum,
        step: "any", value: scale.default ?? 1, "aria-label": `${adapter.id} scale`,
        "data-testid": `lora-scale-${adapter.id}`,
      });
      rows.push([check, weight, adapter]);
      box.append(el("div", { class: "lora" },
        check, el("label", { for: check.id, text: adapter.id, title: adapter.description ?? "" }),
        weight));
    }
    this.controls.set("loras", () => {
      const chosen = rows.filter(([c]) => c.checked).map(([, w, a]) => {
        const value = w.value.trim() === "" ? undefined : Number(w.value);
        return value === undefined || value === scale.default ? { id: a.id } : { id: a.id, scale: value };
      });
      return chosen.length ? chosen : undefined;
    });
    const help = `up to ${schema.maxItems ?? "?"}; scale ${scale.minimum ?? ""}–${scale.maximum ?? ""}`;
    const field = wrap("loras", box, help);
    field.querySelector("label").removeAttribute("for");
    field.querySelector("label").id = "label-loras";
    box.setAttribute("aria-labelledby", "label-loras");
    return field;
  }

  /** Waits for uploads still running; throws the first upload error. */
  async ready() {
    await Promise.all([...this.uploads.values()].map((u) => u.pending));
  }

  values() {
    const out = {};
    for (const [name, get] of this.controls) {
      const value = get();
      if (value !== undefined && value !== "") out[name] = value;
    }
    return out;
  }
}

/** Errors next to the fields they name: any `.field[data-field=NAME]` under `root`, with its
 * `.field-error` element (the page's key, model and prompt, and the generated fields). */
export class FieldErrors {
  constructor(root) {
    this.root = root;
  }

  /** The field a 4xx body names, or null: "loras.0.scale" -> loras, priority_class -> priority. */
  fieldFor(name) {
    const head = String(name).split(".")[0];
    const alias = { priority_class: "priority", model_id: "model" }[head] ?? head;
    return this.root.querySelector(`.field[data-field="${CSS.escape(alias)}"]`) ? alias : null;
  }

  showError(name, message) {
    const field = this.root.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
    if (!field) return false;
    const err = field.querySelector(".field-error");
    err.textContent = err.hidden ? message : `${err.textContent}; ${message}`;
    err.hidden = false;
    field.classList.add("invalid");
    field.querySelector("input, select, textarea")?.setAttribute("aria-invalid", "true");
    return true;
  }

  clearError(name) {
    const field = this.root.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
    if (!field) return;
    const err = field.querySelector(".field-error");
    err.hidden = true;
    err.textContent = "";
    field.classList.remove("invalid");
    field.querySelector("[aria-invalid]")?.removeAttribute("aria-invalid");
  }

  clearErrors() {
    for (const field of this.root.querySelectorAll(".field.invalid")) {
      this.clearError(field.dataset.field);
    }
  }
}
