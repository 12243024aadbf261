// q3vl niah against q3vl serve on loopback (the demo model: its random weights answer at
// random, so what is tested is the harness): every length x depth x needle x question gets one
// result line with the cell's geometry, its answer's teacher-forced log-probability and the
// server's vision seconds; cells share the frames before their needles through the prefix
// cache; a run killed midway and resumed repeats and loses nothing; a cell too long for the
// model's context is recorded as an error and the run goes on.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServer, stopServer } from './server_util.mjs';

const HAYSTACK = `${process.env.Q3VL_TEST_DATA_DIR}/media/testsrc2_320x240_4s.mp4`;
let server;
const work = mkdtempSync(path.join(tmpdir(), 'q3vl-niah-'));

before(async () => { server = await startServer(['--served-model-name', 'demo']); });
after(async () => { await stopServer(server); rmSync(work, { recursive: true, force: true }); });

// Runs q3vl niah; resolves { code, log }. `killAfterLines`: SIGKILL once that many result
// lines are written.
function niah(args, killAfterLines = 0) {
  return new Promise((resolve) => {
    const p = spawn(process.env.Q3VL_BINARY, ['niah', '--endpoint', server.url, '--haystack', HAYSTACK, ...args],
      { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    p.stderr.on('data', (d) => {
      log += d;
      if (killAfterLines > 0 && (log.match(/q3vl niah: \[\d+\//g) ?? []).length >= killAfterLines) p.kill('SIGKILL');
    });
    const timer = setTimeout(() => p.kill('SIGKILL'), 240000);
    p.on('exit', (code, signal) => { clearTimeout(timer); resolve({ code: code ?? signal, log }); });
  });
}

const lines = (out) => readFileSync(path.join(out, 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));

test('every cell and question gets one line with its geometry', async () => {
  const out = path.join(work, 'full');
  const r = await niah(['--lengths', '1k,2k', '--depths', '0:1:0.5', '--out', out]);
  assert.equal(r.code, 0, r.log);
  const rows = lines(out);
  assert.equal(rows.length, 2 * 3 * 3 * 2);  // lengths x depths x needles x questions
  assert.equal(new Set(rows.map((x) => x.key)).size, rows.length);
  for (const x of rows) {
    assert.equal(typeof x.correct, 'boolean', JSON.stringify(x));
    assert.ok(Math.abs(x.visual_tokens - x.length) <= 192 / 2, `${x.visual_tokens} tokens for ${x.length}`);
    assert.equal(x.needle_group, Math.round(x.depth * (x.frame_groups - 1)));
    assert.match(x.needle_timestamp, /^<\d+\.\d seconds>$/);
    assert.ok(x.prompt_tokens > x.visual_tokens, 'the prompt holds the video');
    // Scored: the reference answer's log-probability, its tokens after the asked prompt, and the
    // asked prompt's pages taken from the prefix cache (only the answer and the last partial
    // page prefilled again).
    assert.ok(x.answer_logprob < 0 && x.answer_tokens >= 1, JSON.stringify(x));
    assert.equal(x.score_prompt_tokens, x.prompt_tokens + x.answer_tokens);
    assert.ok(x.score_cached_tokens >= x.prompt_tokens - 16, `${x.key}: scoring found ${x.score_cached_tokens} cached`);
    assert.equal(x.reference, x.kind === 'when' ? x.needle_timestamp.slice(1, -1) : x.needle);
    assert.ok(x.vision_s >= 0, `vision seconds ${x.vision_s}`);
  }
  // The questions of one cell share its video: the second finds all of it in the prefix cache.
  for (const x of rows.filter((y) => y.question === 1)) {
    assert.ok(x.cached_tokens >= x.visual_tokens, `${x.key}: ${x.cached_tokens} cached of ${x.prompt_tokens}`);
  }
  // Every cell's video is the haystack up to its needle: after the first cell of a length
  // (depth 1, run first), each cell finds at least its frame groups before the needle cached,
  // and the first question of the very first cell is the only one that runs its video's
  // frame groups through the tower (later cells hit the encoder cache but for their needle).
  const first = rows[0];
  assert.equal(first.depth, 1);
  assert.equal(first.cached_tokens, 0);
  for (const x of rows.filter((y) => y.question === 0 && y.depth < 1)) {
    const before = x.needle_group * (x.visual_tokens / x.frame_groups);
    assert.ok(x.cached_tokens >= before, `${x.key}: ${x.cached_tokens} cached, ${before} visual tokens before the needle`);
  }
  const summary = JSON.parse(readFileSync(path.join(out, 'summary.json'), 'utf8'));
  // Sharing across depths as well as questions: well under the 60% target (about 49% when
  // only a cell's own questions shared its video).
  assert.ok(summary.prefilled_fraction <= 0.4, `prefilled ${summary.prefilled_fraction}`);
  assert.ok(summary.scoring_cached_tokens >= 0.9 * summary.scoring_prompt_tokens, JSON.stringify(summary));
  assert.match(r.log, /prefilled \d+ of \d+ prompt tokens/);
  assert.equal(summary.cells.length, 6);
  assert.ok(summary.cells.every((c) => c.questions === 6 && c.accuracy >= 0 && c.accuracy <= 1));
  assert.ok(summary.cells.every((c) => c.scored === 6 && c.mean_answer_logprob < 0 && c.vision_s >= 0));
  assert.ok(!existsSync(path.join(out, 'videos', '2048-1.0000-blue.mp4')), 'videos are removed once done');
  assert.match(r.log, /\[36\/36\] 100%/);
  // The report: a PNG heat map and a page naming every question.
  const png = readFileSync(path.join(out, 'heatmap.png'));
  assert.equal(png.subarray(1, 4).toString(), 'PNG');
  assert.equal(png.readUInt32BE(16), 90 + 2 * 3 * 64 + 40 + 30, 'width: accuracy and log-probability, 3 depth columns each');
  assert.equal(png.readUInt32BE(20), 60 + 2 * 40 + 70, 'height: 2 length rows');
  const html = readFileSync(path.join(out, 'report.html'), 'utf8');
  for (const x of rows) assert.ok(html.includes(x.key), x.key);
});

test('killed midway, --resume finishes without repeating or losing a question', async () => {
  const out = path.join(work, 'resumed');
  const args = ['--lengths', '1k', '--depths', '0,0.5,1', '--out', out, '--no-logprobs'];
  const first = await niah(args, 5);
  assert.equal(first.code, 'SIGKILL');
  const partial = lines(out).length;
  assert.ok(partial >= 4 && partial < 18, `${partial} lines before the kill`);
  const again = await niah(args);
  assert.equal(again.code, 2, 'an existing results file needs --resume');
  assert.match(again.log, /exists: add --resume/);
  const resumed = await niah([...args, '--resume']);
  assert.equal(resumed.code, 0, resumed.log);
  assert.match(resumed.log, new RegExp(`${partial} already in`));
  const rows = lines(out);
  assert.equal(rows.length, 3 * 3 * 2);
  assert.equal(new Set(rows.map((x) => x.key)).size, rows.length);
  assert.ok(rows.every((x) => x.answer_logprob === undefined), '--no-logprobs asks nothing more');
});

test('a cell the replica cannot hold is an error line; the others are answered', async () => {
  // A replica whose KV pool holds 4,096 tokens a sequence: the 8k cell cannot fit.
  const small = await startServer(['--served-model-name', 'demo', '--kv-cache-tokens', '4096']);
  try {
    const out = path.join(work, 'long');
    const p = spawn(process.env.Q3VL_BINARY, ['niah', '--endpoint', small.url, '--haystack', HAYSTACK,
      '--lengths', '1k,8k', '--depths', '0.5', '--out', out], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    p.stderr.on('data', (d) => { log += d; });
    const code = await new Promise((resolve) => p.on('exit', (c) => resolve(c)));
    assert.equal(code, 0, log);
    const rows = lines(out);
    assert.equal(rows.length, 2 * 3 * 2);
    const long = rows.filter((x) => x.length === 8192);
    assert.ok(long.every((x) => x.error?.status === 400 && /KV cache capacity per sequence/.test(x.error.message)),
      JSON.stringify(long[0]));
    assert.ok(rows.filter((x) => x.length === 1024).every((x) => typeof x.correct === 'boolean'));
    assert.match(log, /6 errors/);
  } finally {
    await stopServer(small);
  }
});

test('--model serves the model here and gives the endpoint run\'s answers', async () => {
  const viaEndpoint = path.join(work, 'endpoint');
  const viaModel = path.join(work, 'model');
  const grid = ['--lengths', '1k', '--depths', '0,1'];
  const a = await niah([...grid, '--out', viaEndpoint]);
  assert.equal(a.code, 0, a.log);
  const b = await new Promise((resolve) => {
    const p = spawn(process.env.Q3VL_BINARY, ['niah', '--model', process.env.Q3VL_MODEL_DIR, '--haystack', HAYSTACK,
      ...grid, '--out', viaModel], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    p.stderr.on('data', (d) => { log += d; });
    p.on('exit', (code) => resolve({ code, log }));
  });
  assert.equal(b.code, 0, b.log);
  assert.match(b.log, /starting q3vl serve/);
  const answers = (out) => Object.fromEntries(lines(out).map((x) => [x.key, [x.answer, x.visual_tokens, x.prompt_tokens]]));
  assert.deepEqual(answers(viaModel), answers(viaEndpoint));
});

test('bad arguments are usage errors before any request', async () => {
  for (const [args, re] of [[['--lengths', 'big', '--out', work], /--lengths/], [['--depths', '2', '--out', work], /--depths/],
    [['--needles', '/nonexistent.json', '--out', work], /cannot read/],
    [['--model', '/m', '--out', work], /one of --endpoint and --model/]]) {
    const r = await niah(args);
    assert.equal(r.code, 2, r.log);
    assert.match(r.log, re);
  }
});
