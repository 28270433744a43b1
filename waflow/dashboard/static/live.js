// Live pages: the element #live (templates/dashboard/_live.html) asks the change log what changed since the
// page's cursor, every 2 s (htmx's "every 2s" trigger) and at once when the page becomes visible again. While
// the page is hidden, the poll is cancelled before it leaves (htmx:beforeRequest), so a background tab costs
// the server nothing. Each answer's changes go to the page's own script as a "waflow:changes" event on
// document (event.detail: the list of {id, kind, conversation_id, draft_id, message_id}).
// No eval anywhere: the page's Content-Security-Policy has no 'unsafe-eval'.
(function () {
  "use strict";

  var live = document.getElementById("live");
  if (!live) {
    return;
  }
  var cursor = Number(live.getAttribute("data-cursor")) || 0;

  function mine(event) {
    return event.detail && event.detail.elt === live;
  }

  document.body.addEventListener("htmx:configRequest", function (event) {
    if (mine(event)) {
      event.detail.parameters.since = cursor;
    }
  });

  document.body.addEventListener("htmx:beforeRequest", function (event) {
    if (mine(event) && document.visibilityState !== "visible") {
      event.preventDefault();
    }
  });

  document.body.addEventListener("htmx:afterRequest", function (event) {
    if (!mine(event) || !event.detail.successful) {
      return;
    }
    var answer;
    try {
      answer = JSON.parse(event.detail.xhr.responseText);
    } catch (error) {
      return;
    }
    if (typeof answer.cursor === "number") {
      cursor = answer.cursor;
      live.setAttribute("data-cursor", String(cursor));
    }
    if (answer.changes && answer.changes.length) {
      document.dispatchEvent(new CustomEvent("waflow:changes", {detail: answer.changes}));
    }
  });

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible" && window.htmx) {
      window.htmx.trigger(live, "waflow:poll");
    }
  });

  // Refresh an element that has hx-trigger="waflow:refresh" (once per poll, however many changes name it).
  window.waflowRefresh = function (element) {
    if (element && window.htmx) {
      window.htmx.trigger(element, "waflow:refresh");
    }
  };
})();
