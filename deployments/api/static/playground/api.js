// The playground's HTTP client: every call sends the key as a Bearer header; error answers
// become ApiError (status, type, message, fields, retry-after); the SSE stream is read with
// fetch + ReadableStream because EventSource cannot send an Authorization header.

export const ROOT = document.querySelector('meta[name="genmedia-root"]')?.content ?? "";

export class ApiError extends Error {
  constructor(status, type, message, fields = [], retryAfter = null) {
    super(message);
    this.status = status;
    this.type = type;
    this.fields = fields;
    this.retryAfter = retryAfter;
  }
}

/** An ApiError from a non-2xx answer (genmedia's `{"error": {...}}` body, or any other). */
async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const err = body?.error ?? {};
  const retry = response.headers.get("Retry-After");
  return new ApiError(
    response.status,
    typeof err.type === "string" ? err.type : `http_${response.status}`,
    typeof err.message === "string" ? err.message : response.statusText || "request failed",
    Array.isArray(err.fields) ? err.fields : [],
    retry === null ? null : Number(retry),
  );
}

export class Api {
  constructor(key) {
    this.key = key;
  }

  url(path) {
    return path.startsWith("http") ? path : `${ROOT}${path}`;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.key}`, ...extra };
  }

  async call(method, path, { json, body, contentType, signal } = {}) {
    const headers = this.headers({ Accept: "application/json" });
    let payload = body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(json);
    } else if (contentType) {
      headers["Content-Type"] = contentType;
    }
    let response;
    try {
      response = await fetch(this.url(path), { method, headers, body: payload, signal });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "network_error", `the gateway cannot be reached (${e.message})`);
    }
    if (!response.ok) throw await errorOf(response);
    return response.status === 204 ? null : response.json();
  }

  models() {
    return this.call("GET", "/v1/models");
  }

  loras() {
    return this.call("GET", "/v1/loras");
  }

  upload(file) {
    return this.call("POST", "/v1/files", { body: file, contentType: file.type });
  }

  submit(modelId, request) {
    return this.call("POST", `/v1/queue/models/${encodeURIComponent(modelId)}`, {
      json: request,
    });
  }

  status(url) {
    return this.call("GET", url);
  }

  result(url) {
    return this.call("GET", url);
  }

  cancel(url) {
    return this.call("PUT", url);
  }

  /** A stored output as an object URL: outputs on the gateway need the Bearer header, so an
   * <img> or <video> cannot load them by URL. A URL of another origin (a presigned storage
   * URL) is used as it is. */
  async objectUrl(url) {
    const target = new URL(url, location.href);
    if (target.origin !== location.origin) return url;
    const response = await fetch(target, { headers: this.headers() });
    if (!response.ok) throw await errorOf(response);
    return URL.createObjectURL(await response.blob());
  }

  /** Server-sent events of a job: yields {event, data} until the server ends the stream. */
  async *stream(url, signal) {
    let response;
    try {
      response = await fetch(this.url(url), {
        headers: this.headers({ Accept: "text/event-stream" }),
        cache: "no-store",
        signal,
      });
    } catch (e) {
      if (e.name === "AbortError") return;
      throw new ApiError(0, "network_error", `the stream broke (${e.message})`);
    }
    if (!response.ok) throw await errorOf(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = (buffer + value).replace(/\r\n?/g, "\n");
        let end = buffer.indexOf("\n\n");
        while (end >= 0) {
          const event = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (event) yield event;
          end = buffer.indexOf("\n\n");
        }
      }
    } catch (e) {
      if (e.name !== "AbortError") throw e;
    } finally {
      reader.cancel().catch(() => {});
    }
  }
}

/** One SSE block ("event: x" and "data: ..." lines) as {event, data}; null without data. */
export function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (name === "event") event = value;
    else if (name === "data") data.push(value);
  }
  if (!data.length) return null;
  try {
    return { event, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}
