// The chat's tree of turns in the page: regenerate, edit, rewind (with its dry run and an
// undo), choose a sibling, stop. Each action posts to the JSON API; the page re-renders from
// its stream, whose `turn-tree` event carries the conversation as it stands after any move
// (from this tab or another). Model and user text only ever goes in as textContent.
(function () {
  "use strict";

  function chatId() {
    var stream = document.getElementById("stream");
    var url = stream ? stream.getAttribute("sse-connect") || "" : "";
    var match = /^\/chats\/([^/]+)\/stream$/.exec(url);
    return match ? match[1] : null;
  }

  function api(path) { return "/persona/chats/" + encodeURIComponent(chatId()) + path; }

  function showError(text) {
    var box = document.getElementById("form-error");
    if (box) box.textContent = text;
  }

  // POST JSON; resolve with the parsed answer, or null after showing a refusal (4xx). A 5xx
  // is the turn's own failure, which the stream shows on the turn itself.
  function post(path, body) {
    showError("");
    return fetch(api(path), {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body || {}),
      credentials: "same-origin",
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (response.ok) return data;
        if (response.status < 500) showError(data.error || "refused (" + response.status + ")");
        return null;
      });
    }, function () {
      showError("Could not reach the server.");
      return null;
    });
  }

  function turnOf(elt) {
    var holder = elt.closest("[data-turn]");
    return holder ? holder.dataset.turn : null;
  }

  // ---- streaming: Send disabled and Stop shown while a reply of this chat waits or streams.

  function updateBusy() {
    var list = document.getElementById("messages");
    var composer = document.querySelector("form.composer");
    if (!list || !composer) return;
    var streaming = list.querySelector(".msg.assistant[data-status=started]") !== null;
    // Waiting: a turn the server queued (its reply not begun), or a message of this tab
    // not yet answered. The turn's article keeps its `queued` class after a failure, so
    // the reply's own status decides.
    var waiting = ".msg.assistant[data-status=queued], .turn.queued:not([id])";
    var busy = streaming || list.querySelector(waiting) !== null;
    var send = composer.querySelector("button[type=submit]");
    var stop = composer.querySelector("button.stop");
    if (send) send.disabled = busy;
    if (stop) stop.hidden = !streaming;
    composer.dataset.busy = busy ? "1" : "";
  }

  document.addEventListener("DOMContentLoaded", updateBusy);
  document.addEventListener("htmx:sseMessage", function (evt) {
    if (evt.detail.type === "turn-start") {
      var undo = document.querySelector(".undo-bar");
      if (undo) undo.remove();  // a new turn is a move: the rewind can no longer be undone
    }
    updateBusy();
  });
  // htmx re-enables the Send button when its request ends; the stream may still be busy.
  document.addEventListener("htmx:afterRequest", updateBusy);

  // ---- the rewind dialog: the dry run's impact, then the move on confirm.

  function plural(n, one, many) { return n + " " + (n === 1 ? one : many); }

  function describe(impact) {
    var parts = [
      plural(impact.turns_leaving.length, "turn", "turns"),
      plural(impact.memories_leaving.length, "memory", "memories"),
      plural(impact.edges.length, "relationship change", "relationship changes"),
    ];
    var text = parts.join(", ") + " leave the active path.";
    if (impact.identity_changes) text += " The persona's identity state changes back.";
    return text;
  }

  function details(impact) {
    var lines = impact.turns_leaving.map(function (t) { return "turn: " + t.user_message; });
    impact.memories_leaving.forEach(function (m) { lines.push("memory: " + m.content); });
    var before = impact.state_before || {}, after = impact.state_after || {};
    if (before.dialogue_state !== after.dialogue_state) {
      lines.push("dialogue state: " + (before.dialogue_state || "none") + " → "
        + (after.dialogue_state || "none"));
    }
    return lines;
  }

  var rewindTarget = null;

  // turnId null: the root (every turn leaves the path).
  function askRewind(turnId) {
    post("/rewind", { turn_id: turnId, dry_run: true }).then(function (move) {
      var dialog = document.getElementById("rewind-dialog");
      if (!move || !dialog) return;
      rewindTarget = { turn_id: turnId };
      dialog.querySelector("#rewind-title").textContent =
        turnId ? "Rewind here?" : "Rewind to the start?";
      dialog.querySelector(".rewind-impact").textContent = describe(move.impact);
      var list = dialog.querySelector(".rewind-details");
      list.replaceChildren();
      details(move.impact).forEach(function (line) {
        var item = document.createElement("li");
        item.textContent = line;
        list.appendChild(item);
      });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  document.addEventListener("close", function (evt) {
    var dialog = evt.target;
    if (!(dialog instanceof HTMLDialogElement) || dialog.id !== "rewind-dialog") return;
    var target = rewindTarget;
    rewindTarget = null;
    if (dialog.returnValue === "confirm" && target) post("/rewind", { turn_id: target.turn_id });
  }, true);  // `close` does not bubble: listen while it is captured

  // ---- the actions of each turn.

  function editForm(elt) {
    var article = elt.closest("article.turn");
    return article ? article.querySelector("form.edit-form") : null;
  }

  document.addEventListener("click", function (evt) {
    var button = evt.target instanceof Element ? evt.target.closest("[data-tree-action]") : null;
    if (!button || button.tagName !== "BUTTON" || button.disabled) return;
    var action = button.dataset.treeAction;
    var turnId = turnOf(button);
    if (action === "stop") {
      post("/stop");
    } else if (action === "undo") {
      post("/rewind/undo");
    } else if (action === "branch" && button.dataset.target) {
      post("/branch", { turn_id: button.dataset.target });
    } else if (action === "regenerate" && turnId) {
      post("/turns/" + encodeURIComponent(turnId) + "/regenerate");
    } else if (action === "rewind" && turnId) {
      askRewind(turnId);
    } else if (action === "rewind-start") {
      askRewind(null);
    } else if (action === "edit") {
      var form = editForm(button);
      if (!form) return;
      form.hidden = false;
      var box = form.querySelector("textarea");
      box.focus();
      box.setSelectionRange(box.value.length, box.value.length);
    } else if (action === "cancel-edit") {
      var open = editForm(button);
      if (open) { open.reset(); open.hidden = true; }
    }
  });

  // A move from another tab re-renders the conversation: an edit box open here keeps its
  // text (and focus) when its turn is still shown.
  var openEdits = null;
  document.addEventListener("htmx:sseBeforeMessage", function () {
    openEdits = [];
    document.querySelectorAll("#messages form.edit-form:not([hidden])").forEach(function (form) {
      var box = form.querySelector("textarea");
      openEdits.push({
        form: form, turn: turnOf(form), text: box.value,
        focused: document.activeElement === box,
      });
    });
  });
  document.addEventListener("htmx:sseMessage", function () {
    var kept = openEdits || [];
    openEdits = null;
    kept.forEach(function (edit) {
      var holder = edit.turn && document.querySelector(
        '#messages [data-turn="' + CSS.escape(edit.turn) + '"] form.edit-form');
      // Gone with its turn, or not re-rendered (a delta): nothing to restore, and the
      // caret stays where the user left it.
      if (!holder || holder === edit.form) return;
      var box = holder.querySelector("textarea");
      holder.hidden = false;
      box.value = edit.text;
      if (edit.focused) box.focus();
    });
  });

  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    if (!(form instanceof HTMLFormElement) || form.dataset.treeAction !== "save-edit") return;
    evt.preventDefault();
    var turnId = turnOf(form);
    var message = form.elements.edited.value;
    if (!turnId || !message.trim()) return;
    form.hidden = true;
    post("/turns/" + encodeURIComponent(turnId) + "/edit", { message: message });
  });
})();
