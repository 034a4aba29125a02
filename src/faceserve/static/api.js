// The service's HTTP API as the page uses it: the access key, JSON calls, uploads with progress, thumbnails.

const KEY_ITEM = "faceserve.key";
export const UNAUTHORIZED_EVENT = "faceserve:unauthorized";

// A key lives in this tab's sessionStorage: it survives a reload, not the tab, and never enters a URL
// that reaches the server (guest links carry it after '#', which browsers do not send). The organiser's
// key from a setup link is kept in this browser (localStorage) until "Forget": it is their sign-in.
export function currentKey() {
  return sessionStorage.getItem(KEY_ITEM) || localStorage.getItem(KEY_ITEM) || "";
}

export function setKey(key, { remember = false } = {}) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
  if (remember && key) localStorage.setItem(KEY_ITEM, key);
  else if (!key) localStorage.removeItem(KEY_ITEM);
}

function authHeaders() {
  const key = currentKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

// The envelope's error, or a plain one when something in between (a proxy) answered without it.
function errorFrom(status, statusText, bodyText, retryAfterHeader) {
  let code = "http_error";
  let message = `${status} ${statusText || "error"}`;
  try {
    const body = JSON.parse(bodyText);
    if (body && body.error) ({ code, message } = body.error);
  } catch {
    // not JSON: keep the status line
  }
  if (status === 0) message = "the service could not be reached";
  const retryAfter = Number.parseInt(retryAfterHeader || "", 10);
  const error = new ApiError(status, code, message, Number.isFinite(retryAfter) ? retryAfter : null);
  if (status === 401) window.dispatchEvent(new CustomEvent(UNAUTHORIZED_EVENT, { detail: error }));
  return error;
}

// One call: `body` is a FormData (multipart) or a plain object (JSON); resolves to the envelope's data.
export async function api(method, path, body) {
  return JSON.parse(await (await send(method, path, body)).text()).data;
}

// A call answered with a file (a QR code's SVG): resolves to its Blob.
export async function apiBlob(method, path, body) {
  return (await send(method, path, body)).blob();
}

async function send(method, path, body) {
  const headers = authHeaders();
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, cache: "no-store" });
  } catch {
    throw errorFrom(0, "", "", null);
  }
  if (!response.ok) {
    const text = await response.text();
    throw errorFrom(response.status, response.statusText, text, response.headers.get("Retry-After"));
  }
  return response;
}

// One file to a session with XMLHttpRequest, the only browser API that reports upload progress.
// onProgress(fraction) while the bytes go; resolves to the stored image, rejects with an ApiError.
export function uploadFile(sessionId, file, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", `/api/face/sessions/${encodeURIComponent(sessionId)}/images`);
    for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    request.upload.onload = () => onProgress(1);
    request.onload = () => {
      if (request.status === 201) {
        resolve(JSON.parse(request.responseText).data.images[0]);
      } else {
        reject(
          errorFrom(request.status, request.statusText, request.responseText, request.getResponseHeader("Retry-After")),
        );
      }
    };
    request.onerror = () => reject(errorFrom(0, "", "", null));
    const form = new FormData();
    form.append("file", file, file.name);
    request.send(form);
  });
}

// An image url as the API gave it (maybe signed: exp, kid, sig) with a width added. The signature covers
// the path only, so the extra parameter keeps it valid; the url is otherwise left exactly as it came.
export function withWidth(url, width) {
  const hashAt = url.indexOf("#");
  const base = hashAt < 0 ? url : url.slice(0, hashAt);
  const fragment = hashAt < 0 ? "" : url.slice(hashAt);
  const separator = !base.includes("?") ? "?" : base.endsWith("?") || base.endsWith("&") ? "" : "&";
  return `${base}${separator}w=${width}${fragment}`;
}

// The service renders only the widths it is configured for (DERIVATIVE_SIZES, put in the page's meta tag).
export function derivativeSizes() {
  const meta = document.querySelector('meta[name="faceserve-derivative-sizes"]');
  try {
    const sizes = JSON.parse(meta.content);
    if (Array.isArray(sizes) && sizes.length) return sizes.map(Number).sort((a, b) => a - b);
  } catch {
    // fall through to none
  }
  return [];
}

// The smallest allowed width at least `wanted` wide, else the largest there is.
export function pickWidth(sizes, wanted) {
  return sizes.find((size) => size >= wanted) ?? sizes[sizes.length - 1];
}

// A long-lived GET read as it arrives (live results: Server-Sent Events). fetch, not EventSource: the key
// goes in the Authorization header as for every call, never in a URL. Resolves to the open Response.
export async function openStream(path, headers, signal) {
  let response;
  try {
    response = await fetch(path, { headers: { ...authHeaders(), ...headers }, cache: "no-store", signal });
  } catch (error) {
    if (signal && signal.aborted) throw error;
    throw errorFrom(0, "", "", null);
  }
  if (!response.ok) {
    const text = await response.text();
    throw errorFrom(response.status, response.statusText, text, response.headers.get("Retry-After"));
  }
  return response;
}
