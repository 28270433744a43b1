// The inbox: its list refreshes when the change log names a conversation (static/live.js), and j/k move the
// selection, Enter opens it (keys.js ignores keys typed in the search field). The selection survives a
// refresh (it is kept by conversation id).
(function () {
  "use strict";

  var REFRESHING = {"message.new": true, "draft.ready": true, "draft.failed": true, "draft.approved": true,
                    "draft.rejected": true, "draft.superseded": true, "reply.written": true,
                    "conversation.assigned": true, "delivery.tick": false, "presence": false};
  var selected = null;

  function rows() {
    return Array.prototype.slice.call(document.querySelectorAll("#inbox-list .rows > li"));
  }

  function select(row) {
    rows().forEach(function (item) {
      item.classList.toggle("selected", item === row);
      item.removeAttribute("aria-current");
    });
    if (row) {
      row.setAttribute("aria-current", "true");
      selected = row.getAttribute("data-id");
      var link = row.querySelector("a.row");
      if (link) {
        link.focus({preventScroll: true});
      }
      row.scrollIntoView({block: "nearest"});
    }
  }

  function move(step) {
    var all = rows();
    if (!all.length) {
      return;
    }
    var index = all.findIndex(function (row) { return row.getAttribute("data-id") === selected; });
    select(all[index < 0 ? 0 : Math.min(all.length - 1, Math.max(0, index + step))]);
  }

  document.addEventListener("waflow:changes", function (event) {
    var wanted = event.detail.some(function (change) { return REFRESHING[change.kind]; });
    if (wanted) {
      window.waflowRefresh(document.getElementById("inbox-list"));
    }
  });

  document.body.addEventListener("htmx:afterSwap", function () {
    var again = selected && document.querySelector('#inbox-list .rows > li[data-id="' + selected + '"]');
    if (again) {
      again.classList.add("selected");
      again.setAttribute("aria-current", "true");
    }
  });

  // How long each client has waited moves on by itself: the list is fetched again every minute.
  setInterval(function () {
    if (document.visibilityState === "visible") {
      window.waflowRefresh(document.getElementById("inbox-list"));
    }
  }, 60000);

  if (window.waflowKeys) {
    window.waflowKeys.bind("j", function () { move(1); });
    window.waflowKeys.bind("k", function () { move(-1); });
    window.waflowKeys.bind("Enter", function () {
      var focused = document.activeElement;
      var row = selected && document.querySelector('#inbox-list .rows > li[data-id="' + selected + '"] a.row');
      if (!row || (focused && focused !== document.body && focused !== row)) {
        return false; // Enter on another focused link or button does what it does
      }
      row.click();
      return true;
    });
  }
})();
