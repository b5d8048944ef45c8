// Sortable leaderboard tables (vanilla JS, no network). Click a column header to sort the
// table by that column, click it again to reverse. A cell sorts by its data-value attribute
// when that holds a number, otherwise by its text, compared numeric-aware ("run 9" < "run 10").
// Numbers come before text; empty cells ("–") stay last in either direction.
(function () {
  "use strict";

  function key(cell) {
    var raw = cell.getAttribute("data-value");
    if (raw !== null && raw !== "" && !isNaN(Number(raw))) {
      return { num: Number(raw) };
    }
    var text = cell.textContent.trim();
    return text === "" || text === "\u2013" ? null : { text: text };
  }

  function compare(a, b) {
    if ("num" in a && "num" in b) { return a.num - b.num; }
    if ("num" in a) { return -1; }
    if ("num" in b) { return 1; }
    return a.text.localeCompare(b.text, undefined, { numeric: true, sensitivity: "base" });
  }

  function sortBy(table, index, th) {
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) {
      var a = key(r1.cells[index]), b = key(r2.cells[index]);
      if (a === null || b === null) { return (a === null) - (b === null); }
      return dir * compare(a, b);
    });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) {
      cell.setAttribute("aria-sort", "none");
    });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    rows.forEach(function (row) { body.appendChild(row); });
  }

  function init() {
    document.querySelectorAll("table.sortable").forEach(function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
        th.addEventListener("click", function () { sortBy(table, index, th); });
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
