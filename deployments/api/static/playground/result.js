// A completed job shown by kind: <img>, <video> or <audio> per output (fetched with the Bearer
// header as blobs, shown through object URLs), a download link each, and the job's seed,
// resolved parameters and timings.

import { el } from "./form.js";

let objectUrls = [];

/** Frees the object URLs of the result shown before. */
export function revokeAll() {
  for (const url of objectUrls) if (url.startsWith("blob:")) URL.revokeObjectURL(url);
  objectUrls = [];
}

function kindOf(contentType) {
  const major = String(contentType).split("/")[0];
  return ["image", "video", "audio"].includes(major) ? major : "file";
}

function table(caption, rows) {
  const body = rows
    .filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => el("tr", {}, el("th", { scope: "row", text: k }),
      el("td", { text: typeof v === "object" ? JSON.stringify(v) : String(v) })));
  return el("table", { class: "facts" }, el("caption", { text: caption }), el("tbody", {}, ...body));
}

function seconds(value) {
  return typeof value === "number" ? `${value.toFixed(value < 1 ? 3 : 2)} s` : value;
}

async function media(output, index, api) {
  const kind = kindOf(output.content_type);
  const name = output.path?.split("/").pop() ?? `output-${index}`;
  const figure = el("figure", { class: `output ${kind}`, "data-kind": kind });
  let src;
  try {
    src = await api.objectUrl(output.url);
  } catch (err) {
    figure.append(el("p", { class: "field-error", text: `${name}: ${err.message}` }));
    return figure;
  }
  objectUrls.push(src);
  const label = `output ${index + 1}, seed ${output.seed}`;
  let node;
  if (kind === "image") {
    node = el("img", { src, alt: label, width: output.width || undefined,
      height: output.height || undefined });
  } else if (kind === "video") {
    node = el("video", { src, controls: true, loop: true, muted: true, playsinline: true,
      preload: "auto", "aria-label": label });
  } else if (kind === "audio") {
    node = el("audio", { src, controls: true, preload: "auto", "aria-label": label });
  } else {
    node = el("p", { text: name });
  }
  const facts = [`seed ${output.seed}`];
  if (output.width) facts.push(`${output.width}×${output.height}`);
  if (output.num_frames) facts.push(`${output.num_frames} frames @ ${output.fps} fps`);
  if (output.duration_s) facts.push(`${output.duration_s} s`);
  if (output.sample_rate) facts.push(`${output.sample_rate} Hz, ${output.channels} ch`);
  figure.append(node, el("figcaption", {},
    `${facts.join(" · ")} · `, el("a", { href: src, download: name, text: `download ${name}` })));
  return figure;
}

export async function renderResult(container, result, api) {
  const outputs = result.outputs ?? result.images ?? [];
  const kinds = new Set(outputs.map((o) => kindOf(o.content_type)));
  const figures = await Promise.all(outputs.map((o, i) => media(o, i, api)));
  const t = result.timings ?? {};
  const p = result.parameters ?? {};
  container.replaceChildren(
    el("h3", { text: `Result · ${result.model} · ${result.task ?? p.task ?? ""}` }),
    el("div", { class: "outputs" }, ...figures),
    el("div", { class: "facts-row" },
      table("Job", [
        ["request id", result.request_id],
        ["seed", result.seed],
        ["priority", result.priority],
        ["batch", result.batch ? `${result.batch.requests} job(s), ${result.batch.images} output(s)` : null],
        ["device", result.device],
      ]),
      table("Parameters", Object.entries(p).filter(([k]) => k !== "model_id")),
      table("Timings", Object.entries(t).map(([k, v]) => [k.replace(/_s$/, ""), seconds(v)])),
    ),
  );
  container.dataset.kind = [...kinds].join(" ");
  container.dataset.requestId = result.request_id;
}
