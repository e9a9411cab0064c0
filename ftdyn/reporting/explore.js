// The interactive report's script (ftdyn/reporting/explore.py writes it into explore.html).
// Generic on purpose: the panels carry what it needs as data attributes (see panels.py), so it
// knows nothing of metrics or layers. No network, no eval: the page's CSP allows inline code only.
"use strict";
(() => {
  const thumbs = JSON.parse(document.getElementById("thumbs").textContent);
  const slider = document.getElementById("epoch");
  const epochs = slider.dataset.epochs.split(" ");
  const numbers = (text) => text.trim().split(/\s+/).map(Number);

  // every panel at slider position k: highlighted column, curve marker, histogram, galleries
  function showEpoch(k) {
    document.getElementById("epoch-label").textContent = epochs[k];
    document.body.dataset.epoch = epochs[k];
    for (const el of document.querySelectorAll("[data-col]")) {
      el.classList.toggle("current", Number(el.dataset.col) === k);
    }
    for (const line of document.querySelectorAll(".epoch-marker")) {
      const x = line.dataset.xs.split(" ")[k];
      line.setAttribute("x1", x);
      line.setAttribute("x2", x);
      line.dataset.epoch = epochs[k];
    }
    for (const group of document.querySelectorAll("[data-at]")) {
      group.style.display = Number(group.dataset.at) === k ? "" : "none";
    }
    for (const gallery of document.querySelectorAll(".gallery")) {
      const frame = numbers(gallery.dataset.frameOf)[k];
      const epoch = gallery.dataset.epochs.split(" ")[frame];
      gallery.querySelector(".shown-epoch").textContent = epoch;
      for (const row of gallery.querySelectorAll(".row")) {
        const img = row.querySelector("img.now");
        img.src = thumbs[numbers(row.dataset.frames)[frame]];
        img.alt = `${row.dataset.label}, epoch ${epoch}`;
        img.dataset.epoch = epoch;
      }
    }
  }

  // the source's thumbnails never change: set once
  for (const gallery of document.querySelectorAll(".gallery")) {
    const galleryEpochs = gallery.dataset.epochs.split(" ");
    for (const img of gallery.querySelectorAll("img.source")) {
      const row = img.closest(".row");
      img.src = thumbs[numbers(row.dataset.frames)[Number(img.dataset.frame)]];
      img.alt = `${row.dataset.label}, epoch ${galleryEpochs[Number(img.dataset.frame)]}`;
      img.dataset.epoch = galleryEpochs[Number(img.dataset.frame)];
    }
  }

  // a layer's filter view: the one open drill-down of its experiment
  function openLayer(key) {
    const target = document.getElementById(`drill-${key}`);
    const section = target.closest(".experiment");
    for (const drill of section.querySelectorAll(".drill")) drill.hidden = drill !== target;
    for (const button of section.querySelectorAll("button.layer")) {
      button.classList.toggle("open", button.dataset.drill === key);
    }
    return target;
  }

  // a filter's card enlarged: every row at every drawn epoch
  function enlarge(card) {
    const galleryEpochs = card.closest(".gallery").dataset.epochs.split(" ");
    const dialog = document.getElementById("enlarged");
    dialog.querySelector("h3").textContent = card.dataset.title;
    const table = dialog.querySelector("table");
    table.replaceChildren();
    const head = table.createTHead().insertRow();
    head.appendChild(document.createElement("th"));
    for (const epoch of galleryEpochs) {
      const th = document.createElement("th");
      th.textContent = `epoch ${epoch}`;
      head.appendChild(th);
    }
    const body = table.createTBody();
    for (const row of card.querySelectorAll(".row")) {
      const tr = body.insertRow();
      tr.insertCell().textContent = row.dataset.label;
      numbers(row.dataset.frames).forEach((frame, i) => {
        const img = document.createElement("img");
        img.className = "big";
        img.src = thumbs[frame];
        img.alt = `${row.dataset.label}, epoch ${galleryEpochs[i]}`;
        tr.insertCell().appendChild(img);
      });
    }
    dialog.showModal();
  }

  // a table sorted by one of its columns: numbers by value (before any text), text in order
  function sortBy(th) {
    const table = th.closest("table");
    const column = [...th.parentElement.children].indexOf(th);
    const up = th.getAttribute("aria-sort") !== "ascending";
    for (const other of th.parentElement.children) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    const key = (tr) => {
      const text = tr.cells[column] ? tr.cells[column].textContent.trim() : "";
      const value = parseFloat(text);
      return Number.isFinite(value) ? value : text;
    };
    const order = (a, b) => {
      const x = key(a);
      const y = key(b);
      if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1;
      return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
    };
    const body = table.tBodies[0];
    body.append(...[...body.rows].sort(order));
  }

  document.addEventListener("click", (event) => {
    const layer = event.target.closest("[data-drill]");
    const card = event.target.closest(".card");
    const heading = event.target.closest(".tables thead th");
    const dialog = document.getElementById("enlarged");
    if (layer) openLayer(layer.dataset.drill).scrollIntoView({ block: "nearest" });
    else if (card) enlarge(card);
    else if (heading) sortBy(heading);
    else if (event.target === dialog) dialog.close(); // a click on the backdrop
  });
  document.addEventListener("keydown", (event) => {
    const card = event.target.closest && event.target.closest(".card");
    if (card && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      enlarge(card);
    }
  });
  slider.addEventListener("input", () => showEpoch(Number(slider.value)));

  for (const section of document.querySelectorAll(".experiment")) {
    const first = section.querySelector("button.layer");
    if (first) openLayer(first.dataset.drill);
  }
  showEpoch(Number(slider.value));
})();
