// q3vl serve driven by the official OpenAI SDK (the `openai` npm package): the models list,
// chat and completions with and without streaming, include_usage, images and videos, stop
// strings, n, logprobs, and every error path as the SDK's typed exceptions; greedy answers equal
// `q3vl generate --json`; a client that disconnects frees its request; SIGTERM drains.
// Run by ctest: node --test tests/server/openai_client_test.mjs (env Q3VL_BINARY, Q3VL_MODEL_DIR,
// Q3VL_TEST_DATA_DIR).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import OpenAI from 'openai';
import { startServer, stopServer, metric, q3vl } from './server_util.mjs';

const MEDIA = `${process.env.Q3VL_TEST_DATA_DIR}/media`;
const KEY = 'test-key-0123456789';
let server;
let client;
let mediaHost;  // a plain HTTP server on loopback that serves the test image

before(async () => {
  mediaHost = createServer((req, res) => {
    if (req.url === '/shapes.jpg') {
      res.writeHead(200, { 'Content-Type': 'image/jpeg' }).end(readFileSync(`${MEDIA}/shapes_333x517.jpg`));
    } else if (req.url === '/moved') {
      res.writeHead(302, { Location: '/shapes.jpg' }).end();
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => mediaHost.listen(0, '127.0.0.1', r));
  server = await startServer(['--served-model-name', 'demo', '--allowed-local-media-path', MEDIA,
                              '--max-body-bytes', String(4 << 20), '--allowed-media-domains', '127.0.0.1'],
                             { Q3VL_API_KEY: KEY });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
});
after(async () => {
  await stopServer(server);
  mediaHost.close();
});

const user = (content) => [{ role: 'user', content }];

test('models list names the served model', async () => {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ['demo']);
  assert.equal(models.data[0].object, 'model');
});

test('greedy chat equals q3vl generate --json for the same messages', async () => {
  const prompt = 'Name three colours.';
  const r = await client.chat.completions.create({ model: 'demo', messages: user(prompt), max_tokens: 8, temperature: 0 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 8);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 8);
  const generated = JSON.parse(q3vl(['generate', '--model', process.env.Q3VL_MODEL_DIR, '--prompt', prompt,
                                     '--max-new-tokens', '8', '--json']));
  assert.equal(r.choices[0].message.content, generated.text);
  assert.equal(r.usage.prompt_tokens, generated.input_ids.length);
});

test('streaming gives the same text, then usage, then [DONE]', async () => {
  const args = { model: 'demo', messages: user('Tell me a story.'), max_tokens: 12, temperature: 0 };
  const whole = await client.chat.completions.create(args);
  const stream = await client.chat.completions.create({ ...args, stream: true, stream_options: { include_usage: true } });
  let text = '';
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  for (const c of chunks.slice(0, -1)) {
    assert.equal(c.object, 'chat.completion.chunk');
    assert.equal(c.usage, null);
    text += c.choices[0].delta.content ?? '';
  }
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  assert.equal(chunks.at(-2).choices[0].finish_reason, 'length');
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.completion_tokens, 12);
  assert.equal(text, whole.choices[0].message.content);
});

test('an image data URL and a video file are seen', async () => {
  const jpeg = readFileSync(`${MEDIA}/shapes_333x517.jpg`).toString('base64');
  const text = await client.chat.completions.create({ model: 'demo', messages: user('What is shown?'), max_tokens: 2 });
  const image = await client.chat.completions.create({
    model: 'demo', max_tokens: 2, temperature: 0,
    messages: user([{ type: 'image_url', image_url: { url: `data:image/jpeg;base64,${jpeg}` } },
                    { type: 'text', text: 'What is shown?' }]),
  });
  assert.ok(image.usage.prompt_tokens > text.usage.prompt_tokens + 100, `${image.usage.prompt_tokens} prompt tokens`);
  const video = await client.chat.completions.create({
    model: 'demo', max_tokens: 2, temperature: 0,
    messages: user([{ type: 'video_url', video_url: { url: `file://${MEDIA}/testsrc2_320x240_4s.mp4` } },
                    { type: 'text', text: 'What happens?' }]),
  });
  assert.ok(video.usage.prompt_tokens > text.usage.prompt_tokens + 100, `${video.usage.prompt_tokens} prompt tokens`);
  // vLLM's mm_processor_kwargs (an extra body field to the SDK): at 1 fps the 4 s clip has half
  // the frame groups, so half the video tokens (and half the timestamp text).
  const slow = await client.chat.completions.create({
    model: 'demo', max_tokens: 2, temperature: 0, mm_processor_kwargs: { fps: 1 },
    messages: user([{ type: 'video_url', video_url: { url: `file://${MEDIA}/testsrc2_320x240_4s.mp4` } },
                    { type: 'text', text: 'What happens?' }]),
  });
  const videoTokens = (r) => r.usage.prompt_tokens - text.usage.prompt_tokens;
  assert.ok(videoTokens(slow) < videoTokens(video) * 0.6 && videoTokens(slow) > videoTokens(video) * 0.4,
    `${videoTokens(slow)} video tokens at 1 fps, ${videoTokens(video)} at 2 fps`);
  await assert.rejects(client.chat.completions.create({
    model: 'demo', max_tokens: 2, mm_processor_kwargs: { do_resize: false }, messages: user('hi'),
  }), (e) => e instanceof OpenAI.BadRequestError && /mm_processor_kwargs\.do_resize is not supported/.test(e.message));
});

