// DSPex dashboard: the charts (Chart.js) and the optimization page's live trials (server-sent events).
// Everything arriving from the server is written with textContent, never as HTML.
(function () {
  "use strict";

  function perMinute(canvas) {
    var values = JSON.parse(canvas.dataset.values);
    var labels = values.map(function (_, i) { return (i - values.length + 1) + " min"; });
    new Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: [{ label: "runs", data: values, backgroundColor: "#4f7cac" }] },
      options: { animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } } },
    });
  }

  function quality(trial, objective) {
    return trial.scores && typeof trial.scores[objective] === "number" ? trial.scores[objective] : null;
  }

  function cost(trial, axis) {
    if (axis === "cost_usd" && trial.scores && typeof trial.scores.cost === "number") return trial.scores.cost;
    return typeof trial[axis] === "number" ? trial[axis] : null;
  }

  function front(points) {
    return points.map(function (p) {
      var beaten = points.some(function (o) {
        return o.y >= p.y && o.x <= p.x && (o.y > p.y || o.x < p.x);
      });
      return { x: p.x, y: p.y, number: p.number, front: !beaten };
    });
  }

  function optimization(dataNode) {
    var data = JSON.parse(dataNode.textContent);
    var objective = (data.objectives && data.objectives[0]) || "quality";
    var trials = data.trials.slice();
    var axis = data.axis;
    var axisTitle = axis === "cost_usd" ? "cost (USD)" : "latency (s)";
    var scoreChart = new Chart(document.getElementById("score-chart"), {
      type: "scatter",
      data: { datasets: [
        { label: objective + " by trial", data: [], backgroundColor: "#4f7cac" },
        { label: "best so far", data: [], type: "line", borderColor: "#2a9d5c", pointRadius: 0, stepped: true },
      ] },
      options: { animation: false, maintainAspectRatio: false,
        scales: { x: { ticks: { stepSize: 1 }, title: { display: true, text: "trial" } }, y: { title: { display: true, text: objective } } } },
    });
    var paretoChart = new Chart(document.getElementById("pareto-chart"), {
      type: "scatter",
      data: { datasets: [
        { label: "trials", data: [], backgroundColor: "#9aa7b4" },
        { label: "Pareto front", data: [], backgroundColor: "#d1495b", showLine: true, borderColor: "#d1495b" },
      ] },
      options: { animation: false, maintainAspectRatio: false,
        scales: { x: { title: { display: true, text: axisTitle } }, y: { title: { display: true, text: objective } } } },
    });

    function redraw() {
      var done = trials.filter(function (t) { return t.state === "complete" && quality(t, objective) !== null; });
      done.sort(function (a, b) { return a.number - b.number; });
      var best = -Infinity;
      scoreChart.data.datasets[0].data = done.map(function (t) { return { x: t.number, y: quality(t, objective) }; });
      scoreChart.data.datasets[1].data = done.map(function (t) {
        best = Math.max(best, quality(t, objective));
        return { x: t.number, y: best };
      });
      scoreChart.update();
      var points = front(done.filter(function (t) { return cost(t, axis) !== null; }).map(function (t) {
        return { x: cost(t, axis), y: quality(t, objective), number: t.number };
      }));
      paretoChart.data.datasets[0].data = points.filter(function (p) { return !p.front; });
      paretoChart.data.datasets[1].data = points.filter(function (p) { return p.front; }).sort(function (a, b) { return a.x - b.x; });
      paretoChart.update();
      var onFront = points.filter(function (p) { return p.front; }).map(function (p) {
        return "trial " + p.number + " (" + objective + " " + p.y.toFixed(3) + ", " + p.x.toPrecision(3) + ")";
      });
      document.getElementById("front").textContent = onFront.length ? onFront.join("; ") : "no complete trial yet";
      document.getElementById("trial-count").textContent = String(trials.length);
    }

    function cell(row, text) {
      var td = document.createElement("td");
      td.textContent = text;
      row.appendChild(td);
    }

    function addRow(t) {
      var row = document.createElement("tr");
      row.className = "live-trial";
      cell(row, String(t.number));
      cell(row, t.state);
      cell(row, JSON.stringify(t.scores));
      cell(row, JSON.stringify(t.configuration));
      cell(row, String(t.lm_calls));
      cell(row, t.cost_usd === null ? "–" : "$" + t.cost_usd.toFixed(6));
      cell(row, t.duration_s === null ? "–" : t.duration_s.toFixed(2) + " s");
      document.querySelector("#trials tbody").appendChild(row);
    }

    redraw();
    var live = document.getElementById("opt-live");
    if (live.dataset.live !== "true") return;
    var source = new EventSource(live.dataset.url);
    source.addEventListener("trial", function (event) {
      var t = JSON.parse(event.data);
      if (trials.some(function (o) { return o.number === t.number && o.state === t.state; })) return;
      trials = trials.filter(function (o) { return o.number !== t.number; });
      trials.push(t);
      addRow(t);
      redraw();
    });
    source.addEventListener("job", function (event) {
      var job = JSON.parse(event.data);
      var status = document.getElementById("opt-status");
      status.textContent = job.status;
      status.className = "badge " + job.status;
      var progress = document.getElementById("opt-progress");
      if (progress) progress.textContent = JSON.stringify(job.progress || {});
    });
    source.addEventListener("end", function (event) {
      var end = JSON.parse(event.data);
      var status = document.getElementById("opt-status");
      status.textContent = end.status;
      status.className = "badge " + end.status;
      document.getElementById("best").textContent = JSON.stringify(end.best, null, 2);
      var cancel = document.getElementById("opt-cancel");
      if (cancel) cancel.remove();
      if (end.result_version_id) document.getElementById("opt-result").textContent = end.result_version_id.slice(0, 12);
      source.close();
    });
    source.addEventListener("timeout", function () { source.close(); });
  }

  function rewardOverTime(dataNode) {
    var series = JSON.parse(dataNode.textContent).series;
    var arms = {};
    series.forEach(function (bucket) { Object.keys(bucket.arms).forEach(function (arm) { arms[arm] = true; }); });
    var palette = ["#4f7cac", "#e09f3e", "#2a9d5c", "#d1495b", "#8e6bbf", "#3aa6b9"];
    var shares = Object.keys(arms).map(function (arm, i) {
      return { label: "share " + arm, yAxisID: "share", type: "bar", stack: "share",
        backgroundColor: palette[i % palette.length] + "66",
        data: series.map(function (b) { return (b.arms[arm] || 0) / b.runs; }) };
    });
    new Chart(document.getElementById("reward-chart"), {
      data: {
        labels: series.map(function (b) { return b.to.slice(11, 19); }),
        datasets: [{ label: "mean reward", type: "line", yAxisID: "reward", borderColor: "#1d2430",
          data: series.map(function (b) { return b.mean_reward; }) }].concat(shares),
      },
      options: { animation: false, maintainAspectRatio: false, scales: {
        reward: { position: "left", title: { display: true, text: "mean reward" } },
        share: { position: "right", min: 0, max: 1, stacked: true, title: { display: true, text: "traffic share" } },
        x: { stacked: true } } },
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var reward = document.getElementById("reward-data");
    if (reward) rewardOverTime(reward);
    var canvas = document.querySelector("canvas[data-chart=per-minute]");
    if (canvas) perMinute(canvas);
    var dataNode = document.getElementById("opt-data");
    if (dataNode) optimization(dataNode);
  });
})();
