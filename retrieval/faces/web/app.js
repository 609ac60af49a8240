"use strict";

const $ = (id) => document.getElementById(id);
let photo = null; // the File being shown

const TOKEN_KEY = "retrieve-token";
let token = sessionStorage.getItem(TOKEN_KEY); // asked once, kept for this tab's session

async function call(method, url, body, asked = false) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(url, { method, body, headers });
  if (response.status === 401 && !asked) {
    const given = window.prompt(
      "This service needs its access token to change the index (retrieve serve --token):",
    );
    if (given && given.trim()) {
      token = given.trim();
      sessionStorage.setItem(TOKEN_KEY, token);
      return call(method, url, body, true);
    }
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    throw new Error(detail || `${response.status} ${response.statusText}`);
  }
  return data;
}

async function refreshStatus() {
  try {
    const h = await call("GET", "/health");
    $("status").textContent = `${h.count} photos in the index (${h.model})`;
  } catch (e) {
    $("status").textContent = `service unavailable: ${e.message}`;
  }
}

function showNeighbors(neighbors) {
  const list = $("neighbors");
  list.replaceChildren();
  for (const n of neighbors) {
    const item = document.createElement("li");
    const img = document.createElement("img");
    img.src = `/items/${n.id}/thumb`;
    img.alt = n.label;
    img.title = n.path;
    const caption = document.createElement("span");
    caption.className = "neighbor-caption";
    caption.textContent = `${n.label} · ${n.score.toFixed(3)}`;
    item.append(img, caption);
    list.append(item);
  }
}

async function ask(file) {
  photo = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("result").hidden = false;
  $("enroll").hidden = false;
  $("enroll-status").textContent = "";
  $("answer-label").textContent = "…";
  $("answer-confidence").textContent = "";
  $("error").hidden = true;
  $("neighbors").replaceChildren();
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const r = await call("POST", "/query?k=5", form);
    const nearest = [...new Set(r.neighbors.map((n) => n.label))].slice(0, 3).join(", ");
    $("answer-label").textContent = r.label === null ? "unknown" : r.label;
    if (r.label === null) {
      $("answer-confidence").textContent = nearest
        ? `(like no label of this index; nearest: ${nearest})`
        : "(the index is empty)";
      $("enroll-title").textContent = "New here? Enrol this photo under a new label";
    } else {
      $("answer-confidence").textContent = `(confidence ${r.confidence.toFixed(2)})`;
      $("enroll-title").textContent = "Enrol this photo";
    }
    showNeighbors(r.neighbors);
  } catch (e) {
    $("answer-label").textContent = "—";
    $("error").textContent = e.message;
    $("error").hidden = false;
    $("enroll").hidden = true;
  }
}

async function enroll(event) {
  event.preventDefault();
  if (!photo) return;
  const label = $("enroll-label").value.trim();
  const form = new FormData();
  form.append("label", label);
  form.append("files", photo, photo.name);
  $("enroll-status").textContent = "enrolling…";
  try {
    const r = await call("POST", "/enroll", form);
    if (r.added.length) {
      $("enroll-status").textContent = `enrolled as “${r.label}”; it now has ${r.count} photos`;
    } else if (r.duplicates.length) {
      $("enroll-status").textContent = `not added: ${r.duplicates[0].reason}`;
    } else {
      $("enroll-status").textContent = `not added: ${r.skipped.map((s) => s.reason).join("; ")}`;
    }
    refreshStatus();
  } catch (e) {
    $("enroll-status").textContent = `error: ${e.message}`;
  }
}

$("file").addEventListener("change", (e) => {
  if (e.target.files.length) ask(e.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) ask(e.dataTransfer.files[0]);
});
$("enroll-form").addEventListener("submit", enroll);
refreshStatus();