test('http images from allowed hosts only', async () => {
  const base = `http://127.0.0.1:${mediaHost.address().port}`;
  const ask = (url) => client.chat.completions.create({
    model: 'demo', max_tokens: 2, temperature: 0,
    messages: user([{ type: 'image_url', image_url: { url } }, { type: 'text', text: 'What is shown?' }]),
  });
  const jpeg = readFileSync(`${MEDIA}/shapes_333x517.jpg`).toString('base64');
  const fetched = await ask(`${base}/shapes.jpg`);
  const inline = await ask(`data:image/jpeg;base64,${jpeg}`);
  assert.equal(fetched.usage.prompt_tokens, inline.usage.prompt_tokens);
  assert.equal(fetched.choices[0].message.content, inline.choices[0].message.content);
  const port = mediaHost.address().port;
  await assert.rejects(ask(`http://localhost:${port}/shapes.jpg`),
                       (e) => e instanceof OpenAI.BadRequestError && /localhost is not allowed/.test(e.message));
  await assert.rejects(ask(`${base}/missing.jpg`), (e) => e instanceof OpenAI.BadRequestError && /404/.test(e.message));
  await assert.rejects(ask(`${base}/moved`), (e) => e instanceof OpenAI.BadRequestError && /redirects/.test(e.message));
});

test('stop strings end the text before them; n = 2; logprobs', async () => {
  const args = { model: 'demo', messages: user('Count.'), max_tokens: 10, temperature: 0 };
  const full = (await client.chat.completions.create(args)).choices[0].message.content;
  const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 3);
  const cut = await client.chat.completions.create({ ...args, stop: [stop] });
  assert.equal(cut.choices[0].finish_reason, 'stop');
  assert.equal(cut.choices[0].message.content, full.slice(0, full.indexOf(stop)));

  const two = await client.chat.completions.create({ ...args, n: 2 });
  assert.equal(two.choices.length, 2);
  assert.deepEqual(two.choices.map((c) => c.index), [0, 1]);
  assert.equal(two.choices[1].message.content, full);
  assert.equal(two.usage.completion_tokens, 20);

  const lp = await client.chat.completions.create({ ...args, logprobs: true, top_logprobs: 2 });
  const content = lp.choices[0].logprobs.content;
  assert.equal(content.length, 10);
  for (const t of content) {
    assert.equal(t.top_logprobs.length, 2);
    assert.ok(t.logprob <= 0 && t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob);
  }
  assert.equal(content.map((t) => t.token).join(''), full);
});

