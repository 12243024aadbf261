// q3vl coordinator over two q3vl serve replicas on loopback, driven by clients nobody here wrote:
// the official OpenAI SDK (answers equal a replica's own, the same errors, a request too long for
// every replica refused with 400, a client that goes away cancels at the replica), routing affinity for repeated images (visible in the
// replicas' prefix-cache metrics), a coordinator restart (replicas rejoin, the KV index is
// rebuilt from their snapshots), kill -9 of a replica under load (every request completes or
// ends with a clean error; none hangs), a hung replica (SIGSTOP) marked down and rejoining, a
// replica that comes back rejoins, draining, and
// @grpc/grpc-js against control.proto (health checks, a forwarded generation, a refused join).
// Run by ctest: node --test tests/server/coordinator_test.mjs (env Q3VL_BINARY, Q3VL_MODEL_DIR).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { startProcess, startServer, stopServer, metric } from './server_util.mjs';

const KEY = 'coordinator-test-key';
const MODEL = process.env.Q3VL_MODEL_DIR;
const REPO = fileURLToPath(new URL('../..', import.meta.url));
const KV_TOKENS = 8192;  // each replica's KV pool: one sequence holds at most this many tokens
let tmp;
let coordinator;
let grpcPort;
const replicas = {};
let client;

function startCoordinator(port = 0) {
  return startProcess(process.env.Q3VL_BINARY,
                      ['coordinator', '--model', MODEL, '--port', '0', '--grpc-port', String(port),
                       '--served-model-name', 'demo', '--heartbeat-timeout', '2'],
                      /on (http:\/\/[\d.]+:\d+); replicas join at [\d.]+:(\d+)/, { Q3VL_API_KEY: KEY });
}

async function startReplica(id) {
  const r = await startServer(['--served-model-name', 'demo', '--coordinator', `127.0.0.1:${grpcPort}`,
                               '--grpc-port', '0', '--replica-id', id, '--threads', '1',
                               '--kv-cache-tokens', String(KV_TOKENS)], { Q3VL_API_KEY: KEY });
  r.grpc = /gRPC on ([\d.]+:\d+)/.exec(r.log())[1];
  return r;
}

// Polls `fn` every 100 ms until it returns true (or throws after `ms`).
async function until(what, fn, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      if (await fn()) return;
    } catch { /* not yet */ }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const replicasIn = (state) => metric(coordinator, 'q3vl:coordinator_replicas', `state="${state}"`);
const routedTo = (id) => metric(coordinator, 'q3vl:coordinator_requests_routed_total', `replica="${id}"`);
const user = (content) => [{ role: 'user', content }];

function png(filter) {
  const path = `${tmp}/${filter.split('=')[0]}.png`;
  execFileSync('ffmpeg', ['-loglevel', 'error', '-y', '-f', 'lavfi', '-i', filter, '-frames:v', '1', path]);
  return `data:image/png;base64,${readFileSync(path).toString('base64')}`;
}

before(async () => {
  tmp = mkdtempSync(`${tmpdir()}/q3vl-coordinator-`);
  coordinator = await startCoordinator();
  grpcPort = Number(coordinator.match[2]);
  replicas.r1 = await startReplica('r1');
  replicas.r2 = await startReplica('r2');
  await until('two replicas up', async () => (await replicasIn('up')) === 2);
  client = new OpenAI({ baseURL: `${coordinator.url}/v1`, apiKey: KEY, maxRetries: 0 });
});

after(async () => {
  await Promise.all([stopServer(coordinator), ...Object.values(replicas).map(stopServer)]);
  rmSync(tmp, { recursive: true, force: true });
});

