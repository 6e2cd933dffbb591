// Sorting, filtering and detail toggles for every table of the page (no libraries).
(function () {
  function cellValue(row, index) {
    var cell = row.children[index];
    if (!cell) return "";
    var v = cell.getAttribute("data-v");
    if (v !== null && v !== "") { var n = parseFloat(v); if (!isNaN(n)) return n; }
    return cell.textContent.trim().toLowerCase();
  }
  function sortBy(th) {
    var table = th.closest("table"), body = table.tBodies[0];
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th[aria-sort]").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index), y = cellValue(b, index);
      var missingX = x === "" || x === "–", missingY = y === "" || y === "–";
      if (missingX !== missingY) return missingX ? 1 : -1;  // empty cells last
      if (typeof x === "number" && typeof y === "number") return asc ? x - y : y - x;
      return asc ? String(x).localeCompare(String(y)) : String(y).localeCompare(String(x));
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function applyFilters(table) {
    var controls = document.querySelectorAll("[data-filter-table='" + table.id + "']");
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var show = true;
      controls.forEach(function (c) {
        var q = c.value.trim().toLowerCase(), attr = c.getAttribute("data-filter-attr");
        if (!q) return;
        var text = attr ? (row.getAttribute("data-" + attr) || "").toLowerCase() : row.textContent.toLowerCase();
        if (attr ? text !== q : text.indexOf(q) < 0) show = false;
      });
      row.hidden = !show;
    });
  }
  document.addEventListener("click", function (e) {
    var th = e.target.closest("table.sortable thead th");
    if (th && !th.classList.contains("grp")) sortBy(th);
  });
  document.querySelectorAll("[data-filter-table]").forEach(function (c) {
    c.addEventListener("input", function () { applyFilters(document.getElementById(c.getAttribute("data-filter-table"))); });
  });
  document.querySelectorAll("input[data-toggle]").forEach(function (box) {
    box.addEventListener("change", function () { document.body.classList.toggle("show-" + box.getAttribute("data-toggle"), box.checked); });
  });
  document.querySelectorAll("input[data-fold]").forEach(function (box) {
    box.addEventListener("change", function () { document.body.classList.toggle("fold-" + box.getAttribute("data-fold"), box.checked); });
  });
  var filtered = {};
  document.querySelectorAll("[data-filter-table]").forEach(function (c) { filtered[c.getAttribute("data-filter-table")] = 1; });
  Object.keys(filtered).forEach(function (id) { applyFilters(document.getElementById(id)); });  // preset choices
  function clearFilters(table) {  // a link to a row hidden by a filter shows it again
    document.querySelectorAll("[data-filter-table='" + table.id + "']").forEach(function (c) { c.value = ""; });
    applyFilters(table);
  }
  function openTarget() {  // a link into folded or filtered-out content unfolds it
    var id = decodeURIComponent(location.hash.slice(1)), el = id && document.getElementById(id);
    if (!el) return;
    if (el.tagName === "TR" && el.hidden) clearFilters(el.closest("table"));
    for (var p = el; p; p = p.parentElement) if (p.tagName === "DETAILS") p.open = true;
    el.querySelectorAll(":scope > details").forEach(function (d) { d.open = true; });  // a run's own detail
    el.scrollIntoView();
  }
  window.addEventListener("hashchange", openTarget);
  document.addEventListener("click", function (e) {  // a link to the current hash fires no hashchange
    var a = e.target.closest("a[href^='#']");
    if (a && a.getAttribute("href") === location.hash) { e.preventDefault(); openTarget(); }
  });
  openTarget();
})();
