// Serving benchmark over HTTP: q3vl serve under a streaming load, against the engine driven
// directly (q3vl run over the same requests, no HTTP). Prints one JSON object on stdout.
//   node benchmarks/http_bench.mjs [--model DIR] [--requests N] [--concurrency C] [--rates 1,2,4]
//                                  [--rate-requests N] [--threads T] [--q3vl PATH]
// 1. saturation: the same N requests through `q3vl run --max-concurrency C` (engine-direct) and
//    through HTTP with C clients streaming at once: output tokens/s of each, and their ratio
//    (the HTTP path's cost: parsing, SSE, the I/O threads sharing the cores);
// 2. rates: Poisson arrivals at each rate (requests/s): throughput, TTFT and inter-token latency
//    p50/p99 as the clients see them.
// Workload: 85% text (1-60 words), 15% with an image; 8-128 completion tokens (ignore_eos),
// greedy. Needs the q3vl binary (ninja -C build q3vl); makes a demo model unless --model.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, copyFileSync, rmSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, a, i, all) => {
  if (a.startsWith('--')) pairs.push([a.slice(2), all[i + 1]]);
  return pairs;
}, []));
const q3vl = args.q3vl ?? join(root, 'build/launcher/q3vl');
const N = Number(args.requests ?? 200);
const C = Number(args.concurrency ?? 16);
const rates = (args.rates ?? '2,4,8').split(',').map(Number);
const rateN = Number(args['rate-requests'] ?? 60);
const threads = args.threads ?? '0';  // compute threads of both sides (0: q3vl's default)
const work = mkdtempSync(join(tmpdir(), 'q3vl_http_bench_'));
const log = (m) => process.stderr.write(`http_bench: ${m}\n`);

let model = args.model;
if (!model) {
  model = join(work, 'model');
  execFileSync(q3vl, ['make-model', '--out', model, '--seed', '0'], { stdio: 'ignore' });
}
copyFileSync(join(root, 'tests/data/media/shapes_333x517.jpg'), join(work, 'image.jpg'));
const jpeg = readFileSync(join(work, 'image.jpg')).toString('base64');

// A deterministic workload (a small LCG, so every run and both paths see the same requests).
let seed = 7;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
const workload = Array.from({ length: Math.max(N, rateN) }, (_, i) => {
  const words = 1 + Math.floor(rand() * 60);
  const text = Array.from({ length: words }, () => `word${Math.floor(rand() * 1000)}`).join(' ');
  const image = rand() < 0.15;
  return { i, text, image, max_tokens: 8 + Math.floor(rand() * 121) };
});
const body = (w, url) => ({
  messages: [{ role: 'user', content: w.image ? [{ type: 'image_url', image_url: { url } }, { type: 'text', text: w.text }]
                                                : w.text }],
  max_tokens: w.max_tokens, temperature: 0, ignore_eos: true,
});

const quantile = (xs, q) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * (s.length - 1) + 0.5))];
};

// 1a. Engine-direct: q3vl run over the same requests.
writeFileSync(join(work, 'requests.jsonl'), workload.slice(0, N).map((w) => JSON.stringify({
  custom_id: `r${w.i}`, method: 'POST', url: '/v1/chat/completions', body: body(w, 'image.jpg') })).join('\n') + '\n');
log(`engine-direct: q3vl run, ${N} requests, --max-concurrency ${C}`);
execFileSync(q3vl, ['run', '--model', model, '--input', join(work, 'requests.jsonl'), '--output', join(work, 'out.jsonl'),
                    '--max-concurrency', String(C), '--summary', join(work, 'summary.json'), '--progress', 'none',
                    '--served-model-name', 'bench', '--threads', threads], { stdio: ['ignore', 'ignore', 'inherit'] });
const direct = JSON.parse(readFileSync(join(work, 'summary.json'), 'utf8'));

// The server.
const server = spawn(q3vl, ['serve', '--model', model, '--port', '0', '--served-model-name', 'bench',
                            '--max-num-seqs', String(Math.max(C, 256)), '--max-waiting-requests', '0',
                            '--threads', threads],
                     { stdio: ['ignore', 'ignore', 'pipe'] });
