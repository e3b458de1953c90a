// privdiff serve's page: plain JS, no build step, no framework. The key stays in this browser.
"use strict";
const $ = (id) => document.getElementById(id);
let apiKey = localStorage.getItem("privdiff-key") || "";

function headers() {
  return { "Authorization": "Bearer " + apiKey, "Content-Type": "application/json" };
}

function showMessage(text, kind) {
  const m = $("message");
  m.textContent = text;
  m.className = kind || "";
}

function setGauge(id, remaining, total) {
  const frac = total > 0 ? Math.max(0, Math.min(1, remaining / total)) : 0;
  $(id).style.width = (100 * frac).toFixed(1) + "%";
  $(id).dataset.remaining = String(remaining);
  $(id + "-text").textContent = remaining.toFixed(3) + " of " + total.toFixed(3);
}

async function refreshBudget() {
  if (!apiKey) return;
  const r = await fetch("/v1/budget", { headers: headers() });
  const body = await r.json();
  if (!r.ok) { showMessage(body.detail || body.error, "error"); $("key-status").textContent = "key refused"; return; }
  $("key-status").textContent = "key " + body.key.name + " (" + body.key.role + ")";
  setGauge("gauge-key", body.key.epsilon_remaining, body.key.epsilon_quota);
  setGauge("gauge-dataset", body.dataset.epsilon_remaining, body.dataset.epsilon_budget);
  if (body.queries_remaining === 0 && $("message").className !== "over") {  // keep a 409's own words
    showMessage("The privacy budget is spent: no more images can be generated.", "over");
  }
}

$("save-key").addEventListener("click", () => {
  apiKey = $("key").value.trim();
  localStorage.setItem("privdiff-key", apiKey);
  showMessage("");
  refreshBudget();
});

$("gen-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!apiKey) { showMessage("Enter your API key first.", "error"); return; }
  const n = parseInt($("n").value, 10);
  showMessage("Generating…");
  $("go").disabled = true;
  try {
    const r = await fetch("/v1/generate", {
      method: "POST", headers: headers(),
      body: JSON.stringify({ prompt: $("prompt").value, n: n }),
    });
    const body = await r.json();
    if (r.status === 409) {
      showMessage("Over budget: " + body.detail, "over");
      return;
    }
    if (!r.ok) { showMessage((body.error || "error") + ": " + (body.detail || ""), "error"); return; }
    const grid = $("grid");
    grid.replaceChildren();
    for (const b64 of body.images) {  // each image is shown as soon as it is decoded
      const img = new Image();
      img.alt = $("prompt").value;
      img.src = "data:image/png;base64," + b64;
      grid.appendChild(img);
    }
    const p = body.privacy;
    $("cost").textContent = "This request cost ε = " + p.epsilon_request.toFixed(4) +
      " (δ = " + p.delta.toExponential(2) + ", σ = " + p.sigma + ", q = " + p.q + ", k = " + p.k + ").";
    showMessage(body.images.length + " images generated.");
  } catch (e) {
    showMessage("The server could not be reached.", "error");
  } finally {
    $("go").disabled = false;
    await refreshBudget();
  }
});

if (apiKey) { $("key").value = apiKey; refreshBudget(); }
