// "Copy as": the same request as curl (queue API), Python (httpx) and the official `openai`
// package (images routes). The key is never written into a snippet: they read
// $GENMEDIA_API_KEY.

const KEY_NOTE = "# export GENMEDIA_API_KEY=gm_...  (your key)";

function shellQuote(text) {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

/** A JSON value as a Python literal. */
export function pyLiteral(value, indent = 0) {
  const pad = " ".repeat(indent + 4);
  const end = " ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => pad + pyLiteral(v, indent + 4)).join(",\n")},\n${end}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  const body = entries.map(([k, v]) => `${pad}${JSON.stringify(k)}: ${pyLiteral(v, indent + 4)}`);
  return `{\n${body.join(",\n")},\n${end}}`;
}

export function curl(origin, modelId, request) {
  const body = JSON.stringify(request);
  return [
    KEY_NOTE,
    `curl -sS -X POST "${origin}/v1/queue/models/${modelId}" \\`,
    '  -H "Authorization: Bearer $GENMEDIA_API_KEY" \\',
    '  -H "Content-Type: application/json" \\',
    `  -d ${shellQuote(body)}`,
    "# then GET the answer's status_url (or stream_url) and result_url with the same header",
  ].join("\n");
}

export function python(origin, modelId, request) {
  return `import os
import time

import httpx

${KEY_NOTE}
client = httpx.Client(
    base_url=${JSON.stringify(origin)},
    headers={"Authorization": f"Bearer {os.environ['GENMEDIA_API_KEY']}"},
    timeout=60,
)
request = ${pyLiteral(request)}
job = client.post(${JSON.stringify(`/v1/queue/models/${modelId}`)}, json=request)
job.raise_for_status()
urls = job.json()
while client.get(urls["status_url"]).json()["status"] in ("IN_QUEUE", "IN_PROGRESS"):
    time.sleep(0.5)
result = client.get(urls["result_url"]).json()
for output in result.get("outputs", []):
    name = output["path"].rsplit("/", 1)[-1]
    with open(name, "wb") as f:
        f.write(client.get(output["url"]).content)
    print(name, output["seed"])
`;
}

// genmedia's fields the OpenAI routes take as extensions (extra_body).
const EXTRA = ["negative_prompt", "seed", "num_inference_steps", "guidance_scale", "scheduler",
  "priority"];

export function openai(origin, model, request) {
  if (!["text-to-image", "image-to-image", "inpainting"].includes(model.task)) {
    return `# The OpenAI images API covers image models; ${model.id} is ${model.task}.\n` +
      "# Use the curl or Python snippet (the queue API) for it.";
  }
  const edit = request.image !== undefined;
  const args = [`model=${JSON.stringify(model.id)}`, `prompt=${JSON.stringify(request.prompt)}`];
  if (edit) {
    args.push('image=open("image.png", "rb")');
    if (request.mask_image !== undefined) args.push('mask=open("mask.png", "rb")');
  }
  if (request.num_images !== undefined) args.push(`n=${request.num_images}`);
  if (request.width !== undefined || request.height !== undefined) {
    const w = request.width ?? model.parameters.width?.default;
    const h = request.height ?? model.parameters.height?.default;
    args.push(`size="${w}x${h}"`);
  }
  if (request.output_format !== undefined) args.push(`output_format="${request.output_format}"`);
  args.push('response_format="b64_json"');
  const extra = {};
  for (const name of [...EXTRA, edit ? "strength" : "loras"]) {
    if (request[name] !== undefined) extra[name] = request[name];
  }
  if (Object.keys(extra).length) args.push(`extra_body=${pyLiteral(extra, 4)}`);
  const left = Object.keys(request).filter((k) => !["prompt", "image", "mask_image",
    "num_images", "width", "height", "output_format", ...EXTRA, "strength", "loras"].includes(k));
  const note = left.length ? `# not on the OpenAI routes: ${left.join(", ")}\n` : "";
  return `import base64
import os

from openai import OpenAI

${KEY_NOTE}
${edit ? "# image.png / mask.png: your local copies of the uploaded input and mask\n" : ""}${note}client = OpenAI(base_url=${JSON.stringify(`${origin}/v1`)}, api_key=os.environ["GENMEDIA_API_KEY"])
result = client.images.${edit ? "edit" : "generate"}(
    ${args.join(",\n    ")},
)
for i, image in enumerate(result.data):
    with open(f"image-{i}.png", "wb") as f:
        f.write(base64.b64decode(image.b64_json))
`;
}