const url = await new Promise((resolve, reject) => {
  let text = '';
  server.stderr.on('data', (d) => {
    text += d;
    const m = /serving \S+ on (http:\/\/[\d.]+:\d+)/.exec(text);
    if (m) resolve(m[1]);
  });
  server.on('exit', () => reject(new Error(`q3vl serve exited:\n${text}`)));
});

// One streaming request: TTFT, the gaps between chunks, the tokens (usage).
async function one(w) {
  const start = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...body(w, `data:image/jpeg;base64,${jpeg}`), stream: true,
                           stream_options: { include_usage: true } }) });
  if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
  const decoder = new TextDecoder();
  let buffer = '', ttft = null, last = null, tokens = 0;
  const gaps = [];
  for await (const bytes of res.body) {
    buffer += decoder.decode(bytes, { stream: true });
    let at;
    while ((at = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, at);
      buffer = buffer.slice(at + 2);
      if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
      const chunk = JSON.parse(event.slice(6));
      const now = performance.now();
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      if (!chunk.choices.length) continue;
      if (ttft === null) ttft = now - start;
      else gaps.push(now - last);
      last = now;
    }
  }
  return { ttft: ttft / 1000, gaps: gaps.map((g) => g / 1000), tokens, e2e: (performance.now() - start) / 1000 };
}

function summarize(results, seconds) {
  const tokens = results.reduce((s, r) => s + r.tokens, 0);
  const ttft = results.map((r) => r.ttft), itl = results.flatMap((r) => r.gaps);
  return { requests: results.length, seconds, requests_per_second: results.length / seconds,
           output_tokens_per_second: tokens / seconds, completion_tokens: tokens,
           ttft_p50_s: quantile(ttft, 0.5), ttft_p99_s: quantile(ttft, 0.99),
           itl_p50_s: quantile(itl, 0.5), itl_p99_s: quantile(itl, 0.99) };
}

// 1b. HTTP at saturation: C clients, each taking the next request when its last one ends.
log(`http: ${N} requests, ${C} streaming clients`);
const procSeconds = (pid) => {  // user + system CPU seconds of a process
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
};
let next = 0;
const results = [];
const cpu0 = process.cpuUsage(), server0 = procSeconds(server.pid);
const t0 = performance.now();
await Promise.all(Array.from({ length: C }, async () => {
  while (next < N) results.push(await one(workload[next++]));
}));
const saturation = summarize(results, (performance.now() - t0) / 1000);
const cpu1 = process.cpuUsage(cpu0);
saturation.client_cpu_seconds = (cpu1.user + cpu1.system) / 1e6;  // the load generator shares the cores
saturation.server_cpu_seconds = procSeconds(server.pid) - server0;

// 2. Poisson arrivals at each rate.
const byRate = [];
for (const rate of rates) {
  log(`http: ${rateN} requests at ${rate} requests/s (Poisson)`);
  const start = performance.now();
  let at = 0;
  const pending = workload.slice(0, rateN).map((w) => {
    at += -Math.log(1 - rand()) / rate;
    const when = at * 1000;
    return new Promise((r) => setTimeout(r, Math.max(0, when - (performance.now() - start)))).then(() => one(w));
  });
  const got = await Promise.all(pending);
  byRate.push({ rate, ...summarize(got, (performance.now() - start) / 1000) });
}
server.kill('SIGTERM');
await new Promise((r) => server.on('exit', r));
rmSync(work, { recursive: true, force: true });

const cpu = readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/)?.[1] ?? 'unknown';
process.stdout.write(JSON.stringify({
  benchmark: 'http_bench', machine: { cpu, cpus: cpus().length }, requests: N, concurrency: C, threads: Number(threads),
  workload: '85% text (1-60 words), 15% with an image; 8-128 completion tokens, greedy, ignore_eos',
  engine_direct: { output_tokens_per_second: direct.output_tokens_per_second,
                   requests_per_second: direct.requests_per_second, completion_tokens: direct.completion_tokens,
                   seconds: direct.wall_seconds },
  http_saturation: saturation,
  http_over_direct_throughput: saturation.output_tokens_per_second / direct.output_tokens_per_second,
  rates: byRate,
}, null, 1) + '\n');