test('answers through the coordinator equal the replica\'s own, streamed or not', async () => {
  const request = { model: 'demo', messages: user('Name three colours.'), max_tokens: 8, temperature: 0,
                    logprobs: true, top_logprobs: 2 };
  const direct = new OpenAI({ baseURL: `${replicas.r1.url}/v1`, apiKey: KEY, maxRetries: 0 });
  const want = await direct.chat.completions.create(request);
  const got = await client.chat.completions.create(request);
  assert.equal(got.model, 'demo');
  assert.equal(got.choices[0].message.content, want.choices[0].message.content);
  assert.deepEqual(got.choices[0].logprobs.content.map((t) => t.token), want.choices[0].logprobs.content.map((t) => t.token));
  // The same tokens counted; the prefix cache's share depends on what each replica ran before.
  const counts = ({ prompt_tokens_details, ...rest }) => rest;
  assert.deepEqual(counts(got.usage), counts(want.usage));
  assert.equal(typeof got.usage.prompt_tokens_details.cached_tokens, 'number');
  let text = '';
  let usage;
  for await (const chunk of await client.chat.completions.create({ ...request, stream: true,
                                                                   stream_options: { include_usage: true } })) {
    text += chunk.choices[0]?.delta?.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, want.choices[0].message.content);
  assert.equal(usage.completion_tokens, 8);
  const two = await client.completions.create({ model: 'demo', prompt: 'One, two,', max_tokens: 4, n: 2, seed: 7 });
  assert.equal(two.choices.length, 2);
  assert.equal(two.usage.completion_tokens, 8);
});

