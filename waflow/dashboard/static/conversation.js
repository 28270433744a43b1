// A conversation page: its fragments follow the change log (static/live.js), the draft's words stay read-only
// until the lawyer presses Edit, starting to edit or to write takes the conversation, and the page tells the
// server every so often whether its lawyer is viewing or editing. Keys: a approve, e edit, r reject.
(function () {
  "use strict";

  var page = document.getElementById("conversation");
  if (!page) {
    return;
  }
  var conversationId = Number(page.getAttribute("data-id"));
  var heartbeat = (Number(page.getAttribute("data-heartbeat")) || 20) * 1000;
  var takenBy = null; // the panel (draft id) for which the conversation was taken already

  function panel() {
    return document.getElementById("draft");
  }

  function editing() {
    var p = panel();
    return Boolean(p && p.classList.contains("editing"));
  }

  function post(url, values, target, swap) {
    if (!window.htmx) {
      return;
    }
    window.htmx.ajax("POST", url, {source: page, values: values || {}, target: target || page, swap: swap || "none"});
  }

  // Starting to edit or to write takes the conversation (once per draft shown), and says "editing".
  function take() {
    var p = panel();
    var key = p ? p.getAttribute("data-draft") || "none" : "none";
    if (takenBy === key) {
      return;
    }
    takenBy = key;
    post(page.getAttribute("data-take"), {}, "#people", "outerHTML");
  }

  function lock() {
    var text = document.getElementById("draft-text");
    if (text && text.hasAttribute("data-lock") && !editing()) {
      text.readOnly = true;
    }
  }

  function edit() {
    var text = document.getElementById("draft-text");
    if (!text) {
      return false;
    }
    panel().classList.add("editing");
    text.readOnly = false;
    text.focus();
    text.setSelectionRange(text.value.length, text.value.length);
    take();
    return true;
  }

  function thread() {
    var list = document.getElementById("messages");
    return list && list.closest(".thread");
  }

  function scrollThread() {
    var box = thread();
    if (box) {
      box.scrollTop = box.scrollHeight;
    }
  }

  // A refresh of the messages keeps the lawyer where they were reading, unless they were at the newest.
  var atNewest = true;
  document.body.addEventListener("htmx:beforeSwap", function (event) {
    var box = thread();
    if (box && event.detail.target && event.detail.target.id === "messages") {
      atNewest = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
    }
  });

  document.addEventListener("click", function (event) {
    if (event.target instanceof Element && event.target.closest("#edit")) {
      event.preventDefault();
      edit();
    }
  });

  document.addEventListener("focusin", function (event) {
    if (event.target instanceof Element && event.target.id === "reply-text") {
      take();
    }
  });

  // What the change log says about this conversation: refresh what it changed. A draft that changes while the
  // lawyer edits it is not replaced under their hands: the panel comes back saying what happened, with their
  // words kept to send by hand.
  document.addEventListener("waflow:changes", function (event) {
    var messages = false;
    var draft = false;
    var people = false;
    event.detail.forEach(function (change) {
      if (change.conversation_id !== conversationId) {
        return;
      }
      if (change.kind === "message.new" || change.kind === "delivery.tick") {
        messages = true;
      } else if (change.kind.indexOf("draft.") === 0 || change.kind === "reply.written") {
        draft = true;
      } else if (change.kind === "conversation.assigned" || change.kind === "presence") {
        people = true;
      }
    });
    var list = document.getElementById("messages");
    if (messages && list && list.getAttribute("data-newest") === "true") {
      window.waflowRefresh(list);
    }
    var p = panel();
    if (draft && p) {
      var was = p.getAttribute("data-draft");
      var text = document.getElementById("draft-text");
      if (editing() && text && text.value !== text.getAttribute("data-original")) {
        post(p.getAttribute("hx-get"), {was: was, text: text.value}, "#draft", "outerHTML");
      } else {
        window.waflowRefresh(p); // its hx-vals carry the draft it showed ("was"): the panel says what became of it
      }
    }
    if (people) {
      window.waflowRefresh(document.getElementById("people"));
    }
  });

  document.body.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail.target;
    if (target && target.id === "messages" && atNewest) {
      scrollThread();
    }
    lock();
  });
  // After an action (approve, reject...), the panel's answer asks for the messages as they stand now.
  document.body.addEventListener("waflow:messages", function () {
    window.waflowRefresh(document.getElementById("messages"));
  });

  // The window's time left and the wait move on by themselves: their line is fetched again every minute.
  setInterval(function () {
    if (document.visibilityState === "visible") {
      window.waflowRefresh(document.getElementById("people"));
    }
  }, 60000);

  setInterval(function () {
    if (document.visibilityState === "visible") {
      var reply = document.getElementById("reply-text");
      var writing = editing() || (reply && reply.value.trim() !== "" && document.activeElement === reply);
      post(page.getAttribute("data-presence"), {state: writing ? "editing" : "viewing"});
    }
  }, heartbeat);

  if (window.waflowKeys) {
    window.waflowKeys.bind("a", function () {
      var button = document.getElementById("approve");
      if (!button) {
        return false;
      }
      button.click();
      return true;
    });
    window.waflowKeys.bind("e", edit);
    window.waflowKeys.bind("r", function () {
      var reject = document.getElementById("reject");
      if (!reject) {
        return false;
      }
      reject.open = true;
      var first = reject.querySelector("input[type=radio]");
      if (first) {
        first.focus();
      }
      return true;
    });
  }

  lock();
  scrollThread();
})();
