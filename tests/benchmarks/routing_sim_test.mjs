// benchmarks/routing_sim on a small fleet (16 replicas, 10 simulated seconds): its JSON has
// every workload x policy with sane figures, every request completes, and kv routing reuses
// more of the shared videos' and images' KV than least-load does (a property of the policies on
// a fixed seed, not a timing). Run by ctest (env Q3VL_ROUTING_SIM).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';

test('routing_sim: every run completes and kv reuses more shared KV than least-load', () => {
  const out = JSON.parse(execFileSync(process.env.Q3VL_ROUTING_SIM, ['--replicas', '16', '--duration', '10'],
                                      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
  assert.equal(out.benchmark, 'routing_sim');
  assert.equal(out.runs.length, 9);
  const run = (w, p) => out.runs.find((r) => r.workload === w && r.policy === p);
  for (const r of out.runs) {
    assert.ok(r.requests > 0, JSON.stringify(r));
    assert.equal(r.completed, r.requests, `${r.workload} ${r.policy}: every request completes`);
    assert.equal(r.refused, 0);
    assert.ok(r.ttft_p50_s > 0 && r.ttft_p99_s >= r.ttft_p50_s, JSON.stringify(r));
    assert.ok(r.kv_hit_rate >= 0 && r.kv_hit_rate <= 1);
  }
  for (const w of ['long_video_qa', 'image_chat']) {
    assert.ok(run(w, 'kv').kv_hit_rate > run(w, 'least-load').kv_hit_rate, w);
  }
  assert.equal(run('unrelated_text', 'kv').kv_hit_rate, 0);  // nothing to share: no false hits
  assert.ok(out.p50_ttft_least_load_over_kv.long_video_qa > 1);
});
