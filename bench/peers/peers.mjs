// Drains N no-op jobs through a peer queue and prints one JSON line:
//   node peers.mjs graphile default|best DATABASE_URL N
//   node peers.mjs pgboss best DATABASE_URL N
// The database must be empty; each queue creates its own schema.
import pg from "pg";

const [which, config, url, nArg] = process.argv.slice(2);
const n = Number(nArg);

async function sql(text) {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query(text)).rows;
  } finally {
    await c.end();
  }
}

async function graphile() {
  const { run, runMigrations, Logger } = await import("graphile-worker");
  const logger = new Logger(() => (level, message) => {
    if (level === "error") console.error(message);
  });
  const worker =
    config === "best"
      ? {
          connectionString: url,
          concurrentJobs: 24,
          maxPoolSize: 26,
          localQueue: { size: 500, refetchDelay: { durationMs: 10 } },
          completeJobBatchDelay: 0,
          failJobBatchDelay: 0,
        }
      : { connectionString: url, concurrentJobs: 10 };
  const preset = { worker };
  await runMigrations({ preset, logger });
  const t0 = performance.now();
  await sql(
    `SELECT graphile_worker.add_jobs(array_agg(ROW('noop', '{}'::json, NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec))
     FROM generate_series(1, ${n})`,
  );
  const enqueue = n / ((performance.now() - t0) / 1000);
  let done = 0;
  let finish;
  const finished = new Promise((r) => (finish = r));
  const start = performance.now();
  const runner = await run({
    preset,
    logger,
    noHandleSignals: true,
    taskList: {
      noop: async () => {
        done += 1;
        if (done === n) finish();
      },
    },
  });
  await finished;
  await runner.stop(); // flushes batched completions
  const secs = (performance.now() - start) / 1000;
  const [{ left }] = await sql("SELECT count(*)::int AS left FROM graphile_worker._private_jobs");
  if (left !== 0) throw new Error(`graphile-worker left ${left} jobs`);
  return { jobs_per_s: n / secs, enqueue_per_s: enqueue };
}

async function pgboss() {
  const { PgBoss } = await import("pg-boss");
  const boss = new PgBoss({ connectionString: url, max: 26 });
  boss.on("error", (e) => console.error(e));
  await boss.start();
  await boss.createQueue("noop");
  const t0 = performance.now();
  for (let i = 0; i < n; i += 1000) {
    await boss.insert("noop", Array.from({ length: Math.min(1000, n - i) }, () => ({ data: {} })));
  }
  const enqueue = n / ((performance.now() - t0) / 1000);
  // Its best settings only ("best"): full batches are fetched again at once
  // (burstWhenBatchFull) instead of waiting for the next poll.
  if (config !== "best") throw new Error(`pg-boss runs only as "best", not ${config}`);
  const options = { batchSize: 100, localConcurrency: 24, burstWhenBatchFull: true };
  let done = 0;
  let finish;
  const finished = new Promise((r) => (finish = r));
  const start = performance.now();
  await boss.work("noop", { ...options, pollingIntervalSeconds: 0.5 }, async (jobs) => {
    done += jobs.length;
    if (done >= n) finish();
  });
  await finished;
  // The last batch is completed after its handler returns.
  for (;;) {
    const [{ left }] = await sql("SELECT count(*)::int AS left FROM pgboss.job WHERE state <> 'completed'");
    if (left === 0) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  const secs = (performance.now() - start) / 1000;
  await boss.stop({ graceful: false, wait: true });
  return { jobs_per_s: n / secs, enqueue_per_s: enqueue };
}

const result = which === "graphile" ? await graphile() : await pgboss();
console.log(JSON.stringify(result));
process.exit(0);
