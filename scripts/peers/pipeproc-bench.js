// pipeproc-bench.js: the ingest, consume and exec workloads of `flowd bench` against
// pipeproc (an embedded LevelDB commit log run in a child process), one JSON report in
// flowd's shape. exec: a systemProc whose processor (an echo module) runs on pipeproc's
// worker processes, one per core; INFLIGHT is unused there.
// usage: node pipeproc-bench.js ingest|consume|exec DIR RECORDS SIZE BATCH INFLIGHT
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const {PipeProc} = require("pipeproc");

const [workload, dir, records, size, batch, inflight] = process.argv.slice(2);
const RECORDS = Number(records), SIZE = Number(size), BATCH = Number(batch), INFLIGHT = Number(inflight);
if (!["ingest", "consume", "exec"].includes(workload) || !dir || !(RECORDS > 0) || !(SIZE > 0) || !(BATCH > 0) || !(INFLIGHT > 0)) {
  console.error("usage: node pipeproc-bench.js ingest|consume|exec DIR RECORDS SIZE BATCH INFLIGHT");
  process.exit(2);
}

// Records are JSON bodies; the value is padded so the body is SIZE bytes.
const body = {v: "x".repeat(Math.max(0, SIZE - 8))};

function report(scenario, n, seconds, latencies) {
  latencies.sort((a, b) => a - b);
  const at = q => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] : 0;
  return JSON.stringify({
    scenario, records: n, seconds,
    records_per_sec: n / seconds, mb_per_sec: n * SIZE / seconds / 1e6,
    latency_us: {p50: at(0.5), p99: at(0.99), p999: at(0.999), max: latencies[latencies.length - 1] || 0},
    config: {system: "pipeproc", workload: {ingest: "commit batches", consume: "proc + ack", exec: "systemProc on worker processes"}[workload],
             size: SIZE, batch: BATCH, inflight: workload === "ingest" ? INFLIGHT : 1, workers: workload === "exec" ? os.cpus().length : 0},
  });
}

const micros = t0 => Math.max(1, Math.round(Number(process.hrtime.bigint() - t0) / 1000));

// `batches` commits of BATCH records, INFLIGHT at once.
async function produce(client, batches) {
  const latencies = [];
  let next = 0;
  const t0 = process.hrtime.bigint();
  async function lane() {
    while (next < batches) {
      next++;
      const records = [];
      for (let i = 0; i < BATCH; i++) records.push({topic: "bench", body});
      const t = process.hrtime.bigint();
      await client.commit(records);
      latencies.push(micros(t));
    }
  }
  await Promise.all(Array.from({length: INFLIGHT}, lane));
  return {n: batches * BATCH, seconds: Number(process.hrtime.bigint() - t0) / 1e9, latencies};
}

// A new proc reads `records` from the start, BATCH at a time, acking each batch (a proc
// has one batch in flight at a time); latency from the claim to the ack.
async function consume(client, name, records) {
  const latencies = [];
  let n = 0;
  const t0 = process.hrtime.bigint();
  while (n < records) {
    const t = process.hrtime.bigint();
    const logs = await client.proc("bench", {name, offset: ">", count: BATCH});
    if (!logs) break;
    n += Array.isArray(logs) ? logs.length : 1;
    await client.ack(name);
    latencies.push(micros(t));
  }
  return {n, seconds: Number(process.hrtime.bigint() - t0) / 1e9, latencies};
}

// A systemProc copies every record of "bench" to "bench-out" through an echo processor
// on the worker processes; latency is not measured per record (0s).
async function exec(client, records) {
  const processor = path.join(dir, "..", "echo-processor.js");
  fs.writeFileSync(processor, "module.exports = function (log, done) { done(null, log.body); };\n");
  const t0 = process.hrtime.bigint();
  await client.systemProc({name: "echo", offset: ">", from: "bench", to: "bench-out", processor});
  let n = 0;
  while (n < records) {
    await new Promise(resolve => setTimeout(resolve, 20));
    // The topic exists once the processor wrote to it.
    n = await client.length("bench-out").catch(() => 0);
  }
  return {n, seconds: Number(process.hrtime.bigint() - t0) / 1e9, latencies: []};
}

(async () => {
  const client = PipeProc();
  await client.spawn({location: dir, workers: workload === "exec" ? os.cpus().length : 0});
  const batches = Math.ceil(RECORDS / BATCH);
  const warm = Math.min(Math.max(1, Math.floor(batches / 10)), Math.max(1, Math.floor(100000 / BATCH)));
  let run;
  if (workload === "ingest") {
    await produce(client, warm);
    run = await produce(client, batches);
  } else if (workload === "consume") {
    await produce(client, batches);
    await consume(client, "warm-up", warm * BATCH);
    run = await consume(client, "bench", batches * BATCH);
  } else {
    await produce(client, batches);
    run = await exec(client, batches * BATCH);
  }
  await client.shutdown();
  console.log(report(workload, run.n, run.seconds, run.latencies));
})().catch(error => {
  console.error(`error: ${error && error.stack || error}`);
  process.exit(1);
});
