// The dashboard's keyboard. "?" opens the help panel (the <dialog id="keyboard-help"> of base.html), Escape
// closes it. Pages bind their own keys: waflowKeys.bind("j", function (event) { ... }); a handler that returns
// false leaves the key to the browser. Keys typed into a field, or with Ctrl, Alt or Meta held, are left alone,
// so typing a reply never approves it.
(function () {
  "use strict";

  var handlers = {};

  function typing(target) {
    return target instanceof Element && target.closest("input, textarea, select, [contenteditable]") !== null;
  }

  function help() {
    return document.getElementById("keyboard-help");
  }

  function toggleHelp() {
    var dialog = help();
    if (!dialog) {
      return;
    }
    if (dialog.open) {
      dialog.close();
    } else {
      dialog.showModal();
    }
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.defaultPrevented || typing(event.target)) {
      return;
    }
    if (event.key === "?") {
      event.preventDefault();
      toggleHelp();
      return;
    }
    var dialog = help();
    if (dialog && dialog.open) {
      return; // the dialog handles Escape itself
    }
    var handler = handlers[event.key];
    // A handler that returns false leaves the key to the browser (Enter on a focused button, say).
    if (handler && handler(event) !== false) {
      event.preventDefault();
    }
  });

  document.addEventListener("click", function (event) {
    var opener = event.target instanceof Element && event.target.closest("[data-keyboard-help]");
    if (opener) {
      event.preventDefault();
      toggleHelp();
    }
  });

  window.waflowKeys = {
    // Call handler(event) when `key` (a KeyboardEvent.key: "j", "k", "Enter", "a", "e", "r") is pressed.
    bind: function (key, handler) {
      handlers[key] = handler;
    },
    toggleHelp: toggleHelp
  };
})();
