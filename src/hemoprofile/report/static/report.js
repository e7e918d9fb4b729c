document.addEventListener("DOMContentLoaded", function () {
  var heads = document.querySelectorAll("table.sortable thead th");
  Array.prototype.forEach.call(heads, function (th) {
    th.addEventListener("click", function () {
      var table = th.closest("table");
      var body = table.tBodies[0];
      if (!body) { return; }
      var index = Array.prototype.indexOf.call(th.parentNode.children, th);
      var ascending = th.getAttribute("data-sort") !== "asc";
      Array.prototype.forEach.call(table.querySelectorAll("thead th"), function (h) {
        h.removeAttribute("data-sort");
      });
      th.setAttribute("data-sort", ascending ? "asc" : "desc");
      var key = function (row) {
        var cell = row.cells[index];
        if (!cell) { return ""; }
        var v = cell.getAttribute("data-v");
        return v !== null && v !== "" && !isNaN(parseFloat(v)) ? parseFloat(v) : cell.textContent.trim();
      };
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var order = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
        return ascending ? order : -order;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  // a DOM marker that the script ran to its end (the browser test looks for it)
  document.documentElement.setAttribute("data-report-script", "ready");
});
