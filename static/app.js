// The little the chat page needs that htmx attributes cannot say.
(function () {
  "use strict";

  function messages() { return document.getElementById("messages"); }

  function nearBottom(el) { return el.scrollHeight - el.scrollTop - el.clientHeight < 120; }

  function scrollDown(el) { el.scrollTop = el.scrollHeight; }

  function setLive(state, text) {
    var live = document.getElementById("live");
    if (live) { live.dataset.state = state; live.textContent = text; }
  }

  var wasBroken = false;

  document.addEventListener("DOMContentLoaded", function () {
    var list = messages();
    if (list) scrollDown(list);
  });

  // Enter sends; Shift+Enter (or an IME composition) keeps typing.
  document.addEventListener("keydown", function (evt) {
    var box = evt.target;
    if (evt.key !== "Enter" || evt.shiftKey || evt.isComposing) return;
    if (!(box instanceof HTMLTextAreaElement) || !box.form) return;
    evt.preventDefault();
    if (box.value.trim()) box.form.requestSubmit();
  });

  // Clear the box once the server accepted the message; keep it on errors.
  document.addEventListener("htmx:afterRequest", function (evt) {
    var form = evt.detail.elt;
    if (!(form instanceof HTMLFormElement) || !evt.detail.successful) return;
    form.reset();
    var box = form.querySelector("textarea");
    if (box) box.focus();
  });

  document.addEventListener("htmx:sendError", function () {
    var box = document.getElementById("form-error");
    if (box) box.textContent = "Could not reach the server; your message was not sent.";
  });

  // Follow the stream: keep the newest text in view unless the reader scrolled up.
  document.addEventListener("htmx:sseBeforeMessage", function () {
    var list = messages();
    if (list) list.dataset.follow = nearBottom(list) ? "1" : "";
  });
  document.addEventListener("htmx:sseMessage", function () {
    var list = messages();
    if (list && list.dataset.follow) scrollDown(list);
  });

  document.addEventListener("htmx:sseOpen", function () {
    setLive("open", "live");
    if (wasBroken) {
      // Turns may have ended while we were away: reload what the stream missed.
      wasBroken = false;
      htmx.ajax("GET", location.pathname, { target: "#messages", select: "#messages", swap: "outerHTML" });
      htmx.ajax("GET", location.pathname, { target: "#drawer", select: "#drawer", swap: "outerHTML" });
    }
  });
  document.addEventListener("htmx:sseError", function () {
    wasBroken = true;
    setLive("broken", "reconnecting…");
  });
})();
