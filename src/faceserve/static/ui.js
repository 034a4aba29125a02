// Small DOM helpers shared by the views: building elements, the notice line, errors in words.

export function $(id) {
  return document.getElementById(id);
}

// el("a", {href: url, class: "photo"}, child, "text"): attributes set as attributes, children appended.
export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined && value !== false) element.setAttribute(name, value);
  }
  element.append(...children);
  return element;
}

// plural(3, "photo") is "3 photos", plural(1, "photo") "1 photo"
export function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

export function showNotice(message) {
  const notice = $("notice");
  notice.textContent = message;
  notice.hidden = !message;
}

const FRIENDLY = {
  unauthorized:
    "This needs an access key, the password this service gives out: guests find theirs inside their guest " +
    "link, organisers sign in with the setup link the service printed when it first started.",
  forbidden: "Your access key does not allow this.",
  rate_limited: "Too many requests for now: wait a moment and try again.",
};

// An ApiError as a sentence for people: ours for the common cases, else the service's own message.
export function describeError(error) {
  if (error && error.status === 0) return "The service could not be reached. Check the connection and try again.";
  const friendly = error && FRIENDLY[error.code];
  if (friendly) return friendly;
  return (error && error.message) || String(error);
}
