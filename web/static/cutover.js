// cutover web UI: live deployment updates over server-sent events, and confirmations.
// Plain JS, no build step. Everything put into the page goes through textContent.
(function () {
  "use strict";

  // Forms and buttons with data-confirm ask before they submit.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    var button = e.submitter;
    var message = (button && button.dataset.confirm) || form.dataset.confirm;
    if (message && !window.confirm(message)) {
      e.preventDefault();
    }
  });

  var root = document.getElementById("deployment");
  if (!root || root.dataset.finished === "true" || !window.EventSource) {
    return;
  }
  var wasWaiting = root.dataset.waiting === "true";

  function byStep() {
    var map = {};
    document.querySelectorAll("[data-step]").forEach(function (el) {
      (map[el.dataset.step] = map[el.dataset.step] || []).push(el);
    });
    return map;
  }
  var elements = byStep();

  function setClass(el, cls) {
    el.setAttribute("class", (el.dataset.base || "") + " " + cls);
  }

  function patchStep(step) {
    (elements[step.id] || []).forEach(function (el) {
      if (el.dataset.base) {
        setClass(el, step.class);
      }
      el.querySelectorAll("[data-step-class]").forEach(function (badge) {
        setClass(badge, step.class);
        badge.textContent = step.label;
      });
      el.querySelectorAll("[data-field]").forEach(function (field) {
        var value = step[field.dataset.field];
        var text = value === null || value === undefined ? "" : String(value);
        if (field.textContent !== text) {
          field.textContent = text;
        }
      });
    });
  }

  function patch(state) {
    var status = document.getElementById("dep-status");
    if (status) {
      status.textContent = state.status;
      setClass(status, state.class);
    }
    var reason = document.getElementById("dep-reason");
    if (reason) {
      reason.textContent = state.reason || "";
      reason.hidden = !state.reason;
    }
    var finished = document.getElementById("dep-finished");
    if (finished && state.finished_at) {
      finished.textContent = state.finished_at;
    }
    state.steps.forEach(patchStep);
    root.dataset.live = String((Number(root.dataset.live) || 0) + 1);
  }

  var source = new EventSource(root.dataset.events);
  source.addEventListener("state", function (e) {
    var state;
    try {
      state = JSON.parse(e.data);
    } catch (err) {
      return;
    }
    // The approval form appears or goes away: show the page as the server draws it.
    if (state.waiting !== wasWaiting) {
      source.close();
      window.location.reload();
      return;
    }
    patch(state);
    if (state.finished) {
      root.dataset.finished = "true";
      source.close();
    }
  });
  source.addEventListener("failure", function () {
    source.close();
  });
})();