test('completions: text prompt, streaming', async () => {
  const r = await client.completions.create({ model: 'demo', prompt: 'Once upon a time', max_tokens: 5, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.usage.completion_tokens, 5);
  let text = '';
  const stream = await client.completions.create({ model: 'demo', prompt: 'Once upon a time', max_tokens: 5,
                                                   temperature: 0, stream: true });
  for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
  assert.equal(text, r.choices[0].text);
  // Token ids as the prompt, and min_tokens.
  const ids = await client.completions.create({ model: 'demo', prompt: [9707, 11, 1879], max_tokens: 4, min_tokens: 4 });
  assert.equal(ids.usage.prompt_tokens, 3);
  assert.equal(ids.usage.completion_tokens, 4);
  await assert.rejects(client.completions.create({ model: 'demo', prompt: [-1], max_tokens: 1 }),
                       (e) => e instanceof OpenAI.BadRequestError && /outside the vocabulary/.test(e.message));
});

test('errors come back as the SDK typed exceptions', async () => {
  const chat = (extra) => client.chat.completions.create({ model: 'demo', messages: user('hi'), max_tokens: 2, ...extra });
  await assert.rejects(chat({ temperature: 7 }), (e) => e instanceof OpenAI.BadRequestError && e.param === 'temperature');
  await assert.rejects(chat({ frobnicate: true }), (e) => e instanceof OpenAI.BadRequestError && /frobnicate/.test(e.message));
  await assert.rejects(chat({ max_tokens: 100000000 }),
                       (e) => e instanceof OpenAI.BadRequestError && e.param === 'max_tokens' && /100000000 in the completion/.test(e.message));
  await assert.rejects(chat({ model: 'gpt-4o' }), (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found');
  await assert.rejects(chat({ messages: user([{ type: 'image_url', image_url: { url: 'data:image/png;base64,AAAA' } }]) }),
                       (e) => e instanceof OpenAI.BadRequestError);
  await assert.rejects(chat({ messages: user([{ type: 'image_url', image_url: { url: '/etc/passwd' } }]) }),
                       (e) => e instanceof OpenAI.BadRequestError && /outside the allowed/.test(e.message));
  const stranger = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(stranger.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
  // Raw HTTP for what the SDK never sends.
  const post = (body, headers = {}) => fetch(`${server.url}/v1/chat/completions`, {
    method: 'POST', body, headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json', ...headers } });
  let res = await post('{"messages": [');
  assert.equal(res.status, 400);
  assert.match((await res.json()).error.message, /malformed JSON/);
  res = await post('x'.repeat(5 << 20));
  assert.equal(res.status, 413);
  res = await fetch(`${server.url}/v1/nothing`, { headers: { Authorization: `Bearer ${KEY}` } });
  assert.equal(res.status, 404);
  res = await fetch(`${server.url}/v1/models`, { headers: { Authorization: `Bearer ${KEY}`, 'X-Pad': 'x'.repeat(20000) } });
  assert.equal(res.status, 431);
  res = await fetch(`${server.url}/v1/models`, { method: 'DELETE', headers: { Authorization: `Bearer ${KEY}` } });
  assert.equal(res.status, 405);
  assert.equal(res.headers.get('allow'), 'GET');
  res = await post(JSON.stringify({ messages: user('hi'), max_tokens: 1 }), { 'X-Request-Id': 'mine-42' });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-request-id'), 'mine-42');
  assert.equal((await res.json()).id, 'chatcmpl-mine-42');
  // /health and /metrics need no key.
  assert.equal((await fetch(`${server.url}/health`)).status, 200);
  assert.equal((await fetch(`${server.url}/metrics`)).status, 200);
});

test('a client that goes away frees its request', async () => {
  const before = await metric(server, 'q3vl:request_success_total', 'finished_reason="abort"');
  const controller = new AbortController();
  const stream = await client.chat.completions.create(
    { model: 'demo', messages: user('Go on forever.'), max_tokens: 100000, ignore_eos: true, stream: true },
    { signal: controller.signal });
  let seen = 0;
  try {
    for await (const chunk of stream) {
      if (++seen === 3) controller.abort();
    }
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIUserAbortError || e.name === 'AbortError', String(e));
  }
  for (let i = 0; i < 100; ++i) {
    if ((await metric(server, 'q3vl:request_success_total', 'finished_reason="abort"')) > before) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(await metric(server, 'q3vl:request_success_total', 'finished_reason="abort"'), before + 1);
  assert.equal(await metric(server, 'q3vl:num_requests_running'), 0);
});

test('a 2-rank replica under mpirun (tp=2, ep=2) answers as one rank does', async () => {
  const mesh = await startServer(['--served-model-name', 'demo', '--mesh', 'tp=2,ep=2'], {}, 2);
  try {
    const c = new OpenAI({ baseURL: `${mesh.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const args = { model: 'demo', messages: user('Name three colours.'), max_tokens: 8, temperature: 0 };
    const [sharded, single] = await Promise.all([c.chat.completions.create(args), client.chat.completions.create(args)]);
    assert.equal(sharded.choices[0].message.content, single.choices[0].message.content);
    let text = '';
    for await (const chunk of await c.chat.completions.create({ ...args, stream: true })) {
      text += chunk.choices[0]?.delta?.content ?? '';
    }
    assert.equal(text, single.choices[0].message.content);
  } finally {
    await stopServer(mesh);  // SIGTERM to mpirun, which passes it to both ranks
  }
  await mesh.exited;
  // The leader drained and stopped, releasing its follower (mpirun itself exits 1 whenever it
  // was signalled, however its ranks ended).
  assert.match(mesh.log(), /q3vl serve: stopped \(0 requests cut off/);
});

test('a full queue answers 429 with Retry-After', async () => {
  const small = await startServer(['--served-model-name', 'demo', '--max-waiting-requests', '1', '--max-num-seqs', '1']);
  try {
    const c = new OpenAI({ baseURL: `${small.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const long = () => c.chat.completions.create({ model: 'demo', messages: user('hi'), max_tokens: 400, ignore_eos: true })
      .then(() => 200, (e) => e);
    const results = await Promise.all([long(), long(), long(), long(), long()]);
    const limited = results.filter((r) => r instanceof OpenAI.RateLimitError);
    assert.ok(limited.length >= 1, `statuses: ${results.map((r) => r.status ?? r)}`);
    assert.equal(limited[0].headers['retry-after'], '1');
    assert.ok(results.filter((r) => r === 200).length >= 1);  // the one admitted still completes
  } finally {
    await stopServer(small);
  }
});

test('SIGTERM drains: /health 503, new requests 503, in-flight ones finish, exit 0', async () => {
  const s = await startServer(['--served-model-name', 'demo']);
  const c = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'none', maxRetries: 0 });
  const inflight = c.chat.completions.create({ model: 'demo', messages: user('hi'), max_tokens: 300, ignore_eos: true });
  await new Promise((r) => setTimeout(r, 300));
  s.proc.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 200));
  assert.equal((await fetch(`${s.url}/health`)).status, 503);
  await assert.rejects(c.chat.completions.create({ model: 'demo', messages: user('hi'), max_tokens: 2 }),
                       (e) => e instanceof OpenAI.InternalServerError && e.status === 503);
  const done = await inflight;
  assert.equal(done.usage.completion_tokens, 300);
  assert.equal(await s.exited, 0);
});
