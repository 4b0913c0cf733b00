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

  var TRACE_HEADER = "X-Trace-Id";

  function isComposer(elt) { return elt instanceof HTMLFormElement && elt.classList.contains("composer"); }

  // A message shows at once as queued (the runner takes a chat's turns one at a time); it
  // gives way to the real turn when the stream starts that trace. Text only, never markup.
  function queuedTurn(text) {
    var turn = document.createElement("article");
    turn.className = "turn queued";
    var msg = document.createElement("div");
    msg.className = "msg user";
    var who = document.createElement("div");
    who.className = "who";
    who.textContent = "You ";
    var badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "queued";
    who.appendChild(badge);
    var body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    msg.appendChild(who);
    msg.appendChild(body);
    turn.appendChild(msg);
    return turn;
  }

  // Drop the queued copies whose turn the stream has already rendered.
  function settleQueued() {
    document.querySelectorAll(".turn.queued[data-trace]:not([id])").forEach(function (turn) {
      if (document.getElementById("turn-" + turn.dataset.trace)) turn.remove();
    });
  }

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

  document.addEventListener("htmx:beforeRequest", function (evt) {
    var form = evt.detail.elt;
    var list = messages();
    if (!isComposer(form) || !list) return;
    var turn = queuedTurn(form.elements.message.value);
    evt.detail.xhr.queuedTurn = turn;
    list.appendChild(turn);
    scrollDown(list);
  });

  // Clear the box once the server accepted the message; keep it on errors.
  document.addEventListener("htmx:afterRequest", function (evt) {
    var form = evt.detail.elt;
    if (!isComposer(form)) return;
    var xhr = evt.detail.xhr;
    var queued = xhr && xhr.queuedTurn;
    var trace = evt.detail.successful ? xhr.getResponseHeader(TRACE_HEADER) : null;
    if (queued && trace) {
      queued.dataset.trace = trace;
      settleQueued();  // the stream may have started the turn before this answer came
    } else if (queued) {
      queued.remove();  // not accepted: the message stays in the box
    }
    if (!evt.detail.successful) return;
    form.reset();
    var box = form.querySelector("textarea");
    if (box) box.focus();
  });

  document.addEventListener("htmx:sendError", function () {
    var box = document.getElementById("form-error");
    if (box) box.textContent = "Could not reach the server; your message was not sent.";
  });

  // Messages sent from this tab whose POST has not answered yet: a sync (which swaps the
  // whole conversation in) must not lose them.
  var unsent = [];

  // Follow the stream: keep the newest text in view unless the reader scrolled up.
  document.addEventListener("htmx:sseBeforeMessage", function (evt) {
    var list = messages();
    if (list) list.dataset.follow = nearBottom(list) ? "1" : "";
    if (evt.detail.type === "turn-sync") {
      unsent = Array.prototype.slice.call(document.querySelectorAll(".turn.queued:not([id])"));
    }
  });
  document.addEventListener("htmx:sseMessage", function (evt) {
    var type = evt.detail.type;
    if (type === "turn-sync") {
      var synced = messages();
      if (synced) unsent.forEach(function (turn) { synced.appendChild(turn); });
      unsent = [];
    }
    if (type === "turn-sync" || type === "turn-queued" || type === "turn-start") settleQueued();
    if (type === "turn-start") {
      var warming = document.getElementById("warming");
      if (warming) warming.remove();  // a turn started: the model has loaded
    }
    var list = messages();
    if (list && list.dataset.follow) scrollDown(list);
  });

  // Narrow screens: the header's toggles open one panel (chats or drawer) at a time.
  document.addEventListener("click", function (evt) {
    var button = evt.target instanceof Element ? evt.target.closest(".panel-toggle") : null;
    var layout = document.querySelector(".layout");
    if (!button || !layout) return;
    var open = button.getAttribute("aria-expanded") !== "true";
    document.querySelectorAll(".panel-toggle").forEach(function (other) {
      other.setAttribute("aria-expanded", String(open && other === button));
    });
    layout.dataset.panel = open ? button.dataset.panel : "";
  });

  // Every (re)connect starts with a turn-sync frame (the conversation, the drawer and the
  // chat list as the log has them), so a tab that was away catches up by itself. A tab
  // that fell too far behind gets `resync`, then the stream ends and reconnects.
  document.addEventListener("htmx:sseOpen", function () {
    setLive("open", "live");
  });
  document.addEventListener("htmx:sseError", function () {
    setLive("broken", "reconnecting…");
  });
})();
