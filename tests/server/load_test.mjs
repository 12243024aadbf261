// A bounded load test of q3vl serve on loopback: hey (Debian's load generator) sends good
// requests while node clients stream (half of them hang up mid-stream) and raw requests arrive
// malformed, oversized, unauthorised and for unknown paths. Every loop is bounded in count and
// time. Afterwards: every good request got 200 and the right greedy answer, the server's memory
// stayed bounded, nothing is left running, /health is 200, and /metrics passes
// `promtool check metrics`. Env as openai_client_test.mjs, plus Q3VL_PROMTOOL.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import OpenAI from 'openai';
import { startServer, stopServer, metric } from './server_util.mjs';

const run = promisify(execFile);
const KEY = 'load-key';
let server;

before(async () => {
  server = await startServer(['--served-model-name', 'demo', '--max-waiting-requests', '256',
                              '--max-body-bytes', String(1 << 20), '--http-threads', '2'], { Q3VL_API_KEY: KEY });
});
after(async () => { await stopServer(server); });

const rssKiB = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${server.proc.pid}/status`, 'utf8'))[1]);

test('the server stays up, right and bounded under mixed load', { timeout: 240000 }, async () => {
  const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
  const body = { model: 'demo', messages: [{ role: 'user', content: 'Say something.' }], max_tokens: 8, temperature: 0 };
  const expected = (await client.chat.completions.create(body)).choices[0].message.content;
  const rssBefore = rssKiB();

  // 1. hey: 320 good requests, 16 at a time (hey gives each worker n / c).
  const hey = run('hey', ['-n', '320', '-c', '16', '-t', '60', '-m', 'POST', '-T', 'application/json',
                          '-H', `Authorization: Bearer ${KEY}`, '-d', JSON.stringify(body),
                          `${server.url}/v1/chat/completions`], { maxBuffer: 1 << 24 });

  // 2. 48 streaming clients; every other one hangs up after its third chunk.
  const streams = Array.from({ length: 48 }, async (_, i) => {
    const controller = new AbortController();
    const stream = await client.chat.completions.create({ ...body, stream: true, max_tokens: i % 2 ? 8 : 64 },
                                                        { signal: controller.signal });
    let text = '';
    let chunks = 0;
    try {
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta?.content ?? '';
        if (i % 2 === 0 && ++chunks === 3) {
          controller.abort();
          return 'aborted';
        }
      }
    } catch (e) {
      if (i % 2 === 1) throw e;
      return 'aborted';
    }
    if (i % 2 === 1) assert.equal(text, expected, `stream ${i}`);
    return 'complete';
  });

  // 3. Bad requests, 40 of each kind.
  const bad = async (kind) => {
    const statuses = [];
    for (let i = 0; i < 40; ++i) {
      const init = { method: 'POST', headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
                     body: JSON.stringify(body) };
      let url = `${server.url}/v1/chat/completions`;
      if (kind === 'malformed') init.body = '{"messages": [{"role": "user", "content": "hi"}';
      if (kind === 'oversized') init.body = JSON.stringify({ ...body, pad: 'x'.repeat(2 << 20) });
      if (kind === 'unauthorised') init.headers.Authorization = 'Bearer nope';
      if (kind === 'unknown') url = `${server.url}/v2/whatever`;
      if (kind === 'badparam') init.body = JSON.stringify({ ...body, top_p: 5 });
      const res = await fetch(url, init);
      await res.arrayBuffer();
      statuses.push(res.status);
    }
    return statuses;
  };
  const kinds = { malformed: 400, oversized: 413, unauthorised: 401, unknown: 404, badparam: 400 };
  const badResults = Object.entries(kinds).map(async ([kind, status]) => {
    const got = await bad(kind);
    assert.deepEqual([...new Set(got)], [status], `${kind}: ${got}`);
  });

  const [heyOut, streamResults] = await Promise.all([hey, Promise.all(streams), Promise.all(badResults)]);
  const dist = /Status code distribution:\s*\n((?:\s+\[\d+\]\s+\d+ responses\n?)+)/.exec(heyOut.stdout);
  assert.ok(dist, heyOut.stdout);
  assert.match(dist[1].trim(), /^\[200\]\s+320 responses$/, heyOut.stdout);
  assert.equal(streamResults.filter((r) => r === 'complete').length, 24);

  // Afterwards: idle, healthy, bounded, and the metrics are valid Prometheus text.
  for (let i = 0; i < 100 && (await metric(server, 'q3vl:num_requests_running')) > 0; ++i) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(await metric(server, 'q3vl:num_requests_running'), 0);
  assert.equal(await metric(server, 'q3vl:num_requests_waiting'), 0);
  assert.equal(await metric(server, 'q3vl:kv_cache_usage_perc'), 0);
  assert.ok(await metric(server, 'q3vl:request_success_total', 'finished_reason="abort"') >= 24);
  assert.equal((await fetch(`${server.url}/health`)).status, 200);
  const grown = rssKiB() - rssBefore;
  assert.ok(grown < 256 * 1024, `resident memory grew by ${grown} KiB`);
  // promtool parses the text (exit 1 on any format error) and lints it (exit 3). Its one lint
  // we accept is the colon in every name: the names are vLLM's with q3vl: for vllm:, so that
  // dashboards port, and promtool reserves colons for recording rules.
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  const check = execFile(process.env.Q3VL_PROMTOOL, ['check', 'metrics']);
  let said = '';
  check.stdout.on('data', (d) => { said += d; });
  check.stderr.on('data', (d) => { said += d; });
  check.stdin.end(metrics);
  const code = await new Promise((r) => check.on('close', r));
  const problems = said.split('\n').filter((l) => l.trim() && !/ metric names should not contain ':'$/.test(l));
  assert.ok(code === 0 || (code === 3 && problems.length === 0), `promtool exit ${code}:\n${said}`);
  assert.ok(metrics.includes('q3vl:time_to_first_token_seconds_bucket{'), metrics);
  assert.equal((await client.chat.completions.create(body)).choices[0].message.content, expected);
});
