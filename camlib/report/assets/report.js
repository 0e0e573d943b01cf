/* camlib report: draws the page from window.CAMLIB_REPORT (data.js). No libraries, no network. */
(function () {
  "use strict";
  var D = window.CAMLIB_REPORT;
  var $ = function (id) { return document.getElementById(id); };
  if (!D) {
    document.querySelector("main").innerHTML = '<p class="warning">data.js is missing or unreadable: rebuild the report with camlib report.</p>';
    return;
  }
  var N = D.images.length;
  var R = D.runs;
  var state = { run: 0, page: 0, perPage: 60, order: [], detail: -1 };
  var chunks = {}, waiting = {};

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (attrs[k] === null || attrs[k] === undefined || attrs[k] === false) continue;
      if (k === "text") node.textContent = attrs[k];
      else if (k === "cls") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { if (c !== null && c !== undefined) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }
  function url(path) { return path.split("/").map(encodeURIComponent).join("/"); }
  function fmt(v, digits) { return v === null || v === undefined ? "–" : (+v).toFixed(digits === undefined ? 2 : digits); }
  function pct(v) { return v === null || v === undefined ? "–" : Math.round(v * 100) + "%"; }
  function className(c) {
    if (c === null || c === undefined) return "–";
    var name = D.classes[String(c)];
    return name ? name + " (" + c + ")" : "class " + c;
  }
  function runFile(r, path) { return url(R[r].dir + "/" + path); }

  /* ------------------------------------------------------------------ summary */
  function dl(pairs) {
    var list = el("dl");
    pairs.forEach(function (p) { if (p[1] !== null && p[1] !== undefined && p[1] !== "") { list.appendChild(el("dt", { text: p[0] })); list.appendChild(el("dd", { text: String(p[1]), "data-volatile": p[2] || null })); } });
    return list;
  }
  function drawSummary() {
    var body = $("summary-body");
    var box = el("div", { cls: "runs" });
    R.forEach(function (run, r) {
      var t = run.timing || {};
      var ms = function (s) { return s === null || s === undefined ? null : (s * 1000).toFixed(1) + " ms"; };
      var missing = 0; run.cols.missing.forEach(function (m) { if (m) missing += m.length; });
      var part = el("div", { cls: "run-summary" }, [
        el("h3", { text: (R.length > 1 ? "Run " + (r + 1) + ": " : "") + run.name }),
        dl([
          ["folder", run.path, "path"], ["method", run.method], ["model", run.model], ["weights", run.weights],
          ["layers", run.layers ? run.layers.join(", ") : null], ["targets", run.targets],
          ["images", run.total + " (" + run.ok + " explained, " + run.failed + " failed)"],
          ["missing files", missing || "none"],
          ["classes explained", run.classes.length],
          ["elapsed", run.elapsed_s !== undefined && run.elapsed_s !== null ? run.elapsed_s + " s" : null, "time"],
          ["throughput", run.images_per_s ? run.images_per_s + " images/s" + (run.world_size > 1 ? " over " + run.world_size + " processes" : "") : null, "time"],
          ["time per image", t.cam_s !== null && t.cam_s !== undefined ? "decode " + ms(t.decode_s) + ", CAM " + ms(t.cam_s) + ", write " + ms(t.write_s) : null, "time"],
          ["shortcut candidates", D.masks ? run.shortcut_candidates + " (over " + pct(D.masks.threshold) + " of the energy outside the object)" : null],
          ["camlib", run.camlib_version]
        ])
      ]);
      if (Object.keys(run.mixed || {}).length) part.appendChild(el("p", { cls: "warning", text: "This manifest mixes runs (--allow-mixed): " + Object.keys(run.mixed).map(function (k) { return k + " (" + run.mixed[k] + ")"; }).join("; ") }));
      (run.notes || []).forEach(function (n) { part.appendChild(el("p", { cls: "warning", text: n })); });
      if (run.failures.length) {
        var rows = run.failures.slice(0, 500).map(function (f) { return el("tr", null, [el("td", { text: f[0] }), el("td", { text: f[1] })]); });
        var more = run.failures.length > 500 ? el("p", { text: "… and " + (run.failures.length - 500) + " more: see summary.json" }) : null;
        part.appendChild(el("details", { open: run.failures.length <= 5 ? "open" : null }, [
          el("summary", { cls: "bad", text: "Failures (" + run.failures.length + ")" }),
          el("div", { cls: "table-scroll" }, [el("table", null, [el("thead", null, [el("tr", null, [el("th", { scope: "col", text: "image" }), el("th", { scope: "col", text: "error" })])]), el("tbody", null, rows)])]),
          more
        ]));
      }
      box.appendChild(part);
    });
    body.appendChild(box);
    if (D.masks) {
      var m = D.masks;
      var p = el("p", { "data-volatile": "path", text: "Objects from " + (m.kind === "masks" ? "the mask folder " : "the boxes file ") + m.path + ": " + m.found + " images with one, " + m.absent + " without" + (m.unreadable.length ? ", " + m.unreadable.length + " unreadable (skipped)" : "") + ". Look-outside = share of the map's energy outside the object." });
      body.appendChild(p);
      if (m.unreadable.length) {
        body.appendChild(el("details", null, [el("summary", { cls: "bad", text: "Unreadable masks (" + m.unreadable.length + ")" }),
          el("ul", null, m.unreadable.slice(0, 500).map(function (u) { return el("li", { text: u[0] + ": " + u[1] }); }))]));
      }
    } else {
      body.appendChild(el("p", { text: "No object masks given: look-outside = share of the map's energy in the border band (outer " + pct(D.border) + " of each side; a uniform map has " + pct(1 - Math.pow(1 - 2 * D.border, 2)) + ")." }));
    }
  }

  /* ------------------------------------------------------------------ classes */
  function drawClasses() {
    var body = $("classes-body");
    R.forEach(function (run, r) {
      var rows = run.classes.slice();
      rows.sort(function (a, b) { return D.masks ? (b.outside || 0) - (a.outside || 0) : b.count - a.count; });
      var head = ["class", "mean map", "images", "mean score"];
      if (run.has_truth) head.push("accuracy");
      if (D.masks) head.push("energy inside", "pointing game");
      head.push("border share", "look-outside");
      var table = el("table", null, [el("thead", null, [el("tr", null, head.map(function (h, j) { return el("th", { scope: "col", cls: j > 1 ? "num" : null, text: h }); }))])]);
      var tbody = el("tbody");
      rows.forEach(function (c) {
        var pick = el("button", { type: "button", cls: "link", text: className(c.cls), "aria-label": "Show the images of " + className(c.cls) });
        pick.addEventListener("click", function () { $("run").value = String(r); $("cls").value = String(c.cls); $("status").value = "ok"; state.run = r; update(true); $("grid").scrollIntoView(); });
        var cells = [el("td", null, [pick]), el("td", null, [el("img", { cls: "mean-map", src: url(c.mean_map), alt: "Mean heatmap of " + className(c.cls), loading: "lazy" })]),
          el("td", { cls: "num", text: String(c.count) }), el("td", { cls: "num", text: fmt(c.score) })];
        if (run.has_truth) cells.push(el("td", { cls: "num", text: pct(c.accuracy) }));
        if (D.masks) cells.push(el("td", { cls: "num", text: pct(c.inside) }), el("td", { cls: "num", text: pct(c.pointing) }));
        cells.push(el("td", { cls: "num", text: pct(c.border) }), el("td", { cls: "num", text: pct(c.outside) }));
        tbody.appendChild(el("tr", null, cells));
      });
      table.appendChild(tbody);
      var caption = (R.length > 1 ? run.name + ": " : "") + rows.length + " classes explained" + (D.masks ? ", highest look-outside first" : ", most images first");
      body.appendChild(el("details", { open: rows.length <= 30 ? "open" : null }, [el("summary", { text: caption }), el("div", { cls: "table-scroll" }, [table])]));
    });
  }

  /* ------------------------------------------------------------------ controls */
  function initControls() {
    var runSel = $("run");
    R.forEach(function (run, r) { runSel.appendChild(el("option", { value: String(r), text: (r + 1) + ": " + run.name + (run.method ? " (" + run.method + ")" : "") })); });
    if (R.length < 2) { $("field-run").hidden = true; $("field-disagree").hidden = true; }
    else {
      $("legend").hidden = false;
      $("legend").textContent = "Each card: the image, then the overlay of " + R.map(function (run, r) { return "run " + (r + 1) + " (" + run.name + (run.method ? ", " + run.method : "") + ")"; }).join(", ") + ". Filters and sorting follow the run chosen above.";
    }
    var seen = {};
    R.forEach(function (run) { run.cols.target.forEach(function (c) { if (c !== null) seen[c] = true; }); run.cols.pred.forEach(function (c) { if (c !== null) seen[c] = true; }); });
    Object.keys(seen).map(Number).sort(function (a, b) { return a - b; }).forEach(function (c) { $("cls").appendChild(el("option", { value: String(c), text: className(c) })); });
    if (!R.some(function (run) { return run.has_truth; })) $("correct").disabled = true, $("field-correct").title = "needs labels: --labels FILE, or a run made with --targets LABEL_FILE";
    if (!D.masks) { $("field-shortcut").hidden = true; $("sort").querySelector('option[value="inside-asc"]').hidden = true; }
    $("sort").value = D.masks ? "outside-desc" : "index";
    var controls = $("controls");
    controls.addEventListener("change", function () { update(true); });
    controls.addEventListener("input", function (e) { if (e.target.type === "search" || e.target.type === "number") update(true); });
    controls.addEventListener("submit", function (e) { e.preventDefault(); });
    controls.addEventListener("reset", function () { setTimeout(function () { $("sort").value = D.masks ? "outside-desc" : "index"; $("per-page").value = "60"; update(true); }, 0); });
    document.addEventListener("keydown", function (e) {
      if ($("detail").open) return;
      var tag = (e.target.tagName || "").toLowerCase();
      if (e.key === "/" && tag !== "input" && tag !== "select") { e.preventDefault(); $("search").focus(); }
    });
  }
  function number(id) { var v = $(id).value; return v === "" ? null : parseFloat(v); }

  /* ------------------------------------------------------------------ filter, sort, page */
  function update(resetPage) {
    var cols = R[state.run = parseInt($("run").value || "0", 10)].cols;
    var status = $("status").value, cls = $("cls").value, correct = $("correct").value;
    var minScore = number("min-score"), maxScore = number("max-score"), minOut = number("min-outside");
    var shortcut = $("shortcut").checked && D.masks, disagree = $("disagree").checked && R.length > 1;
    var search = $("search").value.trim().toLowerCase();
    var c = cls === "" ? null : parseInt(cls, 10);
    var threshold = D.masks ? D.masks.threshold : 0;
    var out = [];
    for (var i = 0; i < N; i++) {
      var s = cols.status[i];
      if (s === null) continue;
      if (status === "ok" ? s !== 1 : status === "failed" ? s !== 0 : false) continue;
      if (c !== null && cols.target[i] !== c && cols.pred[i] !== c) continue;
      if (correct !== "" && String(cols.correct[i]) !== correct) continue;
      var score = cols.tscore[i] !== null ? cols.tscore[i] : cols.score[i];
      if (minScore !== null && !(score >= minScore)) continue;
      if (maxScore !== null && !(score <= maxScore)) continue;
      if (minOut !== null && !(cols.outside[i] >= minOut)) continue;
      if (shortcut && !(cols.outside[i] > threshold)) continue;
      if (disagree && !R.some(function (run) { return run.cols.pred[i] !== cols.pred[i]; })) continue;
      if (search && D.images[i].toLowerCase().indexOf(search) < 0) continue;
      out.push(i);
    }
    var sort = $("sort").value;
    var key = null, dir = 1;
    if (sort === "outside-desc") { key = cols.outside; dir = -1; }
    else if (sort === "outside-asc") { key = cols.outside; }
    else if (sort === "score-desc") { key = cols.tscore; dir = -1; }
    else if (sort === "score-asc") { key = cols.tscore; }
    else if (sort === "inside-asc") { key = cols.inside; }
    else if (sort === "border-desc") { key = cols.border; dir = -1; }
    if (key) out.sort(function (a, b) {
      var x = key[a], y = key[b];
      if (x === null) return y === null ? a - b : 1;  /* no value: last */
      if (y === null) return -1;
      return x === y ? a - b : (x < y ? -dir : dir);
    });
    else if (sort === "path") out.sort(function (a, b) { return D.images[a] < D.images[b] ? -1 : D.images[a] > D.images[b] ? 1 : 0; });
    state.order = out;
    state.perPage = parseInt($("per-page").value, 10) || 60;
    if (resetPage) state.page = 0;
    drawPage();
  }

  function drawPager() {
    var pages = Math.max(1, Math.ceil(state.order.length / state.perPage));
    document.querySelectorAll(".pager").forEach(function (nav, n) {
      nav.textContent = "";
      var prev = el("button", { type: "button", text: "← Previous page", disabled: state.page === 0 ? "disabled" : null });
      var next = el("button", { type: "button", text: "Next page →", disabled: state.page >= pages - 1 ? "disabled" : null });
      prev.addEventListener("click", function () { gotoPage(state.page - 1); });
      next.addEventListener("click", function () { gotoPage(state.page + 1); });
      var id = "page-input-" + n;
      var input = el("input", { id: id, type: "number", min: "1", max: String(pages), value: String(state.page + 1) });
      input.addEventListener("change", function () { gotoPage(parseInt(input.value, 10) - 1); });
      nav.appendChild(prev);
      nav.appendChild(el("label", { "for": id, text: "Page" }));
      nav.appendChild(input);
      nav.appendChild(el("span", { text: "of " + pages }));
      nav.appendChild(next);
    });
  }
  function gotoPage(p) {
    var pages = Math.max(1, Math.ceil(state.order.length / state.perPage));
    if (!(p >= 0)) p = 0;
    state.page = Math.min(p, pages - 1);
    drawPage();
  }

  function thumb(src, alt, missingText) {
    if (!src) return el("span", { cls: "thumb" }, [el("span", { cls: "missing", text: missingText })]);
    return el("span", { cls: "thumb" }, [el("img", { src: src, alt: alt, loading: "lazy", decoding: "async", "data-missing": missingText })]);
  }

  function card(i, position) {
    var rel = D.images[i];
    var thumbs = [];
    var first = R[state.run].cols;
    var imageMissing = first.missing[i] && first.missing[i].indexOf("image") >= 0;
    thumbs.push(thumb(D.image_paths[i] && !imageMissing ? url(D.image_paths[i]) : null, "Image " + rel, "image missing"));
    var lines = [el("span", { cls: "rel", text: rel, title: rel })];
    var runs = R.length > 1 ? R.map(function (_, r) { return r; }) : [state.run];
    runs.forEach(function (r) {
      var cols = R[r].cols, prefix = R.length > 1 ? (r + 1) + ": " : "";
      if (cols.status[i] === null) { thumbs.push(thumb(null, "", "not in run " + (r + 1))); return; }
      if (cols.status[i] === 0) {
        thumbs.push(thumb(null, "", "failed"));
        lines.push(el("span", { cls: "line bad", text: prefix + "failed: " + (cols.error[i] || "") }));
        return;
      }
      var ov = cols.overlay[i], gone = ov && cols.missing[i] && cols.missing[i].indexOf(ov) >= 0;
      thumbs.push(thumb(ov && !gone ? runFile(r, ov) : null,
        "CAM overlay (" + (R[r].method || "map") + ") for " + className(cols.target[i]) + " on " + rel, ov ? "overlay missing" : "no overlay saved"));
      var line = el("span", { cls: "line" }, [prefix + "pred " + className(cols.pred[i]) + ", " + fmt(cols.score[i])]);
      if (cols.correct[i] === 1) line.appendChild(el("span", { cls: "badge good", text: "✓ correct" }));
      if (cols.correct[i] === 0) line.appendChild(el("span", { cls: "badge bad", text: "✗ wrong" }));
      lines.push(line);
      if (cols.target[i] !== cols.pred[i] || cols.ntargets[i] > 1)
        lines.push(el("span", { cls: "line", text: prefix + "explained " + className(cols.target[i]) + (cols.ntargets[i] > 1 ? " +" + (cols.ntargets[i] - 1) : "") + ", " + fmt(cols.tscore[i]) }));
      var stats = "look-outside " + pct(cols.outside[i]);
      if (cols.inside[i] !== null) stats += ", inside " + pct(cols.inside[i]) + (cols.hit[i] ? ", pointing hit" : ", pointing miss");
      lines.push(el("span", { cls: "line", text: prefix + stats }));
      if (cols.missing[i] && cols.missing[i].length) lines.push(el("span", { cls: "line bad", text: prefix + "missing: " + cols.missing[i].join(", ") }));
      if (cols.method[i]) lines.push(el("span", { cls: "line warning", text: prefix + "method " + cols.method[i] }));
    });
    var label = lines.map(function (line) { return line.textContent; }).join("; ") + ". Enter opens the details.";
    var button = el("button", { type: "button", "data-index": String(i), "data-position": String(position), "aria-label": label }, [el("span", { cls: "thumbs" }, thumbs), el("span", { cls: "meta" }, lines)]);
    return el("li", { cls: "card" }, [button]);
  }

  function drawPage() {
    var grid = $("grid");
    grid.textContent = "";
    grid.style.setProperty("--card-width", (R.length > 1 ? 120 + 110 * R.length : 250) + "px");
    var start = state.page * state.perPage, end = Math.min(state.order.length, start + state.perPage);
    var frag = document.createDocumentFragment();
    for (var p = start; p < end; p++) frag.appendChild(card(state.order[p], p));
    grid.appendChild(frag);
    var total = R[state.run].cols.status.filter(function (s) { return s !== null; }).length;
    $("count").textContent = state.order.length === 0 ? "No image matches the filters (of " + total + ")." :
      "Showing " + (start + 1) + "–" + end + " of " + state.order.length + " matching images (" + total + " in the run).";
    drawPager();
  }

  /* ------------------------------------------------------------------ keyboard in the grid */
  function cards() { return Array.prototype.slice.call(document.querySelectorAll("#grid .card > button")); }
  $("grid").addEventListener("keydown", function (e) {
    var list = cards(), at = list.indexOf(document.activeElement);
    if (at < 0) return;
    var columns = 1;
    while (columns < list.length && list[columns].offsetTop === list[0].offsetTop) columns++;
    var to = null;
    if (e.key === "ArrowRight") to = at + 1;
    else if (e.key === "ArrowLeft") to = at - 1;
    else if (e.key === "ArrowDown") to = at + columns;
    else if (e.key === "ArrowUp") to = at - columns;
    else if (e.key === "Home") to = 0;
    else if (e.key === "End") to = list.length - 1;
    else if (e.key === "PageDown") { e.preventDefault(); gotoPage(state.page + 1); if (cards()[0]) cards()[0].focus(); return; }
    else if (e.key === "PageUp") { e.preventDefault(); gotoPage(state.page - 1); if (cards()[0]) cards()[0].focus(); return; }
    if (to === null) return;
    e.preventDefault();
    if (to >= 0 && to < list.length) list[to].focus();
  });
  $("grid").addEventListener("click", function (e) {
    var button = e.target.closest ? e.target.closest(".card > button") : null;
    if (button) openDetail(parseInt(button.getAttribute("data-position"), 10));
  });
  /* an image that cannot be loaded (deleted after the report was built) shows as missing */
  document.addEventListener("error", function (e) {
    var img = e.target;
    if (!img || img.tagName !== "IMG") return;
    var text = img.getAttribute("data-missing") || "missing";
    var span = el("span", { cls: "missing", text: text + " (" + decodeURIComponent(img.getAttribute("src") || "").split("/").pop() + ")", role: "img", "aria-label": img.alt + ": " + text });
    img.replaceWith(span);
  }, true);

  /* ------------------------------------------------------------------ detail view */
  window.camlibReportChunk = function (index, data) {
    chunks[index] = data;
    (waiting[index] || []).forEach(function (f) { f(data); });
    delete waiting[index];
  };
  function loadChunk(index, done) {
    if (chunks[index]) return done(chunks[index]);
    if (waiting[index]) { waiting[index].push(done); return; }
    waiting[index] = [done];
    var script = el("script", { src: "chunks/chunk-" + String(index).padStart(5, "0") + ".js" });
    script.onerror = function () { var fs = waiting[index] || []; delete waiting[index]; fs.forEach(function (f) { f(null); }); };
    document.body.appendChild(script);
  }
  function jet(v) {
    var c = function (x) { return Math.max(0, Math.min(1, x)); };
    return [c(1.5 - Math.abs(4 * v - 3)) * 255, c(1.5 - Math.abs(4 * v - 2)) * 255, c(1.5 - Math.abs(4 * v - 1)) * 255];
  }
  function mapCanvas(b64, label) {
    var size = D.preview_size, bytes = atob(b64);
    var canvas = el("canvas", { width: String(size), height: String(size), role: "img", "aria-label": label });
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(size, size);
    for (var k = 0; k < size * size; k++) {
      var rgb = jet(bytes.charCodeAt(k) / 255);
      img.data[4 * k] = rgb[0]; img.data[4 * k + 1] = rgb[1]; img.data[4 * k + 2] = rgb[2]; img.data[4 * k + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }
  function figure(node, caption) { return el("figure", null, [node, el("figcaption", { text: caption })]); }
  function image(src, alt, missingText) {
    return src ? el("img", { src: src, alt: alt, "data-missing": missingText }) : el("span", { cls: "missing thumb", text: missingText });
  }

  function openDetail(position) {
    if (!(position >= 0 && position < state.order.length)) return;
    state.detail = position;
    var i = state.order[position], rel = D.images[i];
    var dialog = $("detail"), body = $("detail-body");
    $("detail-heading").textContent = rel;
    $("detail-prev").disabled = position === 0;
    $("detail-next").disabled = position >= state.order.length - 1;
    body.textContent = "";
    body.appendChild(el("p", { text: "Loading…" }));
    if (!dialog.open) { state.returnFocus = document.activeElement; dialog.showModal(); }
    loadChunk(Math.floor(i / D.chunk_size), function (data) {
      if (state.detail !== position) return;
      body.textContent = "";
      if (!data) { body.appendChild(el("p", { cls: "bad", text: "The detail file of this image is missing (chunks/): rebuild the report." })); return; }
      var entries = data[i % D.chunk_size];
      var first = R[0].cols;
      var imageMissing = first.missing[i] && first.missing[i].indexOf("image") >= 0;
      var original = figure(image(D.image_paths[i] && !imageMissing ? url(D.image_paths[i]) : null, "Image " + rel, "image missing"), "image: " + (D.image_paths[i] || "?"));
      if (R.length > 1) body.appendChild(el("div", { cls: "figures" }, [original]));
      entries.forEach(function (entry, r) {
        var run = R[r];
        body.appendChild(el("h3", { text: (R.length > 1 ? "Run " + (r + 1) + ": " : "") + run.name + (run.method ? " (" + run.method + ")" : "") }));
        if (!entry) { body.appendChild(el("p", { text: "This image is not in this run." })); return; }
        var rec = entry.record;
        if (rec.status !== "ok") body.appendChild(el("p", { cls: "bad", text: "Failed at " + (rec.stage || "?") + ": " + (rec.error || "") }));
        var figs = el("div", { cls: "figures" }, R.length === 1 ? [original] : []);
        var targets = rec.targets || [], scores = rec.target_scores || [], overlays = rec.overlays || [];
        var count = Math.max(targets.length, entry.maps.length, overlays.length);
        for (var k = 0; k < count; k++) {
          var what = className(targets[k]) + (scores[k] !== undefined ? ", score " + fmt(scores[k]) : "");
          var st = entry.stats[k];
          var caption = what + (st ? "; look-outside " + pct(st.outside) + (st.inside !== null ? ", inside " + pct(st.inside) + (st.hit ? ", pointing hit" : ", pointing miss") : "") + ", border " + pct(st.border) : "");
          if (entry.maps[k]) figs.appendChild(figure(mapCanvas(entry.maps[k], "Heatmap for " + what), "heatmap: " + caption));
          else if (rec.status === "ok" && rec.heatmap) figs.appendChild(figure(el("span", { cls: "missing thumb", text: "heatmap missing" + (entry.heatmap_error ? ": " + entry.heatmap_error : "") }), "heatmap: " + what));
          if (overlays[k]) {
            var gone = entry.missing.indexOf(overlays[k]) >= 0;
            figs.appendChild(figure(image(gone ? null : runFile(r, overlays[k]), "CAM overlay for " + what + " on " + rel, "overlay missing: " + overlays[k]), "overlay: " + what));
          }
        }
        body.appendChild(figs);
        if (entry.missing.length) body.appendChild(el("p", { cls: "bad", text: "Missing: " + entry.missing.join(", ") }));
        body.appendChild(el("details", { open: "open" }, [el("summary", { text: "Manifest record" }), el("pre", { cls: "record", tabindex: "0", "data-volatile": "path", "aria-label": "Manifest record of " + rel, text: JSON.stringify(rec, null, 2) })]));
      });
    });
  }
  $("detail-prev").addEventListener("click", function () { openDetail(state.detail - 1); });
  $("detail-next").addEventListener("click", function () { openDetail(state.detail + 1); });
  $("detail-close").addEventListener("click", function () { $("detail").close(); });
  $("detail").addEventListener("keydown", function (e) {
    if (e.target.tagName === "PRE") return;
    if (e.key === "ArrowRight") { e.preventDefault(); openDetail(state.detail + 1); }
    if (e.key === "ArrowLeft") { e.preventDefault(); openDetail(state.detail - 1); }
  });
  $("detail").addEventListener("close", function () {
    var position = state.detail;
    state.detail = -1;
    var page = Math.floor(position / state.perPage);
    if (position >= 0 && page !== state.page) { state.page = page; drawPage(); }
    var target = document.querySelector('#grid .card > button[data-position="' + position + '"]') || state.returnFocus;
    if (target && target.focus) target.focus();
  });

  /* ------------------------------------------------------------------ start */
  document.title = D.title;
  $("title").textContent = D.title;
  $("subtitle").textContent = N + " images" + (R.length > 1 ? ", " + R.length + " runs side by side" : "") + ". Built by camlib from manifest.jsonl.";
  initControls();
  update(true);
  drawSummary();
  drawClasses();
  window.camlibReportFirstRender = performance.now();
  document.body.setAttribute("data-ready", "1");
})();
