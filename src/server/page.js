// flowd's console: live charts from GET /history, the overview refreshed from GET /,
// a page per topic (partitions, a record browser, dead letters replayed) and per named
// consumer (cursors, lag chart, reset, skip, disable, resume, delete). No build step,
// no library: the charts are SVG drawn here. Every change asks first (the dialog).
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const enc = encodeURIComponent;
  let timer = null;

  async function api(method, path) {
    const r = await fetch(path, { method, headers: { "Content-Type": "application/json" }, body: method === "GET" ? undefined : "{}" });
    const text = await r.text();
    let body;
    try { body = JSON.parse(text); } catch (e) { body = text; }
    if (!r.ok) throw new Error((body && body.error) || text || r.statusText);
    return body;
  }

  // One chart: every series as a polyline over the same time axis, its newest value in
  // the legend. `series` is [[name, label, [[ms, value], ...]], ...].
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];
  function chart(title, unit, series) {
    const w = 420, h = 140, pad = 34;
    const all = series.flatMap((s) => s[2]);
    const t1 = all.length ? Math.max(...all.map((p) => p[0])) : Date.now();
    // The last 5 minutes, or since the first sample (a minute at the least).
    const first = all.length ? Math.min(...all.map((p) => p[0])) : t1;
    const t0 = Math.max(t1 - 5 * 60 * 1000, Math.min(first, t1 - 60 * 1000));
    const peak = Math.max(0, ...all.filter((p) => p[0] >= t0).map((p) => p[1]));
    const vmax = Math.max(1, peak);
    const x = (t) => pad + ((t - t0) / (t1 - t0 || 1)) * (w - pad - 6);
    const y = (v) => h - 18 - (v / vmax) * (h - 30);
    let svg = `<svg viewBox="0 0 ${w} ${h}" width="${w}" height="${h}" role="img" aria-label="${esc(title)}">`;
    svg += `<line x1="${pad}" y1="${h - 18}" x2="${w - 6}" y2="${h - 18}" stroke="#bbb"/>`;
    svg += `<text x="2" y="14" font-size="10">${esc(fmt(vmax))}</text><text x="2" y="${h - 18}" font-size="10">0</text>`;
    svg += `<text x="${pad}" y="${h - 4}" font-size="10">-${Math.round((t1 - t0) / 1000)} s</text><text x="${w - 30}" y="${h - 4}" font-size="10">now</text>`;
    let legend = "";
    series.forEach((s, i) => {
      const pts = s[2].filter((p) => p[0] >= t0);
      const color = COLORS[i % COLORS.length];
      if (pts.length === 1) {
        svg += `<circle cx="${x(pts[0][0]).toFixed(1)}" cy="${y(pts[0][1]).toFixed(1)}" r="2.5" fill="${color}"/>`;
      } else if (pts.length) {
        svg += `<polyline fill="none" stroke="${color}" stroke-width="1.5" points="${pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ")}"/>`;
      }
      const last = pts.length ? pts[pts.length - 1][1] : 0;
      legend += `<span class="key" style="color:${color}">&#9632; ${esc(s[1])}: <b data-series="${esc(s[0])}">${esc(fmt(last))}</b> ${esc(unit)}</span> `;
    });
    return `<figure class="chart" data-max="${peak}"><figcaption>${esc(title)}</figcaption>${svg}</svg><div>${legend}</div></figure>`;
  }

  function fmt(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(2) + " M";
    if (v >= 1e4) return (v / 1e3).toFixed(1) + " k";
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  function pick(history, names) {
    return names.map(([name, label]) => [name, label, history.series[name] || []]);
  }

  async function drawCharts() {
    const el = $("#charts");
    if (!el) return;
    const history = await api("GET", "/history");
    const lags = Object.keys(history.series).filter((n) => n.startsWith("lag:")).slice(0, 6);
    el.innerHTML =
      chart("records per second (this peer)", "/s", pick(history, [["in", "in"], ["out", "read by clients"], ["jobs", "jobs"]])) +
      chart("produce to ack (this peer)", "µs", pick(history, [["produce_p50_us", "p50"], ["produce_p99_us", "p99"]])) +
      chart("job to answer (this peer)", "µs", pick(history, [["job_p50_us", "p50"], ["job_p99_us", "p99"]])) +
      chart("consumer lag", "records", lags.map((n) => [n, n.slice(4), history.series[n]])) +
      (history.series_refused ? `<p class="warn">${history.series_refused} samples of series beyond the history's bound were not kept</p>` : "");
  }

  // The overview is rendered by the server (it works without scripts); refreshed here.
  async function refreshOverview() {
    const r = await fetch("/");
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    for (const id of ["head", "tables"]) {
      const fresh = doc.getElementById(id);
      if (fresh && document.getElementById(id)) document.getElementById(id).innerHTML = fresh.innerHTML;
    }
  }

  // The dialog every change goes through: a message, an optional value, OK or Cancel.
  function ask(message, field) {
    const d = $("#ask");
    $("#ask-message").textContent = message;
    const input = $("#ask-input");
    input.hidden = !field;
    input.value = field ? field.value || "" : "";
    input.placeholder = field ? field.placeholder || "" : "";
    d.showModal();
    return new Promise((resolve) => {
      d.onclose = () => resolve(d.returnValue === "ok" ? (field ? input.value.trim() : true) : null);
    });
  }

  function say(text, bad) {
    const el = $("#said");
    el.textContent = text;
    el.className = text ? (bad ? "warn" : "ok") : "";
  }

  async function act(label, message, path, field, then) {
    const answer = await ask(message, field);
    if (answer === null || answer === "") return;
    try {
      const body = await api(path[0], typeof path[1] === "function" ? path[1](answer) : path[1]);
      say(label + ": done " + JSON.stringify(body).slice(0, 300));
    } catch (e) {
      say(label + ": " + e.message, true);
    }
    if (then) await then();
  }

  async function consumerPage(topic, group) {
    const base = `/consumers/${enc(topic)}/${enc(group)}`;
    const render = async () => {
      const cursors = await api("GET", base);
      const history = await api("GET", "/history?series=" + enc(`lag:${topic}/${group}`));
      const rows = cursors.map((c) => `<tr><td>${c.partition}</td><td>${c.committed}</td><td>${c.next_offset}</td><td class="lag">${c.lag}</td>` +
        `<td>${c.claimed ? c.claimed.from + ".." + c.claimed.to : "-"}</td><td>${c.reclaims}</td><td>${c.skipped}</td>` +
        `<td class="l">${esc(c.state)}${c.disabled_reason ? ": " + esc(c.disabled_reason) : ""}</td></tr>`).join("");
      $("#view").innerHTML = `<p><a href="#">&larr; overview</a></p><h2>consumer ${esc(group)} on <a href="#/topic/${enc(topic)}">${esc(topic)}</a></h2>` +
        (cursors.length ? "" : `<p class="warn">no such consumer</p>`) +
        `<table id="cursors"><tr><th>partition</th><th>committed</th><th>next</th><th>lag</th><th>claimed</th><th>reclaims</th><th>skipped</th><th class="l">state</th></tr>${rows}</table>` +
        chart("lag", "records", [[`lag:${topic}/${group}`, "lag", history.series[`lag:${topic}/${group}`] || []]]) +
        `<p class="actions"><button id="reset-earliest">reset to earliest</button> <button id="reset-latest">reset to latest</button> ` +
        `<button id="reset-offset">reset to an offset&hellip;</button> <button id="reset-time">reset to a time&hellip;</button> ` +
        `<button id="skip">skip&hellip;</button> <button id="disable">disable</button> <button id="resume">resume</button> <button id="delete" class="danger">delete</button></p>`;
      const who = `consumer "${group}" on "${topic}"`;
      $("#reset-earliest").onclick = () => act("reset", `Reset ${who} to the oldest record held? Records it acked are delivered again.`, ["POST", `${base}/reset?to=earliest`], null, render);
      $("#reset-latest").onclick = () => act("reset", `Reset ${who} to the end? Every record not acked yet is passed over, unprocessed.`, ["POST", `${base}/reset?to=latest`], null, render);
      $("#reset-offset").onclick = () => act("reset", `Reset ${who} to which offset (its next record, on every partition)?`, ["POST", (v) => `${base}/reset?to=${enc(v)}`], { placeholder: "offset" }, render);
      $("#reset-time").onclick = () => act("reset", `Reset ${who} to the first record at or after which time?`, ["POST", (v) => `${base}/reset?to=@${Date.parse(v)}`], { value: new Date(Date.now() - 3600e3).toISOString(), placeholder: "2026-12-03T10:00:00Z" }, render);
      $("#skip").onclick = () => act("skip", `Skip how many records of ${who} on each partition, unprocessed?`, ["POST", (v) => `${base}/skip?count=${enc(v)}`], { placeholder: "count" }, render);
      $("#disable").onclick = () => act("disable", `Disable ${who}? Its claims are refused until resumed.`, ["POST", `${base}/disable`], null, render);
      $("#resume").onclick = () => act("resume", `Resume ${who} from its committed offset?`, ["POST", `${base}/resume`], null, render);
      $("#delete").onclick = () => act("delete", `Delete ${who}? Its committed offsets are forgotten.`, ["DELETE", base], null, render);
    };
    await render();
    return render;
  }

  async function topicPage(topic) {
    const status = await api("GET", "/status");
    const t = status.topics.concat(status.internal_topics || []).find((x) => x.name === topic);
    if (!t) {
      $("#view").innerHTML = `<p><a href="#">&larr; overview</a></p><p class="warn">no topic "${esc(topic)}"</p>`;
      return null;
    }
    const named = {};
    t.partitions.forEach((p) => (p.named || []).forEach((c) => (named[c.group] = (named[c.group] || 0) + c.lag)));
    // What `flowd status` says beside a partition that cannot be read whole here.
    const trouble = (p) => p.unreadable ? `UNREADABLE: ${p.unreadable}` : (p.replica && p.replica.damaged ? `DAMAGED COPY being copied again, not counted until whole: ${p.replica.damaged}` : "");
    const rows = t.partitions.map((p) => `<tr><td>${p.partition}</td><td>${p.start_offset}</td><td>${p.next_offset}</td><td>${p.durable_offset}</td><td>${p.segments}</td><td>${p.bytes}</td>` +
      (trouble(p) ? `<td class="l warn">${esc(trouble(p))}</td>` : `<td></td>`) + `</tr>`).join("");
    const consumers = Object.keys(named).map((g) => `<li><a class="consumer" href="#/consumer/${enc(topic)}/${enc(g)}">${esc(g)}</a> (lag ${named[g]})</li>`).join("");
    const options = t.partitions.map((p) => `<option>${p.partition}</option>`).join("");
    const history = await api("GET", "/history?series=" + enc(`in:${topic}`) + "," + enc(`lag:${topic}/`));
    const lags = Object.keys(history.series).filter((n) => n.startsWith("lag:")).slice(0, 6);
    $("#view").innerHTML = `<p><a href="#">&larr; overview</a></p><h2>topic ${esc(topic)}</h2>` +
      `<p>retention: ${esc(t.retention || "-")}</p>` +
      `<table><tr><th>partition</th><th>start</th><th>next</th><th>durable</th><th>segments</th><th>bytes</th><th class="l">state</th></tr>${rows}</table>` +
      `<div class="charts">` + chart("records appended per second", "/s", [[`in:${topic}`, "in", history.series[`in:${topic}`] || []]]) +
      chart("lag of its readers", "records", lags.map((n) => [n, n.slice(5 + topic.length), history.series[n]])) + `</div>` +
      (consumers ? `<h3>named consumers</h3><ul>${consumers}</ul>` : "") +
      `<h3>records</h3><form id="browse">partition <select id="b-partition">${options}</select> from offset <input id="b-from" size="8" placeholder="newest"> ` +
      `or time <input id="b-time" size="22" placeholder="2026-12-03T10:00:00Z"> <button>show</button></form>` +
      `<p id="replay-bar" hidden><button id="replay-all">replay every dead letter of this partition</button></p><div id="records"></div>`;
    const show = async () => {
      const p = $("#b-partition").value;
      const from = $("#b-from").value.trim();
      const time = $("#b-time").value.trim();
      let q = `partition=${p}&limit=50`;
      if (time) q += `&by=time&from=${Date.parse(time)}`;
      else if (from) q += `&from=${enc(from)}`;
      else q += "&reverse=true";
      const got = await api("GET", `/topics/${enc(topic)}/range?${q}`);
      const records = Array.isArray(got) ? got : got.records || [];
      const dead = records.some((r) => r.dead_from);
      $("#replay-bar").hidden = !dead;
      $("#records").innerHTML = `<table id="record-table"><tr><th>offset</th><th class="l">time</th><th class="l">key</th><th class="l">value</th><th class="l">headers</th>` +
        (dead ? `<th class="l">dead letter: reason</th><th class="l">from</th><th></th>` : "") + `</tr>` +
        records.map((r) => `<tr><td>${r.offset}</td><td class="l">${new Date(r.timestamp).toISOString()}</td><td class="l">${esc(r.key == null ? "" : r.key)}</td>` +
          `<td class="l v">${esc(r.value)}</td><td class="l">${esc((r.headers || []).map((h) => h.name + "=" + h.value).join(", "))}</td>` +
          (dead ? `<td class="l">${esc(r.dead_reason || "")}</td><td class="l">${esc(r.dead_from || "")}</td><td>${r.dead_from ? `<button class="replay" data-offset="${r.offset}">replay</button>` : ""}</td>` : "") +
          `</tr>`).join("") + `</table>` + (records.length ? "" : "<p>no records there</p>");
      document.querySelectorAll("button.replay").forEach((b) => {
        const o = Number(b.dataset.offset);
        b.onclick = () => act("replay", `Replay dead letter ${topic}/${p}/${o} to where it came from? Dead letters of this partition before it that were not replayed yet are passed over.`,
          ["POST", `/topics/${enc(topic)}/replay?partition=${p}&from=${o}&to=${o + 1}`], null, show);
      });
      $("#replay-all").onclick = () => act("replay", `Replay every dead letter of ${topic}/${p} not replayed yet, each to where it came from?`,
        ["POST", `/topics/${enc(topic)}/replay?partition=${p}`], null, show);
    };
    $("#browse").onsubmit = (e) => { e.preventDefault(); show().catch((err) => say(err.message, true)); };
    await show();
    return null;
  }

  async function route() {
    clearInterval(timer);
    say("");
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    const overview = !parts[0];
    $("#overview").hidden = !overview;
    $("#view").hidden = overview;
    try {
      if (overview) {
        await drawCharts();
        timer = setInterval(() => { drawCharts().catch(() => {}); refreshOverview().catch(() => {}); }, 2000);
      } else if (parts[0] === "topic") {
        await topicPage(parts[1]);
      } else if (parts[0] === "consumer") {
        const render = await consumerPage(parts[1], parts.slice(2).join("/"));
        timer = setInterval(() => render().catch(() => {}), 2000);
      }
    } catch (e) {
      say(e.message, true);
    }
  }

  window.addEventListener("hashchange", route);
  const logout = $("#logout");
  if (logout) {
    logout.onclick = async () => {
      await api("POST", "/logout").catch(() => {});
      location.reload();
    };
  }
  route();
})();