test('errors are the ones q3vl serve gives, and capacity is the replicas\'', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'demo', messages: user('hi'), max_tokens: 4, temperature: -1 }),
                       (e) => e.status === 400 && e.param === 'temperature');
  await assert.rejects(client.chat.completions.create({ model: 'other', messages: user('hi'), max_tokens: 4 }),
                       (e) => e.status === 404 && e.code === 'model_not_found');
  const anonymous = new OpenAI({ baseURL: `${coordinator.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(anonymous.models.list(), (e) => e.status === 401);
  // Within the model's context (256K) but over what any replica's KV pool holds per sequence.
  await assert.rejects(client.chat.completions.create({ model: 'demo', messages: user('hi'), max_tokens: 20000 }),
                       (e) => e.status === 400 && e.message.includes(String(KV_TOKENS)));
  const health = await fetch(`${coordinator.url}/health`);
  assert.equal(health.status, 200);
});

test('a client that goes away cancels the request at the replica', async () => {
  const running = async () => (await metric(replicas.r1, 'q3vl:num_requests_running')) +
                              (await metric(replicas.r2, 'q3vl:num_requests_running'));
  const stream = await client.chat.completions.create({
    model: 'demo', messages: user('Go on forever.'), max_tokens: 4000, ignore_eos: true, stream: true });
  let chunks = 0;
  for await (const chunk of stream) {
    if (chunk.choices[0]?.delta?.content !== undefined && ++chunks === 3) break;  // ends the HTTP request
  }
  await until('the replica stopped it', async () => (await running()) === 0, 10000);
  const aborted = await metric(coordinator, 'q3vl:request_success_total', 'finished_reason="abort"');
  assert.ok(aborted >= 1, `aborts seen by the coordinator: ${aborted}`);
});

test('repeated images land where their KV lives', async () => {
  const images = [png('testsrc=size=256x256'), png('smptebars=size=256x256')];
  const hits = async () => (await metric(replicas.r1, 'q3vl:prefix_cache_hits_total')) +
                           (await metric(replicas.r2, 'q3vl:prefix_cache_hits_total'));
  const before = await hits();
  const cachedBefore = await metric(coordinator, 'q3vl:coordinator_routed_cached_pages_total');
  // A A B B A A B B: round-robin would send every second request of an image to the replica
  // without its KV; kv routing sends each repeat where the image's pages are.
  let reported = 0;  // usage.prompt_tokens_details.cached_tokens, through the coordinator
  for (const i of [0, 0, 1, 1, 0, 0, 1, 1]) {
    const r = await client.chat.completions.create({
      model: 'demo', max_tokens: 2, temperature: 0,
      messages: user([{ type: 'image_url', image_url: { url: images[i] } }, { type: 'text', text: `Question ${Math.random()}` }]),
    });
    reported += r.usage.prompt_tokens_details.cached_tokens;
    await new Promise((r) => setTimeout(r, 100));  // the replica reports its new pages (every 20 ms)
  }
  // 256x256 is 64 visual tokens (4 pages) plus the template before it: each of the 6 repeats
  // reuses at least 4 full pages.
  const reused = (await hits()) - before;
  assert.ok(reused >= 6 * 64, `prefix-cache hits over the repeats: ${reused} tokens`);
  assert.equal(reported, reused, 'each response reports its own prefix-cache hit');
  const cached = (await metric(coordinator, 'q3vl:coordinator_routed_cached_pages_total')) - cachedBefore;
  assert.ok(cached >= 6 * 4, `pages the index placed at the chosen replicas: ${cached}`);
});

test('a restarted coordinator gets its replicas back with their cached pages', async () => {
  await stopServer(coordinator);
  coordinator = await startCoordinator(grpcPort);
  client = new OpenAI({ baseURL: `${coordinator.url}/v1`, apiKey: KEY, maxRetries: 0 });
  await until('replicas rejoined', async () => (await replicasIn('up')) === 2, 20000);
  assert.ok((await metric(coordinator, 'q3vl:coordinator_kv_index_keys')) >= 8, 'the index is rebuilt from snapshots');
  const r = await client.chat.completions.create({ model: 'demo', messages: user('Still there?'), max_tokens: 3 });
  assert.equal(r.usage.completion_tokens, 3);
});

test('a replica that stops answering is marked down, its requests go elsewhere, and it rejoins', async () => {
  // SIGSTOP: the connection stays open but nothing comes from the replica (a hung process).
  const r2 = replicas.r2;
  r2.proc.kill('SIGSTOP');
  try {
    const started = Date.now();
    await until('r2 marked down', async () => (await replicasIn('down')) >= 1 &&
                                               (await metric(coordinator, 'q3vl:coordinator_requests_in_flight', 'replica="r2"')) === 0, 10000);
    assert.ok(Date.now() - started < 6000, 'marked down within the heartbeat timeout (2 s) and a check');
    for (let i = 0; i < 3; ++i) {
      const r = await client.completions.create({ model: 'demo', prompt: `While r2 hangs ${i}`, max_tokens: 2 });
      assert.equal(r.usage.completion_tokens, 2);
    }
  } finally {
    r2.proc.kill('SIGCONT');
  }
  await until('r2 rejoined', async () => (await replicasIn('up')) === 2, 15000);
});

test('kill -9 of a replica under load: every request completes or fails cleanly, none hangs', async (t) => {
  const one = async (i) => {
    try {
      let text = '';
      let finish;
      const stream = await client.chat.completions.create({
        model: 'demo', messages: user(`Count to ${i}.`), max_tokens: 48, ignore_eos: true, stream: true });
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta?.content ?? '';
        finish = chunk.choices[0]?.finish_reason ?? finish;
      }
      return finish === 'length' ? 'ok' : `ended without a finish reason (${text.length} chars)`;
    } catch (e) {
      return e.status === 503 || /replica/.test(e.message) ? 'clean error' : `unclean: ${e.message}`;
    }
  };
  let hangTimer;
  const hang = new Promise((r) => { hangTimer = setTimeout(() => r('hung'), 90000); });
  const requests = Array.from({ length: 12 }, (_, i) => Promise.race([one(i), hang]));
  await until('requests running on r1', async () => (await metric(replicas.r1, 'q3vl:num_requests_running')) > 0, 10000);
  replicas.r1.proc.kill('SIGKILL');
  await replicas.r1.exited;
  const outcomes = await Promise.all(requests);
  clearTimeout(hangTimer);
  const counts = {};
  for (const o of outcomes) counts[o] = (counts[o] ?? 0) + 1;
  t.diagnostic(`outcomes: ${JSON.stringify(counts)}, retried on the survivor: ${
    await metric(coordinator, 'q3vl:coordinator_retries_total')}`);
  assert.deepEqual(Object.keys(counts).filter((o) => o !== 'ok' && o !== 'clean error'), [], JSON.stringify(counts));
  assert.ok(counts.ok >= 1, JSON.stringify(counts));
  await until('r1 marked down', async () => (await replicasIn('down')) === 1, 5000);
  for (let i = 0; i < 3; ++i) {  // the survivor takes everything now
    const r = await client.chat.completions.create({ model: 'demo', messages: user(`After ${i}`), max_tokens: 2 });
    assert.equal(r.usage.completion_tokens, 2);
  }
});

test('a replica that comes back rejoins; a draining one gets no new work', async () => {
  replicas.r1 = await startReplica('r1');
  await until('r1 back', async () => (await replicasIn('up')) === 2);
  const drained = await fetch(`${replicas.r2.url}/drain`, { method: 'POST', headers: { Authorization: `Bearer ${KEY}` } });
  assert.equal(drained.status, 200);
  assert.equal((await fetch(`${replicas.r2.url}/health`)).status, 503);
  await until('r2 draining', async () => (await replicasIn('draining')) === 1, 5000);
  const [r1Before, r2Before] = [await routedTo('r1'), await routedTo('r2')];
  for (let i = 0; i < 4; ++i) {
    await client.completions.create({ model: 'demo', prompt: `Draining ${i}`, max_tokens: 2 });
  }
  assert.equal(await routedTo('r2'), r2Before);
  assert.equal(await routedTo('r1'), r1Before + 4);
  // Unauthenticated drains are refused.
  const anonymous = await fetch(`${replicas.r1.url}/drain`, { method: 'POST' });
  assert.equal(anonymous.status, 401);
});

test('@grpc/grpc-js: health checks, a forwarded generation, a refused join', async () => {
  const options = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };
  const control = grpc.loadPackageDefinition(protoLoader.loadSync(`${REPO}/cluster/control/control.proto`, options));
  // grpc.health.v1 as published by the gRPC project, written out here.
  const healthProto = `${tmp}/health.proto`;
  execFileSync('sh', ['-c', `cat > ${healthProto}`], { input: `syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
` });
  const health = grpc.loadPackageDefinition(protoLoader.loadSync(healthProto, options)).grpc.health.v1;
  const insecure = grpc.credentials.createInsecure();
  for (const address of [`127.0.0.1:${grpcPort}`, replicas.r1.grpc]) {
    const h = new health.Health(address, insecure);
    const status = await new Promise((resolve, reject) =>
      h.Check({ service: '' }, { deadline: Date.now() + 5000 }, (e, r) => (e ? reject(e) : resolve(r.status))));
    assert.equal(status, 'SERVING', address);
    h.close();
  }

  const replica = new control.q3vl.control.v1.Replica(replicas.r1.grpc, insecure);
  const generate = (body) => new Promise((resolve) => {
    const chunks = [];
    const call = replica.Generate({ request_id: 'grpc-js', path: '/v1/completions', body: JSON.stringify(body) });
    call.on('data', (c) => chunks.push(c));
    call.on('error', (e) => resolve({ chunks, error: e }));
    call.on('end', () => resolve({ chunks }));
  });
  const ok = await generate({ model: 'demo', prompt: 'Hello', max_tokens: 5, ignore_eos: true });
  assert.equal(ok.error, undefined);
  assert.equal(ok.chunks[0].what, 'accepted');
  assert.equal(ok.chunks[0].accepted.choices, 1);
  const outputs = ok.chunks.slice(1).map((c) => c.output);
  assert.equal(outputs.flatMap((o) => o.token_ids).length, 5);
  assert.equal(outputs.at(-1).finish, 'length');
  const bad = await generate({ model: 'demo', prompt: 'Hello', max_tokens: 5, frobnicate: 1 });
  assert.equal(bad.error.code, grpc.status.INVALID_ARGUMENT);
  assert.match(bad.error.details, /frobnicate/);
  replica.close();

  // A replica whose pages the coordinator cannot index is refused with the reason.
  const coordinatorClient = new control.q3vl.control.v1.Coordinator(`127.0.0.1:${grpcPort}`, insecure);
  const session = coordinatorClient.Connect();
  const directive = new Promise((resolve) => session.on('data', resolve));
  session.on('error', () => {});
  session.write({ hello: { replica_id: 'odd', incarnation: 'x', address: '127.0.0.1:1', model: 'demo', page_size: 7,
                           max_seq_tokens: 100, snapshot: { seq: 0, keys: [] } } });
  const d = await directive;
  assert.equal(d.what, 'refused');
  assert.match(d.refused.reason, /page size/);
  session.end();
  coordinatorClient.close();
});
